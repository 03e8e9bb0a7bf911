"""RANDOM weights in the official layout, for tests and smoke runs of workflows.

The files load through exactly the same code as the official weights, but the
networks are untrained: the output shows a face-shaped blur, not speech. A
``RANDOM_WEIGHTS.txt`` marker is written next to them, and every loader that
sees it says so (:attr:`musetalk_lib.weights.ModelFiles.random_weights`).

``size="tiny"`` builds small networks (a few MB, fast on a CPU) with the real
input and output shapes; ``size="full"`` builds the official architectures
(about 3.7 GB, the speed of the real models).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

from .face_parsing import BiSeNet
from .unet import build_unet
from .weights import RANDOM_MARKER

__all__ = ["SIZES", "write_random_weights"]

SIZES = ("tiny", "full")

_UNET_CONFIG = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 384,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
_TINY_UNET = {"block_out_channels": [16, 16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8}

_VAE_CONFIG = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 256,
    "scaling_factor": 0.18215,
}
_TINY_VAE = {"block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 8}

_WHISPER_CONFIG = {
    "d_model": 384,
    "encoder_layers": 4,
    "encoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "decoder_layers": 4,
    "decoder_attention_heads": 6,
    "decoder_ffn_dim": 1536,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "max_target_positions": 448,
    "vocab_size": 51865,
}
_TINY_WHISPER = {"encoder_ffn_dim": 384, "decoder_layers": 1, "decoder_ffn_dim": 64,
                 "max_target_positions": 16, "vocab_size": 64, "pad_token_id": 1, "bos_token_id": 2,
                 "eos_token_id": 3, "decoder_start_token_id": 2, "begin_suppress_tokens": [], "suppress_tokens": []}


def _sized(base: dict, tiny_overrides: dict, size: str) -> dict:
    if size not in SIZES:
        raise ValueError(f"Unknown size {size!r}; choose one of {', '.join(SIZES)}.")
    return {**base, **tiny_overrides} if size == "tiny" else dict(base)


def _write_unets(root: Path, size: str) -> None:
    config = _sized(_UNET_CONFIG, _TINY_UNET, size)
    for folder, weights in (("musetalkV15", "unet.pth"), ("musetalk", "pytorch_model.bin")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        with open(root / folder / "musetalk.json", "w", encoding="utf-8") as handle:
            json.dump({"_class_name": "UNet2DConditionModel", **config}, handle, indent=2)
        torch.save(build_unet(config).state_dict(), root / folder / weights)


def _write_vae(root: Path, size: str) -> None:
    folder = root / "sd-vae"
    folder.mkdir(parents=True, exist_ok=True)
    vae = AutoencoderKL(**_sized(_VAE_CONFIG, _TINY_VAE, size))
    with open(folder / "config.json", "w", encoding="utf-8") as handle:
        json.dump({"_class_name": "AutoencoderKL", **vae.config}, handle, indent=2)
    torch.save(vae.state_dict(), folder / "diffusion_pytorch_model.bin")


def _write_whisper(root: Path, size: str) -> None:
    folder = root / "whisper"
    folder.mkdir(parents=True, exist_ok=True)
    config = WhisperConfig(**_sized(_WHISPER_CONFIG, _TINY_WHISPER, size))
    model = WhisperModel(config)
    config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)


def _write_face_parser(root: Path, size: str) -> None:
    folder = root / "face-parse-bisent"
    folder.mkdir(parents=True, exist_ok=True)
    net = BiSeNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode is exercised
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    if size == "tiny":  # the architecture is fixed; half precision halves the file
        net = net.half()
    torch.save(net.state_dict(), folder / "79999_iter.pth")


def write_random_weights(models_dir: str | os.PathLike, size: str = "tiny", seed: int = 0) -> Path:
    """Write random UNets (v1.5 and v1.0), VAE, Whisper and BiSeNet in the official layout.

    Returns the models root. Existing files of those names are overwritten.
    """
    root = Path(models_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    _write_unets(root, size)
    _write_vae(root, size)
    _write_whisper(root, size)
    _write_face_parser(root, size)
    (root / RANDOM_MARKER).write_text(
        f"These MuseTalk weights are RANDOM ({size}, seed {seed}), written by `musetalk weights random`.\n"
        "They exercise the code paths but produce no lip sync. Replace them with the official weights.\n",
        encoding="utf-8",
    )
    return root
