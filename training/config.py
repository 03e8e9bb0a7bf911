"""Typed training configurations read from YAML.

Every section is a dataclass whose defaults are the official MuseTalk v1.5
settings (stage 1 where the stages differ). A YAML file only needs the keys it
changes; unknown keys are errors, so a typo never silently trains with a
default. ``--set section.key=value`` on the command line overrides single
values (the value is parsed as YAML).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = [
    "DataConfig",
    "DiscriminatorConfig",
    "EncoderConfig",
    "LoraTrainingConfig",
    "LossConfig",
    "ModelPaths",
    "OptimConfig",
    "SyncNetConfig",
    "SyncNetDataConfig",
    "SyncNetTrainConfig",
    "TrainConfig",
    "UNetTrainingConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
]

ConfigT = TypeVar("ConfigT")


@dataclass
class ModelPaths:
    """Where the networks come from. Paths are relative to the working directory."""

    unet_config: str = "./models/musetalkV15/musetalk.json"
    init_unet: str | None = None  # None: random init (official stage 1); else a plain UNet state dict
    vae: str = "./models/sd-vae"
    vgg19: str | None = "./models/vgg/vgg19-dcbb9e9d.pth"  # torchvision-format VGG19 state dict
    syncnet: str | None = None  # LatentSync-format SyncNet weights (stage 2 sync loss)
    syncnet_config: str | None = "training/configs/syncnet.yaml"  # its architecture (the ``model`` section)


@dataclass
class DataConfig:
    """What a training sample is and how its frames are chosen."""

    train_root: str = "./data/train"
    val_root: str | None = None  # None: validation images come from the training clips
    n_sample_frames: int = 1  # consecutive target frames per sample (official: 1 in stage 1, 16 in stage 2)
    sampling: str = "sis"  # reference strategy: sis | pose | mouth | random
    top_k_ratio: float = 0.51  # official code; the paper says 0.4
    reference_selection: str = "paper"  # paper: only candidates > min_reference_gap frames away | official
    min_reference_gap: int = 5  # paper: never within this many frames of the target; official: redrawn if closer
    crop_type: str = "crop_resize"  # crop_resize | dynamic_margin_crop_resize
    margin_mean: float = 10.0  # dynamic margin ~ N(mean, std) clipped to [0, max] pixels below the chin
    margin_std: float = 10.0
    margin_max: int = 20
    min_face_size: int = 150  # clips whose median face width is smaller are not used
    min_clip_frames: int | None = None  # None: 10 x n_sample_frames, as the official dataset requires
    audio_context_left: int = 2  # audio window T: video frames of context on each side (50 tokens at 2/2)
    audio_context_right: int = 2
    num_workers: int = 4


@dataclass
class UNetTrainingConfig:
    """How the UNet is run during training."""

    audio_positional_encoding: bool = True  # the official trainer omits it by mistake (issue #136)
    gradient_checkpointing: bool = True
    vae_gradient_checkpointing: bool = False


@dataclass
class LoraTrainingConfig:
    """A LoRA adapter on the UNet (identity fine-tuning); rank 0 trains the whole UNet (stages 1 and 2)."""

    rank: int = 0
    alpha: float | None = None  # None: the rank (scale 1)
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"])
    dropout: float = 0.0


@dataclass
class LossConfig:
    """Loss weights (0 switches a term and its networks off) and the perceptual-loss layout."""

    l1: float = 1.0
    vgg: float = 0.01
    gan: float = 0.0  # image discriminator, least squares (official stage 2: 0.01)
    mouth_gan: float = 0.0  # mouth discriminator (official stage 2: 0.01)
    feature_matching: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    sync: float = 0.0  # SyncNet loss (official stage 2: 0.05)
    start_gan: int = 1000  # adversarial terms are off before this optimizer step (feature matching is not)
    mouth_padding: int = 10  # pixels (256 scale) added left and right of the lip landmarks
    perceptual_size: int = 224
    pyramid_scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25, 0.125])
    vgg_layer_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0, 1.0])
    vgg_channels: list[int] = field(default_factory=lambda: [64, 128, 256, 512, 512])
    vgg_rescale_input: bool = False  # official quirk: [-1, 1] images get ImageNet normalisation unchanged


@dataclass
class DiscriminatorConfig:
    """The patch discriminators (image and mouth) and their optimizer."""

    scales: list[float] = field(default_factory=lambda: [1.0])
    block_expansion: int = 32
    max_features: int = 512
    num_blocks: int = 4
    spectral_norm: bool = True
    lr: float = 5e-6
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    weight_decay: float = 1e-2
    eps: float = 1e-8
    eta_min: float = 1e-6  # cosine annealing floor


@dataclass
class OptimConfig:
    """The UNet optimizer and learning-rate schedule (lengths in optimizer steps)."""

    lr: float = 2e-5
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    weight_decay: float = 1e-2
    eps: float = 1e-8
    optimizer: str = "adamw"  # adamw | adafactor (factored second moments, no first moment: memory-light)
    lr_scheduler: str = "linear"  # any diffusers.optimization scheduler name
    warmup_steps: int = 1000
    max_grad_norm: float = 1.0


@dataclass
class TrainConfig:
    """A stage 1 or stage 2 run."""

    exp_name: str = "stage1"
    output_dir: str = "./exp_out"
    seed: int = 41
    train_batch_size: int = 32  # samples per process per micro-batch
    gradient_accumulation_steps: int = 1
    max_train_steps: int = 250000  # optimizer steps
    mixed_precision: str = "no"  # no | fp16 | bf16 (official training is fp32)
    checkpointing_steps: int = 10000
    checkpoints_total_limit: int | None = 10
    save_optimizer_state: bool = True  # False: state-<step>.pt without optimizer moments (resume restarts them)
    validation_steps: int = 2000
    num_validation_samples: int = 4
    log_steps: int = 10  # print a progress line every this many steps (the CSV gets every step)
    resume_from: str | None = None  # a state-*.pt file, a run folder, or "latest"
    models: ModelPaths = field(default_factory=ModelPaths)
    data: DataConfig = field(default_factory=DataConfig)
    model: UNetTrainingConfig = field(default_factory=UNetTrainingConfig)
    lora: LoraTrainingConfig = field(default_factory=LoraTrainingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class EncoderConfig:
    """One SyncNet encoder: a stack of residual blocks, each optionally followed by a strided conv."""

    in_channels: int = 1
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512, 1024, 2048])
    downsample_factors: list[Any] = field(default_factory=lambda: [[2, 1], 2, 2, 1, 2, 2, [2, 3]])
    norm_num_groups: int = 32
    dropout: float = 0.0


def _visual_encoder() -> EncoderConfig:
    return EncoderConfig(
        in_channels=48,
        block_out_channels=[64, 128, 256, 256, 512, 1024, 2048, 2048],
        downsample_factors=[[1, 2], 2, 2, 2, 2, 2, 2, 2],
    )


@dataclass
class SyncNetConfig:
    """SyncNet architecture (LatentSync's 16-frame, 256-pixel model by default)."""

    audio_encoder: EncoderConfig = field(default_factory=EncoderConfig)
    visual_encoder: EncoderConfig = field(default_factory=_visual_encoder)


@dataclass
class SyncNetDataConfig:
    """SyncNet training samples: mouth-half crops of consecutive frames and their mel window."""

    train_root: str = "./data/train"
    val_root: str | None = None
    min_offset: int = 5  # negatives: audio shifted by at least this many frames (same clip, same identity)
    min_face_size: int = 150
    num_workers: int = 4


@dataclass
class SyncNetTrainConfig:
    """A SyncNet training run; the ``model`` section is also what stage 2 reads."""

    exp_name: str = "syncnet"
    output_dir: str = "./exp_out"
    seed: int = 41
    init_weights: str | None = None
    batch_size: int = 64  # per process; every batch comes from one identity
    gradient_accumulation_steps: int = 1
    max_train_steps: int = 100000
    mixed_precision: str = "no"
    lr: float = 1e-5
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    checkpointing_steps: int = 5000
    checkpoints_total_limit: int | None = 10
    validation_steps: int = 1000
    num_validation_batches: int = 8
    log_steps: int = 10
    resume_from: str | None = None
    model: SyncNetConfig = field(default_factory=SyncNetConfig)
    data: SyncNetDataConfig = field(default_factory=SyncNetDataConfig)


def _convert(annotation: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return config_from_dict(annotation, value, where)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if value is None:
            return None
        return _convert(options[0], value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(annotation) or (Any,)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        return float(value)  # YAML reads "2e-5" as a string
    if annotation in (int, str, bool) and not isinstance(value, annotation):
        raise ValueError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def config_from_dict(cls: type[ConfigT], data: dict, where: str = "config") -> ConfigT:
    """Build a config dataclass from a (partial) nested dict, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    values = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    return cls(**values)


def config_to_dict(config: Any) -> dict:
    """The config as plain nested dicts (for saving next to a run)."""
    return dataclasses.asdict(config)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides to a nested dict (values parsed as YAML)."""
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"Override {override!r} is not of the form key.path=value")
        path, raw = override.split("=", 1)
        keys = path.strip().split(".")
        target = data
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = yaml.safe_load(raw)
    return data


def config_from_command_line(argv: Sequence[str] | None, cls: type[ConfigT], prog: str, description: str,
                             example: str) -> ConfigT:
    """Parse ``--config YAML [--set KEY=VALUE ...] [--resume WHERE]`` into a config of type ``cls``."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help=f"the run's YAML ({example})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set data.train_root=/data/hdtf (repeatable)")
    parser.add_argument("--resume", help="state-*.pt file, run folder, or 'latest'")
    args = parser.parse_args(argv)
    config = load_config(args.config, cls, args.set)
    if args.resume:
        config.resume_from = args.resume
    return config


def load_config(path: str | os.PathLike, cls: type[ConfigT] = TrainConfig,
                overrides: list[str] | None = None) -> ConfigT:
    """Read a YAML config into ``cls`` (``TrainConfig`` or ``SyncNetTrainConfig``)."""
    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a mapping")
    return config_from_dict(cls, apply_overrides(data, overrides or []), where=str(path))
