"""Whisper-tiny audio features and their per-video-frame chunks.

The encoder turns 16 kHz speech into 50 feature frames per second, each made
of 5 hidden states (the embedding output, layers 1-3, and the final
LayerNorm of layer 4) of 384 values. Every video frame then gets a window of
those frames, flattened to audio tokens for the UNet's cross-attention: with
the official context of 2 video frames on each side, 10 Whisper frames x 5
states = 50 tokens.

The window rule reproduces the official code (``int(fps)`` truncation,
``ceil`` padding, zeros outside the audio) and extends it to any frame rate
(the official code aborts from 50 fps up).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .audio_io import WHISPER_SAMPLE_RATE
from .checkpoint import load_model_weights
from .weights import first_existing

__all__ = [
    "FEATURE_RATE",
    "AudioFeatures",
    "WhisperAudioEncoder",
    "frame_window_index",
    "load_whisper",
]

FEATURE_RATE = 50  # Whisper encoder frames per second
SEGMENT_SECONDS = 30
SEGMENT_SAMPLES = SEGMENT_SECONDS * WHISPER_SAMPLE_RATE
DEFAULT_CONTEXT = 2  # official audio_padding_length_left / _right, in video frames
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")  # preferred first, as transformers does
UNUSED_WEIGHTS = ("decoder.", "proj_out.")  # the parts of a Whisper checkpoint MuseTalk does not run


def load_whisper(folder: str | os.PathLike, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> WhisperAudioEncoder:
    """Build the Whisper encoder from a local Hugging Face folder's ``config.json``, load its weights and the
    feature extractor (``preprocessor_config.json``).

    The weights are ``model.safetensors`` or, without it, ``pytorch_model.bin``,
    read by :mod:`.checkpoint` (no code in a pickle ever runs): a
    ``WhisperModel`` checkpoint, or a ``WhisperForConditionalGeneration`` one
    like the official whisper-tiny file (``model.``-prefixed names plus
    ``proj_out``). Every encoder weight must be there with the config's shape;
    the decoder's weights are not loaded (MuseTalk never runs the decoder).

    Raises:
        FileNotFoundError: no weights file in ``folder``.
        CheckpointError: the weights file is damaged, unsafe, or does not match ``config.json``.
    """
    weights = first_existing(folder, WEIGHTS_FILES, "Whisper weights")
    config = WhisperConfig.from_pretrained(folder, local_files_only=True)
    with torch.device("meta"):
        encoder = WhisperEncoder(config)
    load_model_weights(encoder, weights, dtype, convert=_encoder_weights,
                       hint=f"Check that it comes with {os.path.join(folder, 'config.json')}.")
    extractor = WhisperFeatureExtractor.from_pretrained(folder, local_files_only=True)
    return WhisperAudioEncoder(encoder.to(device).eval().requires_grad_(False), extractor)


def _encoder_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's weights under the encoder's own names; the decoder's and the output projection's are dropped.

    Any other weight is kept under its name, so that it is reported as unexpected.
    """
    encoder = {}
    for name, tensor in state_dict.items():
        name = name.removeprefix("model.")
        if name.startswith("encoder."):
            encoder[name.removeprefix("encoder.")] = tensor
        elif not name.startswith(UNUSED_WEIGHTS):
            encoder[name] = tensor
    return encoder


