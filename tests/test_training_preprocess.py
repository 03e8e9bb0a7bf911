"""Preprocessing a shared clip produces the documented clip layout; reruns resume instead of redoing."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from musetalk_lib.faces import Face, load_landmarks_json
from training.clips import ClipMeta, find_clips
from training.preprocess import PreprocessOptions, fill_gaps, plan_clips, preprocess, resample_indices

pytestmark = pytest.mark.usefixtures("repository_root")  # configs use repository-relative paths

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory, random_models):
    videos = tmp_path_factory.mktemp("videos")
    for name in ("talking_closeup_with_audio.mp4", "no_face.mp4"):
        (videos / name).symlink_to(MEDIA / name)
    output = tmp_path_factory.mktemp("clips")
    options = PreprocessOptions(
        output_dir=str(output), landmarks_dir=str(MEDIA / "landmarks"), models_dir=str(random_models),
        max_frames=20, segment_seconds=1.0, min_frames=8,
    )
    records = preprocess([videos], options, progress=False)
    return output, records, videos, options


def test_clip_files(preprocessed):
    output, records, _, _ = preprocessed
    clip = output / "talking_closeup_with_audio_000000"
    assert find_clips(output) == [clip]  # frames 15..19 are a 5-frame run, shorter than min_frames
    meta = ClipMeta.load(clip)
    assert (meta.fps, meta.num_frames, meta.start_frame, meta.identity) == (15.0, 15, 0, "talking_closeup_with_audio")
    assert len(meta.boxes) == len(meta.regions) == 15 and meta.face_size > 150
    crops = sorted((clip / "crops").iterdir())
    faces = sorted((clip / "faces").iterdir())
    assert [p.name for p in crops] == [f"{i:06d}.png" for i in range(15)] == [p.name for p in faces]
    with Image.open(crops[0]) as crop, Image.open(faces[0]) as face:
        assert crop.size == (256, 256) and crop.mode == "RGB"
        x1, y1, x2, y2 = meta.regions[0]
        assert face.size == (x2 - x1, y2 - y1)
    audio, rate = soundfile.read(clip / "audio.wav")
    assert rate == 16000 and audio.shape == (16000,)  # 15 frames at 15 fps = 1 s
    assert np.abs(audio).max() > 0.01
    assert np.load(clip / "whisper.npy").shape == (50, 5, 384)  # 50 Whisper frames per second
    assert np.load(clip / "mel.npy").shape == (80, 81)  # 80 mel frames per second, centred
    landmarks = load_landmarks_json(clip / "landmarks.json")
    assert len(landmarks) == 15 and all(len(faces) == 1 for faces in landmarks)
    source = load_landmarks_json(MEDIA / "landmarks" / "talking_closeup_with_audio.json")
    assert np.allclose(landmarks[3][0].landmarks, source[3][0].landmarks, atol=0.01)


def test_skips_are_logged(preprocessed):
    output, records, _, _ = preprocessed
    by_video = {Path(r["video"]).name: r for r in records}
    assert by_video["no_face.mp4"]["status"] == "skipped" and "face" in by_video["no_face.mp4"]["reason"]
    assert by_video["talking_closeup_with_audio.mp4"]["skipped_runs"] == [[15, 20]]
    logged = [json.loads(line) for line in (output / "preprocess_log.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in logged) == ["no_face", "talking_closeup_with_audio"]


def test_rerun_resumes(preprocessed):
    output, _, videos, options = preprocessed
    meta = output / "talking_closeup_with_audio_000000" / "meta.json"
    before = meta.stat().st_mtime_ns
    (output / "leftover.partial").mkdir()
    assert preprocess([videos], options, progress=False) == []
    assert meta.stat().st_mtime_ns == before
    assert not (output / "leftover.partial").exists()


def test_clip_planning_and_frame_resampling():
    kept, short = plan_clips([True] * 7 + [False] + [True] * 3, max_length=4, min_length=3)
    assert [(r.start, r.stop) for r in kept] == [(0, 4), (4, 7), (8, 11)]
    assert short == []
    kept, short = plan_clips([True, True, False, True], max_length=10, min_length=2)
    assert [(r.start, r.stop) for r in kept] == [(0, 2)] and [(r.start, r.stop) for r in short] == [(3, 4)]
    assert resample_indices(4, 30.0, None) == [0, 1, 2, 3]
    assert resample_indices(6, 30.0, 25.0) == [0, 1, 2, 3, 4]
    assert resample_indices(3, 15.0, 25.0) == [0, 0, 1, 1, 2]


def test_short_detection_gaps_are_interpolated():
    faces = [Face((0, 0, 10, 10), np.zeros((68, 2))), None, None, Face((3, 0, 13, 10), np.full((68, 2), 3.0)),
             None, None, None, Face((0, 0, 10, 10), np.zeros((68, 2))), None]
    filled, count = fill_gaps(faces, max_gap=2)
    assert count == 2 and filled[4:7] == [None, None, None] and filled[8] is None  # longer gap, and the end
    assert filled[1].box == (1.0, 0.0, 11.0, 10.0) and np.allclose(filled[2].landmarks, 2.0)


def test_changed_settings_redo_a_video_and_skipped_videos_can_be_retried(tmp_path, random_models):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "face_occluded.mp4").symlink_to(MEDIA / "face_occluded.mp4")  # faces: 15, gap 1, 7, gap 1, 1, gap 1,
    (videos / "face_occluded.wav").symlink_to(MEDIA / "speech_16k_mono.wav")  # 5 frames, then none
    old = PreprocessOptions(output_dir=str(tmp_path / "clips"), landmarks_dir=str(MEDIA / "landmarks"),
                            models_dir=str(random_models), min_frames=25, max_gap=0)
    [record] = preprocess([videos], old, progress=False)
    assert record["status"] == "skipped" and record["skipped_runs"] == [[0, 15], [16, 23], [24, 25], [26, 31]]
    assert preprocess([videos], old, progress=False) == []  # same settings: done
    assert [r["status"] for r in preprocess([videos], replace(old, retry_skipped=True), progress=False)] == ["skipped"]

    new = replace(old, min_frames=16, max_gap=5)  # the defaults: the gaps are filled, one 31-frame clip
    [record] = preprocess([videos], new, progress=False)
    assert record["status"] == "ok" and record["interpolated_frames"] == 3
    assert record["clips"] == ["face_occluded_000000"]
    assert ClipMeta.load(tmp_path / "clips" / "face_occluded_000000").num_frames == 31
    [record] = preprocess([videos], replace(new, segment_seconds=2.0), progress=False)  # 15 fps: 30 + 1 frames
    assert record["clips"] == ["face_occluded_000000"] and record["skipped_runs"] == [[30, 31]]
    assert [path.name for path in find_clips(tmp_path / "clips")] == ["face_occluded_000000"]
    assert ClipMeta.load(tmp_path / "clips" / "face_occluded_000000").num_frames == 30
