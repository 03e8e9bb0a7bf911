"""BiSeNet face parsing (19 CelebAMask-HQ classes), as used by MuseTalk's blending.

The module names match the official ``79999_iter.pth`` state dict, which
loads strictly. Images are resized to 512x512 with Pillow's bilinear filter
(antialiased when shrinking) and normalised with the ImageNet statistics.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .checkpoint import load_model_weights
from .devices import run_with_fp16_fallback
from .weights import path_identity

__all__ = ["PARSING_SIZE", "BiSeNet", "FaceParser", "load_face_parser"]

PARSING_SIZE = 512
NUM_CLASSES = 19
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = F.relu(self.bn1(self.conv1(x)))
        residual = self.bn2(self.conv2(residual))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class ResNet18(nn.Module):
    """Backbone returning the 1/8, 1/16 and 1/32 feature maps."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32


class AttentionRefinement(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels, 3)
        self.conv_atten = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        attention = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))
        return feat * attention


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3)
        self.conv_head16 = ConvBNReLU(128, 128, 3)
        self.conv_avg = ConvBNReLU(512, 128, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        global_context = self.conv_avg(F.adaptive_avg_pool2d(feat32, 1))
        sum32 = self.arm32(feat32) + F.interpolate(global_context, feat32.shape[2:], mode="nearest")
        up32 = self.conv_head32(F.interpolate(sum32, feat16.shape[2:], mode="nearest"))
        sum16 = self.arm16(feat16) + up32
        up16 = self.conv_head16(F.interpolate(sum16, feat8.shape[2:], mode="nearest"))
        return feat8, up16


class FeatureFusion(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.convblk = ConvBNReLU(in_channels, out_channels, 1)
        self.conv1 = nn.Conv2d(out_channels, out_channels // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels // 4, out_channels, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        attention = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))))
        return feat * attention + feat


class SegmentationHead(nn.Module):
    def __init__(self, in_channels: int, mid_channels: int, num_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, mid_channels, 3)
        self.conv_out = nn.Conv2d(mid_channels, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Face-parsing network; ``forward`` returns class logits at the input resolution."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = SegmentationHead(256, 256, num_classes)
        # Auxiliary training heads: present in the official weights, unused at inference.
        self.conv_out16 = SegmentationHead(128, 64, num_classes)
        self.conv_out32 = SegmentationHead(128, 64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat8, context8 = self.cp(x)
        logits = self.conv_out(self.ffm(feat8, context8))
        return F.interpolate(logits, x.shape[2:], mode="bilinear", align_corners=True)


def load_face_parser(path: str | os.PathLike, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> FaceParser:
    """Load ``79999_iter.pth`` (or its safetensors conversion) strictly, without unsafe unpickling."""
    with torch.device("meta"):
        net = BiSeNet()
    load_model_weights(net, path, dtype)
    # Wrap first, then move: the normalisation buffers must travel with the network.
    return FaceParser(net.eval().requires_grad_(False), weights_id=path_identity(path)).to(device)


class FaceParser(nn.Module):
    """Runs BiSeNet on RGB images of any size and returns 512x512 label maps."""

    def __init__(self, net: BiSeNet, weights_id: str = "", chunk_size: int = 8):
        super().__init__()
        self.net = net
        self.chunk_size = chunk_size  # images per forward pass in :meth:`labels`
        self.weights_id = weights_id  # where the weights came from; part of avatar cache keys
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    @staticmethod
    def resize_for_parsing(image_rgb: np.ndarray) -> np.ndarray:
        """Pillow bilinear resize to 512x512 (aspect ratio not kept), as the official preprocessing does."""
        resized = Image.fromarray(np.ascontiguousarray(image_rgb)).resize((PARSING_SIZE, PARSING_SIZE), Image.BILINEAR)
        return np.array(resized)

    def normalize(self, resized_rgb: np.ndarray) -> torch.Tensor:
        """``[N,512,512,3]`` uint8 -> ImageNet-normalised float tensor ``[N,3,512,512]``."""
        pixels = torch.from_numpy(np.ascontiguousarray(resized_rgb)).to(self.device)
        x = pixels.permute(0, 3, 1, 2).contiguous().float().div(255)
        return (x - self.mean) / self.std

    def _run(self, resized_rgb: np.ndarray) -> torch.Tensor:
        """Logits ``[N,19,512,512]`` in the network's dtype and on its device (fp16 overflow falls back to fp32)."""
        return run_with_fp16_fallback("The face parser", self.net,
                                      lambda: self.net(self.normalize(resized_rgb).to(self.dtype)))

    @torch.inference_mode()
    def logits_from_resized(self, resized_rgb: np.ndarray) -> torch.Tensor:
        """Logits ``[N,19,512,512]`` (float32) for images already resized to 512x512."""
        return self._run(resized_rgb).float()

    def logits(self, images_rgb: Sequence[np.ndarray]) -> torch.Tensor:
        """Logits ``[N,19,512,512]`` for RGB ``uint8`` images of any size."""
        return self.logits_from_resized(np.stack([self.resize_for_parsing(image) for image in images_rgb]))

    @torch.inference_mode()
    def labels(self, images_rgb: Sequence[np.ndarray]) -> np.ndarray:
        """Per-pixel class labels ``[N,512,512]`` uint8 (argmax; ties go to the lower class).

        Runs ``chunk_size`` images at a time and takes the argmax in the
        network's dtype (exact: widening to fp32 changes no value), so the
        full-size logits are never held for a whole batch.
        """
        labels = []
        for start in range(0, len(images_rgb), self.chunk_size):
            resized = np.stack([self.resize_for_parsing(image) for image in images_rgb[start:start + self.chunk_size]])
            labels.append(self._run(resized).argmax(dim=1).to(torch.uint8).cpu())
        return torch.cat(labels).numpy()
