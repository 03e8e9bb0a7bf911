"""The SD VAE (sd-vae-ft-mse) as MuseTalk uses it: masked and reference face latents, decoding.

Images are 256x256 RGB ``uint8`` arrays. Latents are scaled by the VAE's
scaling factor (0.18215), and encoding is deterministic (the posterior mode).

Decoding can skip the upper latent rows: the blend only ever shows the lower
part of the generated face, so :meth:`FaceVAE.decode` takes the first pixel
row the caller needs and decodes from :data:`DECODE_HALO` latent rows above it.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from torch import nn

from .checkpoint import load_model_weights
from .crop import FACE_SIZE
from .devices import run_with_fp16_fallback
from .weights import first_existing, path_identity

__all__ = ["DECODE_HALO", "LATENT_SCALE", "FaceVAE", "load_vae"]

LATENT_SCALE = 8  # pixels per latent row/column
DECODE_HALO = 2  # latent rows decoded above the first needed row (see README: partial decode)
CPU_IMAGES_PER_PASS = 4  # on a CPU (compute-bound, no speed lost) activations stay at ~0.6 GB in fp32
WEIGHTS_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")  # preferred first
DEPRECATED_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def load_vae(folder: str | os.PathLike, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> FaceVAE:
    """Build the ``AutoencoderKL`` of a local diffusers folder from its ``config.json`` and load its weights.

    The weights are ``diffusion_pytorch_model.safetensors`` or, without it,
    ``diffusion_pytorch_model.bin``, read by :mod:`.checkpoint` (no code in a
    pickle ever runs). Every weight must match the config. Files written by
    older diffusers versions, such as sd-vae-ft-mse's, name the mid-block
    attention ``query``/``key``/``value``/``proj_attn``; those names are mapped
    to today's.

    Raises:
        FileNotFoundError: no weights file in ``folder``.
        CheckpointError: the weights file is damaged, unsafe, or does not match ``config.json``.
    """
    folder = Path(folder)
    weights = first_existing(folder, WEIGHTS_FILES, "VAE weights")
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, local_files_only=True))
    rename = partial(_current_attention_names, model_names=set(vae.state_dict()))
    load_model_weights(vae, weights, dtype, convert=rename, hint=f"Check that it comes with {folder / 'config.json'}.")
    return FaceVAE(vae.to(device).eval().requires_grad_(False), weights_id=path_identity(folder))


def _current_attention_names(state_dict: dict[str, torch.Tensor], model_names: set[str]) -> dict[str, torch.Tensor]:
    """Rename diffusers' deprecated attention weights (``...attentions.0.query.weight``) to the model's names."""
    renamed = {}
    for name, tensor in state_dict.items():
        module, _, leaf = name.rpartition(".")
        parent, _, child = module.rpartition(".")
        current = f"{parent}.{DEPRECATED_ATTENTION_NAMES.get(child, child)}.{leaf}"
        renamed[current if name not in model_names and current in model_names else name] = tensor
    return renamed


class FaceVAE(nn.Module):
    """Masked/reference encoding and decoding of 256x256 face crops."""

    def __init__(self, vae: AutoencoderKL, weights_id: str = ""):
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)
        self.weights_id = weights_id  # where the weights came from; part of avatar cache keys

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    @property
    def device(self) -> torch.device:
        return self.vae.device

    def _to_model_input(self, faces_rgb: np.ndarray | torch.Tensor, mask_lower_half: bool) -> torch.Tensor:
        pixels = torch.as_tensor(faces_rgb).to(self.device)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (FACE_SIZE, FACE_SIZE, 3) or pixels.dtype != torch.uint8:
            raise ValueError(
                f"Expected uint8 faces of shape [N,{FACE_SIZE},{FACE_SIZE},3], got {tuple(pixels.shape)} {pixels.dtype}"
            )
        x = pixels.permute(0, 3, 1, 2).contiguous().to(torch.float32) / 255.0
        if mask_lower_half:
            x[:, :, FACE_SIZE // 2:, :] = 0.0
        x = (x - 0.5) / 0.5
        return x.to(self.dtype)

    @torch.inference_mode()
    def encode(self, faces_rgb: np.ndarray | torch.Tensor, mask_lower_half: bool = False) -> torch.Tensor:
        """``[N,256,256,3]`` uint8 RGB -> scaled posterior-mode latents ``[N,4,32,32]``.

        With ``mask_lower_half`` the rows 128..255 are blanked (they become -1
        after normalisation), as the official code does before encoding.
        """
        x = self._to_model_input(faces_rgb, mask_lower_half)
        return self.vae.encode(x).latent_dist.mode() * self.scaling_factor

    @property
    def images_per_pass(self) -> int | None:
        """How many 256x256 images one encoder or decoder pass takes: :data:`CPU_IMAGES_PER_PASS` on a CPU, all on
        other devices (there the caller's batch size bounds the memory)."""
        return CPU_IMAGES_PER_PASS if self.device.type == "cpu" else None

    def _passes(self, count: int, images_per_item: int = 1) -> list[slice]:
        step = max(1, (self.images_per_pass or count * images_per_item) // images_per_item)
        return [slice(start, start + step) for start in range(0, count, step)]

    @torch.inference_mode()
    def encode_masked_and_reference(self, faces_rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The UNet's 8 input channels per face: masked latents first, then the unmasked reference."""
        pieces = []
        for part in self._passes(len(faces_rgb), images_per_item=2):
            faces = faces_rgb[part]
            both = torch.cat([self._to_model_input(faces, True), self._to_model_input(faces, False)])
            masked, reference = (self.vae.encode(both).latent_dist.mode() * self.scaling_factor).chunk(2)
            pieces.append(torch.cat([masked, reference], dim=1))
        return torch.cat(pieces)

    def first_latent_row(self, from_row: int) -> int:
        """The first latent row decoded when output rows ``from_row..255`` are needed (with the halo)."""
        return max(0, min(from_row, FACE_SIZE - 1) // LATENT_SCALE - DECODE_HALO)

    @torch.inference_mode()
    def decode_on_device(self, latents: torch.Tensor, from_row: int = 0) -> torch.Tensor:
        """Scaled latents ``[N,4,32,32]`` -> ``[N,256,256,3]`` uint8 RGB on the model's device.

        The official clamp and rounding. With ``from_row > 0`` only the latent
        rows from :meth:`first_latent_row` down are decoded; the output rows
        above them are black (callers must not show them). ``from_row=0``
        decodes everything, exactly as the official code.
        """
        first = self.first_latent_row(from_row)
        latents = latents[:, :, first:]

        def run() -> torch.Tensor:
            scaled = (1 / self.scaling_factor) * latents.to(self.device, self.dtype)
            return torch.cat([self.vae.decode(scaled[part], return_dict=False)[0]
                              for part in self._passes(len(scaled))])

        image = run_with_fp16_fallback("The VAE decoder", self.vae, run)
        image = (image.float() / 2 + 0.5).clamp(0, 1)
        image = torch.round(image.permute(0, 2, 3, 1) * 255).to(torch.uint8)
        if first:
            image = torch.nn.functional.pad(image, (0, 0, 0, 0, first * LATENT_SCALE, 0))
        return image

    def decode(self, latents: torch.Tensor, from_row: int = 0) -> np.ndarray:
        """:meth:`decode_on_device`, copied to the CPU as a numpy array."""
        return self.decode_on_device(latents, from_row).cpu().numpy()
