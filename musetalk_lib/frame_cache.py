"""A byte-bounded, least-recently-used store of decoded video frames.

:class:`FrameCache` keeps frames by index until their total size would pass
``max_bytes``; then the frames used longest ago go first. Stored frames are
made read-only, because the same array is handed to every caller that asks
for that index: a caller that wants to draw on a frame copies it first.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

__all__ = ["DEFAULT_CACHE_BYTES", "FrameCache"]

DEFAULT_CACHE_BYTES = 512 * 2**20  # about 1400 frames of 350x350, 85 frames of 1920x1080 RGB


class FrameCache:
    """Decoded frames by frame index, evicted least recently used first to stay within ``max_bytes``."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._frames: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._frames)

    def __contains__(self, index: int) -> bool:
        return index in self._frames

    def capacity(self, frame_bytes: int) -> int:
        """How many frames of ``frame_bytes`` each fit in the budget."""
        return self.max_bytes // max(1, frame_bytes)

    def get(self, index: int) -> np.ndarray | None:
        """The stored frame (now the most recently used), or ``None``."""
        frame = self._frames.get(index)
        if frame is not None:
            self._frames.move_to_end(index)
        return frame

    def put(self, index: int, frame: np.ndarray) -> np.ndarray:
        """Store ``frame`` as the most recently used, evicting old frames past the budget; returns it read-only.

        A frame larger than the whole budget is not stored (but still returned read-only).
        """
        frame.setflags(write=False)
        if frame.nbytes > self.max_bytes:
            return frame
        previous = self._frames.pop(index, None)
        if previous is not None:
            self.nbytes -= previous.nbytes
        self._frames[index] = frame
        self.nbytes += frame.nbytes
        while self.nbytes > self.max_bytes:
            _, evicted = self._frames.popitem(last=False)
            self.nbytes -= evicted.nbytes
        return frame
