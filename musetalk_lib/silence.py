"""Speech and silence per output frame, and the two ways of acting on silence.

MuseTalk moves the mouth for any sound (breaths, room noise), and in silence
whatever Whisper makes of it. ``silence`` chooses what to do:

``model``
    The official behaviour: nothing is detected, the model sees the audio as is.
``gate``
    Silent spans of the 16 kHz waveform become digital zeros, with short
    linear release and attack ramps (:data:`RAMP_SECONDS`) inside the span,
    before Whisper, so noise stops driving the mouth. The output video keeps
    the original sound.
``source``
    In silent spans the source frames pass through unchanged, crossfaded at
    each edge (:mod:`~musetalk_lib.passthrough`): for idle-loop avatars whose
    own mouth is closed.

Detection is an energy detector, not a VAD library. Two VADs do install
cleanly from PyPI (``webrtcvad-wheels``: binary wheels of a C extension;
``silero-vad``: MIT, ships its model), but Silero's model is a TorchScript
archive loaded with ``torch.jit.load`` (outside our safe weight loader) or
needs onnxruntime, and WebRTC's adds a compiled dependency on every platform
ComfyUI runs on while judging 10-30 ms frames by fixed models. What has to be
told apart here -- pauses, breaths and room noise against the clip's own
speech -- differs mainly in level, which an energy detector relative to the
clip's speech level measures directly, deterministically, without any
dependency, in microseconds per frame. (A breath louder than 24 dB below the
speech level counts as speech.) Each
output frame's RMS level (the samples of ``[i / fps, (i + 1) / fps)``) is
compared with the clip's own speech level, the 95th percentile of the frame
levels: a frame starts speech above ``level - ON_BELOW_SPEECH_DB`` and speech
continues until a frame falls below ``level - OFF_BELOW_SPEECH_DB``
(hysteresis). Silent runs shorter than :data:`MIN_SILENCE_SECONDS` between
speech count as speech (pauses between words). A clip whose speech level is
below :data:`SILENCE_FLOOR_DB` is silent throughout.
"""

from __future__ import annotations

import math

import numpy as np

from .audio_io import WHISPER_SAMPLE_RATE
from .passthrough import true_ranges

__all__ = [
    "MIN_SILENCE_SECONDS",
    "RAMP_SECONDS",
    "detect_speech",
    "frame_levels_db",
    "gate_silence",
    "silence_sample_ranges",
    "silent_spans",
]

ON_BELOW_SPEECH_DB = 24.0  # a frame this close to the speech level starts speech
OFF_BELOW_SPEECH_DB = 32.0  # speech goes on until a frame is this far below the speech level
SPEECH_LEVEL_PERCENTILE = 95
SILENCE_FLOOR_DB = -60.0  # a clip whose speech level is below this (dBFS) is silent throughout
MIN_SILENCE_SECONDS = 0.3  # shorter silent runs are pauses within speech
RAMP_SECONDS = 0.01  # gate release and attack ramps, inside the silent span


def _frame_bounds(index: np.ndarray, fps: float, sample_rate: int) -> np.ndarray:
    return np.rint(np.asarray(index) * sample_rate / fps).astype(np.int64)


def frame_levels_db(audio: np.ndarray, fps: float, num_frames: int,
                    sample_rate: int = WHISPER_SAMPLE_RATE) -> np.ndarray:
    """RMS level in dBFS of the audio under each output frame (-200 for digital silence or past the end)."""
    bounds = np.minimum(_frame_bounds(np.arange(num_frames + 1), fps, sample_rate), len(audio))
    squares = np.concatenate([[0.0], np.cumsum(np.asarray(audio, np.float64) ** 2)])
    counts = np.maximum(bounds[1:] - bounds[:-1], 1)
    power = (squares[bounds[1:]] - squares[bounds[:-1]]) / counts
    return 10 * np.log10(np.maximum(power, 1e-20))


def detect_speech(audio: np.ndarray, fps: float, num_frames: int, sample_rate: int = WHISPER_SAMPLE_RATE,
                  min_silence: float = MIN_SILENCE_SECONDS) -> np.ndarray:
    """``[num_frames]`` bool: whether each output frame carries speech (see the module docstring)."""
    levels = frame_levels_db(audio, fps, num_frames, sample_rate)
    speech = np.zeros(num_frames, bool)
    if num_frames == 0:
        return speech
    speech_level = float(np.percentile(levels, SPEECH_LEVEL_PERCENTILE))
    if speech_level < SILENCE_FLOOR_DB:
        return speech
    on, off = speech_level - ON_BELOW_SPEECH_DB, speech_level - OFF_BELOW_SPEECH_DB
    talking = False
    for index, level in enumerate(levels):
        talking = level >= off if talking else level >= on
        speech[index] = talking
    shortest = math.ceil(min_silence * fps - 1e-9)
    for first, last in true_ranges(~speech):
        if last - first + 1 < shortest and first > 0 and last < num_frames - 1:
            speech[first:last + 1] = True
    return speech


def silent_spans(speech: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive ``(first, last)`` output-frame ranges without speech, for reporting."""
    return true_ranges(~np.asarray(speech, bool))


def silence_sample_ranges(speech: np.ndarray, fps: float, num_samples: int,
                          sample_rate: int = WHISPER_SAMPLE_RATE) -> list[tuple[int, int]]:
    """Half-open ``[start, end)`` sample ranges of the silent spans; the last one runs to the end of the audio."""
    ranges = []
    for first, last in silent_spans(speech):
        start, end = _frame_bounds(np.array([first, last + 1]), fps, sample_rate)
        if last == len(speech) - 1:
            end = num_samples
        ranges.append((min(int(start), num_samples), min(int(end), num_samples)))
    return [(start, end) for start, end in ranges if end > start]


def gate_silence(audio: np.ndarray, speech: np.ndarray, fps: float, sample_rate: int = WHISPER_SAMPLE_RATE,
                 ramp: float = RAMP_SECONDS) -> np.ndarray:
    """A copy of ``audio`` whose silent spans are zeros, faded out and back in over ``ramp`` seconds inside each span.

    Samples outside the spans are unchanged. A span that starts the clip has
    no release ramp, one that ends it no attack ramp.
    """
    gated = np.array(audio, dtype=np.float32, copy=True)
    ramp_samples = max(1, round(ramp * sample_rate))
    for start, end in silence_sample_ranges(speech, fps, len(gated), sample_rate):
        gain = np.zeros(end - start, np.float32)
        length = min(ramp_samples, (end - start) // 2)
        fade = np.arange(length, 0, -1, dtype=np.float32) / (length + 1)  # just below 1 down to just above 0
        if start > 0:
            gain[:length] = fade
        if end < len(gated):
            gain[len(gain) - length:] = fade[::-1]
        gated[start:end] *= gain
    return gated
