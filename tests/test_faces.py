"""Face selection, smoothing, landmark files and the detection backends."""

import importlib.util

import numpy as np
import pytest
import torch

from musetalk_lib.face_detection import FaceAlignmentDetector, create_detector
from musetalk_lib.faces import Face, box_jitter, load_landmarks_json, save_landmarks_json, select_faces, smooth_faces
from musetalk_lib.video_io import VideoReader
from musetalk_lib.weights import MissingWeightsError


def face_at(x, y, size=40.0, score=1.0):
    landmarks = np.random.default_rng(int(x + y)).uniform(0, size, (68, 2)) + (x, y)
    return Face((x, y, x + size, y + size), landmarks, score)


def test_selection_modes():
    small, big, right = face_at(10, 10, 20), face_at(100, 10, 60), face_at(300, 10, 30)
    frames = [[big, small, right], [], [right]]
    assert select_faces(frames, "largest") == [big, None, right]
    assert select_faces(frames, "index", index=0) == [small, None, right]
    assert select_faces(frames, "index", index=2) == [right, None, None]
    assert select_faces(frames, "point", point=(315, 20)) == [right, None, right]
    assert select_faces(frames, "point", point=(1000, 1000)) == [None, None, None]
    with pytest.raises(ValueError, match="point"):
        select_faces(frames, "point")


def test_two_faces_clip_picks_each_person(media):
    frames = load_landmarks_json(media / "landmarks" / "two_faces.json")
    left = select_faces(frames, "index", index=0)
    point = select_faces(frames, "point", point=left[20].centre)
    assert all(a is b for a, b in zip(left[13:], point[13:]))
    right = select_faces(frames, "index", index=1)
    assert right[20].centre[0] > left[20].centre[0]
    assert right[0] is None  # only one person visible at the start


def test_smoothing_reduces_jitter_and_respects_gaps(media):
    track = select_faces(load_landmarks_json(media / "landmarks" / "talking_small_face.json"))
    smoothed = smooth_faces(track, radius=2)
    assert [face is None for face in smoothed] == [face is None for face in track]
    before = box_jitter([face.box if face else None for face in track])
    after = box_jitter([face.box if face else None for face in smoothed])
    assert after < 0.8 * before
    assert smooth_faces(track, radius=0) == track


def test_landmark_file_round_trip(tmp_path, media):
    frames = load_landmarks_json(media / "landmarks" / "two_faces.json")
    path = tmp_path / "faces.json"
    save_landmarks_json(path, frames, width=350, height=350, fps=15, source="test")
    again = load_landmarks_json(path)
    assert [len(f) for f in again] == [len(f) for f in frames]
    assert np.allclose(again[20][0].landmarks, frames[20][0].landmarks, atol=0.01)


def test_bad_landmark_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"faces": []}')
    with pytest.raises(ValueError, match="frames"):
        load_landmarks_json(path)


@pytest.mark.skipif(importlib.util.find_spec("dlib") is None, reason="dlib extra not installed")
def test_dlib_backend_matches_the_reference_landmarks(media):
    detector = create_detector("dlib")
    with VideoReader(media / "talking_closeup.mp4") as reader:
        frames = reader.frames([0, 10])
    reference = load_landmarks_json(media / "landmarks" / "talking_closeup.json")
    for detected, expected in zip(detector.detect(frames), [reference[0], reference[10]]):
        assert len(detected) == 1
        assert np.abs(detected[0].landmarks - expected[0].landmarks).max() <= 1


@pytest.fixture(scope="module")
def random_face_alignment(tmp_path_factory):
    """Random S3FD and FAN weights in the layout the backend expects (detections are meaningless)."""
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    folder = tmp_path_factory.mktemp("models") / "face_alignment"
    folder.mkdir()
    torch.manual_seed(0)
    detector = s3fd()
    with torch.no_grad():  # make "face" scores negligible so nothing is detected
        for name, parameter in detector.named_parameters():
            if "mbox_conf" in name and name.endswith("bias"):
                parameter[:] = torch.tensor([20.0, -20.0]).repeat(len(parameter) // 2)[: len(parameter)]
    torch.save(detector.state_dict(), folder / "s3fd-619a316812.pth")
    torch.save(FAN(4).state_dict(), folder / "2DFAN4-11f355bf06.pth.tar")
    return folder.parent


def test_face_alignment_backend_loads_local_weights(random_face_alignment, media):
    detector = create_detector("face-alignment", random_face_alignment)
    assert isinstance(detector, FaceAlignmentDetector)
    with VideoReader(media / "talking_closeup.mp4") as reader:
        frame = reader.frames([0])[0]
    assert detector.detect([frame]) == [[]]
    points = detector.landmarks(frame, np.array([[77.0, 57.0, 262.0, 242.0, 0.9]]))
    assert points[0].shape == (68, 2)


def test_face_alignment_backend_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match="s3fd-619a316812.pth") as raised:
        create_detector("face-alignment", tmp_path / "models")
    assert "dlib" in str(raised.value)


def test_unknown_backend():
    with pytest.raises(ValueError, match="dlib"):
        create_detector("mediapipe")
