"""Pasting a generated face back into its frame, as the official MuseTalk code does.

The paste works in an expanded square around the face box (1.5x its larger
side). A 512x512 mask of the lower face in that square comes from face
parsing (modes ``raw``, ``jaw``, ``neck``) or, without parsing weights, from
the 68 landmarks (mode ``landmarks``). The mask is resized to the square,
limited to the face box and the square's lower half, blurred, and used as the
alpha of the composite. The ``normal`` and ``realtime`` variants differ only
in the blur kernel (5 % or 10 % of the square's side).

Images are ``uint8`` RGB ``[H, W, 3]``; the mask steps use Pillow and OpenCV
exactly as the official code does, so results are bit-identical.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

from .crop import FACE_SIZE, Box, resize_face_to_box
from .face_parsing import PARSING_SIZE
from .options import BLEND_VARIANTS, MASK_MODES, PARSING_MODES

__all__ = [
    "BLEND_VARIANTS",
    "MASK_MODES",
    "PARSING_MODES",
    "blend_alpha",
    "blur_kernel_size",
    "crop_with_padding",
    "expanded_square",
    "first_pasted_face_row",
    "landmark_mask",
    "parsing_mask",
    "paste_face",
    "resize_mask_to_square",
]

DEFAULT_EXPAND = 1.5
UPPER_BOUNDARY_RATIO = 0.5  # the alpha is cut above this fraction of the square (official)
DEFAULT_CHEEK_WIDTH = 90  # what the v1.5 scripts pass; the parser class default is 80

SKIN, NOSE, MOUTH, UPPER_LIP, LOWER_LIP, NECK = 1, 10, 11, 12, 13, 14


def expanded_square(box: Box, expand: float = DEFAULT_EXPAND) -> Box:
    """The ``2s x 2s`` square around the box centre, ``s = int(max(w, h) // 2 * expand)``; may leave the frame."""
    x1, y1, x2, y2 = box
    x_centre, y_centre = (x1 + x2) // 2, (y1 + y2) // 2
    half = int(max(x2 - x1, y2 - y1) // 2 * expand)
    return (x_centre - half, y_centre - half, x_centre + half, y_centre + half)


def crop_with_padding(frame: np.ndarray, region: Box) -> np.ndarray:
    """The frame's pixels over ``region``, black where the region leaves the frame (Pillow ``crop``)."""
    xs, ys, xe, ye = region
    height, width = frame.shape[:2]
    out = np.zeros((ye - ys, xe - xs, *frame.shape[2:]), dtype=frame.dtype)
    sx1, sy1, sx2, sy2 = max(xs, 0), max(ys, 0), min(xe, width), min(ye, height)
    if sx1 < sx2 and sy1 < sy2:
        out[sy1 - ys:sy2 - ys, sx1 - xs:sx2 - xs] = frame[sy1:sy2, sx1:sx2]
    return out


def _jaw_dilation_kernel() -> np.ndarray:
    kernel = np.zeros((33, 33), dtype=np.uint8)
    for row in range(10, 21):
        half_width = row - 10
        kernel[row, 16 - half_width:16 + half_width + 1] = 1
    kernel[21:33, 6:27] = 1
    return kernel


_JAW_KERNEL = _jaw_dilation_kernel()
_JAW_ERODE = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3))


def parsing_mask(labels: np.ndarray, mode: str = "jaw", cheek_width: int = DEFAULT_CHEEK_WIDTH) -> np.ndarray:
    """Lower-face mask (0/255 ``uint8``, 512x512) from BiSeNet labels.

    ``raw``: skin, mouth and lips. ``neck``: the same plus the neck. ``jaw``:
    skin dilated towards the jaw line and eroded sideways, keeping the
    dilated version only within ``cheek_width`` of the centre; nose excluded.
    """
    lips = np.isin(labels, (MOUTH, UPPER_LIP, LOWER_LIP))
    if mode == "raw":
        keep = lips | (labels == SKIN)
    elif mode == "neck":
        keep = lips | np.isin(labels, (SKIN, NECK))
    elif mode == "jaw":
        skin = np.where(labels == SKIN, 255, 0).astype(np.uint8)
        dilated = cv2.dilate(skin, _JAW_KERNEL, iterations=1)
        eroded = cv2.erode(dilated, _JAW_ERODE, iterations=2)
        cheeks = np.zeros_like(skin)
        centre = labels.shape[1] // 2
        cheeks[:, :centre - cheek_width + 1] = 255
        cheeks[:, centre + cheek_width:] = 255
        region = (eroded & cheeks) | (dilated & ~cheeks)
        keep = ((region == 255) & (labels != NOSE)) | lips
    else:
        raise ValueError(f"Unknown parsing mode {mode!r}; choose one of {', '.join(PARSING_MODES)}.")
    return np.where(keep, 255, 0).astype(np.uint8)


