"""Face selection, smoothing, landmark files and the detection backends."""

import importlib.util

import numpy as np
import pytest
import torch

from musetalk_lib.face_detection import FaceAlignmentDetector, create_detector
from musetalk_lib.faces import (Face, FaceSelectionError, box_jitter, load_landmarks_json, save_landmarks_json,
                                 select_faces, smooth_faces)
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
    with pytest.raises(ValueError, match="point"):
        select_faces(frames, "point")


def test_a_choice_that_selects_no_face_in_any_frame_is_an_error():
    frames = [[face_at(10, 10, 20), face_at(100, 10, 60)], []]
    with pytest.raises(FaceSelectionError, match="at most 2 face.*0 to 1"):
        select_faces(frames, "index", index=5)
    with pytest.raises(FaceSelectionError, match="not on any face"):
        select_faces(frames, "point", point=(1000, 1000))
    assert select_faces([[], []], "index", index=5) == [None, None]  # no faces at all: the caller reports that


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


def test_face_alignment_backend_loads_local_weights(random_face_alignment, media):
    detector = create_detector("face-alignment", random_face_alignment)
    assert isinstance(detector, FaceAlignmentDetector)
    with VideoReader(media / "talking_closeup.mp4") as reader:
        frame = reader.frames([0])[0]
    assert detector.detect([frame]) == [[]]
    points = detector.landmarks(frame, np.array([[77.0, 57.0, 262.0, 242.0, 0.9]]))
    assert points[0].shape == (68, 2)


def test_face_alignment_batches_landmarks_without_changing_them(random_face_alignment, media, monkeypatch):
    """One FAN pass (in chunks) over every face of a batch gives the per-frame landmarks exactly."""
    clips = {"talking_closeup": [0], "two_faces": [13, 16]}  # 1 | 2, 3 faces: FAN chunks of 4 + 2
    frames, boxes = [], []
    for clip, indices in clips.items():
        with VideoReader(media / f"{clip}.mp4") as reader:
            frames += reader.frames(indices)
        reference = load_landmarks_json(media / "landmarks" / f"{clip}.json")
        boxes += [np.array([(*face.box, face.score) for face in reference[i]]) for i in indices]
    frames.append(frames[0])
    boxes.append(np.zeros((0, 5)))  # a frame without faces keeps its place
    folder = random_face_alignment / "face_alignment"
    detector = FaceAlignmentDetector(folder / "s3fd-619a316812.pth", folder / "2DFAN4-11f355bf06.pth.tar",
                                     landmark_batch_size=4)
    per_frame = [detector.landmarks(frame, frame_boxes) for frame, frame_boxes in zip(frames, boxes)]
    monkeypatch.setattr(detector, "boxes", lambda _: boxes)
    detected = detector.detect(frames)
    assert [len(faces) for faces in detected] == [1, 2, 3, 0]
    for faces, expected_points, frame_boxes in zip(detected, per_frame, boxes):
        for face, points, box in zip(faces, expected_points, frame_boxes):
            assert np.array_equal(face.landmarks, points) and face.landmarks.shape == (68, 2)
            assert face.box == tuple(box[:4]) and face.score == box[4]


def test_face_alignment_restores_cudnn_benchmark(random_face_alignment, media, monkeypatch):
    from face_alignment.detection.sfd import detect as sfd_detect

    class CudaLookingCpu(str):
        """``"cpu"`` that passes the package's ``'cuda' in device`` test."""

        def __contains__(self, item):
            return item == "cuda" or super().__contains__(item)

    package_batch_detect = sfd_detect.batch_detect
    flags_inside = []

    def batch_detect(net, batch, device):
        result = package_batch_detect(net, batch, CudaLookingCpu(device))
        flags_inside.append(torch.backends.cudnn.benchmark)
        return result

    monkeypatch.setattr(sfd_detect, "batch_detect", batch_detect)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    detector = create_detector("face-alignment", random_face_alignment)
    with VideoReader(media / "talking_closeup.mp4") as reader:
        frame = reader.frames([0])[0]
    assert detector.boxes([frame])[0].shape == (0, 5)
    assert flags_inside == [True] and torch.backends.cudnn.benchmark is False


def test_face_alignment_device_follows_its_networks(random_face_alignment):
    detector = create_detector("face-alignment", random_face_alignment)
    assert detector.device == torch.device("cpu")
    assert detector.to("meta") is detector and detector.device == torch.device("meta")
    assert all(p.device.type == "meta" for p in [*detector.detector.parameters(), *detector.landmark_net.parameters()])


def test_face_alignment_backend_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match="s3fd-619a316812.pth") as raised:
        create_detector("face-alignment", tmp_path / "models")
    assert "dlib" in str(raised.value)


def test_unknown_backend():
    with pytest.raises(ValueError, match="dlib"):
        create_detector("mediapipe")
