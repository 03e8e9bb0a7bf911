"""A picture of a face track for the user: crop boxes and landmarks drawn on a few frames, faceless frames marked."""

from __future__ import annotations

import cv2
import numpy as np

from .avatar import FaceTrack
from .frame_source import FrameSource

__all__ = ["face_preview", "preview_indices"]

PREVIEW_FRAMES = 4


def preview_indices(track: FaceTrack, spread: int = PREVIEW_FRAMES) -> np.ndarray:
    """``spread`` frames evenly over the clip, plus the first frame of each of the first ``spread`` no-face ranges."""
    evenly = np.linspace(0, track.num_frames - 1, min(spread, track.num_frames)).astype(int)
    faceless = [first for first, _ in track.missing_ranges()[:spread]]
    return np.unique(np.concatenate([evenly, np.asarray(faceless, dtype=int)]))


def face_preview(source: FrameSource, track: FaceTrack, spread: int = PREVIEW_FRAMES) -> np.ndarray:
    """Frames with the crop box (green) and landmarks drawn; frames without a face get a red border and
    "NO FACE" (``spread`` frames over the clip and the first of each no-face range; see :func:`preview_indices`)."""
    indices = preview_indices(track, spread)
    frames = []
    for index, frame in zip(indices, source.frames(indices)):
        frame = frame.copy()
        box = track.box(int(index))
        if box is None:
            thickness = max(4, frame.shape[1] // 100)
            cv2.rectangle(frame, (0, 0), (frame.shape[1] - 1, frame.shape[0] - 1), (255, 0, 0), thickness)
            cv2.putText(frame, f"NO FACE #{index}", (2 * thickness, frame.shape[0] // 2), cv2.FONT_HERSHEY_SIMPLEX,
                        frame.shape[1] / 400, (255, 0, 0), max(1, thickness // 2))
        else:
            cv2.rectangle(frame, box[:2], box[2:], (0, 255, 0), 2)
            for x, y in track.landmarks[index]:
                cv2.circle(frame, (int(x), int(y)), 1, (255, 255, 0), -1)
        frames.append(frame)
    return np.stack(frames)
