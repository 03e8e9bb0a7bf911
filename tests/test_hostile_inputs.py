"""Careless and hostile inputs: each gives one clear message (exit 1 on the CLI), writes nothing, runs no code.

The weight-file, avatar-cache and node-input cases live beside their code
(test_weight_safety.py, test_avatar_cache.py, test_nodes.py); this file
covers media, landmark files and the command line as a whole.
"""

import json
import os

import numpy as np
import pytest

from musetalk_lib.audio_io import AudioError, load_audio
from musetalk_cli.main import main
from musetalk_lib.faces import LandmarksError, load_landmarks_json
from musetalk_lib.video_io import VideoError, VideoReader


def _dub(random_models, media, tmp_path, video, audio, landmarks=None) -> list[str]:
    return ["-q", "dub", str(video), str(audio), "-o", str(tmp_path / "out.mp4"), "--models-dir", str(random_models),
            "--landmarks", str(landmarks or media / "landmarks" / "talking_closeup.json"),
            "--cache-dir", str(tmp_path / "avatars"), "--device", "cpu", "--mask", "landmarks"]


def _assert_failed_cleanly(code, capsys, tmp_path, message):
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and message in err.strip().splitlines()[-1]
    assert not (tmp_path / "out.mp4").exists() and not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("cut", [0, 100, 2000])
def test_a_video_cut_early_is_refused(random_models, media, tmp_path, capsys, cut):
    clip = tmp_path / "cut.mp4"
    clip.write_bytes((media / "talking_closeup.mp4").read_bytes()[:cut])
    code = main(_dub(random_models, media, tmp_path, clip, media / "speech_short.wav"))
    _assert_failed_cleanly(code, capsys, tmp_path, str(clip))


def test_a_video_cut_in_the_middle_is_reported(media, tmp_path, caplog):
    data = (media / "talking_closeup.mp4").read_bytes()
    clip = tmp_path / "half.mp4"
    clip.write_bytes(data[:len(data) // 2])
    reader = VideoReader(clip)
    frames = reader.frames(range(reader.info.num_frames))
    assert len(frames) == reader.info.num_frames
    assert "truncated?" in caplog.text


@pytest.mark.parametrize("name", ["random.mp4", "random.wav"])
def test_random_bytes_are_refused(random_models, media, tmp_path, capsys, name):
    junk = tmp_path / name
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 50000, dtype=np.uint8).tobytes())
    video, audio = (junk, media / "speech_short.wav") if name.endswith(".mp4") else (media / "talking_closeup.mp4", junk)
    code = main(_dub(random_models, media, tmp_path, video, audio))
    _assert_failed_cleanly(code, capsys, tmp_path, "truncated or corrupt")


@pytest.mark.parametrize("cut", [0, 44, 1000])
def test_audio_cut_short_is_refused(random_models, media, tmp_path, capsys, cut):
    speech = tmp_path / "cut.mp3"
    speech.write_bytes((media / "speech.mp3").read_bytes()[:cut])
    code = main(_dub(random_models, media, tmp_path, media / "talking_closeup.mp4", speech))
    _assert_failed_cleanly(code, capsys, tmp_path, str(speech))


def test_audio_without_samples_is_refused(tmp_path):
    import soundfile

    soundfile.write(str(tmp_path / "empty.wav"), np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        load_audio(tmp_path / "zero.wav")
    (tmp_path / "zero.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match="empty"):
        VideoReader(tmp_path / "zero.mp4")


def _landmarks(media, change) -> dict:
    data = json.loads((media / "landmarks" / "talking_closeup.json").read_text())
    change(data["frames"][3]["faces"][0])
    return data


@pytest.mark.parametrize("change, message", [
    (lambda face: face["landmarks"][5].__setitem__(0, float("nan")), "frame 3, landmarks: NaN or infinite"),
    (lambda face: face["landmarks"][5].__setitem__(1, float("inf")), "frame 3, landmarks: NaN or infinite"),
    (lambda face: face.__setitem__("landmarks", face["landmarks"][:60]), "landmarks: shape (60, 2), expected 68x2"),
    (lambda face: face.__setitem__("landmarks", "many"), "frame 3, landmarks: not a list of numbers"),
    (lambda face: face.__setitem__("landmarks", [["a", "b"]] * 68), "frame 3, landmarks: not a list of numbers"),
    (lambda face: face.__setitem__("box", [1, 2, 3]), "frame 3, box: shape (3,), expected 4"),
    (lambda face: face.__setitem__("box", [1, 2, float("nan"), 4]), "frame 3, box: NaN or infinite"),
    (lambda face: face.__setitem__("score", "high"), "frame 3, score: not a number"),
    (lambda face: face.pop("landmarks"), "frame 3, landmarks: shape ()"),
])
def test_bad_landmark_values_name_the_file_and_the_frame(media, tmp_path, change, message):
    path = tmp_path / "landmarks.json"
    path.write_text(json.dumps(_landmarks(media, change)))
    with pytest.raises(LandmarksError) as raised:
        load_landmarks_json(path)
    assert str(path) in str(raised.value) and message in str(raised.value)


@pytest.mark.parametrize("content, message", [
    (b"", "invalid JSON at line 1"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b'{"frames": 3}', "top-level 'frames' list"),
    (b'[1, 2]', "top-level 'frames' list"),
    (b'{"frames": [{"faces": [1]}]}', "frame 0 is not"),
    (b'{"frames": ["x"]}', "frame 0 is not"),
])
def test_files_that_are_not_landmarks_say_so(random_models, media, tmp_path, capsys, content, message):
    path = tmp_path / "landmarks.json"
    path.write_bytes(content)
    code = main(_dub(random_models, media, tmp_path, media / "talking_closeup.mp4", media / "speech_short.wav", path))
    _assert_failed_cleanly(code, capsys, tmp_path, message)


def test_output_onto_each_input_is_refused_and_the_input_kept(random_models, media, tmp_path, capsys):
    for name in ["talking_closeup.mp4", "speech_short.wav"]:
        (tmp_path / name).write_bytes((media / name).read_bytes())
    landmarks = tmp_path / "landmarks.json"
    landmarks.write_bytes((media / "landmarks" / "talking_closeup.json").read_bytes())
    before = {path: path.read_bytes() for path in tmp_path.iterdir()}
    for output in before:
        arguments = _dub(random_models, media, tmp_path, tmp_path / "talking_closeup.mp4",
                         tmp_path / "speech_short.wav", landmarks)
        arguments[arguments.index("-o") + 1] = str(output)
        assert main(arguments) == 1
        assert "also the" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_an_output_in_a_folder_that_cannot_exist_is_refused_before_loading_models(media, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["dub", str(media / "talking_closeup.mp4"), str(media / "speech_short.wav"),
                 "-o", str(blocker / "out.mp4"), "--models-dir", str(tmp_path / "no-models")])
    err = capsys.readouterr().err
    assert code == 1 and "cannot be created" in err and "weights" not in err.lower()
    assert os.listdir(tmp_path) == ["file"]
