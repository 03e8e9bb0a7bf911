"""Reference-frame selection: Selective Information Sampling (SIS) and the ablation strategies.

The UNet sees the masked target frame plus an unmasked reference frame of the
same clip. SIS (paper §3.2) chooses references whose head pose matches the
target (small jaw-contour distance) but whose mouth differs (large inner-lip
distance), so the network must take the mouth shape from the audio and cannot
copy it from the reference.

Distances are mean Euclidean distances between landmarks in 256x256 crop
coordinates (each frame's landmarks scaled to its own crop box):

- pose: points 0..15 (the jaw contour without its last point, as the official code);
- mouth: points 60..66 (the inner lip without its last point, as the official code).

``top_k = int(top_k_ratio * num_frames)``; the paper uses 40 %, the official
code 0.51. The strategies differ only in their candidate set:

- ``sis``: the intersection of the pose-aligned and lip-dissimilar top-k sets;
- ``pose``: the pose-aligned set; ``mouth``: the lip-dissimilar set;
- ``random``: every other frame of the clip.

How a reference is drawn from the candidates is ``selection``:

- ``paper`` (default): only candidates more than ``min_gap`` frames away from
  the target are eligible, so a reference is never the target or one of its
  ±``min_gap`` neighbours. When none is eligible (the intersection is small or
  lies next to the target), the reference comes from the ``top_k`` eligible
  frames nearest in pose (pose alignment is what the inpainting needs most);
  when no frame at all is more than ``min_gap`` away (a clip of at most
  ``2 * min_gap + 1`` frames), from the frames farthest in time. The paper
  names the candidate set but no fallback; these keep its two rules (never a
  near frame, pose-aligned first) wherever they can be kept.
- ``official``: the official code's rule. A candidate (or, with no candidates,
  a frame drawn uniformly from ``[target - 5T, target + 5T]``, T = frames per
  sample) closer than ``min_gap`` frames to the target is redrawn from that
  window, and the result is clamped to the clip. 9-21 % of the references on
  real clips then lie outside the candidate set and a target near a clip edge
  can get itself as reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "INNER_LIP_POINTS",
    "JAW_POINTS",
    "SELECTIONS",
    "STRATEGIES",
    "ReferenceSampler",
    "landmarks_in_crop",
    "mean_point_distance",
    "top_k_count",
]

STRATEGIES = ("sis", "pose", "mouth", "random")
SELECTIONS = ("paper", "official")
JAW_POINTS = slice(0, 16)
INNER_LIP_POINTS = slice(60, 67)
FALLBACK_WINDOW_PER_FRAME = 5


def landmarks_in_crop(landmarks: np.ndarray, boxes: np.ndarray, size: int = 256) -> np.ndarray:
    """Landmarks ``[N, 68, 2]`` in frame pixels -> coordinates in each frame's ``size x size`` crop.

    ``boxes`` are ``[N, 4]`` ``(x1, y1, x2, y2)``; the crop is the box resized to a square.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64)
    origin = boxes[:, None, :2]
    scale = size / np.maximum(boxes[:, None, 2:] - boxes[:, None, :2], 1e-6)
    return (landmarks - origin) * scale


def mean_point_distance(landmarks: np.ndarray, target: int, points: slice) -> np.ndarray:
    """Mean Euclidean distance over ``points`` between frame ``target`` and every frame: ``[N]``."""
    selected = landmarks[:, points]
    return np.linalg.norm(selected - selected[target], axis=-1).mean(axis=-1)


