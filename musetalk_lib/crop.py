"""Face crop boxes from 68-point landmarks, the 256x256 model crop and its inverse.

A box is ``(x1, y1, x2, y2)`` in integer pixels, end-exclusive.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "Box",
    "FACE_SIZE",
    "NOSE_BRIDGE",
    "V15_EXTRA_MARGIN",
    "add_bottom_margin",
    "crop_face",
    "face_box_from_landmarks",
    "official_face_box",
    "resize_face_to_box",
]

Box = tuple[int, int, int, int]

FACE_SIZE = 256  # side of the model's face crop

NOSE_BRIDGE = 29  # iBUG-68 index of the point the crop is centred on vertically
V15_EXTRA_MARGIN = 10  # pixels added below the chin by MuseTalk v1.5


def face_box_from_landmarks(landmarks: np.ndarray, bbox_shift: int = 0) -> Box | None:
    """The official landmark box, or None where the official code falls back to the detector box.

    The box spans the landmarks horizontally and from the lowest landmark up to
    the same distance above the nose bridge (moved down by ``bbox_shift``), so
    row 128 of the resized crop falls on the shifted nose bridge. Coordinates
    are truncated to integers first, as the official code does with DWPose points.
    """
    points = np.asarray(landmarks).astype(np.int32)
    if points.shape != (68, 2):
        raise ValueError(f"Expected 68x2 landmarks, got {points.shape}")
    nose_y = int(points[NOSE_BRIDGE, 1]) + int(bbox_shift)
    # The official code shifts the landmark in place before taking the maximum.
    ys = points[:, 1].copy()
    ys[NOSE_BRIDGE] = nose_y
    y2 = int(ys.max())
    y1 = max(0, nose_y - (y2 - nose_y))
    x1, x2 = int(points[:, 0].min()), int(points[:, 0].max())
    if y2 - y1 <= 0 or x2 - x1 <= 0 or x1 < 0:
        return None
    return (x1, y1, x2, y2)


def add_bottom_margin(box: Box, margin: int, frame_height: int) -> Box:
    """Extend the box downwards by ``margin`` pixels, clipped to the frame (v1.5's ``extra_margin``)."""
    x1, y1, x2, y2 = box
    return (x1, y1, x2, min(y2 + int(margin), frame_height))


def official_face_box(
    landmarks: np.ndarray,
    frame_height: int,
    bbox_shift: int = 0,
    extra_margin: int = 0,
    fallback: Box | None = None,
) -> Box | None:
    """Landmark box (or ``fallback`` where it is degenerate) with the bottom margin applied."""
    box = face_box_from_landmarks(landmarks, bbox_shift)
    if box is None:
        box = fallback
    if box is None:
        return None
    return add_bottom_margin(box, extra_margin, frame_height) if extra_margin else box


def crop_face(frame: np.ndarray, box: Box, size: int = FACE_SIZE) -> np.ndarray:
    """Cut ``box`` out of the frame and resize it to ``size x size`` with OpenCV's Lanczos-4 (aspect not kept)."""
    x1, y1, x2, y2 = box
    region = frame[y1:y2, x1:x2]
    if region.size == 0:
        raise ValueError(f"Crop box {box} is empty for a frame of shape {frame.shape}")
    return cv2.resize(region, (size, size), interpolation=cv2.INTER_LANCZOS4)


def resize_face_to_box(face: np.ndarray, box: Box) -> np.ndarray:
    """Bring a generated ``size x size`` face back to the box size (OpenCV bilinear), ready to paste."""
    x1, y1, x2, y2 = box
    return cv2.resize(face, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
