"""Identity fine-tuning on CPU with tiny random models: `musetalk finetune`, resume, loss, and dubbing with the LoRA."""

from pathlib import Path

import numpy as np
import pytest

from musetalk_cli.main import main
from musetalk_lib.lora import read_lora
from test_training_train import write_tiny_training_models
from training.config import TrainConfig, load_config
from training.runs import read_losses
from training.train import LipSyncTrainer

pytestmark = pytest.mark.usefixtures("repository_root")

CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "tiny_finetune.yaml"
# A LoRA fitting one batch: the mean loss of the last 3 of FIT_STEPS steps must be at most the first loss
# divided by FIT_FACTOR (measured: 1.13). The frozen random VAE bounds what any UNet output can reach.
FIT_STEPS = 20
FIT_FACTOR = 1.05


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, random_models, media):
    """`musetalk finetune` for 4 steps on one clip (20 frames); the models folder with a small VAE and tiny VGG."""
    root = tmp_path_factory.mktemp("finetune")
    models = write_tiny_training_models(random_models, root / "models")
    output = root / "actor.safetensors"
    arguments = [str(media / "talking_closeup_with_audio.mp4"), "-o", str(output), "--models-dir", str(models),
                 "--config", str(CONFIG), "--landmarks-dir", str(media / "landmarks"), "--max-frames", "20",
                 "--min-frames", "8", "--device", "cpu", "--set", "checkpointing_steps=2",
                 "--set", "validation_steps=2"]
    assert main(["-q", "finetune", *arguments, "--steps", "4"]) == 0
    return root, models, output, arguments


def test_finetune_writes_a_lora_file_logs_and_validation_frames(finetuned):
    root, _, output, _ = finetuned
    lora = read_lora(output)
    assert lora.config.r == 4 and lora.metadata["step"] == "4"
    run_dir = root / "actor.finetune" / "finetune"
    assert [row["step"] for row in read_losses(run_dir / "logs" / "losses.csv")] == [1, 2, 3, 4]
    assert sorted(p.name for p in (run_dir / "validation").iterdir()) == ["step-0000002.png", "step-0000004.png"]
    assert {p.name for p in run_dir.glob("lora-*.safetensors")} == {"lora-2.safetensors", "lora-4.safetensors"}


def test_running_again_resumes_from_the_last_checkpoint(finetuned):
    root, _, output, arguments = finetuned
    run_dir = root / "actor.finetune" / "finetune"
    first = read_losses(run_dir / "logs" / "losses.csv")
    assert main(["-q", "finetune", *arguments, "--steps", "6"]) == 0
    rows = read_losses(run_dir / "logs" / "losses.csv")
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6] and rows[:4] == first
    assert read_lora(output).metadata["step"] == "6"


def test_a_lora_fits_one_batch(finetuned):
    root, models, _, _ = finetuned
    config = load_config(CONFIG, TrainConfig, [
        f"output_dir={root / 'fit'}", f"data.train_root={root / 'actor.finetune' / 'data'}",
        f"models.unet_config={models / 'musetalkV15' / 'musetalk.json'}",
        f"models.init_unet={models / 'musetalkV15' / 'unet.pth'}", f"models.vae={models / 'sd-vae'}",
        f"models.vgg19={models / 'vgg' / 'vgg19-dcbb9e9d.pth'}", f"max_train_steps={FIT_STEPS}"])
    trainer = LipSyncTrainer(config)
    assert sum(p.numel() for p in trainer.unet.parameters() if p.requires_grad) < sum(
        p.numel() for p in trainer.unet.parameters()) / 4
    batch = next(iter(trainer.dataloader))
    losses = [trainer.training_step(batch)["loss"] for _ in range(FIT_STEPS)]
    assert np.mean(losses[-3:]) <= losses[0] / FIT_FACTOR, losses


def test_a_trained_lora_dubs_through_the_cli(finetuned, media, tmp_path, capsys):
    _, models, output, _ = finetuned
    dubbed = tmp_path / "dubbed.mp4"
    common = ["-q", "dub", str(media / "talking_closeup.mp4"), str(media / "speech_short.wav"),
              "--models-dir", str(models), "--landmarks", str(media / "landmarks" / "talking_closeup.json"),
              "--mask", "landmarks", "--cache-dir", str(tmp_path / "avatars"), "--device", "cpu"]
    assert main([*common, "-o", str(dubbed), "--lora", str(output), "--lora-strength", "0.8"]) == 0
    assert dubbed.is_file()
    capsys.readouterr()
    assert main([*common, "-o", str(tmp_path / "other.mp4"), "--lora", str(tmp_path / "missing.safetensors")]) == 1
    assert "LoRA file not found" in capsys.readouterr().err
