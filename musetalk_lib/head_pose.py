"""Head yaw from 68 iBUG landmarks, for the face quality gate (``max_yaw``).

Method: a weak-perspective (scaled orthographic) pose fit. The landmarks are
first turned so the eye line is level (the roll), then the 2x3 linear map that
best takes a generic 3D face (:data:`MEAN_FACE_3D`) onto them is found by least
squares; its two rows, normalised and made orthogonal, are the first two rows
of the head's rotation. With the roll removed, the head's rotation is
``Rx(pitch) @ Ry(yaw)``, whose first row is ``(cos yaw, 0, sin yaw)`` whatever
the pitch, so ``yaw = atan2(r[0, 2], r[0, 0])``.

:data:`MEAN_FACE_3D` is our own rough model, in units of half the face width:
x and y are the frontal dlib landmarks of ``face_still.png`` from the shared
test media, levelled and made left-right symmetric; z is an ellipse across the
face (``1.2 * sqrt(1 - x^2)``: the jaw contour's top points at the ears are at
depth 0) plus the nose's and lips' protrusion. It is not a measured head, so
the estimate is approximate: within a few degrees on landmarks that follow a
rigid head (the tests), coarser on a real detector's, whose jaw contour slides
along the cheek's silhouette as the head turns. The gate only needs to tell
near-frontal from near-profile views, for which this is enough.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MEAN_FACE_3D", "eye_line_angle", "head_yaw", "head_yaws"]

LEFT_EYE = slice(36, 42)  # the eye on the image's left (the person's right eye)
RIGHT_EYE = slice(42, 48)

MEAN_FACE_3D = np.array([
    (-1.000, 0.141, 0.000), (-1.007, 0.426, 0.000), (-0.967, 0.723, 0.306), (-0.872, 0.989, 0.587),
    (-0.744, 1.247, 0.802), (-0.591, 1.476, 0.968), (-0.404, 1.667, 1.098), (-0.213, 1.819, 1.172),
    (0.000, 1.868, 1.200), (0.213, 1.819, 1.172), (0.404, 1.667, 1.098), (0.591, 1.476, 0.968),
    (0.744, 1.247, 0.802), (0.872, 0.989, 0.587), (0.967, 0.723, 0.306), (1.007, 0.426, 0.000),
    (1.000, 0.141, 0.000), (-0.861, -0.291, 0.609), (-0.730, -0.413, 0.820), (-0.552, -0.428, 1.001),
    (-0.372, -0.385, 1.114), (-0.201, -0.287, 1.176), (0.201, -0.287, 1.176), (0.372, -0.385, 1.114),
    (0.552, -0.428, 1.001), (0.730, -0.413, 0.820), (0.861, -0.291, 0.609), (0.000, 0.000, 1.250),
    (0.000, 0.181, 1.350), (0.000, 0.373, 1.450), (0.000, 0.564, 1.600), (-0.194, 0.737, 1.227),
    (-0.102, 0.761, 1.314), (0.000, 0.786, 1.400), (0.102, 0.761, 1.314), (0.194, 0.737, 1.227),
    (-0.693, 0.048, 0.866), (-0.574, -0.031, 0.982), (-0.426, -0.026, 1.086), (-0.287, 0.071, 1.149),
    (-0.431, 0.118, 1.083), (-0.580, 0.118, 0.978), (0.287, 0.071, 1.149), (0.426, -0.026, 1.086),
    (0.574, -0.031, 0.982), (0.693, 0.048, 0.866), (0.580, 0.118, 0.978), (0.431, 0.118, 1.083),
    (-0.389, 1.159, 1.155), (-0.261, 1.030, 1.208), (-0.102, 0.956, 1.244), (0.000, 0.980, 1.250),
    (0.102, 0.956, 1.244), (0.261, 1.030, 1.208), (0.389, 1.159, 1.155), (0.264, 1.385, 1.208),
    (0.117, 1.484, 1.242), (0.000, 1.503, 1.250), (-0.117, 1.484, 1.242), (-0.264, 1.385, 1.208),
    (-0.317, 1.169, 1.188), (-0.102, 1.095, 1.244), (0.000, 1.094, 1.250), (0.102, 1.095, 1.244),
    (0.317, 1.169, 1.188), (0.101, 1.268, 1.244), (0.000, 1.278, 1.250), (-0.101, 1.268, 1.244),
])
"""Generic 3D face for the 68 iBUG points, x right, y down, z towards the camera (see the module docstring)."""


def eye_line_angle(landmarks: np.ndarray) -> float:
    """Roll of the face in degrees: the angle of the line from the left to the right eye centre (y down).

    Positive when the eye on the image's right is lower, i.e. the head is
    tilted clockwise on screen.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    dx, dy = points[RIGHT_EYE].mean(axis=0) - points[LEFT_EYE].mean(axis=0)
    return float(np.degrees(np.arctan2(dy, dx)))


def head_yaw(landmarks: np.ndarray) -> float:
    """Yaw of the head in degrees (0 = frontal, positive = nose towards the image's right); see the module docstring."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"Expected 68x2 landmarks, got {points.shape}")
    roll = np.radians(eye_line_angle(points))
    cos, sin = np.cos(roll), np.sin(roll)
    level = (points - points.mean(axis=0)) @ np.array([[cos, -sin], [sin, cos]])  # rotate by -roll
    model = MEAN_FACE_3D - MEAN_FACE_3D.mean(axis=0)
    rows = np.linalg.lstsq(model, level, rcond=None)[0].T  # [2, 3]: level ~ model @ rows.T
    first, second = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    # Make the two rows orthogonal by splitting the correction evenly between them.
    overlap = float(first @ second)
    first, second = first - overlap / 2 * second, second - overlap / 2 * first
    first /= np.linalg.norm(first)
    return float(np.degrees(np.arctan2(first[2], first[0])))


def head_yaws(landmarks: np.ndarray) -> np.ndarray:
    """:func:`head_yaw` of each frame of ``[N, 68, 2]`` landmarks; NaN where a frame's landmarks are NaN (no face)."""
    yaws = np.full(len(landmarks), np.nan)
    for index, points in enumerate(landmarks):
        if np.isfinite(points).all():
            yaws[index] = head_yaw(points)
    return yaws
