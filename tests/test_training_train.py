"""Training on CPU with tiny random models: stage 1, stage 2, overfitting, exact resume, SyncNet, checkpoints.

The tiny configs (training/configs/tiny_*.yaml) shrink every network; these
tests check the plumbing and the optimisation, not lip-sync quality.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from musetalk_lib.pipeline import MuseTalkModels
from musetalk_lib.unet import build_unet, load_unet_config, positional_encoding
from training.config import DataConfig, SyncNetTrainConfig, TrainConfig, load_config
from training.data import LipSyncDataset, SyncNetDataset
from training.preprocess import PreprocessOptions, preprocess
from training.runs import read_losses
from training.syncnet import SyncNet, load_syncnet
from training.train import LipSyncTrainer, load_syncnet_config
from training.train_syncnet import SyncNetTrainer
from training.vgg import VGG19Features

pytestmark = pytest.mark.usefixtures("repository_root")  # configs use repository-relative paths

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
# Overfitting one sample: the mean loss of the last 3 of OVERFIT_STEPS steps must be at most the first loss
# divided by OVERFIT_FACTOR (measured: 1.17). The frozen RANDOM VAE decoder bounds what any latent can
# reach (optimising the latent itself directly only gets this L1 from 0.58 to ~0.41), so the factor is modest.
OVERFIT_STEPS = 30
OVERFIT_FACTOR = 1.12


def write_small_vae(folder: Path) -> None:
    """An 8/16-channel random VAE: the real 256x256 <-> 4x32x32 shapes at a tenth of the tiny VAE's cost."""
    folder.mkdir(parents=True, exist_ok=True)
    vae = AutoencoderKL(block_out_channels=[8, 8, 16, 16], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=1, norm_num_groups=8,
                        latent_channels=4, sample_size=256)
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **vae.config}))
    torch.save(vae.state_dict(), folder / "diffusion_pytorch_model.bin")


def write_tiny_training_models(random_models: Path, folder: Path) -> Path:
    """``random_models`` copied to ``folder`` with the small VAE and a tiny VGG19 at the default VGG path."""
    shutil.copytree(random_models, folder)
    shutil.rmtree(folder / "sd-vae")
    torch.manual_seed(0)
    write_small_vae(folder / "sd-vae")
    (folder / "vgg").mkdir()
    torch.save(VGG19Features([8, 16, 16, 32, 32]).state_dict(), folder / "vgg" / "vgg19-dcbb9e9d.pth")
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, random_models):
    """Two preprocessed identities (20 frames each); the random models with a smaller VAE, tiny VGG19 and SyncNet."""
    root = tmp_path_factory.mktemp("training")
    videos = root / "videos"
    videos.mkdir()
    (videos / "talking_closeup_with_audio.mp4").symlink_to(MEDIA / "talking_closeup_with_audio.mp4")
    (videos / "talking_avatar.mp4").symlink_to(MEDIA / "talking_avatar.mp4")  # silent video ...
    (videos / "talking_avatar.wav").symlink_to(MEDIA / "speech_16k_mono.wav")  # ... + speech beside it
    options = PreprocessOptions(output_dir=str(root / "data"), landmarks_dir=str(MEDIA / "landmarks"),
                                models_dir=str(random_models), max_frames=20, min_frames=8)
    records = preprocess([videos], options, progress=False)
    assert [r["status"] for r in records] == ["ok", "ok"]
    models = root / "models"
    shutil.copytree(random_models, models)
    torch.manual_seed(0)
    write_small_vae(models / "sd-vae")
    (models / "vgg").mkdir()
    torch.save(VGG19Features([8, 16, 16, 32, 32]).state_dict(), models / "vgg" / "vgg19-tiny.pth")
    (models / "syncnet").mkdir()
    syncnet_config = load_syncnet_config(CONFIGS / "tiny_syncnet.yaml")
    torch.save({"state_dict": SyncNet(syncnet_config).state_dict()}, models / "syncnet" / "tiny_syncnet.pth")
    return root


def tiny(name: str, root: Path, *overrides: str, cls=TrainConfig):
    paths = [f"output_dir={root / 'runs'}", f"data.train_root={root / 'data'}"]
    if cls is TrainConfig:
        models = root / "models"
        paths += [f"models.unet_config={models / 'musetalkV15' / 'musetalk.json'}",
                  f"models.vae={models / 'sd-vae'}", f"models.vgg19={models / 'vgg' / 'vgg19-tiny.pth'}",
                  f"models.syncnet={models / 'syncnet' / 'tiny_syncnet.pth'}",
                  f"models.syncnet_config={CONFIGS / 'tiny_syncnet.yaml'}"]
        if name == "tiny_stage2":
            paths.append(f"models.init_unet={models / 'musetalkV15' / 'unet.pth'}")
    return load_config(CONFIGS / f"{name}.yaml", cls, paths + list(overrides))