def landmark_mask(landmarks: np.ndarray, square: Box, size: int = PARSING_SIZE) -> np.ndarray:
    """Lower-face mask (0/255, ``size x size`` over ``square``) from 68 landmarks; needs no parsing weights.

    The face is the hull of the jaw contour; the nose (bridge and base) is cut
    out, as the parsing modes leave it untouched.
    """
    xs, ys, xe, _ = square
    scale = size / (xe - xs)
    points = (np.asarray(landmarks, dtype=np.float64) - (xs, ys)) * scale
    mask = np.zeros((size, size), dtype=np.uint8)
    jaw = cv2.convexHull(np.round(points[0:17]).astype(np.int32))
    cv2.fillConvexPoly(mask, jaw, 255)
    nose = cv2.convexHull(np.round(points[27:36]).astype(np.int32))
    cv2.fillConvexPoly(mask, nose, 0)
    return mask


def blur_kernel_size(square_side: int, variant: str = "normal") -> int:
    """Odd Gaussian kernel: 5 % of the square for ``normal``, 10 % for ``realtime`` (official formulas)."""
    if variant not in BLEND_VARIANTS:
        raise ValueError(f"Unknown blend variant {variant!r}; choose one of {', '.join(BLEND_VARIANTS)}.")
    fraction = 0.05 if variant == "normal" else 0.1
    return int((fraction * square_side) // 2 * 2) + 1


def resize_mask_to_square(mask: np.ndarray, square: Box) -> np.ndarray:
    """Resize a 512x512 mask to the square's size with Pillow's bicubic filter (the official default)."""
    xs, ys, xe, ye = square
    return np.asarray(Image.fromarray(mask).resize((xe - xs, ye - ys), Image.BICUBIC))


def blend_alpha(mask: np.ndarray, box: Box, square: Box, variant: str = "normal",
                upper_boundary_ratio: float = UPPER_BOUNDARY_RATIO) -> np.ndarray:
    """Blurred alpha (``uint8``, square-sized) from a 512x512 mask over ``square``.

    The mask is resized to the square, kept only inside the face box and below
    ``upper_boundary_ratio`` of the square, then blurred. It depends only on
    the source frame, so it can be computed once per frame and reused.
    """
    xs, ys, xe, _ = square
    side = xe - xs
    resized = resize_mask_to_square(mask, square)
    x1, y1, x2, y2 = box
    alpha = np.zeros_like(resized)
    alpha[y1 - ys:y2 - ys, x1 - xs:x2 - xs] = resized[y1 - ys:y2 - ys, x1 - xs:x2 - xs]
    alpha[:int(side * upper_boundary_ratio)] = 0
    kernel = blur_kernel_size(side, variant)
    return cv2.GaussianBlur(alpha, (kernel, kernel), 0)


def first_pasted_face_row(box: Box, square: Box, variant: str = "normal",
                          upper_boundary_ratio: float = UPPER_BOUNDARY_RATIO) -> int:
    """The first row of the generated 256x256 face that can reach the pasted frame.

    The alpha is zero above ``upper_boundary_ratio`` of the square except for
    the blur's spread (half its kernel); mapping that frame row into the box
    and through the bilinear resize gives the first face row it reads. Rows
    above it may be anything: the paste never shows them.
    """
    x1, y1, x2, y2 = box
    xs, ys, xe, _ = square
    side = xe - xs
    first_frame_row = ys + int(side * upper_boundary_ratio) - blur_kernel_size(side, variant) // 2
    first_box_row = max(first_frame_row, y1) - y1
    return max(0, math.floor((first_box_row + 0.5) * FACE_SIZE / (y2 - y1) - 0.5))


def paste_face(frame: np.ndarray, face: np.ndarray, box: Box, square: Box, alpha: np.ndarray) -> np.ndarray:
    """Composite the generated face (any square size, resized to the box) into a copy of the frame.

    Inside the square, ``out = (frame * (255 - a) + face * a) / 255`` rounded
    half up (Pillow's paste with a mask); pixels outside are untouched. Where
    the official composite puts the frame itself (the square outside the box)
    or the alpha is zero, that formula gives the frame back exactly, so only
    the rows of the box that the alpha reaches are computed.
    """
    x1, y1, x2, y2 = box
    xs, ys, xe, ye = square
    height, width = frame.shape[:2]
    out = frame.copy()
    visible_rows = np.flatnonzero(alpha.any(axis=1))
    if len(visible_rows) == 0:
        return out
    px1, px2 = max(x1, xs, 0), min(x2, xe, width)
    py1, py2 = max(y1, ys + int(visible_rows[0]), 0), min(y2, ys + int(visible_rows[-1]) + 1, height)
    if px1 >= px2 or py1 >= py2:
        return out
    foreground = resize_face_to_box(face, box)[py1 - y1:py2 - y1, px1 - x1:px2 - x1].astype(np.uint16)
    a = alpha[py1 - ys:py2 - ys, px1 - xs:px2 - xs, None].astype(np.uint16)
    background = frame[py1:py2, px1:px2].astype(np.uint16)
    mixed = background * (255 - a) + foreground * a + 128  # at most 255 * 255 + 128: fits uint16
    out[py1:py2, px1:px2] = ((mixed + (mixed >> 8)) >> 8).astype(np.uint8)
    return out
