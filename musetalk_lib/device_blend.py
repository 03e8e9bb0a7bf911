"""The face crop and the paste-back as batched torch operations, on the frames' own device.

``crop_faces`` and ``paste_faces`` do for a batch of ``uint8`` RGB frames
``[H, W, 3]`` what ``crop.crop_face`` and ``blending.paste_face`` do for one
numpy frame, so that with the models on CUDA the frames can stay there. They
run on any torch device; the numpy functions remain the CPU path, bit-exact
with the official code. The alpha (``blending.blend_alpha``) depends only on
the source frame and stays a CPU computation; only the part used is copied.

The resizes reproduce OpenCV's 8-bit ``INTER_LANCZOS4`` (crop) and
``INTER_LINEAR`` (paste), not a generic filter: output pixel ``d`` samples
source coordinate ``(d + 0.5) * in / out - 0.5`` when enlarging and shrinking
alike (no antialiasing), taps past the edge repeat the edge pixel, and
Lanczos-4 has 8 taps normalised to sum 1. Each axis is an ``out x in``
resize matrix kept in sparse form (source index and weight of each tap,
cached per ``(in, out, kind)``), its weights in OpenCV's 11-bit fixed point.
Both passes run in 32-bit integers as OpenCV's do: exact horizontal sums,
then a vertical pass rounded to 8 bits as OpenCV rounds it, including the
truncated products of its vectorised bilinear pass. The results are
bit-identical to the (x86) OpenCV build tested; a build that rounds the
bilinear pass exactly (no SIMD) differs by at most one grey level. Being
integer, they do not depend on float matmul settings such as TF32.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Literal, TypeVar

import numpy as np
import torch

from .crop import FACE_SIZE, Box

__all__ = ["crop_faces", "paste_faces"]

ResizeKind = Literal["linear", "lanczos4"]
_Frames = TypeVar("_Frames", torch.Tensor, Sequence[torch.Tensor])

_FIXED_ONE = 2048  # OpenCV's INTER_RESIZE_COEF_SCALE: 8-bit resize weights are multiples of 1/2048
_TAP_OFFSETS = {"linear": np.arange(2), "lanczos4": np.arange(-3, 5)}


@functools.lru_cache(maxsize=256)
def _taps(in_size: int, out_size: int, kind: ResizeKind) -> tuple[np.ndarray, np.ndarray]:
    """One axis of OpenCV's 8-bit resize: source index and fixed-point weight of each tap, ``[out_size, taps]``.

    The rows are the nonzero entries of the ``out x in`` resize matrix (times
    2048), with out-of-range taps clamped to the edge, so several taps may
    hit the edge pixel, as in OpenCV's vertical pass. (Its horizontal
    bilinear pass moves the whole weight onto the edge pixel instead; the two
    fixed-point weights always add up to 2048, so the matrix is the same.)
    Coordinates are float32 as in OpenCV.
    """
    offsets = _TAP_OFFSETS[kind]
    position = ((np.arange(out_size) + 0.5) * (1.0 / (out_size / in_size)) - 0.5).astype(np.float32)
    start = np.floor(position)
    fraction = position - start
    if kind == "linear":
        weights = np.stack([np.float32(1) - fraction, fraction], axis=1)
    else:
        distance = fraction.astype(np.float64)[:, None] - offsets
        lanczos = np.sinc(distance) * np.sinc(distance / 4)
        weights = (lanczos / lanczos.sum(axis=1, keepdims=True)).astype(np.float32)
    fixed = np.rint(weights * np.float32(_FIXED_ONE)).astype(np.int32)
    index = np.clip(start.astype(np.int64)[:, None] + offsets, 0, in_size - 1)
    return index, fixed


def _gather_taps(values: torch.Tensor, dim: int, sizes: Sequence[tuple[int, int]],
                 kind: ResizeKind) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per tap: the source values along ``dim`` (1: rows, 2: columns) of every output pixel, and their weights.

    ``values`` is ``[B, H, W, 3]``; ``sizes`` gives each item's
    ``(in_size, out_size)`` along ``dim``. The gathered values have
    ``max out_size`` along ``dim``; rows or columns past an item's
    ``out_size`` read its first pixel with weight 0.
    """
    length = max(out_size for _, out_size in sizes)
    index = np.zeros((len(sizes), length, len(_TAP_OFFSETS[kind])), np.int64)
    weight = np.zeros(index.shape, np.int32)
    for item, (in_size, out_size) in enumerate(sizes):
        index[item, :out_size], weight[item, :out_size] = _taps(in_size, out_size, kind)
    broadcast = [len(sizes), 1, 1, 1]
    broadcast[dim] = length
    shape = list(values.shape)
    shape[dim] = length
    index, weight = torch.from_numpy(index).to(values.device), torch.from_numpy(weight).to(values.device)
    for tap in range(index.shape[2]):
        tap_index = index[:, :, tap].reshape(broadcast).expand(shape)
        yield values.gather(dim, tap_index), weight[:, :, tap].reshape(broadcast)


