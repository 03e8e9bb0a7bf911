"""Reading speech and bringing it to Whisper's 16 kHz mono float32.

Decoding uses soundfile (WAV, FLAC, OGG, MP3) and falls back to PyAV for
anything FFmpeg can read (M4A, AAC, the audio track of a video). Conversion
follows ``librosa.load(path, sr=16000)``, which the official code uses:
channel mean in float32, then soxr "HQ" resampling to ``ceil(n * 16000 / sr)``
samples.

Audio with more than two channels (5.1, 7.1 ...) is first mixed down to
stereo with the ITU-R BS.775 gains FFmpeg also uses (centre and surrounds at
-3 dB into both sides, LFE dropped), by the channel names the file declares
or, when it declares none, :data:`DEFAULT_LAYOUTS`. The official channel mean
would put speech on a 5.1 centre channel at -15.6 dB among the surrounds and
the LFE; after the downmix it is at -3 dB, as on any stereo speaker pair.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_LAYOUTS",
    "WHISPER_SAMPLE_RATE",
    "AudioError",
    "downmix_to_stereo",
    "load_audio",
    "load_audio_16k",
    "to_whisper_input",
]

WHISPER_SAMPLE_RATE = 16000

DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
"""The FFmpeg channel layout assumed for audio that does not name its channels."""

_MINUS_3_DB = math.sqrt(0.5)
_STEREO_GAINS: dict[str, tuple[float, float]] = {
    "FL": (1.0, 0.0), "FR": (0.0, 1.0), "FLC": (1.0, 0.0), "FRC": (0.0, 1.0),
    "FC": (_MINUS_3_DB, _MINUS_3_DB), "BC": (0.5, 0.5),
    "BL": (_MINUS_3_DB, 0.0), "BR": (0.0, _MINUS_3_DB), "SL": (_MINUS_3_DB, 0.0), "SR": (0.0, _MINUS_3_DB),
    "LFE": (0.0, 0.0), "LFE2": (0.0, 0.0),
}
_OTHER_CHANNEL_GAINS = (0.5, 0.5)  # height and other rare channels: half into each side


class AudioError(ValueError):
    """The audio could not be read, or holds no samples."""


def downmix_to_stereo(samples: np.ndarray, layout: str | None = None) -> np.ndarray:
    """Mix float ``[channels, n]`` audio with more than two channels down to ``[2, n]`` (one or two: unchanged).

    ``layout`` is the FFmpeg layout name of the channels (``"5.1(side)"``,
    ``"7.1"`` ...); ``None`` or an unnamed order assumes :data:`DEFAULT_LAYOUTS`.
    """
    import av

    channels = samples.shape[0]
    if channels <= 2:
        return samples
    try:
        names = [channel.name for channel in av.AudioLayout(layout).channels] if layout else []
    except (ValueError, TypeError):
        names = []
    if len(names) != channels or "NONE" in names:  # no layout, or an unnamed order such as "6 channels"
        if channels not in DEFAULT_LAYOUTS:
            raise AudioError(f"Cannot mix {channels} unnamed audio channels down to stereo; "
                             f"give a file with at most {max(DEFAULT_LAYOUTS)} channels or a named layout.")
        names = [channel.name for channel in av.AudioLayout(DEFAULT_LAYOUTS[channels]).channels]
    gains = np.array([_STEREO_GAINS.get(name, _OTHER_CHANNEL_GAINS) for name in names], np.float32).T
    return np.ascontiguousarray(gains @ samples.astype(np.float32, copy=False))


def load_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode an audio file (or a video's audio track) to float32 ``[channels, samples]`` and its rate.

    More than two channels are mixed down to stereo (:func:`downmix_to_stereo`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Audio file not found: {path}")
    if path.stat().st_size == 0:
        raise AudioError(f"The audio {path} is empty (0 bytes).")
    try:
        samples, sample_rate = _read_soundfile(path)
        layout = _declared_layout(path) if samples.shape[0] > 2 else None
    except Exception:  # libsndfile refuses formats it does not know: FFmpeg reads the rest
        try:
            samples, sample_rate, layout = _read_pyav(path)
        except Exception as pyav_error:
            reason = getattr(pyav_error, "strerror", None) or pyav_error
            raise AudioError(f"Cannot decode audio from {path}: it is not audio FFmpeg or libsndfile can read, "
                             f"or it is truncated or corrupt ({reason}).") from pyav_error
    if samples.shape[1] == 0:
        raise AudioError(f"{path} contains no audio samples.")
    return downmix_to_stereo(samples, layout), sample_rate


def _declared_layout(path: Path) -> str | None:
    """The channel layout FFmpeg reads from the file (e.g. a WAV's channel mask), if any."""
    import av

    try:
        with av.open(str(path)) as container:
            return container.streams.audio[0].layout.name if container.streams.audio else None
    except av.FFmpegError:
        return None


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile

    data, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), int(sample_rate)


def _read_pyav(path: Path) -> tuple[np.ndarray, int, str]:
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
        return np.zeros((channels, 0), dtype=np.float32), sample_rate, stream.layout.name
    return np.concatenate(pieces, axis=1).astype(np.float32, copy=False), sample_rate, stream.layout.name


def to_whisper_input(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mix ``[channels, n]`` (or ``[n]``) float audio down to mono and resample to 16 kHz float32.

    More than two channels are taken in :data:`DEFAULT_LAYOUTS` order (:func:`load_audio` has already
    mixed a file's own layout down to stereo).
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        samples = downmix_to_stereo(samples)
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
