"""Where source frames come from: a video file (streamed), a still image, or frames in memory.

Every source answers ``frames(indices)`` with RGB ``uint8`` ``[H, W, 3]``
arrays, so the pipeline never needs all frames at once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import numpy as np

from .bounded_cache import DEFAULT_CACHE_BYTES
from .video_io import VideoReader, is_image_path, read_image, to_rgb

__all__ = ["ArraySource", "FrameSource", "StillImageSource", "VideoFileSource", "file_digest", "open_source"]

DEFAULT_STILL_FPS = 25.0


class FrameSource(Protocol):
    num_frames: int
    width: int
    height: int
    frame_rate: Fraction

    def frames(self, indices: Sequence[int]) -> list[np.ndarray]:
        """RGB ``uint8`` frames at ``indices``."""

    def fingerprint(self) -> str:
        """A content hash identifying the frames (for caches)."""


class VideoFileSource:
    """Frames decoded on demand from a video file.

    Decoded frames are kept in a least-recently-used cache of ``cache_bytes``
    (0 disables it), so a ping-pong cycle that fits is decoded once and one
    that does not is read backwards a cache-sized window at a time (see
    :class:`~musetalk_lib.video_io.VideoReader`). The frames handed out are
    then read-only: copy one before drawing on it.
    """

    def __init__(self, path: str | os.PathLike, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.path = Path(path)
        self._reader = VideoReader(self.path, cache_bytes)
        info = self._reader.info
        self.num_frames, self.width, self.height = info.num_frames, info.width, info.height
        self.frame_rate = info.frame_rate

    def frames(self, indices: Sequence[int]) -> list[np.ndarray]:
        return self._reader.frames(indices)

    @property
    def frames_decoded(self) -> int:
        """How many frames the decoder has produced so far (each cache miss costs at least one)."""
        return self._reader.frames_decoded

    def fingerprint(self) -> str:
        return file_digest(self.path)

    def close(self) -> None:
        self._reader.close()


class ArraySource:
    """Frames already in memory: a still image, a decoded clip, or a ComfyUI ``IMAGE`` batch.

    ``frames`` is a sequence of ``[H, W, C]`` arrays (or one ``[N, H, W, C]``
    array); float data in ``[0, 1]`` is converted to ``uint8`` when read.
    """

    def __init__(self, frames: Sequence[np.ndarray] | np.ndarray, fps: float | Fraction = DEFAULT_STILL_FPS):
        if len(frames) == 0:
            raise ValueError("No frames given.")
        self._frames = frames
        self.num_frames = len(frames)
        self.height, self.width = np.asarray(frames[0]).shape[:2]
        self.frame_rate = Fraction(fps).limit_denominator(100000)

    def _frame(self, index: int) -> np.ndarray:
        frame = np.asarray(self._frames[index])
        if frame.dtype != np.uint8:
            frame = np.clip(frame.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return to_rgb(frame)

    def frames(self, indices: Sequence[int]) -> list[np.ndarray]:
        return [self._frame(int(index)) for index in indices]

    def fingerprint(self) -> str:
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{self.num_frames}x{self.height}x{self.width}".encode())
        for index in range(self.num_frames):
            digest.update(np.ascontiguousarray(np.asarray(self._frames[index])).tobytes())
        return digest.hexdigest()


def file_digest(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    """BLAKE2b of a file's content (streamed)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


class StillImageSource(ArraySource):
    """One image, repeated for as many frames as the audio needs."""

    def __init__(self, path: str | os.PathLike, fps: float | Fraction = DEFAULT_STILL_FPS):
        self.path = Path(path)
        super().__init__([read_image(self.path)], fps)

    def fingerprint(self) -> str:
        return file_digest(self.path)


def open_source(path: str | os.PathLike, still_fps: float = DEFAULT_STILL_FPS,
                cache_bytes: int = DEFAULT_CACHE_BYTES) -> FrameSource:
    """A source for a video or an image file (chosen by extension); ``cache_bytes`` bounds a video's frame cache."""
    if is_image_path(path):
        return StillImageSource(path, still_fps)
    return VideoFileSource(path, cache_bytes)