def _resize(images: torch.Tensor, in_sizes: Sequence[tuple[int, int]], out_sizes: Sequence[tuple[int, int]],
            kind: ResizeKind) -> torch.Tensor:
    """Resize ``uint8`` images as OpenCV does, each from its ``(h, w)`` to its own ``(h, w)``.

    ``images`` is ``[B, H, W, 3]``, each image in the top-left corner; the
    result is ``[B, max h, max w, 3]`` ``uint8``, each in the top-left corner
    (padding is don't-care). 32-bit integer arithmetic throughout, as in
    OpenCV: the horizontal pass keeps exact sums (pixels times 2048), the
    vertical pass rounds them to 8 bits as OpenCV does.
    """
    pixels = images.to(torch.int32)
    widths = [(w_in, w_out) for (_, w_in), (_, w_out) in zip(in_sizes, out_sizes)]
    sums = sum(values * weight for values, weight in _gather_taps(pixels, 2, widths, kind))
    heights = [(h_in, h_out) for (h_in, _), (h_out, _) in zip(in_sizes, out_sizes)]
    if kind == "linear":  # OpenCV's vectorised bilinear pass truncates each product to 1/4 grey level
        total = sum(((values >> 4) * weight) >> 16 for values, weight in _gather_taps(sums, 1, heights, kind))
        rounded = (total + 2) >> 2
    else:
        total = sum(values * weight for values, weight in _gather_taps(sums, 1, heights, kind))
        rounded = (total + (1 << 21)) >> 22
    return rounded.clamp_(0, 255).to(torch.uint8)


