"""Multi-process training that really is multi-process: 2 CPU ranks under `accelerate launch`, as training/README.md says.

`accelerate launch --cpu --num_processes 2` starts ONE process (accelerate's multi-CPU mode needs MPI);
`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2` starts two torch.distributed
ranks with the gloo backend. These tests run the latter with the tiny stage 1 config. FSDP cannot run on
CPU through accelerate; the trainers refuse it rather than train unsharded (training/README.md).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_training_train import write_tiny_training_models
from training.preprocess import PreprocessOptions, preprocess
from training.runs import read_losses

pytestmark = pytest.mark.usefixtures("repository_root")

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_two_ranks(root: Path, launch_options: list[str], overrides: list[str]) -> subprocess.CompletedProcess:
    """Run tests/distributed_training_worker.py on 2 CPU ranks with the tiny stage 1 config."""
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch_options, "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(ROOT / "tests" / "distributed_training_worker.py"),
               str(ROOT / "training" / "configs" / "tiny_stage1.yaml"), str(root), *overrides]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory, random_models, media):
    root = tmp_path_factory.mktemp("distributed")
    models = write_tiny_training_models(random_models, root / "models")
    options = PreprocessOptions(output_dir=str(root / "data"), landmarks_dir=str(media / "landmarks"),
                                models_dir=str(random_models), max_frames=20, min_frames=8)
    assert preprocess([media / "talking_closeup_with_audio.mp4"], options, progress=False)[0]["status"] == "ok"
    overrides = [f"output_dir={root / 'runs'}", f"data.train_root={root / 'data'}",
                 f"models.unet_config={models / 'musetalkV15' / 'musetalk.json'}", f"models.vae={models / 'sd-vae'}",
                 f"models.vgg19={models / 'vgg' / 'vgg19-dcbb9e9d.pth'}", "train_batch_size=1",
                 "validation_steps=0"]
    result = launch_two_ranks(root, ["--multi_gpu"], overrides)
    assert result.returncode == 0, result.stderr[-4000:]
    return root


def test_two_ranks_start_and_draw_different_samples(two_rank_runs):
    reports = [json.loads((two_rank_runs / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [report["world_size"] for report in reports] == [2, 2]
    assert [report["rank"] for report in reports] == [0, 1]
    assert [report["distributed_type"] for report in reports] == ["MULTI_CPU", "MULTI_CPU"]
    assert reports[0]["batches"] != reports[1]["batches"]


def test_a_two_rank_run_resumes_exactly(two_rank_runs):
    full, resumed = two_rank_runs / "runs" / "full", two_rank_runs / "runs" / "resumed"
    # Tolerance: none. Losses (averaged over both ranks) and final weights are bit-identical.
    assert [row["step"] for row in read_losses(full / "logs" / "losses.csv")] == [1, 2, 3, 4]
    assert read_losses(resumed / "logs" / "losses.csv") == read_losses(full / "logs" / "losses.csv")
    expected = torch.load(full / "unet-4.pth", weights_only=True)
    got = torch.load(resumed / "unet-4.pth", weights_only=True)
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_fsdp_on_cpu_is_refused_instead_of_silently_running_ddp(tmp_path):
    """accelerate 1.x selects FSDP only for GPU-like devices: on CPU it would wrap the UNet in DDP (MULTI_CPU).

    (With fsdp_sync_module_states or fsdp_cpu_ram_efficient_loading on, accelerate itself stops earlier:
    "There are currently no available devices found, must be one of 'XPU', 'CUDA', ...".)
    """
    fsdp = ["--use_fsdp", "--fsdp_sharding_strategy", "FULL_SHARD", "--fsdp_state_dict_type", "FULL_STATE_DICT",
            "--fsdp_sync_module_states", "false", "--fsdp_cpu_ram_efficient_loading", "false"]
    result = launch_two_ranks(tmp_path, fsdp, [f"output_dir={tmp_path / 'runs'}", "save_optimizer_state=false",
                                               "validation_steps=0"])
    assert result.returncode != 0
    assert "FSDP was requested" in result.stderr and "set up MULTI_CPU" in result.stderr
    assert not (tmp_path / "rank0.json").exists()
