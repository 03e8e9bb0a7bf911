"""Training building blocks: configs, mel spectrogram, SyncNet, VGG19 loss, discriminator, evaluation metrics."""

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from musetalk_lib.faces import Face
from training.config import TrainConfig, config_from_dict, load_config
from training.discriminator import MultiScaleDiscriminator
from training.evaluate import (FIDInceptionV3, csim, evaluate, frechet_distance, load_fid_inception,
                               mouth_landmark_distance, psnr_ssim, scored)
from training.losses import crop_boxes, feature_matching_loss, lsgan_discriminator_loss, lsgan_generator_loss
from training.mel import MEL_BANDS, _filters, mel_steps, mel_window, melspectrogram
from training.syncnet import SyncNet, load_syncnet, sync_loss
from training.train import load_syncnet_config
from training.vgg import PerceptualLoss, VGG19Features, load_vgg19
from parity_fixtures import FID_FIXTURE, MEL_FIXTURE, random_images, random_speechlike_audio, random_weights
from media_dir import MEDIA

pytestmark = pytest.mark.usefixtures("repository_root")  # configs use repository-relative paths


def test_configs_load_with_official_defaults_and_reject_typos(tmp_path):
    stage1 = load_config("training/configs/stage1.yaml")
    stage2 = load_config("training/configs/stage2.yaml")
    assert (stage1.optim.lr, stage2.optim.lr) == (2e-5, 5e-6)
    assert stage1.optim.betas == [0.5, 0.999] and stage1.optim.weight_decay == 0.01
    assert stage1.data.top_k_ratio == stage2.data.top_k_ratio == 0.51
    assert (stage1.data.n_sample_frames, stage2.data.n_sample_frames) == (1, 16)
    assert (stage2.loss.gan, stage2.loss.mouth_gan, stage2.loss.sync) == (0.01, 0.01, 0.05)
    assert stage2.gradient_accumulation_steps == 8 and stage2.data.crop_type == "dynamic_margin_crop_resize"
    overridden = load_config("training/configs/stage1.yaml", overrides=["data.sampling=random", "optim.lr=1e-4"])
    assert overridden.data.sampling == "random" and overridden.optim.lr == 1e-4
    with pytest.raises(ValueError, match="unknown key"):
        config_from_dict(TrainConfig, {"data": {"top_k": 0.4}})