@pytest.fixture(scope="module")
def stage1_run(workspace):
    """Four stage 1 steps of one sample with 2 accumulated micro-batches, checkpoints at steps 2 and 4."""
    config = tiny("tiny_stage1", workspace, "exp_name=full", "train_batch_size=1", "gradient_accumulation_steps=2")
    assert LipSyncTrainer(config).train() == 4
    return workspace / "runs" / "full", config


def test_lipsync_dataset_items(workspace):
    config = DataConfig(train_root=str(workspace / "data"), n_sample_frames=4, min_face_size=0, min_clip_frames=8,
                        crop_type="dynamic_margin_crop_resize")
    dataset = LipSyncDataset(config.train_root, config, seed=3, length=10, with_mel=True)
    item = dataset[5]
    assert item["pixel_values"].shape == item["ref_pixel_values"].shape == (4, 3, 256, 256)
    pixels = item["pixel_values"]
    assert pixels.is_contiguous() and -1.0 <= pixels.min() < pixels.max() <= 1.0
    assert item["audio_features"].shape == (4, 50, 384) and item["mel"].shape == (1, 80, 22)
    assert item["frames"].tolist() == list(range(int(item["frames"][0]), int(item["frames"][0]) + 4))
    assert (item["mouth_boxes"][:, 2:] > item["mouth_boxes"][:, :2]).all()
    again = dataset[5]  # every item is a function of (seed, index)
    assert all(torch.equal(item[key], again[key]) for key in item)


def test_stage1_writes_official_checkpoints_logs_and_validation(stage1_run):
    run_dir, _ = stage1_run
    assert {p.name for p in run_dir.glob("*.pt*")} == {"unet-2.pth", "unet-4.pth", "state-2.pt", "state-4.pt"}
    weights = torch.load(run_dir / "unet-4.pth", weights_only=True)
    assert "conv_in.weight" in weights and all(isinstance(v, torch.Tensor) for v in weights.values())
    state = torch.load(run_dir / "state-4.pt", weights_only=True)
    assert state["step"] == 4 and "optimizer" in state and "scheduler" in state and "torch" in state["rng"]
    rows = read_losses(run_dir / "logs" / "losses.csv")
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(row["loss"]) and row["vgg"] > 0 for row in rows)
    assert [row["step"] for row in read_losses(run_dir / "logs" / "validation.csv")] == [2, 4]
    assert sorted(p.name for p in (run_dir / "validation").iterdir()) == ["step-0000002.png", "step-0000004.png"]


def test_resume_reproduces_the_uninterrupted_run_exactly(workspace, stage1_run):
    full_dir, _ = stage1_run
    first = tiny("tiny_stage1", workspace, "exp_name=resumed", "train_batch_size=1",
                 "gradient_accumulation_steps=2", "max_train_steps=2")
    LipSyncTrainer(first).train()
    second = tiny("tiny_stage1", workspace, "exp_name=resumed", "train_batch_size=1",
                  "gradient_accumulation_steps=2", "resume_from=latest")
    assert LipSyncTrainer(second).train() == 4
    resumed_dir = workspace / "runs" / "resumed"
    # Tolerance: none. The losses of steps 3-4 and the final weights are bit-identical.
    assert read_losses(resumed_dir / "logs" / "losses.csv") == read_losses(full_dir / "logs" / "losses.csv")
    expected = torch.load(full_dir / "unet-4.pth", weights_only=True)
    got = torch.load(resumed_dir / "unet-4.pth", weights_only=True)
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_checkpoint_loads_into_the_inference_pipeline(workspace, stage1_run, tmp_path):
    run_dir, config = stage1_run
    models = tmp_path / "models"
    shutil.copytree(workspace / "models", models)
    shutil.copy(run_dir / "unet-4.pth", models / "musetalkV15" / "unet.pth")
    loaded = MuseTalkModels.load(models, "v15", device="cpu", dtype="fp32", face_parsing=False)
    plain = build_unet(load_unet_config(config.models.unet_config))
    plain.load_state_dict(torch.load(run_dir / "unet-4.pth", weights_only=True))
    latents, audio = torch.randn(2, 8, 32, 32), torch.randn(2, 50, 384)
    with torch.no_grad():  # what training computes (positional encoding on) is what inference computes
        expected = plain(latents, torch.zeros(1, dtype=torch.long), encoder_hidden_states=audio
                         + positional_encoding(50)).sample
    assert torch.allclose(loaded.unet(latents, audio), expected, atol=1e-5)