def _frame_list(frames: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The frames as a list of ``[H, W, 3]`` ``uint8`` tensors (views, no copies)."""
    frame_list = list(frames)
    for frame in frame_list:
        if frame.dtype != torch.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"Expected uint8 frames [H, W, 3], got {frame.dtype} {tuple(frame.shape)}")
    return frame_list


def crop_faces(frames: torch.Tensor | Sequence[torch.Tensor], boxes: Sequence[Box],
               size: int = FACE_SIZE) -> torch.Tensor:
    """Cut each box out of its frame and resize it to ``size x size`` like ``crop.crop_face`` (Lanczos-4).

    ``frames`` is a ``[B, H, W, 3]`` ``uint8`` tensor or a sequence of
    ``[H, W, 3]`` ones (sizes may differ), all on one device; ``boxes`` holds
    one ``(x1, y1, x2, y2)`` per frame. A box reaching past the right or
    bottom edge is cut at it, as ``crop_face``'s slicing does; a box starting
    outside the frame or empty raises ``ValueError``. The regions are copied
    into one zero-padded batch of the largest region's size. Returns
    ``[B, size, size, 3]`` ``uint8`` on the frames' device.
    """
    frame_list = _frame_list(frames)
    if len(frame_list) != len(boxes):
        raise ValueError(f"Got {len(frame_list)} frames but {len(boxes)} boxes")
    if not frame_list:
        device = frames.device if isinstance(frames, torch.Tensor) else None
        return torch.zeros((0, size, size, 3), dtype=torch.uint8, device=device)
    regions = []
    for frame, box in zip(frame_list, boxes):
        x1, y1, x2, y2 = (int(value) for value in box)
        height, width = frame.shape[:2]
        x2, y2 = min(x2, width), min(y2, height)
        if x1 < 0 or y1 < 0 or x1 >= x2 or y1 >= y2:
            raise ValueError(f"Crop box {tuple(box)} is empty or starts outside a frame of shape {tuple(frame.shape)}")
        regions.append((x1, y1, x2, y2))
    in_sizes = [(y2 - y1, x2 - x1) for x1, y1, x2, y2 in regions]
    patches = frame_list[0].new_zeros((len(regions), max(h for h, _ in in_sizes), max(w for _, w in in_sizes), 3))
    for patch, frame, (x1, y1, x2, y2) in zip(patches, frame_list, regions):
        patch[:y2 - y1, :x2 - x1] = frame[y1:y2, x1:x2]
    return _resize(patches, in_sizes, [(size, size)] * len(regions), "lanczos4")


def paste_faces(frames: _Frames, faces: torch.Tensor, boxes: Sequence[Box], squares: Sequence[Box],
                alphas: Sequence[np.ndarray | torch.Tensor]) -> _Frames:
    """Composite each generated face into its frame IN PLACE, like ``blending.paste_face``; returns ``frames``.

    ``frames``: a ``[B, H, W, 3]`` ``uint8`` tensor or a sequence of
    ``[H, W, 3]`` ones, written in place. ``faces``: ``[B, S, S, 3]``
    ``uint8`` (copied to the frames' device if elsewhere), each resized to
    its box as ``crop.resize_face_to_box`` does (OpenCV's bilinear).
    ``squares`` and ``alphas``: the expanded square of each box and its
    square-sized ``uint8`` alpha (numpy or torch, e.g. from
    ``blending.blend_alpha``). Each pixel becomes ``(mixed + (mixed >> 8)) >> 8``
    with ``mixed = frame * (255 - a) + face * a + 128``.

    Between the box and the square edge ``paste_face`` blends the frame with
    itself, which that formula maps back to the same value, so only the part
    of each box inside its square and the frame is read and written; every
    other pixel is left untouched (the square may leave the frame).
    """
    frame_list = _frame_list(frames)
    if not (len(frame_list) == len(faces) == len(boxes) == len(squares) == len(alphas)):
        raise ValueError(f"Got {len(frame_list)} frames, {len(faces)} faces, {len(boxes)} boxes, "
                         f"{len(squares)} squares and {len(alphas)} alphas")
    if not frame_list:
        return frames
    if faces.dtype != torch.uint8 or faces.ndim != 4 or faces.shape[3] != 3:
        raise ValueError(f"Expected uint8 faces [B, S, S, 3], got {faces.dtype} {tuple(faces.shape)}")
    device = frame_list[0].device
    boxes = [tuple(int(value) for value in box) for box in boxes]
    box_sizes = [(y2 - y1, x2 - x1) for x1, y1, x2, y2 in boxes]
    resized = _resize(faces.to(device), [tuple(faces.shape[1:3])] * len(boxes), box_sizes, "linear")
    for frame, face, (x1, y1, x2, y2), square, alpha in zip(frame_list, resized, boxes, squares, alphas):
        xs, ys, xe, ye = (int(value) for value in square)
        on_host = isinstance(alpha, np.ndarray)
        if tuple(alpha.shape) != (ye - ys, xe - xs) or alpha.dtype != (np.uint8 if on_host else torch.uint8):
            raise ValueError(f"Expected a uint8 alpha of the square's size {(ye - ys, xe - xs)}, "
                             f"got {alpha.dtype} {tuple(alpha.shape)}")
        height, width = frame.shape[:2]
        left, top = max(x1, xs, 0), max(y1, ys, 0)
        right, bottom = min(x2, xe, width), min(y2, ye, height)
        if left >= right or top >= bottom:
            continue
        used = alpha[top - ys:bottom - ys, left - xs:right - xs]  # only this part goes to the device
        a = (torch.tensor(used) if on_host else used).to(device, torch.int32)[:, :, None]
        background = frame[top:bottom, left:right]
        foreground = face[top - y1:bottom - y1, left - x1:right - x1].to(torch.int32)
        mixed = background.to(torch.int32) * (255 - a) + foreground * a + 128
        background.copy_((mixed + (mixed >> 8)) >> 8)
    return frames