def test_mel_spectrogram_shape_range_and_frequency_placement():
    seconds = 1.0
    t = np.arange(int(16000 * seconds)) / 16000
    tone = 0.5 * np.sin(2 * np.pi * 1000.0 * t).astype(np.float32)
    mel = melspectrogram(tone)
    assert mel.shape == (MEL_BANDS, 1 + 16000 // 200) and mel.dtype == np.float32
    assert mel.min() >= -4.0 and mel.max() <= 4.0
    expected_band = int(np.argmax(_filters()[:, round(1000 / 8000 * 400)]))
    assert int(np.argmax(mel[:, 40])) == expected_band
    assert np.all(melspectrogram(np.zeros(4000, np.float32)) == -4.0)
    assert mel_steps(16, 25) == 52  # the official syncnet_mel_step_size
    assert mel_window(mel, 0, 16, 25).shape == (80, 52)
    assert mel_window(mel, 20, 16, 25) is None  # runs past the audio


def test_mel_spectrogram_equals_the_official_training_code():
    """tests/data/mel_parity.npz: MuseTalk's musetalk/data/audio.py with librosa 0.11.0 (make_mel_parity_fixture.py)."""
    fixture = np.load(Path(__file__).parent / "data" / MEL_FIXTURE)
    mel = melspectrogram(random_speechlike_audio(int(fixture["seed"])))
    assert mel.shape == fixture["mel"].shape == (80, 49)
    np.testing.assert_allclose(mel, fixture["mel"], atol=1e-5)  # the edge frames too (zero padding)


def test_latentsync_syncnet_architecture_reaches_one_by_one():
    config = load_syncnet_config("training/configs/syncnet.yaml")
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = SyncNet(config)
        assert model.num_frames == 16
        shapes = {}
        for name, encoder, size in (("audio", model.audio_encoder, (1, 1, 80, 52)),
                                    ("visual", model.visual_encoder, (1, 48, 128, 256))):
            h = encoder.conv_in(torch.zeros(size))
            for block in encoder.down_blocks:
                h = block(h)
            shapes[name] = tuple(h.shape)
    assert shapes == {"audio": (1, 2048, 1, 1), "visual": (1, 2048, 1, 1)}
    keys = model.state_dict().keys()
    assert "audio_encoder.down_blocks.0.downsample_conv.weight" in keys
    assert "audio_encoder.down_blocks.3.downsample_conv.weight" not in keys  # factor 1: no conv
    assert "visual_encoder.norm_out.weight" in keys


def test_syncnet_loads_latentsync_style_checkpoint_and_scores(tmp_path):
    config = load_syncnet_config("training/configs/tiny_syncnet.yaml")
    torch.manual_seed(0)
    path = tmp_path / "syncnet.pt"
    torch.save({"state_dict": SyncNet(config).state_dict(), "global_step": 7}, path)
    model = load_syncnet(config, path).eval()
    frames = SyncNet.stack_frames(torch.rand(2, model.num_frames, 3, 256, 256) * 2 - 1)
    assert frames.shape == (2, 3 * model.num_frames, 128, 256)
    visual, audio = model(frames, torch.randn(2, 1, 80, 22))
    assert torch.allclose(visual.norm(dim=1), torch.ones(2), atol=1e-5)
    loss = sync_loss(visual, audio)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    assert sync_loss(visual, visual).item() < 1e-3  # identical embeddings: cosine 1
    config.visual_encoder.block_out_channels[-1] = 64
    with pytest.raises(ValueError, match="does not match"):
        load_syncnet(config, path)


def test_vgg19_loads_torchvision_layout_and_gives_zero_loss_on_identical_images(tmp_path):
    with torch.device("meta"):
        full = VGG19Features()
    conv_indices = sorted({int(k.split(".")[1]) for k in full.state_dict()})
    assert conv_indices == [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28]  # torchvision vgg19().features
    channels = [8, 16, 16, 32, 32]
    torch.manual_seed(0)
    state = VGG19Features(channels).state_dict()
    state["features.30.weight"] = torch.zeros(1)  # later layers and the classifier are ignored
    state["classifier.0.weight"] = torch.zeros(1)
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    loss = PerceptualLoss(load_vgg19(path, channels))
    image = torch.rand(1, 3, 256, 256) * 2 - 1
    other = torch.rand(1, 3, 256, 256) * 2 - 1
    assert loss(image, image).item() == 0.0
    assert loss(image, other).item() > 0.0
    del state["features.28.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="VGG19"):
        load_vgg19(path, channels)


def test_discriminator_and_gan_losses():
    torch.manual_seed(0)
    discriminator = MultiScaleDiscriminator(block_expansion=8, max_features=32)
    images = torch.rand(2, 3, 256, 256) * 2 - 1
    out = discriminator(images)
    features, scores = out[1.0]
    assert len(features) == 4 and scores.shape == (2, 1, 26, 26)
    assert any("parametrizations.weight" in k for k in discriminator.state_dict())  # spectral norm
    perfect = {1.0: (features, torch.ones_like(scores))}
    assert lsgan_generator_loss(perfect).item() == 0.0
    assert lsgan_discriminator_loss(perfect, {1.0: (features, torch.zeros_like(scores))}).item() == 0.0
    assert feature_matching_loss(out, out, [1, 1, 1, 1]).item() == 0.0
    crops = crop_boxes(images, torch.tensor([[0, 0, 128, 64], [10, 20, 30, 40]]), 64)
    assert crops.shape == (2, 3, 64, 64)


def test_frechet_distance_matches_the_closed_form():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 6))
    features -= features.mean(axis=0)
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-9)
    shifted = features + np.array([1.0, 2.0, 0, 0, 0, 0])
    assert frechet_distance(features, shifted) == pytest.approx(5.0, rel=1e-9)
    scaled = features * 2.0  # covariance C -> 4C: tr(C + 4C - 2*2C) = tr(C)
    assert frechet_distance(features, scaled) == pytest.approx(np.trace(np.cov(features, rowvar=False)), rel=1e-6)


