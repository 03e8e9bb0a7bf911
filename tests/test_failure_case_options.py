"""The four failure-case options together, from the command line: silence, align_roll, max_yaw, mask_smoothing."""

import json

import pytest

from musetalk_cli.main import main


def test_help_explains_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["dub", "--help"])
    out = capsys.readouterr().out
    for flag in ("--silence {model,gate,source}", "--max-yaw DEGREES", "--align-roll DEGREES", "--mask-smoothing"):
        assert flag in out


def test_dub_with_every_option(random_models, media, tmp_path, capsys):
    output = tmp_path / "dubbed.mp4"
    arguments = ["-q", "dub", str(media / "talking_closeup.mp4"), str(media / "speech_short.wav"), "-o", str(output),
                 "--models-dir", str(random_models), "--landmarks", str(media / "landmarks" / "talking_closeup.json"),
                 "--mask", "landmarks", "--cache-dir", str(tmp_path / "avatars"), "--device", "cpu",
                 "--silence", "source", "--max-yaw", "10", "--align-roll", "3", "--mask-smoothing", "1"]
    assert main(arguments) == 0 and output.is_file()
    out = capsys.readouterr().out
    assert "Head turned past --max-yaw in source frames [(0, 12)]" in out
    assert "Silent output frames (source): [(0, " in out
    (folder,) = (tmp_path / "avatars").iterdir()
    settings = json.loads((folder / "manifest.json").read_text())["settings"]
    assert settings["align_roll"] == 3.0 and settings["mask_smoothing"] == 1


@pytest.mark.parametrize("option, value, message", [("--align-roll", "95", "align_roll must be"),
                                                     ("--mask-smoothing", "-1", "mask_smoothing must be"),
                                                     ("--max-yaw", "0", "max_yaw must be")])
def test_options_are_checked(random_models, media, tmp_path, capsys, option, value, message):
    arguments = ["dub", str(media / "talking_closeup.mp4"), str(media / "speech_short.wav"), "-o",
                 str(tmp_path / "out.mp4"), "--models-dir", str(random_models), "--device", "cpu", option, value]
    assert main(arguments) == 1
    assert message in capsys.readouterr().err and not (tmp_path / "out.mp4").exists()
