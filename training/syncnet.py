"""SyncNet for the lip-sync loss: the LatentSync-style two-tower network the official stage 2 uses.

Each tower is a :class:`DownEncoder`: a 3x3 input conv, one residual block per
level (GroupNorm, SiLU, 3x3 conv, twice, with a 1x1 shortcut when the width
changes), a strided 3x3 conv after the block where the level downsamples (zero
padding of one pixel on the bottom/right side of a strided axis, one on both
sides of an unstrided axis), and a final GroupNorm + ReLU. The audio tower
reads a ``[1, 80, 52]`` mel window, the visual tower the lower halves of 16
face crops stacked on channels (``[48, 128, 256]``, values in [-1, 1]). Both
end at 1x1 (other input sizes are average-pooled to 1x1), and the embeddings
are L2-normalised; their cosine similarity is the sync score.

Module names follow LatentSync's checkpoints, so ``latentsync_syncnet.pt``
(``{"state_dict": ...}``) loads with :func:`load_syncnet`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from musetalk_lib.checkpoint import load_state_dict

from .config import EncoderConfig, SyncNetConfig

__all__ = ["DownEncoder", "ResidualDownBlock", "SyncNet", "load_syncnet", "sync_loss"]


def _pair(factor: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(factor, int):
        return factor, factor
    height, width = factor
    return int(height), int(width)


class ResidualDownBlock(nn.Module):
    """Pre-activation residual block, then an optional strided 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, downsample: int | Sequence[int],
                 norm_num_groups: int = 32, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(norm_num_groups, out_channels, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        stride = _pair(downsample)
        if stride == (1, 1):
            self.downsample_conv = None
        else:
            self.downsample_conv = nn.Conv2d(out_channels, out_channels, 3, stride=stride)
            pad_h = (0, 1) if stride[0] > 1 else (1, 1)
            pad_w = (0, 1) if stride[1] > 1 else (1, 1)
            self.padding = (*pad_w, *pad_h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        h = h + shortcut
        if self.downsample_conv is not None:
            h = self.downsample_conv(F.pad(h, self.padding))
        return h


class DownEncoder(nn.Module):
    """Image-like input -> ``[B, C]`` embedding (not yet normalised)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        if len(config.block_out_channels) != len(config.downsample_factors):
            raise ValueError("block_out_channels and downsample_factors must have the same length")
        channels = config.block_out_channels
        self.conv_in = nn.Conv2d(config.in_channels, channels[0], 3, padding=1)
        blocks, previous = [], channels[0]
        for width, factor in zip(channels, config.downsample_factors):
            blocks.append(ResidualDownBlock(previous, width, factor, config.norm_num_groups, config.dropout))
            previous = width
        self.down_blocks = nn.ModuleList(blocks)
        self.norm_out = nn.GroupNorm(config.norm_num_groups, channels[-1], eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        h = F.relu(self.norm_out(h))
        if h.shape[-2:] != (1, 1):
            h = F.adaptive_avg_pool2d(h, 1)
        return h.flatten(1)


class SyncNet(nn.Module):
    """Audio and visual towers; ``forward`` returns L2-normalised ``(visual, audio)`` embeddings."""

    def __init__(self, config: SyncNetConfig):
        super().__init__()
        if config.visual_encoder.in_channels % 3:
            raise ValueError("The visual encoder reads RGB frames stacked on channels: in_channels must be 3 x frames")
        self.config = config
        self.audio_encoder = DownEncoder(config.audio_encoder)
        self.visual_encoder = DownEncoder(config.visual_encoder)

    @property
    def num_frames(self) -> int:
        """Video frames per sample (visual input channels / 3)."""
        return self.config.visual_encoder.in_channels // 3

    def forward(self, frames: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``frames [B, 3*F, H, W]`` in [-1, 1], ``mel [B, 1, 80, S]`` -> unit embeddings ``([B, C], [B, C])``."""
        visual = F.normalize(self.visual_encoder(frames), dim=1)
        audio = F.normalize(self.audio_encoder(mel), dim=1)
        return visual, audio

    @staticmethod
    def stack_frames(frames: torch.Tensor) -> torch.Tensor:
        """``[B, F, 3, 256, 256]`` face crops -> visual input ``[B, 3*F, 128, 256]`` (lower halves)."""
        lower = frames[:, :, :, frames.shape[-2] // 2:, :]
        return lower.reshape(lower.shape[0], -1, *lower.shape[-2:])


def sync_loss(visual: torch.Tensor, audio: torch.Tensor, target: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Binary cross-entropy on the cosine similarity clamped to [0, 1] (1 = in sync)."""
    similarity = F.cosine_similarity(visual.float(), audio.float(), dim=1).clamp(0.0, 1.0)
    target = torch.as_tensor(target, dtype=similarity.dtype, device=similarity.device).expand_as(similarity)
    with torch.autocast(similarity.device.type, enabled=False):  # BCE refuses to run under autocast
        return F.binary_cross_entropy(similarity, target)


def load_syncnet(config: SyncNetConfig, weights: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu") -> SyncNet:
    """Build a SyncNet and (when ``weights`` is given) load a LatentSync-format or our own checkpoint strictly."""
    model = SyncNet(config)
    if weights is not None:
        state_dict = load_state_dict(weights)
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as error:
            raise ValueError(f"{weights} does not match the SyncNet architecture in the config: {error}") from error
    return model.to(device)
