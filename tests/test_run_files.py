"""Checks on a run's files before any work: inputs exist, the output destroys nothing and can be written."""

import os

import pytest

from musetalk_lib.run_files import RunFileError, check_input_files, check_output_path


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"video")
    (tmp_path / "speech.wav").write_bytes(b"audio")
    return {"video": tmp_path / "clip.mp4", "audio": tmp_path / "speech.wav", "landmarks file": None}


def test_missing_inputs_and_folders_are_named(inputs, tmp_path):
    check_input_files(inputs)
    with pytest.raises(RunFileError, match="video .*gone.mp4 does not exist"):
        check_input_files({**inputs, "video": tmp_path / "gone.mp4"})
    with pytest.raises(RunFileError, match="audio .* is a folder"):
        check_input_files({**inputs, "audio": tmp_path})


@pytest.mark.parametrize("output, message", [
    ("clip.mp4", "also the video"),
    ("speech.wav", "also the audio"),
    (".", "is a folder"),
    ("cache/out.mp4", "inside the avatar cache"),
    ("out.avi", "unsupported extension"),
    ("out", "unsupported extension"),
])
def test_outputs_that_would_destroy_or_mislabel_are_refused(inputs, tmp_path, output, message):
    (tmp_path / "cache").mkdir()
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    with pytest.raises(RunFileError, match=message):
        check_output_path(tmp_path / output, inputs, {"avatar cache": tmp_path / "cache"})
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before


def test_a_hard_link_to_an_input_is_the_input(inputs, tmp_path):
    os.link(inputs["video"], tmp_path / "linked.mp4")
    with pytest.raises(RunFileError, match="also the video"):
        check_output_path(tmp_path / "linked.mp4", inputs)


def test_new_folders_and_existing_outputs_are_fine(inputs, tmp_path):
    (tmp_path / "old.mov").write_bytes(b"an earlier result")
    assert check_output_path(tmp_path / "old.mov", inputs) == (tmp_path / "old.mov").resolve()
    assert check_output_path(tmp_path / "new" / "deeper" / "out.m4v", inputs).name == "out.m4v"


def test_a_file_where_the_output_folder_should_be_is_refused(inputs, tmp_path):
    with pytest.raises(RunFileError, match="cannot be created"):
        check_output_path(tmp_path / "clip.mp4" / "out.mp4", inputs)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_folder_is_refused(inputs, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(RunFileError, match="Cannot write"):
            check_output_path(locked / "out.mp4", inputs)
    finally:
        locked.chmod(0o700)
