"""The musetalk command line: the happy path, errors, reproducibility, weights and avatar tools, the benchmark."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from musetalk_cli.main import main
from musetalk_lib.devices import use_deterministic_algorithms


def test_help_is_available(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["dub", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--landmarks" in out and "--length" in out and "musetalk weights download" in out


def test_dub_with_random_weights(random_models, media, tmp_path, capsys, caplog):
    output = tmp_path / "dubbed.mp4"
    code = main(["-q", "dub", str(media / "talking_closeup.mp4"), str(media / "speech_short.wav"), "-o", str(output),
                 "--models-dir", str(random_models), "--landmarks", str(media / "landmarks" / "talking_closeup.json"),
                 "--mask", "landmarks", "--cache-dir", str(tmp_path / "avatars"), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0 and output.is_file()
    assert "RANDOM" in captured.out  # the summary line
    warnings = [record.getMessage() for record in caplog.records if "RANDOM" in record.getMessage()]
    assert len(warnings) == 1 and "will not be lip-synced" in warnings[0]  # said once, also under -q


def test_missing_weights_give_one_clear_error(media, tmp_path, capsys):
    code = main(["dub", str(media / "talking_closeup.mp4"), str(media / "speech_short.wav"), "-o",
                 str(tmp_path / "out.mp4"), "--models-dir", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert code == 1
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


BENCH_STAGES = {"audio features", "avatar preparation", "unet (batch 2)", "unet (batch 3)", "vae decode (batch 2)",
                "vae decode (batch 3)", "blend", "encode", "end to end"}


def test_bench_measures_chosen_and_reference_configurations(tmp_path, capsys):
    report = tmp_path / "bench.json"
    assert main(["-q", "bench", "--device", "cpu", "--seconds", "1", "--width", "160", "--height", "120",
                 "--face-size", "48", "--batch-size", "2", "3", "--repeats", "1", "--dtype", "fp32",
                 "--decode", "partial", "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["setup"]["batch_sizes"] == [2, 3] and data["setup"]["face_size"] == 48
    for name, dtype, decode in (("chosen", "float32", "partial"), ("reference", "float32", "full")):
        assert (data[name]["dtype"], data[name]["decode"]) == (dtype, decode)
        assert {row["stage"] for row in data[name]["stages"]} == BENCH_STAGES
        assert data[name]["memory_mb"]["peak RSS"] > 0
        end_to_end = next(row for row in data[name]["stages"] if row["stage"] == "end to end")
        assert end_to_end["frames"] == 25
    fps = {name: {row["stage"]: row["fps"] for row in data[name]["stages"]} for name in ("chosen", "reference")}
    assert data["ratios"]["fps"] == pytest.approx({stage: fps["chosen"][stage] / fps["reference"][stage]
                                                   for stage in BENCH_STAGES})
    assert set(data["ratios"]["memory"]) == {"peak RSS"}
    out = capsys.readouterr().out
    assert "| stage | reference fps | chosen fps | ratio |" in out
    assert "| unet (batch 3) |" in out and "| end to end |" in out and "| peak RSS (MB) |" in out
    assert "reference: float32, full decode; chosen: float32, partial decode" in out


def test_bench_table_without_reference():
    from musetalk_cli.bench import BenchReport, ConfigurationResult, Measurement

    chosen = ConfigurationResult("chosen", "float16", "partial", [Measurement("unet (batch 8)", 16, 0.5)],
                                 {"peak RSS": 1000.0, "peak CUDA allocated": 300.0})
    lines = BenchReport({}, chosen).table().splitlines()
    assert lines[2:5] == ["| unet (batch 8) | - | 32.0 | - |", "| peak RSS (MB) | - | 1000 | - |",
                          "| peak CUDA allocated (MB) | - | 300 | - |"]
    reference = ConfigurationResult("reference", "float32", "full", [Measurement("unet (batch 8)", 16, 2.0)],
                                    {"peak RSS": 2000.0, "peak CUDA allocated": 600.0})
    report = BenchReport({}, chosen, reference)
    assert report.ratios() == {"fps": {"unet (batch 8)": 4.0}, "memory": {"peak RSS": 0.5, "peak CUDA allocated": 0.5}}
    assert "| unet (batch 8) | 8.0 | 32.0 | 4.00 |" in report.table()


def _decoded_frames(path):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_a_dub_run_twice_in_separate_processes_gives_identical_frames_and_files(random_models, media, tmp_path):
    """Reproducible output: the second process reuses the avatar cache the first one built."""
    outputs = [tmp_path / "first.mp4", tmp_path / "second.mp4"]
    for output in outputs:
        subprocess.run([sys.executable, "-m", "musetalk_cli", "-q", "dub", str(media / "talking_closeup.mp4"),
                        str(media / "speech_short.wav"), "-o", str(output), "--models-dir", str(random_models),
                        "--landmarks", str(media / "landmarks" / "talking_closeup.json"),
                        "--cache-dir", str(tmp_path / "avatars"), "--device", "cpu", "--dtype", "fp32"],
                       check=True, cwd=Path(__file__).resolve().parents[1], capture_output=True)
    first, second = (_decoded_frames(output) for output in outputs)
    assert len(first) == len(second) > 0
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert outputs[0].read_bytes() == outputs[1].read_bytes()  # no timestamps in the container either


def test_deterministic_switch_sets_the_torch_flags(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.backends.cudnn.benchmark = True
        use_deterministic_algorithms()
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


def _dub_arguments(random_models, media, tmp_path, clip: str, speech: str = "speech_short.wav") -> list[str]:
    return ["-q", "dub", str(media / f"{clip}.mp4"), str(media / speech), "-o", str(tmp_path / "out.mp4"),
            "--models-dir", str(random_models), "--landmarks", str(media / "landmarks" / f"{clip}.json"),
            "--cache-dir", str(tmp_path / "avatars"), "--device", "cpu", "--mask", "landmarks"]


def test_a_clip_without_any_face_is_an_error_unless_allowed(random_models, media, tmp_path, capsys):
    arguments = _dub_arguments(random_models, media, tmp_path, "no_face")
    assert main(arguments) == 3
    assert "No face found in any" in capsys.readouterr().err
    assert not (tmp_path / "out.mp4").exists()
    assert main([*arguments, "--allow-no-face"]) == 0
    assert (tmp_path / "out.mp4").is_file()


@pytest.mark.parametrize("selection, message", [(["--face", "index", "--face-index", "5"], "Face index 5 selects no face"),
                                                (["--face", "point", "--face-point", "1,1"], "not on any face")])
def test_a_face_choice_that_selects_nothing_is_an_error(random_models, media, tmp_path, capsys, selection, message):
    assert main([*_dub_arguments(random_models, media, tmp_path, "two_faces"), *selection]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_a_dub_with_one_line_and_leaves_no_files(random_models, media, tmp_path, signum, code):
    arguments = _dub_arguments(random_models, media, tmp_path, "talking_closeup", "speech_16k_mono.wav")
    process = subprocess.Popen([sys.executable, "-m", "musetalk_cli", *arguments], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.*.partial.mp4")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the dub ended before it could be interrupted"
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("musetalk: ")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["avatars"]
