"""Optimizers, and learning-rate schedules as functions of the optimizer step.

``optim.optimizer`` picks the UNet optimizer: ``adamw`` (official; two fp32
moments per weight, 8 bytes per parameter: 6.8 GB for the MuseTalk UNet) or
``adafactor`` (transformers' Adafactor with a fixed learning rate and no first
moment: factored second moments, 0.54 values per parameter of the MuseTalk
UNet, 1.8 GB).

Every schedule here is a :class:`torch.optim.lr_scheduler.LambdaLR` whose
factor depends only on the step. A checkpoint stores the step (``last_epoch``);
the factor functions come from the configuration of the run that loads it.
Resuming with another ``max_train_steps`` therefore puts every optimizer on the
new schedule at the restored step, instead of mixing the old and new lengths.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from .config import OptimConfig

__all__ = ["OPTIMIZERS", "build_optimizer", "cosine_annealing", "restore_scheduler"]

OPTIMIZERS = ("adamw", "adafactor")


def build_optimizer(config: OptimConfig, parameters: list[torch.nn.Parameter]) -> Optimizer:
    """The optimizer ``config.optimizer`` names, over ``parameters``."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, betas=tuple(config.betas),
                                 weight_decay=config.weight_decay, eps=config.eps)
    if config.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(parameters, lr=config.lr, beta1=None, weight_decay=config.weight_decay,
                         scale_parameter=False, relative_step=False, warmup_init=False)
    raise ValueError(f"Unknown optimizer {config.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.")


def cosine_annealing(optimizer: Optimizer, total_steps: int, eta_min: float) -> LambdaLR:
    """torch's ``CosineAnnealingLR`` closed form (from each group's lr down to ``eta_min`` over ``total_steps``),
    held at ``eta_min`` after ``total_steps`` instead of rising again."""

    def factor_for(base_lr: float) -> Callable[[int], float]:
        floor = eta_min / base_lr if base_lr > 0 else 0.0

        def factor(step: int) -> float:
            progress = min(step, total_steps) / max(total_steps, 1)
            return floor + (1.0 - floor) * (1.0 + math.cos(math.pi * progress)) / 2.0

        return factor

    return LambdaLR(optimizer, [factor_for(group["lr"]) for group in optimizer.param_groups])


def restore_scheduler(scheduler: LambdaLR, state: dict) -> None:
    """Load a scheduler's saved step and set its optimizer's learning rates to this schedule's value there."""
    scheduler.load_state_dict(state)
    for group, base_lr, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base_lr * factor(scheduler.last_epoch)