def test_stage2_runs_with_gans_and_sync_loss(workspace):
    config = tiny("tiny_stage2", workspace)
    trainer = LipSyncTrainer(config)
    assert set(trainer.discriminators) == {"image", "mouth"} and trainer.syncnet.num_frames == 4
    assert trainer.train() == 2
    run_dir = workspace / "runs" / "tiny_stage2"
    rows = read_losses(run_dir / "logs" / "losses.csv")
    assert len(rows) == 2
    for key in ("l1", "vgg", "gan", "fm", "mouth_gan", "mouth_fm", "sync", "d_loss", "d_mouth_loss"):
        assert all(np.isfinite(row[key]) for row in rows), key
    state = torch.load(run_dir / "state-2.pt", weights_only=True)
    assert set(state["discriminators"]) == {"image", "mouth"} and set(state["discriminator_optimizers"]) == {
        "image", "mouth"}


def test_resume_with_a_changed_schedule_length_puts_every_optimizer_on_the_new_schedule(workspace):
    common = ("exp_name=longer", "optim.lr_scheduler=linear", "optim.warmup_steps=0", "optim.lr=1e-4",
              "discriminator.lr=5e-6", "discriminator.eta_min=1e-6", "validation_steps=0")
    LipSyncTrainer(tiny("tiny_stage2", workspace, *common, "max_train_steps=2")).train()
    resumed = LipSyncTrainer(tiny("tiny_stage2", workspace, *common, "max_train_steps=5"))
    resumed.load_checkpoint(workspace / "runs" / "longer" / "state-2.pt")

    def cosine(step, total=5):
        return 1e-6 + (5e-6 - 1e-6) * (1 + np.cos(np.pi * min(step, total) / total)) / 2

    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * 3 / 5)  # linear over 5 steps, at 2
    for optimizer in resumed.d_optimizers.values():
        assert optimizer.param_groups[0]["lr"] == pytest.approx(cosine(2))
    for _ in range(5):  # past the end the cosine stays at its floor instead of rising again
        for scheduler in resumed.d_schedulers.values():
            scheduler.step()
    assert all(o.param_groups[0]["lr"] == pytest.approx(1e-6) for o in resumed.d_optimizers.values())


def test_adafactor_and_checkpoints_without_optimizer_state(workspace, caplog):
    common = ("exp_name=light", "optim.optimizer=adafactor", "save_optimizer_state=false", "validation_steps=0",
              "train_batch_size=1")
    LipSyncTrainer(tiny("tiny_stage1", workspace, *common, "max_train_steps=2")).train()
    state = torch.load(workspace / "runs" / "light" / "state-2.pt", weights_only=True)
    assert "optimizer" not in state and state["step"] == 2
    resumed = LipSyncTrainer(tiny("tiny_stage1", workspace, *common, "max_train_steps=3", "resume_from=latest"))
    assert type(resumed.optimizer.optimizer).__name__ == "Adafactor"
    assert resumed.train() == 3 and "restart their moments" in caplog.text


def test_overfitting_one_batch_lowers_the_loss(workspace):
    config = tiny("tiny_stage1", workspace, "exp_name=overfit", "train_batch_size=1", "optim.lr=1e-3",
                  "data.min_face_size=200", f"max_train_steps={OVERFIT_STEPS}")
    trainer = LipSyncTrainer(config)
    batch = next(iter(trainer.dataloader))
    losses = [trainer.training_step(batch)["loss"] for _ in range(OVERFIT_STEPS)]
    assert np.mean(losses[-3:]) <= losses[0] / OVERFIT_FACTOR, losses


def test_syncnet_training_uses_one_identity_per_batch(workspace):
    dataset = SyncNetDataset(workspace / "data", num_frames=4, batch_size=4, seed=0, length=48, min_offset=3)
    identities = [clip.meta.identity for clip in dataset.clips]
    assert len(set(identities)) == 2
    per_batch = [{identities[int(dataset[b * 4 + i]["clip"])] for i in range(4)} for b in range(12)]
    assert all(len(batch) == 1 for batch in per_batch)
    assert {next(iter(batch)) for batch in per_batch} == set(identities)
    labels = [float(dataset[i]["label"]) for i in range(48)]
    assert 0 < sum(labels) < 48  # positives and negatives

    config = tiny("tiny_syncnet", workspace, cls=SyncNetTrainConfig)
    assert SyncNetTrainer(config).train() == 4
    run_dir = workspace / "runs" / "tiny_syncnet"
    rows = read_losses(run_dir / "logs" / "losses.csv")
    assert len(rows) == 4 and all(np.isfinite(row["loss"]) for row in rows)
    model = load_syncnet(config.model, run_dir / "syncnet-4.pth")  # LatentSync format: {"state_dict": ...}
    assert model.num_frames == 4