def test_fid_inception_layout_and_missing_weights_are_reported(tmp_path):
    model = FIDInceptionV3()
    assert sum(p.numel() for p in model.parameters()) == 21_785_568  # InceptionV3 without its classifier
    path = tmp_path / "inception.pth"
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, path)
    with pytest.raises(ValueError, match="InceptionV3"):
        load_fid_inception(path)
    video = str(MEDIA / "talking_closeup.mp4")
    results = evaluate([video], [video], inception=None, syncnet=None, max_frames=2)
    for metric in ("fid", "lse_c", "lse_d"):
        assert results[metric]["available"] is False and results[metric]["reason"]
        assert "value" not in results[metric]


def test_fid_inception_equals_pytorch_fid_on_the_same_random_weights(tmp_path):
    """tests/data/fid_parity.npz holds pytorch-fid's features (scripts/make_fid_parity_fixture.py)."""
    fixture = np.load(Path(__file__).parent / "data" / FID_FIXTURE)
    shapes = {str(name): ast.literal_eval(str(shape)) for name, shape in zip(fixture["names"], fixture["shapes"])}
    ours = {name for name in FIDInceptionV3().state_dict() if not name.endswith("num_batches_tracked")}
    assert ours == set(shapes) - {"fc.weight", "fc.bias"}  # the pt_inception names, less the classifier
    weights = random_weights(shapes, int(fixture["seed"]))
    path = tmp_path / "pt_inception-random.pth"
    torch.save({name: torch.from_numpy(values) for name, values in weights.items()}, path)
    model = load_fid_inception(path)
    with torch.no_grad():
        features = model(torch.from_numpy(random_images(int(fixture["seed"])))).numpy()
    expected = fixture["features"]
    assert features.shape == expected.shape == (3, 2048)
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_every_metric_says_how_many_frames_it_scored_and_refuses_low_coverage(media):
    assert scored([0.9, None, 0.8, 0.7], min_coverage=0.5) == {"available": True, "value": pytest.approx(0.8),
                                                               "frames": 3, "of": 4}
    damaged = scored([0.97, 0.98, 0.97] + [None] * 8, min_coverage=0.9, what="frame pairs")
    assert damaged["available"] is False and (damaged["frames"], damaged["of"]) == (3, 11)
    assert "only 3 of 11 frame pairs" in damaged["reason"] and "value" not in damaged
    assert scored([], 0.9)["available"] is False

    embeddings = {0: np.array([1.0, 0.0]), 1: None, 2: np.array([0.0, 1.0])}
    frames = [np.full((2, 2, 3), index, np.uint8) for index in range(3)]
    scores = csim(lambda frame: embeddings[int(frame[0, 0, 0])], frames, frames)
    assert scores == [pytest.approx(1.0), None, pytest.approx(1.0)]

    video = str(media / "talking_closeup.mp4")
    results = evaluate([video], [video], max_frames=3)
    assert results["psnr"] == {"available": True, "value": float("inf"), "frames": 3, "of": 3}
    assert results["ssim"]["value"] == pytest.approx(1.0) and results["ssim"]["frames"] == 3
    assert results["lmd"]["available"] is False and "--detector" in results["lmd"]["reason"]


def test_psnr_ssim_and_mouth_landmark_distance_values():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    noisy = np.clip(real.astype(int) + rng.choice([-16, 16], real.shape), 0, 255).astype(np.uint8)
    (psnr,), (ssim,) = psnr_ssim([noisy], [real])
    mse = np.mean((noisy.astype(float) - real) ** 2)
    assert psnr == pytest.approx(10 * np.log10(255 ** 2 / mse)) and 0 < ssim < 1
    landmarks = rng.uniform(0, 100, (68, 2))
    moved = landmarks.copy()
    moved[48:68] += [3.0, 4.0]  # 5 px in a 128-px box = 10 px at 256
    real_face, fake_face = Face((0, 0, 128, 128), landmarks), Face((0, 0, 128, 128), moved)
    assert mouth_landmark_distance([fake_face, None], [real_face, real_face]) == [pytest.approx(10.0), None]
