"""Blend masks smoothed over time (``mask_smoothing``), so the mask edge does not flicker.

Each frame's 512x512 mask covers that frame's expanded square, and the squares
move and change size with the face box (and, with ``align_roll``, turn). To
smooth, the masks of the face frames within ``radius`` source frames on each
side are brought onto this frame's 512x512 grid through those geometries
(bilinear), averaged with equal weights and thresholded at half: a majority
vote per pixel in frame coordinates. The frame-to-frame jitter of the parsing
or landmark mask's edge, and of the box it is placed with, is voted away. A
face moving steadily keeps its mask exactly where the window is whole (as many
neighbours ahead as behind); within ``radius`` frames of the clip's ends or of
a frame without a face the window is one-sided, and there a moving face's
mask trails its motion by up to about ``radius / 2`` frames.

Masks arrive in frame order while the avatar is built; :class:`MaskSmoother`
gives each one back once its last neighbour has arrived, so memory stays at
``2 * radius + batch`` masks whatever the clip's length.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .blending import expanded_square
from .face_parsing import PARSING_SIZE

__all__ = ["MaskSmoother", "mask_to_frame", "smooth_masks"]


def mask_to_frame(track, index: int, expand: float) -> np.ndarray:
    """3x3 matrix from source frame ``index``'s 512x512 mask grid to frame pixels (``track``: a ``FaceTrack``)."""
    xs, ys, xe, _ = expanded_square(track.box(index), expand)
    scale = (xe - xs) / PARSING_SIZE
    to_upright = np.array([[scale, 0, xs], [0, scale, ys], [0, 0, 1]], np.float64)
    rotation = track.rotation(index)
    if rotation is None:
        return to_upright
    return np.vstack([cv2.invertAffineTransform(rotation), [0, 0, 1]]) @ to_upright


class MaskSmoother:
    """Takes the masks of the face frames in order and returns them smoothed, ``radius`` face frames later."""

    def __init__(self, track, expand: float, radius: int):
        self.track, self.expand, self.radius = track, expand, radius
        self._masks: dict[int, np.ndarray] = {}
        self._grids: dict[int, np.ndarray] = {}
        self._waiting: list[int] = []

    def push(self, indices: Sequence[int], masks: np.ndarray) -> np.ndarray:
        """Add the masks of source frames ``indices``; returns the masks now complete (maybe none), in order."""
        for index, mask in zip(indices, masks):
            self._masks[int(index)] = mask
            self._grids[int(index)] = mask_to_frame(self.track, int(index), self.expand)
            self._waiting.append(int(index))
        latest = self._waiting[-1] if self._waiting else -1
        return self._release(lambda index: index + self.radius <= latest)

    def finish(self) -> np.ndarray:
        """The masks still held back, smoothed with the neighbours there are."""
        return self._release(lambda index: True)

    def _release(self, ready) -> np.ndarray:
        done = []
        while self._waiting and ready(self._waiting[0]):
            done.append(self._smoothed(self._waiting.pop(0)))
        oldest_needed = (self._waiting[0] if self._waiting else max(self._masks, default=0) + 1) - self.radius
        for index in [index for index in self._masks if index < oldest_needed]:
            del self._masks[index], self._grids[index]
        return np.stack(done) if done else np.zeros((0, PARSING_SIZE, PARSING_SIZE), np.uint8)

    def _smoothed(self, index: int) -> np.ndarray:
        total = self._masks[index].astype(np.float32)
        neighbours = [other for other in self._masks if abs(other - index) <= self.radius]
        for other in neighbours:
            if other == index:
                continue
            to_other = np.linalg.inv(self._grids[other]) @ self._grids[index]  # this grid -> the other's grid
            total += cv2.warpAffine(self._masks[other].astype(np.float32), to_other[:2], (PARSING_SIZE, PARSING_SIZE),
                                    flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=0)
        return np.where(total >= 127.5 * len(neighbours), 255, 0).astype(np.uint8)


def smooth_masks(track, indices: Sequence[int], masks: np.ndarray, expand: float, radius: int) -> np.ndarray:
    """The masks of face frames ``indices`` (in order), all at once: :class:`MaskSmoother` without the streaming."""
    smoother = MaskSmoother(track, expand, radius)
    return np.concatenate([smoother.push(indices, masks), smoother.finish()])
