"""The mel spectrogram SyncNet listens to (Wav2Lip's audio settings, as the official training uses).

16 kHz audio, pre-emphasis 0.97, STFT with an 800-sample periodic Hann window
and hop 200 (80 frames per second, centred, zero padding), 80 Slaney mel
bands from 55 to 7600 Hz, magnitude in dB minus 20 dB, then mapped
symmetrically from [-100, 0] dB to [-4, 4] and clipped.

The official training computes this with ``musetalk/data/audio.py`` and
librosa 0.11.0 (its pinned version), whose ``stft`` pads the ends with zeros
(librosa before 0.10, as in Wav2Lip's time, reflected them: that changes the
first and last two frames). ``tests/test_training_models.py`` compares with
that code's output (``scripts/make_mel_parity_fixture.py``).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from transformers.audio_utils import mel_filter_bank

__all__ = [
    "MEL_BANDS",
    "MEL_RATE",
    "mel_steps",
    "mel_window",
    "melspectrogram",
]

SAMPLE_RATE = 16000
N_FFT = 800
HOP = 200
MEL_BANDS = 80
MEL_RATE = SAMPLE_RATE // HOP  # mel frames per second
F_MIN, F_MAX = 55.0, 7600.0
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0


@lru_cache(maxsize=1)
def _filters() -> np.ndarray:
    return mel_filter_bank(
        num_frequency_bins=N_FFT // 2 + 1,
        num_mel_filters=MEL_BANDS,
        min_frequency=F_MIN,
        max_frequency=F_MAX,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    ).T  # [80, 401]


def _stft_magnitude(signal: np.ndarray) -> np.ndarray:
    padded = np.pad(signal, N_FFT // 2)  # centred frames, zeros beyond the ends (librosa's default since 0.10)
    num_frames = 1 + (padded.shape[0] - N_FFT) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:num_frames]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    return np.abs(np.fft.rfft(frames * window, n=N_FFT, axis=-1)).T  # [401, frames]


def melspectrogram(audio_16k: np.ndarray) -> np.ndarray:
    """16 kHz mono audio -> normalised mel spectrogram ``[80, 1 + n // 200]`` float32 in [-4, 4]."""
    signal = np.asarray(audio_16k, dtype=np.float64)
    if signal.ndim != 1 or signal.size == 0:
        raise ValueError(f"Expected non-empty mono audio, got shape {signal.shape}")
    emphasised = np.concatenate([signal[:1], signal[1:] - PREEMPHASIS * signal[:-1]])
    mel = _filters() @ _stft_magnitude(emphasised)
    floor = math.pow(10.0, MIN_LEVEL_DB / 20.0)
    decibels = 20.0 * np.log10(np.maximum(floor, mel)) - REF_LEVEL_DB
    scaled = 2.0 * MAX_ABS_VALUE * (decibels - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS_VALUE
    return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def mel_steps(num_frames: int, fps: float) -> int:
    """Mel frames covering ``num_frames`` video frames (52 for 16 frames at 25 fps, as the official code)."""
    return math.ceil(num_frames * MEL_RATE / fps)


def mel_window(mel: np.ndarray, start_frame: int, num_frames: int, fps: float) -> np.ndarray | None:
    """The ``[80, mel_steps]`` slice for video frames ``start_frame ..``; None if it runs past the audio."""
    start = int(MEL_RATE * start_frame / fps)
    steps = mel_steps(num_frames, fps)
    if start < 0 or start + steps > mel.shape[1]:
        return None
    return mel[:, start:start + steps]
