"""Output frames that show the source frame instead of a generated face, with a crossfade at each edge.

Silence (``silence="source"``) and the face quality gate (``max_yaw``) both
pick output frames whose generated face should not be shown. Those frames
pass through unchanged, like frames without a face; so the switch is not a
cut, the first and last :data:`CROSSFADE_FRAMES` frames of each such span
blend the generated frame into the source frame. The blend lies inside the
span, so frames outside it are exactly what they would be without the option
and frames in the middle of it exactly the source frames.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CROSSFADE_FRAMES", "crossfade_weights", "mix_frames", "true_ranges"]

CROSSFADE_FRAMES = 3


def true_ranges(flags: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive ``(first, last)`` index ranges where ``flags`` is true."""
    padded = np.concatenate([[False], np.asarray(flags, bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(start), int(end) - 1) for start, end in zip(edges[::2], edges[1::2])]


def crossfade_weights(pass_through: np.ndarray, crossfade: int = CROSSFADE_FRAMES) -> np.ndarray:
    """Weight of the generated frame per output frame: 1 outside the spans, 0 inside, ramps at their edges.

    In a span of ``n`` frames, frame ``k`` (0-based) gets
    ``max(0, 1 - (min(k, n - 1 - k) + 1) / (crossfade + 1))``: with the
    default 3, the weights are 0.75, 0.5, 0.25, 0, ..., 0, 0.25, 0.5, 0.75.
    """
    weights = np.ones(len(pass_through), np.float32)
    for first, last in true_ranges(pass_through):
        position = np.arange(last - first + 1)
        distance = np.minimum(position, last - first - position)
        weights[first:last + 1] = np.maximum(0.0, 1.0 - (distance + 1) / (crossfade + 1))
    return weights


def mix_frames(source: np.ndarray, generated: np.ndarray, weight: float) -> np.ndarray:
    """``source * (1 - weight) + generated * weight``, rounded, as ``uint8``."""
    mixed = source.astype(np.float32) * (1.0 - weight) + generated.astype(np.float32) * weight
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
