"""The musetalk command line: the happy path, errors, weights tools, avatar tools and the benchmark."""

import json

import pytest

from musetalk_lib.cli import main


def test_help_is_available(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["dub", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--landmarks" in out and "--length" in out and "musetalk weights download" in out


def test_dub_with_random_weights(random_models, media, tmp_path, capsys):
    output = tmp_path / "dubbed.mp4"
    code = main(["-q", "dub", str(media / "talking_closeup.mp4"), str(media / "speech_short.wav"), "-o", str(output),
                 "--models-dir", str(random_models), "--landmarks", str(media / "landmarks" / "talking_closeup.json"),
                 "--mask", "landmarks", "--cache-dir", str(tmp_path / "avatars"), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0 and output.is_file()
    assert "RANDOM" in captured.out and "RANDOM" in captured.err


def test_missing_weights_give_one_clear_error(media, tmp_path, capsys):
    code = main(["dub", str(media / "talking_closeup.mp4"), str(media / "speech_short.wav"), "-o",
                 str(tmp_path / "out.mp4"), "--models-dir", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert code == 2
    assert "musetalkV15/unet.pth" in err and "huggingface.co/TMElyralab/MuseTalk" in err and "Traceback" not in err
    assert not (tmp_path / "out.mp4").exists()


def test_weights_random_check_and_download_dry_run(tmp_path, capsys):
    assert main(["weights", "random", str(tmp_path / "models")]) == 0
    assert main(["weights", "check", "--models-dir", str(tmp_path / "models")]) == 0
    out = capsys.readouterr().out
    assert "RANDOM" in out and "[ok]      unet-v15" in out and "sha256" in out
    assert "[missing] face-alignment" in out
    assert main(["weights", "download", "--models-dir", str(tmp_path / "models"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[would get] musetalkV15/unet.pth" in out  # random files would be replaced
    assert "adrianbulat.com" in out


def test_avatar_prepare_and_info(random_models, media, tmp_path, capsys):
    assert main(["-q", "avatar", "prepare", str(media / "face_still.png"), "--models-dir", str(random_models),
                 "--landmarks", str(media / "landmarks" / "face_still.json"), "--mask", "landmarks",
                 "--cache-dir", str(tmp_path), "--device", "cpu"]) == 0
    folder = capsys.readouterr().out.split("Avatar ready: ")[1].split(" (")[0]
    assert main(["avatar", "info", folder]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_frames"] == 1 and info["frames_with_face"] == 1 and info["mask_mode"] == "landmarks"


def test_bench_prints_every_stage(tmp_path, capsys):
    report = tmp_path / "bench.json"
    assert main(["-q", "bench", "--device", "cpu", "--seconds", "1", "--width", "160", "--height", "120",
                 "--batch-size", "4", "--repeats", "1", "--json", str(report)]) == 0
    stages = {row["stage"] for row in json.loads(report.read_text())["stages"]}
    assert stages == {"audio features", "unet", "vae decode", "blend", "encode", "avatar preparation", "end to end"}
    assert "| end to end |" in capsys.readouterr().out
