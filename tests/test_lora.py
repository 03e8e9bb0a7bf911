"""LoRA files on the tiny random UNet: strength 0 is the base model, merged equals unmerged, safe reading."""

import shutil

import pytest
import torch

from musetalk_lib.checkpoint import CorruptCheckpointError
from musetalk_cli.main import main
from musetalk_lib.lora import (add_lora, apply_lora, lora_state_dict, merged_unet_state_dict, read_lora, save_lora,
                               unet_with_lora)
from musetalk_lib.unet import build_unet, load_unet, load_unet_config, positional_encoding


@pytest.fixture(scope="module")
def unet_files(random_models):
    folder = random_models / "musetalkV15"
    return folder / "musetalk.json", folder / "unet.pth"


@pytest.fixture(scope="module")
def trained(unet_files, tmp_path_factory):
    """A rank-4 LoRA with random (non-zero) B matrices on the tiny UNet, saved; the UNet still carries it."""
    config_path, weights_path = unet_files
    unet = build_unet(load_unet_config(config_path))
    unet.load_state_dict(torch.load(weights_path, weights_only=True))
    config = add_lora(unet, rank=4)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05)
    path = tmp_path_factory.mktemp("lora") / "actor.safetensors"
    save_lora(lora_state_dict(unet), config, path, {"step": "7"})
    return unet.eval(), path


INPUTS = (torch.randn(2, 8, 32, 32, generator=torch.Generator().manual_seed(1)),
          torch.randn(2, 50, 384, generator=torch.Generator().manual_seed(2)))


def test_only_the_adapter_trains(trained):
    unet, path = trained
    lora = read_lora(path)
    assert lora.metadata["step"] == "7" and lora.config.r == 4
    assert set(lora.config.target_modules) == {"to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"}
    assert all((".lora_" in name) == parameter.requires_grad for name, parameter in unet.named_parameters())


def test_strength_zero_is_the_base_model_exactly(unet_files, trained):
    base = load_unet(*unet_files)
    zero = unet_with_lora(base, trained[1], strength=0.0)
    assert all(torch.equal(a, b) for a, b in zip(base.state_dict().values(), zero.state_dict().values()))
    assert torch.equal(zero(*INPUTS), base(*INPUTS))


def test_merged_output_matches_the_unmerged_adapter(unet_files, trained):
    unet, path = trained
    base = load_unet(*unet_files)
    before = base(*INPUTS)
    merged = unet_with_lora(base, path)
    latents, audio = INPUTS
    with torch.no_grad():
        unmerged = unet(latents, torch.zeros(1, dtype=torch.long),
                        encoder_hidden_states=audio + positional_encoding(50)).sample
    # Tolerance: float32 rounding of W + BA against W x + B(A x); measured 1.3e-6, the LoRA changes it by 0.29.
    assert torch.allclose(merged(*INPUTS), unmerged, atol=1e-5)
    assert (before - unmerged).abs().max() > 0.01
    assert torch.equal(base(*INPUTS), before)  # the copy shares tensors but never wrote to them
    compiled = load_unet(*unet_files)
    compiled.unet.forward = compiled.unet.forward  # what compile_with_fallback does
    with pytest.raises(ValueError, match="compiled"):
        unet_with_lora(compiled, path)
    weights = [unet.state_dict() for unet in (base, unet_with_lora(base, path, strength=0.5), merged)]
    name = "unet.down_blocks.0.resnets.0.conv1.weight"
    assert not torch.equal(weights[0][name], weights[2][name])
    assert torch.allclose(weights[1][name], (weights[0][name] + weights[2][name]) / 2, atol=1e-6)  # linear in strength


def test_merge_command_writes_an_official_format_unet(unet_files, trained, tmp_path, random_models):
    models = tmp_path / "models"
    shutil.copytree(random_models, models)
    output = tmp_path / "actor_unet.pth"
    assert main(["-q", "lora", "merge", str(trained[1]), "-o", str(output), "--models-dir", str(models)]) == 0
    state_dict = torch.load(output, weights_only=True)
    assert set(state_dict) == set(torch.load(unet_files[1], weights_only=True))  # every official key, no LoRA
    merged = load_unet(unet_files[0], output)
    expected = apply_lora(load_unet(*unet_files), trained[1])
    assert torch.equal(merged(*INPUTS), expected(*INPUTS))
    again = merged_unet_state_dict(*unet_files, trained[1])
    assert all(torch.equal(again[key], state_dict[key]) for key in state_dict)


def test_files_that_are_not_lora_files_are_refused(unet_files, tmp_path):
    with pytest.raises(CorruptCheckpointError, match="not a LoRA file"):
        read_lora(unet_files[1])
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(plain))
    with pytest.raises(CorruptCheckpointError, match="not a MuseTalk LoRA file"):
        read_lora(plain)
    with pytest.raises(FileNotFoundError):
        read_lora(tmp_path / "missing.safetensors")