def top_k_count(num_frames: int, ratio: float) -> int:
    """How many frames each top-k list holds (``int(ratio * num_frames)``, as the official code)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"top_k_ratio must be in (0, 1], got {ratio}")
    return int(ratio * num_frames)


@dataclass
class ReferenceSampler:
    """Chooses reference frames within one clip.

    ``landmarks`` are ``[N, 68, 2]`` in crop coordinates (see :func:`landmarks_in_crop`).
    ``sample_frames`` is the number of consecutive target frames per training
    sample (T); it sets the official fallback window ``[target - 5T, target + 5T]``.
    ``selection`` is ``paper`` or ``official`` (see the module docstring).
    """

    landmarks: np.ndarray
    strategy: str = "sis"
    top_k_ratio: float = 0.51
    min_gap: int = 5
    sample_frames: int = 1
    selection: str = "paper"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"Unknown sampling strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}.")
        if self.selection not in SELECTIONS:
            raise ValueError(f"Unknown reference selection {self.selection!r}; choose one of {', '.join(SELECTIONS)}.")
        self.landmarks = np.asarray(self.landmarks, dtype=np.float64)
        if self.landmarks.ndim != 3 or self.landmarks.shape[1:] != (68, 2):
            raise ValueError(f"Expected landmarks [N, 68, 2], got {self.landmarks.shape}")
        if self.num_frames < 2:
            raise ValueError("A clip needs at least 2 frames to draw a reference other than the target")
        self.top_k = top_k_count(self.num_frames, self.top_k_ratio)

    @property
    def num_frames(self) -> int:
        return self.landmarks.shape[0]

    def pose_aligned(self, target: int) -> np.ndarray:
        """The ``top_k`` frames with the smallest jaw distance to ``target`` (itself excluded), nearest first."""
        distance = mean_point_distance(self.landmarks, target, JAW_POINTS)
        distance[target] = np.inf
        return np.argsort(distance, kind="stable")[: min(self.top_k, self.num_frames - 1)]

    def lip_dissimilar(self, target: int) -> np.ndarray:
        """The ``top_k`` frames with the largest inner-lip distance to ``target`` (itself excluded), farthest first."""
        distance = mean_point_distance(self.landmarks, target, INNER_LIP_POINTS)
        distance[target] = -np.inf
        return np.argsort(-distance, kind="stable")[: min(self.top_k, self.num_frames - 1)]

    def candidates(self, target: int) -> np.ndarray:
        """The strategy's candidate references for ``target``, in increasing frame order."""
        if not 0 <= target < self.num_frames:
            raise IndexError(f"Target frame {target} is outside the clip (0..{self.num_frames - 1})")
        if self.strategy == "sis":
            return np.intersect1d(self.pose_aligned(target), self.lip_dissimilar(target))
        if self.strategy == "pose":
            return np.sort(self.pose_aligned(target))
        if self.strategy == "mouth":
            return np.sort(self.lip_dissimilar(target))
        return np.delete(np.arange(self.num_frames), target)

    def fallback_window(self, target: int) -> tuple[int, int]:
        """Official selection: the inclusive frame range references are redrawn from when candidates do not serve."""
        half = max(FALLBACK_WINDOW_PER_FRAME * self.sample_frames, self.min_gap)
        return target - half, target + half

    def eligible(self, target: int) -> np.ndarray:
        """Paper selection: the frames more than ``min_gap`` frames away from ``target``, in increasing order."""
        frames = np.arange(self.num_frames)
        return frames[np.abs(frames - target) > self.min_gap]

    def paper_choices(self, target: int) -> np.ndarray:
        """The frames the paper selection draws from for ``target`` (see the module docstring)."""
        eligible = self.eligible(target)
        choices = np.intersect1d(self.candidates(target), eligible)
        if len(choices):
            return choices
        if len(eligible):
            distance = mean_point_distance(self.landmarks, target, JAW_POINTS)[eligible]
            return np.sort(eligible[np.argsort(distance, kind="stable")[: max(self.top_k, 1)]])
        frames = np.delete(np.arange(self.num_frames), target)
        gaps = np.abs(frames - target)
        return frames[gaps == gaps.max()]

    def sample(self, target: int, rng: np.random.Generator) -> int:
        """Draw one reference frame for ``target``."""
        if self.selection == "paper":
            return int(rng.choice(self.paper_choices(target)))
        candidates = self.candidates(target)
        low, high = self.fallback_window(target)
        source = int(rng.choice(candidates)) if len(candidates) else int(rng.integers(low, high + 1))
        while abs(source - target) < self.min_gap:
            source = int(rng.integers(low, high + 1))
        return min(max(source, 0), self.num_frames - 1)
