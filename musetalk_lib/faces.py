"""Detected faces, the landmark JSON format, choosing one face per frame, and smoothing.

A :class:`Face` is a detector box plus 68 iBUG landmarks in frame pixels. A
video's detections are ``list[list[Face]]`` (frames, then faces); after
:func:`select_faces` each frame has one ``Face`` or ``None`` (no face there:
the frame passes through untouched).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .options import FACE_SELECTIONS

__all__ = [
    "SELECTION_MODES",
    "Face",
    "FaceSelectionError",
    "LandmarksError",
    "box_jitter",
    "load_landmarks_json",
    "save_landmarks_json",
    "select_faces",
    "smooth_faces",
]

SELECTION_MODES = FACE_SELECTIONS


@dataclass(frozen=True)
class Face:
    """One face in one frame: detector box ``(x1, y1, x2, y2)``, 68 landmarks ``[68, 2]`` (x, y), score."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float = 1.0

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    @property
    def centre(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return ((x1 + x2) / 2, (y1 + y2) / 2)

    def contains(self, point: tuple[float, float]) -> bool:
        x1, y1, x2, y2 = self.box
        return x1 <= point[0] <= x2 and y1 <= point[1] <= y2


class LandmarksError(ValueError):
    """A landmark file that cannot be used; the message names the file and what is wrong."""


def load_landmarks_json(path: str | os.PathLike) -> list[list[Face]]:
    """Read per-frame faces from the landmark JSON format (``{"frames": [{"faces": [...]}, ...]}``).

    Each face holds ``box`` ``[x1, y1, x2, y2]``, ``landmarks`` (68 ``[x, y]``)
    and optionally ``score``; every number must be finite. Anything else
    raises :class:`LandmarksError` naming the file and the frame.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except UnicodeDecodeError as error:
        raise LandmarksError(f"{path} is not a landmark file (not UTF-8 text).") from error
    except json.JSONDecodeError as error:
        raise LandmarksError(f"{path} is not a landmark file: invalid JSON at line {error.lineno}, "
                             f"column {error.colno} ({error.msg}).") from error
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list):
        raise LandmarksError(f"{path} is not a landmark file: expected a top-level 'frames' list.")
    return [_frame_faces(path, number, frame) for number, frame in enumerate(frames)]


def _numbers(path: str | os.PathLike, number: int, value: object, shape: tuple[int, ...], what: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        kind = "a list of numbers" if shape else "a number"
        raise LandmarksError(f"{path}: frame {number}, {what}: not {kind}.") from None
    if array.shape != shape:
        expected = "x".join(map(str, shape)) or "one number"
        raise LandmarksError(f"{path}: frame {number}, {what}: shape {array.shape}, expected {expected}.")
    if not np.isfinite(array).all():
        raise LandmarksError(f"{path}: frame {number}, {what}: NaN or infinite values.")
    return array


def _frame_faces(path: str | os.PathLike, number: int, frame: object) -> list[Face]:
    faces = frame.get("faces", []) if isinstance(frame, dict) else None
    if not isinstance(faces, list) or not all(isinstance(face, dict) for face in faces):
        raise LandmarksError(f"{path}: frame {number} is not {{\"faces\": [{{\"box\": ..., \"landmarks\": ...}}, ...]}}.")
    result = []
    for face in faces:
        landmarks = _numbers(path, number, face.get("landmarks"), (68, 2), "landmarks")
        box = face.get("box")
        box = _landmark_extent(landmarks) if box is None else _numbers(path, number, box, (4,), "box")
        score = _numbers(path, number, face.get("score", 1.0), (), "score")
        result.append(Face(box=tuple(float(v) for v in box), landmarks=landmarks, score=float(score)))
    return result


def save_landmarks_json(path: str | os.PathLike, faces_per_frame: Sequence[Sequence[Face]], *,
                        width: int, height: int, fps: float, source: str) -> None:
    """Write detections in the landmark JSON format (atomically)."""
    data = {
        "source": source,
        "fps": fps,
        "width": width,
        "height": height,
        "frames": [
            {"faces": [{"box": [round(v, 2) for v in face.box], "score": round(face.score, 4),
                        "landmarks": np.round(face.landmarks, 2).tolist()} for face in faces]}
            for faces in faces_per_frame
        ],
    }
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data), encoding="utf-8")
    os.replace(partial, path)


def _landmark_extent(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    return (*landmarks.min(axis=0), *landmarks.max(axis=0))


class FaceSelectionError(ValueError):
    """A face index or point that selects no face in any frame."""


def select_faces(
    faces_per_frame: Sequence[Sequence[Face]],
    mode: str = "largest",
    index: int = 0,
    point: tuple[float, float] | None = None,
) -> list[Face | None]:
    """Pick one face per frame.

    ``largest``: the biggest box. ``index``: the ``index``-th face from the
    left. ``point``: the face whose box contains ``point`` (nearest centre if
    several do, or none does but one is within a box width of it). Frames
    where the chosen face is absent get ``None``. An ``index`` or ``point``
    that selects no face in any frame while some frames have faces raises
    :class:`FaceSelectionError` (it would silently dub nothing).
    """
    if mode not in SELECTION_MODES:
        raise ValueError(f"Unknown face selection {mode!r}; choose one of {', '.join(SELECTION_MODES)}.")
    if mode == "point" and point is None:
        raise ValueError("Face selection 'point' needs a point (x, y).")
    chosen: list[Face | None] = []
    for faces in faces_per_frame:
        if not faces:
            chosen.append(None)
        elif mode == "largest":
            chosen.append(max(faces, key=lambda face: face.area))
        elif mode == "index":
            ordered = sorted(faces, key=lambda face: face.centre[0])
            chosen.append(ordered[index] if 0 <= index < len(ordered) else None)
        else:
            chosen.append(_nearest_face(faces, point))
    most = max((len(faces) for faces in faces_per_frame), default=0)
    if most and all(face is None for face in chosen):
        if mode == "index":
            raise FaceSelectionError(f"Face index {index} selects no face: frames show at most {most} face(s), "
                                     f"so use an index from 0 to {most - 1} (0 = leftmost).")
        raise FaceSelectionError(f"The point {point[0]:g},{point[1]:g} is not on any face in any frame; "
                                 "give a point inside the face to dub (pixels from the top-left corner).")
    return chosen


def _nearest_face(faces: Sequence[Face], point: tuple[float, float]) -> Face | None:
    def distance(face: Face) -> float:
        return float(np.hypot(face.centre[0] - point[0], face.centre[1] - point[1]))

    nearest = min(faces, key=distance)
    width = nearest.box[2] - nearest.box[0]
    return nearest if nearest.contains(point) or distance(nearest) <= width else None


def smooth_faces(track: Sequence[Face | None], radius: int = 2) -> list[Face | None]:
    """Temporal smoothing: average boxes and landmarks over ``2 * radius + 1`` neighbouring frames.

    Runs of consecutive detected frames are smoothed independently, so a
    face is never dragged across a gap or a cut; ``None`` frames stay ``None``.
    The window shrinks symmetrically at the ends of a run, so the first and
    last frames of a run keep their own detection.
    """
    if radius <= 0:
        return list(track)
    smoothed: list[Face | None] = list(track)
    start = 0
    while start < len(track):
        if track[start] is None:
            start += 1
            continue
        end = start
        while end < len(track) and track[end] is not None:
            end += 1
        run = track[start:end]
        boxes = np.array([face.box for face in run], dtype=np.float64)
        points = np.stack([face.landmarks for face in run]).astype(np.float64)
        for offset, face in enumerate(run):
            reach = min(radius, offset, len(run) - 1 - offset)
            window = slice(offset - reach, offset + reach + 1)
            smoothed[start + offset] = Face(
                box=tuple(boxes[window].mean(axis=0).tolist()),
                landmarks=points[window].mean(axis=0),
                score=face.score,
            )
        start = end
    return smoothed


def box_jitter(boxes: Sequence[Sequence[float] | None]) -> float:
    """Mean absolute frame-to-frame change of box coordinates (pixels), over consecutive detected frames."""
    steps = [
        np.abs(np.subtract(current, previous)).mean()
        for previous, current in zip(boxes, boxes[1:])
        if previous is not None and current is not None
    ]
    return float(np.mean(steps)) if steps else 0.0
