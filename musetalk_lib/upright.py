"""Upright crops for tilted heads (``align_roll``): level the eyes before cropping, turn the face back when pasting.

MuseTalk was trained on upright faces; a head tilted by 15-30 degrees gives a
blurred or broken mouth. With ``align_roll`` set, a frame whose eye line (from
the 68 landmarks) is tilted more than that many degrees is rotated around the
face centre (the middle of the landmarks' extent) so the eyes are level: the
crop box, the latents and the blending mask all come from that upright view.
The generated face is pasted in the upright view's coordinates and the result
turned back into the frame with the same rotation; pixels the turned alpha does
not reach are the frame's own, exactly.

A rotation is a 2x3 affine matrix taking frame coordinates to upright ones
(OpenCV's ``getRotationMatrix2D``); a frame without one is cropped and pasted
exactly as the official code does.
"""

from __future__ import annotations

import cv2
import numpy as np

from .blending import paste_face
from .crop import Box, resize_face_to_box
from .head_pose import eye_line_angle

__all__ = ["level_rotation", "paste_face_upright", "transform_points", "upright_frame"]


def level_rotation(landmarks: np.ndarray, threshold: float) -> np.ndarray | None:
    """The rotation that levels the eye line, or None when it is tilted by ``threshold`` degrees or less."""
    points = np.asarray(landmarks, dtype=np.float64)
    roll = eye_line_angle(points)
    if abs(roll) <= threshold:
        return None
    centre = (points.min(axis=0) + points.max(axis=0)) / 2
    return cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), roll, 1.0)


def transform_points(points: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """``[K, 2]`` points moved by a 2x3 affine matrix."""
    points = np.asarray(points, dtype=np.float64)
    return points @ rotation[:, :2].T + rotation[:, 2]


def upright_frame(frame: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """The frame turned by ``rotation`` (Lanczos-4, as the crop; borders repeat the edge pixels), same size."""
    height, width = frame.shape[:2]
    return cv2.warpAffine(frame, rotation, (width, height), flags=cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_REPLICATE)


def paste_face_upright(frame: np.ndarray, face: np.ndarray, box: Box, square: Box, alpha: np.ndarray,
                       rotation: np.ndarray | None) -> np.ndarray:
    """Like :func:`~musetalk_lib.blending.paste_face`, with ``box``, ``square`` and ``alpha`` in upright coordinates.

    Without a rotation this is ``paste_face``. With one, the generated face is
    put into the upright view of the square, cut to the box as the official
    paste does, and this patch and its alpha are turned back into the frame
    (bilinear); the composite uses the same rounding as ``paste_face``.
    """
    if rotation is None:
        return paste_face(frame, face, box, square, alpha)
    x1, y1, x2, y2 = box
    xs, ys, xe, ye = square
    height, width = frame.shape[:2]
    out = frame.copy()
    inside = np.zeros_like(alpha)
    inside[y1 - ys:y2 - ys, x1 - xs:x2 - xs] = alpha[y1 - ys:y2 - ys, x1 - xs:x2 - xs]
    if not inside.any():
        return out
    to_square = rotation.copy()
    to_square[:, 2] -= (xs, ys)
    patch = cv2.warpAffine(frame, to_square, (xe - xs, ye - ys), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    patch[y1 - ys:y2 - ys, x1 - xs:x2 - xs] = resize_face_to_box(face, box)
    to_frame = cv2.invertAffineTransform(to_square)
    corners = transform_points(np.array([[0, 0], [xe - xs, 0], [0, ye - ys], [xe - xs, ye - ys]]), to_frame)
    fx1, fy1 = np.maximum(np.floor(corners.min(axis=0)).astype(int) - 1, 0)
    fx2, fy2 = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 2, (width, height))
    if fx1 >= fx2 or fy1 >= fy2:
        return out
    to_frame[:, 2] -= (fx1, fy1)
    size = (int(fx2 - fx1), int(fy2 - fy1))
    foreground = cv2.warpAffine(patch, to_frame, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    a = cv2.warpAffine(inside, to_frame, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    a = a[..., None].astype(np.uint16)
    background = frame[fy1:fy2, fx1:fx2].astype(np.uint16)
    mixed = background * (255 - a) + foreground.astype(np.uint16) * a + 128
    out[fy1:fy2, fx1:fx2] = ((mixed + (mixed >> 8)) >> 8).astype(np.uint8)
    return out