class WhisperAudioEncoder(nn.Module):
    """Speech (16 kHz mono float32) -> Whisper features ``[L, 5, 384]`` at 50 Hz."""

    def __init__(self, encoder: nn.Module, feature_extractor: WhisperFeatureExtractor, segments_per_batch: int = 4):
        super().__init__()
        self.encoder = encoder
        self.feature_extractor = feature_extractor
        self.segments_per_batch = segments_per_batch

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype

    def log_mel(self, segments: Sequence[np.ndarray]) -> torch.Tensor:
        """Whisper log-mel ``[S, 80, 3000]`` of up-to-30 s segments, each normalised on its own padded window."""
        mel_device = "cuda" if self.device.type == "cuda" else "cpu"
        return self.feature_extractor(
            list(segments), sampling_rate=WHISPER_SAMPLE_RATE, return_tensors="pt", device=mel_device
        ).input_features

    @torch.inference_mode()
    def forward(self, audio_16k: np.ndarray) -> torch.Tensor:
        """Encode the whole recording in 30 s segments; returns float32 features on the CPU."""
        audio_16k = np.asarray(audio_16k, dtype=np.float32)
        num_features = math.floor(audio_16k.shape[0] / WHISPER_SAMPLE_RATE * FEATURE_RATE)
        starts = range(0, max(audio_16k.shape[0], 1), SEGMENT_SAMPLES)
        segments = [audio_16k[start:start + SEGMENT_SAMPLES] for start in starts]
        encoded = []
        for first in range(0, len(segments), self.segments_per_batch):
            mel = self.log_mel(segments[first:first + self.segments_per_batch])
            outputs = self.encoder(mel.to(self.device, self.dtype), output_hidden_states=True)
            states = torch.stack(outputs.hidden_states, dim=2)  # [S, 1500, 5, 384]
            encoded.append(states.flatten(0, 1).float().cpu())
        return torch.cat(encoded)[:num_features]


def frame_window_index(
    num_samples: int,
    fps: float,
    num_features: int,
    context_left: int = DEFAULT_CONTEXT,
    context_right: int = DEFAULT_CONTEXT,
    exact_fps: bool = False,
) -> np.ndarray:
    """Which Whisper frame fills each audio-token slot of each video frame.

    Returns ``[T, 2 * (context_left + context_right + 1)]`` int64 indices into
    the feature frames, ``-1`` where the official code reads zero padding.

    With ``exact_fps=False`` the frame rate is truncated to an integer as the
    official code does (29.97 -> 29). That keeps parity but lets mouth motion
    drift on fractional rates; ``exact_fps=True`` uses the true rate.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    rate = float(fps) if exact_fps else int(fps)
    if rate <= 0:
        raise ValueError(f"fps {fps} truncates to 0; use exact_fps=True for rates below 1")
    step = FEATURE_RATE / rate
    num_frames = math.floor(num_samples / WHISPER_SAMPLE_RATE * rate)
    pad = math.ceil(step)
    width = 2 * (context_left + context_right + 1)
    starts = np.floor(np.arange(num_frames, dtype=np.float64) * step).astype(np.int64) - pad * context_left
    index = starts[:, None] + np.arange(width, dtype=np.int64)[None, :]
    index[(index < 0) | (index >= num_features)] = -1
    return index


@dataclass
class AudioFeatures:
    """Whisper features of one recording plus the window of each video frame.

    Chunks are gathered on demand, so a long recording never holds the
    ``[T, 50, 384]`` array for all frames at once.
    """

    features: torch.Tensor  # [L, 5, 384] float32
    index: np.ndarray  # [T, W] int64, -1 = zero slot
    fps: float
    speech: np.ndarray | None = None  # [T] bool, False = silent frame; set when silence handling is on

    @classmethod
    def for_video(
        cls,
        features: torch.Tensor,
        num_samples: int,
        fps: float,
        context_left: int = DEFAULT_CONTEXT,
        context_right: int = DEFAULT_CONTEXT,
        exact_fps: bool = False,
    ) -> AudioFeatures:
        index = frame_window_index(num_samples, fps, features.shape[0], context_left, context_right, exact_fps)
        return cls(features=features, index=index, fps=float(fps))

    @property
    def num_frames(self) -> int:
        return self.index.shape[0]

    @property
    def tokens_per_frame(self) -> int:
        return self.index.shape[1] * self.features.shape[1]

    def chunks(self, frames: Sequence[int] | np.ndarray | slice | None = None) -> torch.Tensor:
        """Audio tokens ``[K, W*5, 384]`` of the given video frames (all when None), before positional encoding.

        Token ``5*j + k`` is window slot ``j``, hidden state ``k``, as in the official code.
        """
        index = torch.from_numpy(self.index if frames is None else self.index[frames])
        gathered = self.features[index.clamp(min=0)]  # [K, W, 5, 384]
        gathered[index < 0] = 0.0
        return gathered.reshape(gathered.shape[0], -1, gathered.shape[-1])
