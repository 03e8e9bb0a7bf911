"""Conversions between ComfyUI's IMAGE/AUDIO values and the library's arrays, plus the socket payloads."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # the library's model modules are imported only when a node runs
    from ..musetalk_lib.avatar import AvatarSettings, FaceLatents, FaceTrack
    from ..musetalk_lib.frame_source import FrameSource
    from ..musetalk_lib.pipeline import FrameStream, OutputPlan


@dataclass
class AvatarPayload:
    """``MUSETALK_AVATAR``: the source frames (lazy) and the tracked face."""

    source: FrameSource
    track: FaceTrack
    settings: AvatarSettings

    @property
    def fps(self) -> float:
        return float(self.source.frame_rate)


@dataclass
class FaceLatentsPayload:
    """``MUSETALK_FACE_LATENTS``: masked and reference latents of the avatar's frames with a face."""

    avatar: AvatarPayload
    faces: FaceLatents
    random_weights: bool


@dataclass
class PredictionPayload:
    """``MUSETALK_PREDICTED_LATENTS``: UNet output per output frame with a face, and the frame plan."""

    avatar: AvatarPayload
    plan: OutputPlan
    latents: torch.Tensor
    random_weights: bool


def audio_samples(audio: Mapping) -> tuple[np.ndarray, int]:
    """A ComfyUI ``AUDIO`` (any mapping, including VHS's lazy one) -> float32 ``[channels, samples]`` and its rate.

    Only the first item of a batch is used.
    """
    try:
        waveform, sample_rate = audio["waveform"], int(audio["sample_rate"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"Not an AUDIO value (needs 'waveform' and 'sample_rate'): {error}") from error
    samples = torch.as_tensor(waveform).detach().float().cpu()
    if samples.ndim == 3:
        samples = samples[0]
    if samples.ndim == 1:
        samples = samples[None]
    return samples.numpy(), sample_rate


def audio_value(samples: np.ndarray, sample_rate: int) -> dict:
    """float ``[channels, samples]`` -> ComfyUI ``AUDIO``."""
    return {"waveform": torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None], "sample_rate": sample_rate}


def pad_to_even(frame: np.ndarray) -> np.ndarray:
    """Replicate the last row/column of odd-sized frames (video encoders need even sizes)."""
    height, width = frame.shape[:2]
    return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge") if height % 2 or width % 2 else frame


def frames_to_image(frames: Iterable[np.ndarray], count: int, even: bool = False) -> torch.Tensor:
    """Collect uint8 RGB frames (possibly read-only) into a ComfyUI ``IMAGE`` (float32 ``[N, H, W, 3]`` in 0..1)."""
    image = None
    for index, frame in enumerate(frames):
        frame = pad_to_even(frame) if even else frame
        if image is None:
            image = torch.empty((count, *frame.shape), dtype=torch.float32)
        image[index] = torch.from_numpy(frame.astype(np.float32)) / 255.0
    if image is None:
        raise ValueError("No frames were produced.")
    return image


def image_frames(image: torch.Tensor, width: int, height: int) -> Iterator[np.ndarray]:
    """The frames of an ``IMAGE`` as uint8 RGB ``[height, width, 3]`` arrays, cut back to ``width`` x ``height``.

    Exact inverse of :func:`frames_to_image` (its padding included).
    """
    for frame in image:
        yield (frame[:height, :width, :3] * 255).round().byte().numpy()


def image_and_stream(stream: FrameStream, build_image: bool, even: bool) -> tuple[torch.Tensor | None, FrameStream]:
    """The ``IMAGE`` output (when ``build_image``) and the ``MUSETALK_FRAMES`` output of generated frames.

    Building the ``IMAGE`` runs ``stream`` once; the returned stream then
    replays the ``IMAGE``'s frames (:func:`image_frames`) instead of decoding
    and blending again. Without the ``IMAGE``, ``stream`` is returned as is.
    """
    if not build_image:
        return None, stream
    image = frames_to_image(stream, stream.num_frames, even=even)
    return image, replace(stream, produce=lambda: image_frames(image, stream.width, stream.height))
