"""Multi-scale patch discriminator (Pix2Pix style) for the stage 2 adversarial losses.

Each scale has a stack of down blocks: a 4x4 convolution without padding,
instance normalisation (not in the first block), LeakyReLU(0.2) and 2x2
average pooling (not after the last block), followed by a 1x1 convolution to
one channel: a map of real/fake scores over image patches. With
``spectral_norm`` every convolution is spectrally normalised. The official
settings are one scale, 32 base channels doubling per block up to 512, four
blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .vgg import ImagePyramid

__all__ = ["MultiScaleDiscriminator", "PatchDiscriminator"]


def _conv(in_channels: int, out_channels: int, kernel_size: int, normalise: bool) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size)
    return spectral_norm(conv) if normalise else conv


class _DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, norm: bool, pool: bool, sn: bool):
        super().__init__()
        self.conv = _conv(in_channels, out_channels, 4, sn)
        self.norm = nn.InstanceNorm2d(out_channels, affine=True) if norm else None
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        x = F.leaky_relu(x, 0.2)
        return F.avg_pool2d(x, 2) if self.pool else x


class PatchDiscriminator(nn.Module):
    """Image ``[B, 3, H, W]`` in [-1, 1] -> (block features, patch scores ``[B, 1, h, w]``)."""

    def __init__(self, in_channels: int = 3, block_expansion: int = 32, max_features: int = 512,
                 num_blocks: int = 4, spectral_norm: bool = True):
        super().__init__()
        blocks = []
        for i in range(num_blocks):
            width_in = in_channels if i == 0 else min(max_features, block_expansion * 2**i)
            width_out = min(max_features, block_expansion * 2 ** (i + 1))
            blocks.append(_DownBlock(width_in, width_out, norm=i != 0, pool=i != num_blocks - 1, sn=spectral_norm))
        self.blocks = nn.ModuleList(blocks)
        self.head = _conv(width_out, 1, 1, spectral_norm)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features, self.head(x)


class MultiScaleDiscriminator(nn.Module):
    """One :class:`PatchDiscriminator` per pyramid scale; returns ``{scale: (features, scores)}``."""

    def __init__(self, scales: Sequence[float] = (1.0,), **kwargs):
        super().__init__()
        self.scales = [float(s) for s in scales]
        self.pyramid = ImagePyramid(self.scales)
        self.discriminators = nn.ModuleDict({_key(s): PatchDiscriminator(**kwargs) for s in self.scales})

    def forward(self, x: torch.Tensor) -> dict[float, tuple[list[torch.Tensor], torch.Tensor]]:
        levels = self.pyramid(x)
        return {s: self.discriminators[_key(s)](levels[s]) for s in self.scales}


def _key(scale: float) -> str:
    return "scale_" + str(scale).replace(".", "_")
