"""The training loop shared by the UNet and SyncNet trainers: steps, logging, checkpoints, exact resume.

A subclass builds its networks, optimizer and data loader, prepares them with
``self.accelerator`` and implements :meth:`TrainingLoop.training_step` (one
micro-batch) plus the hooks that name what a checkpoint holds. Steps are
optimizer steps; with gradient accumulation each takes several micro-batches.
Because every sample is a function of its index (see :mod:`training.data`),
resuming restores the states and skips the micro-batches already consumed,
which reproduces the uninterrupted run.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, parse_flag_from_env

from musetalk_lib.checkpoint import load_state_dict
from musetalk_lib.progress import TerminalProgress

from . import runs
from .config import config_to_dict

__all__ = ["TrainingLoop"]


class TrainingLoop:
    """Drives ``training_step`` until ``max_train_steps``; checkpoints as ``<weights_prefix>-<step>.pth``."""

    weights_prefix = "model"
    weights_suffix = ".pth"

    def __init__(self, config: Any, accelerator: Accelerator | None = None):
        self.config = config
        self.accelerator = accelerator or Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=config.mixed_precision,
        )
        if parse_flag_from_env("ACCELERATE_USE_FSDP") and self.accelerator.distributed_type != DistributedType.FSDP:
            raise RuntimeError(
                f"FSDP was requested (accelerate launch --use_fsdp or a config with distributed_type: FSDP) but "
                f"accelerate set up {self.accelerator.distributed_type.value}: it shards models over GPUs (or other "
                "accelerators) only, and on CPU would train unsharded with DDP. On CPU use --multi_gpu (DDP).")
        self.device = self.accelerator.device
        self.run_dir = Path(config.output_dir) / config.exp_name
        self.global_step = 0
        self.model: torch.nn.Module
        self.dataloader: torch.utils.data.DataLoader

    # ------------------------------------------------------------------ hooks
    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One micro-batch (forward, backward, optimizer steps when gradients sync); returns losses."""
        raise NotImplementedError

    def weights_state(self) -> dict[str, torch.Tensor]:
        """What ``<prefix>-<step>.pth`` holds (the trained network's plain state dict by default).

        Every process calls it: under FSDP, gathering the full weights is a collective operation.
        """
        return self.accelerator.get_state_dict(self.model)

    def load_weights_state(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.accelerator.unwrap_model(self.model).load_state_dict(state_dict, strict=True)

    def save_weights(self, weights: dict, path: Path) -> None:
        """Write the weights file of a checkpoint (``torch.save`` of :meth:`weights_state` by default)."""
        runs.save_atomic(weights, path)

    def load_weights(self, path: Path) -> None:
        """Read back what :meth:`save_weights` wrote."""
        self.load_weights_state(load_state_dict(path))

    def training_state(self) -> dict:
        """Optimizer/scheduler/auxiliary states (tensors and plain containers only)."""
        raise NotImplementedError

    def load_training_state(self, state: dict) -> None:
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        """Periodic validation on the main process; returned values are logged."""
        return {}

    def learning_rate(self) -> float:
        raise NotImplementedError

    # ------------------------------------------------------------------ checkpoints
    def weights_path(self, step: int) -> Path:
        return self.run_dir / f"{self.weights_prefix}-{step}{self.weights_suffix}"

    def save_checkpoint(self) -> Path:
        """Write ``<prefix>-<step>.pth`` and ``state-<step>.pt``; returns the weights file."""
        accelerator, step = self.accelerator, self.global_step
        accelerator.wait_for_everyone()
        weights = self.weights_state()
        if accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.save_weights(weights, self.weights_path(step))
            state = {"step": step, "rng": runs.capture_rng_state(), **self.training_state()}
            runs.save_atomic(state, self.run_dir / f"state-{step}.pt")
            runs.prune_checkpoints(self.run_dir, self.config.checkpoints_total_limit, (self.weights_prefix,))
        accelerator.wait_for_everyone()
        return self.weights_path(step)

    def load_checkpoint(self, state_path: Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (weights from the file beside it)."""
        state = runs.load_training_state(state_path)
        step = int(state["step"])
        self.load_weights(state_path.with_name(self.weights_path(step).name))
        self.load_training_state(state)
        runs.restore_rng_state(state["rng"])
        self.global_step = step

    # ------------------------------------------------------------------ loop
    def train(self) -> int:
        """Run to ``max_train_steps`` (resuming first if ``resume_from`` is set); returns the last step."""
        config, accelerator = self.config, self.accelerator
        if accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            runs.save_config(config_to_dict(config), self.run_dir / "config.yaml")
        if config.resume_from:
            self.load_checkpoint(runs.find_checkpoint(self.run_dir, config.resume_from))
        logger = runs.MetricLogger(self.run_dir / "logs", enabled=accelerator.is_main_process)
        logger.truncate_after(self.global_step)
        accumulation = config.gradient_accumulation_steps
        dataloader = self.dataloader
        if self.global_step:
            dataloader = accelerator.skip_first_batches(dataloader, self.global_step * accumulation)
        progress = TerminalProgress(enabled=accelerator.is_main_process, unit="step")
        sums: dict[str, float] = defaultdict(float)
        for batch in dataloader:
            if self.global_step >= config.max_train_steps:
                break
            for key, value in self.training_step(batch).items():
                sums[key] += value / accumulation
            if not accelerator.sync_gradients:
                continue
            self.global_step += 1
            names = sorted(sums)
            reduced = accelerator.reduce(torch.tensor([sums[n] for n in names], device=self.device), "mean")
            values = dict(zip(names, reduced.tolist()))
            sums.clear()
            if not math.isfinite(values["loss"]):
                raise FloatingPointError(f"The training loss is {values['loss']} at step {self.global_step}")
            values["lr"] = self.learning_rate()
            logger.log(self.global_step, values)
            if config.validation_steps and self.global_step % config.validation_steps == 0:
                logger.log(self.global_step, self.validate(), "validation")
                accelerator.wait_for_everyone()
            progress(config.exp_name, self.global_step, config.max_train_steps,
                     f"loss={values['loss']:.4f}" if self.global_step % config.log_steps == 0 else "")
            if self.global_step % config.checkpointing_steps == 0 or self.global_step == config.max_train_steps:
                self.save_checkpoint()
        progress.close()
        logger.close()
        return self.global_step
