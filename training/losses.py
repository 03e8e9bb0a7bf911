"""Loss functions of the two training stages (the networks live in ``vgg``, ``discriminator``, ``syncnet``).

Adversarial terms are least-squares GAN losses summed over discriminator
scales; feature matching compares the discriminator's block activations of
the real and the generated image with per-block weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "DiscriminatorOutput",
    "crop_boxes",
    "feature_matching_loss",
    "lsgan_discriminator_loss",
    "lsgan_generator_loss",
]

DiscriminatorOutput = dict[float, tuple[list[torch.Tensor], torch.Tensor]]


def lsgan_generator_loss(fake: DiscriminatorOutput) -> torch.Tensor:
    """``mean((1 - D(fake))^2)`` summed over scales."""
    return sum(((1 - scores) ** 2).mean() for _, scores in fake.values())


def lsgan_discriminator_loss(real: DiscriminatorOutput, fake: DiscriminatorOutput) -> torch.Tensor:
    """``mean((1 - D(real))^2 + D(fake)^2)`` summed over scales."""
    return sum(((1 - real[s][1]) ** 2 + fake[s][1] ** 2).mean() for s in real)


def feature_matching_loss(real: DiscriminatorOutput, fake: DiscriminatorOutput,
                          weights: Sequence[float]) -> torch.Tensor:
    """``sum_i w_i * mean|D_i(real) - D_i(fake)|`` over blocks and scales; real features carry no gradient."""
    loss = 0.0
    for scale, (real_features, _) in real.items():
        fake_features = fake[scale][0]
        if len(weights) != len(real_features):
            raise ValueError(f"feature_matching has {len(weights)} weights for {len(real_features)} blocks")
        for weight, want, got in zip(weights, real_features, fake_features):
            if weight:
                loss = loss + weight * (want.detach() - got).abs().mean()
    return loss


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Cut integer boxes ``[N, 4]`` (x1, y1, x2, y2; end-exclusive) out of ``[N, C, H, W]``, resized (bilinear)."""
    crops = []
    for image, (x1, y1, x2, y2) in zip(images, boxes.tolist()):
        region = image[:, int(y1):int(y2), int(x1):int(x2)].unsqueeze(0)
        crops.append(F.interpolate(region, size=(size, size), mode="bilinear", align_corners=False))
    return torch.cat(crops)
