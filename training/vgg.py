"""VGG19 perceptual loss over an image pyramid, as the official MuseTalk training computes it.

The VGG19 weights come from a user-supplied file in torchvision's layout
(``features.N.weight`` / ``features.N.bias``, e.g. ``vgg19-dcbb9e9d.pth``);
torchvision itself is not needed. Features are taken after relu1_1, relu2_1,
relu3_1, relu4_1 and relu5_1 (layer slices [0:2], [2:7], [7:12], [12:21],
[21:30] of ``features``).

The loss resizes both images to 224x224 (bilinear), builds a pyramid at
scales 1, 1/2, 1/4, 1/8 (Gaussian anti-aliasing, then subsampling), and sums
the weighted mean absolute feature differences over scales and layers,
divided by the number of layers. Inputs are in [-1, 1] and, like the official
code, are normalised with the ImageNet mean/std as if they were in [0, 1]
unless ``rescale_input`` is set.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from musetalk_lib.checkpoint import load_state_dict

__all__ = ["ImagePyramid", "PerceptualLoss", "VGG19Features", "load_vgg19"]

VGG19_CHANNELS = (64, 128, 256, 512, 512)
_CONVS_PER_BLOCK = (2, 2, 4, 4, 1)  # only the first conv of block 5 is needed (relu5_1)
_SLICE_ENDS = (2, 7, 12, 21, 30)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19Features(nn.Module):
    """The first 30 layers of torchvision's ``vgg19().features``; returns the five relu*_1 activations.

    ``channels`` defaults to VGG19's widths; smaller widths build a cheap
    network with the same layer layout (for tests).
    """

    def __init__(self, channels: Sequence[int] = VGG19_CHANNELS, rescale_input: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        previous = 3
        for block, (width, convs) in enumerate(zip(channels, _CONVS_PER_BLOCK)):
            if block:
                layers.append(nn.MaxPool2d(2, 2))
            for _ in range(convs):
                layers += [nn.Conv2d(previous, width, 3, padding=1), nn.ReLU()]
                previous = width
        self.features = nn.Sequential(*layers)
        assert len(self.features) == _SLICE_ENDS[-1]
        self.rescale_input = rescale_input
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.rescale_input:
            x = (x + 1) / 2
        h = (x - self.mean) / self.std
        outputs, start = [], 0
        for end in _SLICE_ENDS:
            for layer in self.features[start:end]:
                h = layer(h)
            outputs.append(h)
            start = end
        return outputs


def load_vgg19(path: str | os.PathLike, channels: Sequence[int] = VGG19_CHANNELS,
               rescale_input: bool = False) -> VGG19Features:
    """Load VGG19 features from a torchvision-format state dict (classifier and later layers are ignored)."""
    model = VGG19Features(channels, rescale_input)
    state_dict = load_state_dict(path, dtype=torch.float32)
    wanted = model.state_dict().keys()
    missing = [key for key in wanted if key not in state_dict]
    if missing:
        raise ValueError(
            f"{path} is not a torchvision VGG19 state dict: missing {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}"
        )
    model.load_state_dict({key: state_dict[key] for key in wanted}, strict=True)
    return model.eval().requires_grad_(False)


class _GaussianDownsample(nn.Module):
    """Blur with a Gaussian of sigma ``(1/scale - 1) / 2`` then keep every ``1/scale``-th pixel."""

    def __init__(self, scale: float, channels: int = 3):
        super().__init__()
        sigma = (1.0 / scale - 1.0) / 2.0
        size = 2 * round(sigma * 4) + 1
        coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        kernel_1d = torch.exp(-(coords**2) / (2 * sigma**2))
        kernel = torch.outer(kernel_1d, kernel_1d)
        kernel = kernel / kernel.sum()
        self.register_buffer("kernel", kernel.expand(channels, 1, size, size).clone(), persistent=False)
        self.padding = size // 2
        self.step = int(round(1.0 / scale))
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blurred = F.conv2d(F.pad(x, [self.padding] * 4), self.kernel.to(x.dtype), groups=self.channels)
        return blurred[:, :, :: self.step, :: self.step]


class ImagePyramid(nn.Module):
    """``x -> {scale: x downsampled by scale}``; scale 1 is the input itself."""

    def __init__(self, scales: Sequence[float], channels: int = 3):
        super().__init__()
        self.scales = [float(s) for s in scales]
        self.downsamplers = nn.ModuleDict(
            {_key(s): _GaussianDownsample(s, channels) for s in self.scales if not math.isclose(s, 1.0)}
        )

    def forward(self, x: torch.Tensor) -> dict[float, torch.Tensor]:
        return {s: x if math.isclose(s, 1.0) else self.downsamplers[_key(s)](x) for s in self.scales}


def _key(scale: float) -> str:
    return str(scale).replace(".", "_")


class PerceptualLoss(nn.Module):
    """Multi-scale VGG19 L1 feature loss between a prediction and its (fixed) target."""

    def __init__(self, vgg: VGG19Features, scales: Sequence[float] = (1.0, 0.5, 0.25, 0.125),
                 layer_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0, 1.0), size: int = 224):
        super().__init__()
        if len(layer_weights) != len(_SLICE_ENDS):
            raise ValueError(f"layer_weights needs {len(_SLICE_ENDS)} entries, got {len(layer_weights)}")
        self.vgg = vgg
        self.pyramid = ImagePyramid(scales)
        self.layer_weights = [float(w) for w in layer_weights]
        self.size = size

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """Bilinear resize to the VGG input size (224 by default)."""
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        predicted = self.pyramid(self.resize(prediction))
        with torch.no_grad():
            targets = self.pyramid(self.resize(target))
        loss = prediction.new_zeros(())
        for scale in self.pyramid.scales:
            features = self.vgg(predicted[scale])
            with torch.no_grad():
                target_features = self.vgg(targets[scale])
            for weight, got, want in zip(self.layer_weights, features, target_features):
                loss = loss + weight * (got - want).abs().mean()
        return loss / len(self.layer_weights)
