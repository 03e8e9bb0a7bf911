"""UNet, VAE and face parser: loading, dtype paths and the properties the pipeline relies on."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from musetalk_lib.checkpoint import CheckpointError
from musetalk_lib.face_parsing import load_face_parser
from musetalk_lib.unet import build_unet, load_unet, load_unet_config, positional_encoding
from musetalk_lib.vae import load_vae
from musetalk_lib.weights import find_model_files

REDUCED = [torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def files(random_models):
    return find_model_files(random_models, "v15", face_parsing=True)


def relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    return float((got.float() - reference).norm() / reference.norm())


def test_positional_encoding_interleaves_sin_and_cos():
    encoding = positional_encoding(50)
    assert encoding.shape == (50, 384) and encoding.dtype == torch.float32
    position, pair = 7, 10
    frequency = math.exp(-math.log(10000.0) * 2 * pair / 384)
    assert encoding[position, 2 * pair].item() == pytest.approx(math.sin(position * frequency), abs=1e-6)
    assert encoding[position, 2 * pair + 1].item() == pytest.approx(math.cos(position * frequency), abs=1e-6)


def test_unet_matches_a_plain_diffusers_forward_at_timestep_zero(files):
    unet = load_unet(files.unet_config, files.unet_weights)
    plain = build_unet(load_unet_config(files.unet_config))
    plain.load_state_dict(torch.load(files.unet_weights, weights_only=True))
    latents, audio = torch.randn(2, 8, 32, 32), torch.randn(2, 50, 384)
    with torch.no_grad():
        expected = plain(latents, 0, encoder_hidden_states=audio + positional_encoding(50)).sample
    assert torch.allclose(unet(latents, audio), expected, atol=1e-5)


@pytest.mark.parametrize("dtype", REDUCED, ids=str)
def test_unet_reduced_precision(files, dtype):
    latents, audio = torch.randn(3, 8, 32, 32), torch.randn(3, 50, 384)
    reference = load_unet(files.unet_config, files.unet_weights)(latents, audio)
    reduced = load_unet(files.unet_config, files.unet_weights, dtype=dtype)
    out = reduced(latents, audio)
    assert out.dtype == dtype and out.shape == (3, 4, 32, 32)
    assert relative_error(out, reference) < 0.05


def test_unet_accepts_other_token_counts(files):
    unet = load_unet(files.unet_config, files.unet_weights)
    assert unet(torch.randn(1, 8, 32, 32), torch.randn(1, 70, 384)).shape == (1, 4, 32, 32)


def test_wrong_unet_config_is_explained(tmp_path, files):
    config = json.loads(files.unet_config.read_text())
    config["in_channels"] = 32
    bad = tmp_path / "musetalk.json"
    bad.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="#276"):
        load_unet(bad, files.unet_weights)


def test_unet_weights_must_match_config(tmp_path, files):
    config = json.loads(files.unet_config.read_text())
    config["block_out_channels"] = [64, 64, 64, 64]
    other = tmp_path / "musetalk.json"
    other.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match"):
        load_unet(other, files.unet_weights)


@pytest.fixture(scope="module")
def faces():
    generator = np.random.default_rng(0)
    return generator.integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)


def test_masked_latents_ignore_the_lower_half(files, faces):
    vae = load_vae(files.vae_dir)
    changed = faces.copy()
    changed[:, 128:] = 255 - changed[:, 128:]
    first, second = vae.encode_masked_and_reference(faces), vae.encode_masked_and_reference(changed)
    assert first.shape == (2, 8, 32, 32)
    assert torch.equal(first[:, :4], second[:, :4])
    assert not torch.equal(first[:, 4:], second[:, 4:])
    assert torch.equal(first[:, :4], vae.encode(faces, mask_lower_half=True))


@pytest.mark.parametrize("dtype", REDUCED, ids=str)
def test_vae_reduced_precision(files, faces, dtype):
    faces = faces[:1]  # half precision convolutions are slow on a CPU
    reference_vae, vae = load_vae(files.vae_dir), load_vae(files.vae_dir, dtype=dtype)
    reference = reference_vae.encode_masked_and_reference(faces)
    latents = vae.encode_masked_and_reference(faces)
    assert latents.dtype == dtype and relative_error(latents, reference) < 0.05
    images = vae.decode(latents[:, 4:])
    assert images.dtype == np.uint8 and images.shape == (1, 256, 256, 3)
    difference = np.abs(images.astype(int) - reference_vae.decode(reference[:, 4:]).astype(int))
    assert difference.mean() < 4


def test_vae_loads_deprecated_attention_names(files, tmp_path):
    # Files written by older diffusers (sd-vae-ft-mse's) name the mid-block attention query/key/value/proj_attn.
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state_dict = torch.load(files.vae_dir / "diffusion_pytorch_model.bin", weights_only=True)
    renamed = {}
    for name, tensor in state_dict.items():
        for current, old in old_names.items():
            name = name.replace(f".attentions.0.{current}.", f".attentions.0.{old}.")
        renamed[name] = tensor
    assert renamed.keys() != state_dict.keys()
    folder = tmp_path / "sd-vae"
    folder.mkdir()
    shutil.copy(files.vae_dir / "config.json", folder)
    torch.save(renamed, folder / "diffusion_pytorch_model.bin")
    loaded, reference = load_vae(folder).vae.state_dict(), load_vae(files.vae_dir).vae.state_dict()
    assert loaded.keys() == reference.keys() and all(torch.equal(loaded[name], reference[name]) for name in loaded)


def test_vae_prefers_safetensors(files, tmp_path):
    folder = tmp_path / "sd-vae"
    shutil.copytree(files.vae_dir, folder)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors"):
        load_vae(folder)


def test_vae_rejects_wrong_images(files):
    vae = load_vae(files.vae_dir)
    with pytest.raises(ValueError, match="256"):
        vae.encode(np.zeros((1, 128, 128, 3), np.uint8))


def test_face_parser_labels_any_image_size(files):
    parser = load_face_parser(files.face_parsing)
    image = np.random.default_rng(1).integers(0, 256, (300, 280, 3), dtype=np.uint8)
    labels = parser.labels([image, image[:200]])
    assert labels.shape == (2, 512, 512) and labels.dtype == np.uint8 and labels.max() < 19


@pytest.mark.parametrize("dtype", REDUCED, ids=str)
def test_face_parser_reduced_precision(files, dtype):
    # A small input keeps half precision quick on a CPU; the network is fully convolutional.
    resized = np.random.default_rng(2).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    reference = load_face_parser(files.face_parsing).logits_from_resized(resized)
    logits = load_face_parser(files.face_parsing, dtype=dtype).logits_from_resized(resized)
    assert logits.dtype == torch.float32 and relative_error(logits, reference) < 0.05


def test_face_parser_loads_a_legacy_format_file(tmp_path, files):
    state = torch.load(files.face_parsing, weights_only=True)
    legacy = tmp_path / "79999_iter.pth"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    image = np.full((64, 64, 3), 128, np.uint8)
    assert np.array_equal(load_face_parser(legacy).labels([image]), load_face_parser(files.face_parsing).labels([image]))


def test_face_parser_rejects_other_weights(files):
    with pytest.raises(ValueError, match="does not match the BiSeNet"):
        load_face_parser(files.unet_weights)


def test_vae_runs_a_cpu_batch_in_bounded_passes(files, monkeypatch):
    import musetalk_lib.vae as vae_module

    vae = load_vae(files.vae_dir)
    faces = np.random.default_rng(5).integers(0, 256, (5, 256, 256, 3), dtype=np.uint8)
    passes = []
    encode, decode = vae.vae.encode, vae.vae.decode
    monkeypatch.setattr(vae.vae, "encode", lambda x: passes.append(len(x)) or encode(x))
    monkeypatch.setattr(vae.vae, "decode", lambda z, return_dict: passes.append(len(z)) or decode(z, return_dict=False))
    random_latents = torch.randn(5, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    latents, images = vae.encode_masked_and_reference(faces), vae.decode(random_latents)
    assert passes == [4, 4, 2, 4, 1]  # masked + reference of 2 faces per encoder pass, 4 latents per decoder pass
    monkeypatch.setattr(vae_module, "CPU_IMAGES_PER_PASS", 64)
    assert torch.allclose(vae.encode_masked_and_reference(faces), latents, atol=1e-5)
    assert np.abs(vae.decode(random_latents).astype(int) - images).max() <= 1


def test_partial_decode_from_row_zero_is_the_official_decode(files):
    vae = load_vae(files.vae_dir)
    latents = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        official = vae.vae.decode((1 / vae.scaling_factor) * latents, return_dict=False)[0]
    expected = torch.round((official / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1) * 255).to(torch.uint8).numpy()
    assert np.array_equal(vae.decode(latents, 0), expected)


def test_upsampled_convolution_equals_upsampling_then_convolution():
    from musetalk_lib.vae import _phase_kernels, _upsampled_conv

    conv = torch.nn.Conv2d(6, 5, 3, padding=1)
    x = torch.randn(2, 6, 7, 9)
    with torch.no_grad():
        expected = conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
        assert torch.allclose(_upsampled_conv(conv, x, _phase_kernels(conv)), expected, atol=1e-5)


def test_band_statistics_are_those_of_the_whole_map():
    from musetalk_lib.vae import _Band, _normalize

    norm = torch.nn.GroupNorm(4, 8)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    top, bottom = torch.randn(2, 8, 3, 6) * 3 + 1, torch.randn(2, 8, 5, 12) - 2
    whole = torch.cat([torch.nn.functional.interpolate(top, scale_factor=2.0, mode="nearest"), bottom], dim=2)
    with torch.no_grad():
        expected = torch.nn.functional.silu(norm(whole))
        # The top rows as a half-resolution band (each pixel stands for 2x2), the bottom band with one extra
        # row above that the statistics leave out.
        bands = [_Band(2, (0, 3), 0), _Band(1, (1, 6), 0)]
        got_top, got_bottom = _normalize(norm, torch.nn.SiLU(), [top, whole[:, :, 5:]], bands)
    assert torch.allclose(got_bottom, expected[:, :, 5:], atol=1e-5)
    assert torch.allclose(torch.nn.functional.interpolate(got_top, scale_factor=2.0, mode="nearest"),
                          expected[:, :, :6], atol=1e-5)


def test_partial_decode_is_close_to_the_full_decode_below_the_cut(files, media):
    import musetalk_lib.vae as vae_module
    from PIL import Image

    vae = load_vae(files.vae_dir)
    face = np.asarray(Image.open(media / "face_still.png").convert("RGB").resize((256, 256)))
    latents = vae.encode(face[None].copy())  # latents as this VAE makes them (random ones decode to noise)
    from_row = 112
    first = vae.first_latent_row(from_row)
    assert first == from_row // 8 - vae_module.DECODE_HALO
    full, partial = vae.decode(latents), vae.decode(latents, from_row)
    assert not partial[:, :first * 8].any()  # never shown: black
    change = np.abs(full[:, from_row:].astype(int) - partial[:, from_row:].astype(int))
    # The previous partial decode: the whole decoder on the latent rows from 2 above the needed one.
    with torch.inference_mode():
        cut = vae.vae.decode(latents[:, :, from_row // 8 - 2:] / vae.scaling_factor, return_dict=False)[0]
    cut = torch.round((cut / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1) * 255).to(torch.uint8).numpy()
    previous = np.abs(full[:, from_row:].astype(int) - cut[:, 16:].astype(int))
    # The stated bound for this tiny random model (measured: mean 3.1, max 94 grey levels; the previous
    # partial decode: 7.1 / 249). README gives the full-size figures.
    assert change.mean() < 4 and change.max() <= 128
    assert change.mean() < previous.mean() / 2


def test_a_decoder_of_another_layout_is_decoded_in_full(files):
    vae = load_vae(files.vae_dir)
    vae.vae.decoder.conv_norm_out = torch.nn.Identity()
    other = type(vae)(vae.vae)
    assert other.partial_decoder is None and other.first_latent_row(120) == 0
