"""The MuseTalk UNet: a diffusers ``UNet2DConditionModel`` run once at timestep 0.

Input is 8 latent channels (masked face, then reference face, 32x32 each) and
50 audio tokens of 384 features (Whisper chunks). A fixed sinusoidal positional
encoding is added to the audio tokens, exactly as the official inference does.
Output is the 4-channel latent of the generated face.
"""

from __future__ import annotations

import json
import math
import os

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from .checkpoint import load_model_weights

__all__ = [
    "AUDIO_FEATURE_DIM",
    "MuseTalkUNet",
    "build_unet",
    "load_unet",
    "load_unet_config",
    "positional_encoding",
]

AUDIO_FEATURE_DIM = 384
LATENT_CHANNELS_IN = 8
LATENT_CHANNELS_OUT = 4


def load_unet_config(path: str | os.PathLike) -> dict:
    """Read an official ``musetalk.json``, dropping diffusers metadata keys (``_class_name`` ...)."""
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    config = {key: value for key, value in config.items() if not key.startswith("_")}
    in_channels, out_channels = config.get("in_channels"), config.get("out_channels")
    if (in_channels, out_channels) != (LATENT_CHANNELS_IN, LATENT_CHANNELS_OUT):
        raise ValueError(
            f"{path} builds a UNet with {in_channels} input and {out_channels} output channels; MuseTalk needs "
            f"{LATENT_CHANNELS_IN} and {LATENT_CHANNELS_OUT}. An early upload of musetalkV15/musetalk.json was "
            "wrong (official issue #276): download it again, or use the v1.0 musetalk.json, which is identical."
        )
    return config


def build_unet(config: dict, device: str | torch.device = "cpu") -> UNet2DConditionModel:
    """Instantiate the diffusers UNet from a config dict (randomly initialised)."""
    with torch.device(device):
        return UNet2DConditionModel(**config)


def positional_encoding(num_positions: int, dim: int = AUDIO_FEATURE_DIM) -> torch.Tensor:
    """The official audio-token encoding: interleaved sin/cos, float32, shape ``[num_positions, dim]``."""
    position = torch.arange(num_positions, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    encoding = torch.zeros(num_positions, dim, dtype=torch.float32)
    encoding[:, 0::2] = torch.sin(position * div_term)
    encoding[:, 1::2] = torch.cos(position * div_term)
    return encoding


class _FixedTimestepEmbedding(nn.Module):
    """Stands in for the UNet's time MLP: MuseTalk always runs at one timestep."""

    def __init__(self, embedding: torch.Tensor):
        super().__init__()
        self.register_buffer("embedding", embedding, persistent=False)

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        return self.embedding.expand(sample.shape[0], -1)


class MuseTalkUNet(nn.Module):
    """Inference wrapper: positional encoding on the audio, fixed timestep, one forward pass.

    The time embedding is computed once here and reused by every call. The
    wrapped ``unet`` therefore no longer accepts other timesteps; train on a
    plain :class:`UNet2DConditionModel` instead.
    """

    def __init__(self, unet: UNet2DConditionModel, timestep: int = 0):
        super().__init__()
        with torch.no_grad():
            projected = unet.time_proj(torch.tensor([timestep], device=unet.device))
            time_mlp = unet.time_embedding
            embedding = time_mlp(projected.to(next(time_mlp.parameters()).dtype))
        unet.time_embedding = _FixedTimestepEmbedding(embedding)
        self.unet = unet
        self.timestep = timestep
        self.register_buffer("positional_encoding", positional_encoding(50), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def _encoding_for(self, num_tokens: int) -> torch.Tensor:
        if num_tokens > self.positional_encoding.shape[0]:
            self.positional_encoding = positional_encoding(num_tokens).to(self.positional_encoding.device)
        return self.positional_encoding[:num_tokens].float()

    @torch.inference_mode()
    def forward(self, latents: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """``latents [B,8,32,32]`` + ``audio_features [B,N,384]`` (no encoding yet) -> ``[B,4,32,32]``.

        Inputs may be on any device and dtype; the result is in the model's dtype and on its device.
        """
        audio = audio_features.to(self.device, torch.float32) + self._encoding_for(audio_features.shape[1])
        sample = latents.to(self.device, self.dtype)
        timestep = torch.zeros((), device=self.device, dtype=torch.long)
        return self.unet(sample, timestep, encoder_hidden_states=audio.to(self.dtype), return_dict=False)[0]


def load_unet(
    config_path: str | os.PathLike,
    weights_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> MuseTalkUNet:
    """Build the UNet from ``musetalk.json`` and load official weights strictly.

    ``weights_path`` is ``musetalkV15/unet.pth``, ``musetalk/pytorch_model.bin``
    or a ``.safetensors`` conversion of either.

    Raises:
        ValueError: the config does not build a MuseTalk UNet.
        CheckpointError: the weights file is damaged, unsafe, or does not match the config.
    """
    unet = build_unet(load_unet_config(config_path), device="meta")
    load_model_weights(unet, weights_path, dtype, hint=f"Check that it and {config_path} come from the same "
                                                       "MuseTalk version folder.")
    # Wrap first, then move: the wrapper's buffers (the fixed time embedding, the
    # positional encoding) must travel with the network.
    return MuseTalkUNet(unet.eval().requires_grad_(False)).to(device)
