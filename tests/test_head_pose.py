"""Head yaw from 68 landmarks and the face quality gate (``max_yaw``)."""

import numpy as np
import pytest

from musetalk_lib.avatar import FaceTrack
from musetalk_lib.head_pose import MEAN_FACE_3D, eye_line_angle, head_yaw, head_yaws
from musetalk_lib.passthrough import CROSSFADE_FRAMES
from musetalk_lib.pipeline import DubOptions, OutputPlan, beyond_yaw, pass_through_plan


def rotation(yaw, pitch=0.0, roll=0.0):
    y, p, r = np.radians([yaw, pitch, roll])
    about_y = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    about_x = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    about_z = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return about_z @ about_x @ about_y


def landmarks_at(yaw, pitch=0.0, roll=0.0, seed=0):
    """A head of slightly other proportions than the model's, turned, seen by a perspective camera 10 heads away."""
    head = MEAN_FACE_3D * (1 + np.random.default_rng(seed).normal(0, 0.02, MEAN_FACE_3D.shape))
    turned = head @ rotation(yaw, pitch, roll).T
    distance = 20.0
    return turned[:, :2] * distance / (distance - turned[:, 2:]) * 60 + (175, 150)


@pytest.mark.parametrize("yaw", [0, 10, -10, 20, -30, 45, -45, 60])
@pytest.mark.parametrize("pitch, roll", [(0, 0), (15, 20), (-10, -30)])
def test_yaw_of_projected_heads(yaw, pitch, roll):
    points = landmarks_at(yaw, pitch, roll, seed=yaw + 100)
    assert head_yaw(points) == pytest.approx(yaw, abs=5)


def test_eye_line_angle_is_the_roll():
    assert eye_line_angle(landmarks_at(0, roll=15)) == pytest.approx(15, abs=0.5)
    assert eye_line_angle(landmarks_at(0, roll=-30)) == pytest.approx(-30, abs=0.5)


def test_frontal_shared_landmarks_are_near_frontal(media):
    from musetalk_lib.faces import load_landmarks_json

    faces = load_landmarks_json(media / "landmarks" / "talking_closeup.json")
    yaws = head_yaws(np.stack([frame[0].landmarks for frame in faces]))
    assert np.all(np.abs(yaws) < 25)


def turning_track():
    """20 frames: frontal, then frames 6-13 turned 60 degrees, frame 16 without a face."""
    yaws = [0] * 6 + [60] * 8 + [0] * 6
    landmarks = np.stack([landmarks_at(yaw) for yaw in yaws]).astype(np.float32)
    has_face = np.ones(20, bool)
    has_face[16] = False
    landmarks[16] = np.nan
    return FaceTrack(np.tile(np.array([100, 100, 250, 250], np.int32), (20, 1)), has_face, landmarks)


def test_frames_beyond_the_limit_pass_through_with_a_crossfade():
    track = turning_track()
    assert np.flatnonzero(beyond_yaw(track, 40)).tolist() == list(range(6, 14))
    plan = OutputPlan.build(20, track.has_face, "trim")
    gated = pass_through_plan(plan, track, DubOptions(max_yaw=40))
    assert gated.has_face.tolist() == [True] * 9 + [False] * 2 + [True] * 5 + [False] + [True] * 3
    ramp = [1 - (k + 1) / (CROSSFADE_FRAMES + 1) for k in range(CROSSFADE_FRAMES)]
    assert gated.weights[6:14].tolist() == pytest.approx(ramp + [0, 0] + ramp[::-1])
    assert np.all(gated.weights[:6] == 1) and np.all(gated.weights[14:] == 1)
    assert pass_through_plan(plan, track, DubOptions(max_yaw=70)) is plan
    assert pass_through_plan(plan, track, DubOptions()) is plan


def test_max_yaw_is_checked():
    with pytest.raises(ValueError, match="max_yaw"):
        DubOptions(max_yaw=95)
