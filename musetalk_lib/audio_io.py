"""Reading speech and bringing it to Whisper's 16 kHz mono float32.

Decoding uses soundfile (WAV, FLAC, OGG, MP3) and falls back to PyAV for
anything FFmpeg can read (M4A, AAC, the audio track of a video). Conversion
follows ``librosa.load(path, sr=16000)``, which the official code uses:
channel mean in float32, then soxr "HQ" resampling to ``ceil(n * 16000 / sr)``
samples.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

__all__ = [
    "WHISPER_SAMPLE_RATE",
    "AudioError",
    "load_audio",
    "load_audio_16k",
    "to_whisper_input",
]

WHISPER_SAMPLE_RATE = 16000


class AudioError(ValueError):
    """The audio could not be read, or holds no samples."""


def load_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode an audio file (or a video's audio track) to float32 ``[channels, samples]`` and its rate."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Audio file not found: {path}")
    try:
        samples, sample_rate = _read_soundfile(path)
    except Exception as soundfile_error:  # libsndfile refuses formats it does not know
        try:
            samples, sample_rate = _read_pyav(path)
        except Exception as pyav_error:
            raise AudioError(
                f"Cannot decode audio from {path}: soundfile said {soundfile_error}; PyAV said {pyav_error}"
            ) from pyav_error
    if samples.shape[1] == 0:
        raise AudioError(f"{path} contains no audio samples.")
    return samples, sample_rate


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile

    data, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), int(sample_rate)


def _read_pyav(path: Path) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise AudioError(f"{path} has no audio stream.")
        stream = container.streams.audio[0]
        sample_rate = stream.codec_context.sample_rate
        channels = stream.codec_context.channels
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=sample_rate)
        pieces = []
        for frame in container.decode(stream):
            for converted in resampler.resample(frame):
                pieces.append(converted.to_ndarray())
        for converted in resampler.resample(None):
            pieces.append(converted.to_ndarray())
    if not pieces:
        return np.zeros((channels, 0), dtype=np.float32), sample_rate
    return np.concatenate(pieces, axis=1).astype(np.float32, copy=False), sample_rate


def to_whisper_input(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mix ``[channels, n]`` (or ``[n]``) float audio down to mono and resample to 16 kHz float32."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=0, dtype=np.float32) if samples.shape[0] > 1 else samples[0]
    elif samples.ndim != 1:
        raise AudioError(f"Expected audio shaped [channels, samples] or [samples], got {samples.shape}.")
    if samples.size == 0:
        raise AudioError("The audio contains no samples.")
    if sample_rate <= 0:
        raise AudioError(f"Invalid sample rate {sample_rate}.")
    if not np.isfinite(samples).all():
        raise AudioError("The audio contains NaN or infinite samples.")
    if sample_rate == WHISPER_SAMPLE_RATE:
        return np.ascontiguousarray(samples)
    import soxr

    target_length = int(math.ceil(samples.shape[0] * (float(WHISPER_SAMPLE_RATE) / sample_rate)))
    resampled = soxr.resample(samples, sample_rate, WHISPER_SAMPLE_RATE, quality="HQ").astype(np.float32)
    if resampled.shape[0] >= target_length:
        return np.ascontiguousarray(resampled[:target_length])
    return np.pad(resampled, (0, target_length - resampled.shape[0]))


def load_audio_16k(path: str | os.PathLike) -> np.ndarray:
    """Decode ``path`` and return mono 16 kHz float32 samples (what Whisper consumes)."""
    samples, sample_rate = load_audio(path)
    return to_whisper_input(samples, sample_rate)
