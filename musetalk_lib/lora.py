"""LoRA adapters for the MuseTalk UNet: identity fine-tunes in one small safetensors file.

A LoRA file (written by ``musetalk finetune``, see ``training/README.md``) is a
safetensors file of PEFT's adapter weights (``<module>.lora_A.weight`` and
``<module>.lora_B.weight``, module names relative to the diffusers
``UNet2DConditionModel``) whose metadata holds ``format: musetalk-lora`` and the
PEFT ``LoraConfig`` as JSON (``lora_config``).

Applying a file merges ``strength x (alpha / rank) x B A`` into each targeted
weight through PEFT, so generation then costs exactly what the base model costs.
Strength 0 leaves every weight bit-identical; 1 is the trained adapter;
values in between or above scale its change linearly.

:func:`apply_lora` patches a UNet in place; :func:`unet_with_lora` returns a
patched copy that shares every untargeted tensor with the original (the
original keeps working unchanged: what a ComfyUI loader node needs).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from .checkpoint import CorruptCheckpointError, load_model_weights, load_state_dict, save_state_dict
from .unet import MuseTalkUNet, build_unet, load_unet_config

__all__ = [
    "ADAPTER_NAME",
    "DEFAULT_TARGET_MODULES",
    "LORA_FORMAT",
    "LoraFile",
    "add_lora",
    "apply_lora",
    "lora_state_dict",
    "merged_unet_state_dict",
    "read_lora",
    "save_lora",
    "unet_with_lora",
]

LORA_FORMAT = "musetalk-lora"
ADAPTER_NAME = "musetalk"
# Attention projections (self- and audio cross-attention) and the ResNet convolutions: the layers that carry
# an identity's texture and mouth shapes.
DEFAULT_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2")


class LoraFile:
    """A LoRA file's PEFT config and adapter weights (on the CPU)."""

    def __init__(self, config, state_dict: dict[str, torch.Tensor], metadata: dict[str, str]):
        self.config = config
        self.state_dict = state_dict
        self.metadata = metadata


def _unet(model: nn.Module) -> UNet2DConditionModel:
    return model.unet if isinstance(model, MuseTalkUNet) else model


def add_lora(unet: UNet2DConditionModel, rank: int = 16, alpha: float | None = None,
             target_modules: tuple[str, ...] | list[str] = DEFAULT_TARGET_MODULES, dropout: float = 0.0):
    """Inject a trainable LoRA adapter into ``unet`` (in place) and freeze every other weight.

    ``alpha`` defaults to ``rank`` (scale 1). Returns the PEFT ``LoraConfig``.
    The adapter starts as the identity (``B = 0``), as PEFT initialises it.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=float(alpha if alpha is not None else rank),
                        target_modules=list(target_modules), lora_dropout=dropout, init_lora_weights=True)
    unet.requires_grad_(False)
    inject_adapter_in_model(config, unet, adapter_name=ADAPTER_NAME)
    for name, parameter in unet.named_parameters():
        parameter.requires_grad_(".lora_" in name)
    return config


def lora_state_dict(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The adapter weights of a UNet prepared by :func:`add_lora` (PEFT's names, without the adapter name)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)


def save_lora(state_dict: dict[str, torch.Tensor], config, path: str | os.PathLike,
              metadata: dict[str, str] | None = None) -> None:
    """Write adapter weights (:func:`lora_state_dict`) and their PEFT ``config`` as a LoRA file, atomically.

    ``metadata`` adds string entries (e.g. the training step) beside the format and config.
    """
    settings = config.to_dict()
    settings["target_modules"] = sorted(settings["target_modules"])
    settings.pop("peft_type", None)
    settings.pop("task_type", None)
    entries = {**(metadata or {}), "format": LORA_FORMAT, "lora_config": json.dumps(settings, default=str)}
    save_state_dict(state_dict, path, metadata=entries)


def read_lora(path: str | os.PathLike) -> LoraFile:
    """Read a LoRA file written by :func:`save_lora` (safetensors only; nothing in it runs).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        CorruptCheckpointError: damaged, or not a MuseTalk LoRA file.
    """
    from peft import LoraConfig
    from safetensors import safe_open

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CorruptCheckpointError(path, f"{path} is not a LoRA file: LoRA files are .safetensors files "
                                           "written by `musetalk finetune`.")
    state_dict = load_state_dict(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    if metadata.get("format") != LORA_FORMAT or "lora_config" not in metadata:
        raise CorruptCheckpointError(path, f"{path} is not a MuseTalk LoRA file (its metadata has no "
                                           f"format={LORA_FORMAT} and lora_config); write one with `musetalk finetune`.")
    settings = json.loads(metadata["lora_config"])
    known = set(LoraConfig.__dataclass_fields__)
    config = LoraConfig(**{key: value for key, value in settings.items() if key in known})
    if not state_dict or not all(".lora_A." in name or ".lora_B." in name for name in state_dict):
        raise CorruptCheckpointError(path, f"{path} holds tensors that are not LoRA A/B weights.")
    return LoraFile(config, state_dict, metadata)


def apply_lora(unet: nn.Module, lora: str | os.PathLike | LoraFile, strength: float = 1.0) -> nn.Module:
    """Merge a LoRA into ``unet`` (a ``MuseTalkUNet`` or ``UNet2DConditionModel``) in place and return it.

    The merged weights keep the UNet's dtype and device; the module tree is the
    original one again afterwards (no PEFT layers remain). Each targeted weight
    becomes a new tensor (PEFT's safe merge), so tensors the UNet shares with
    another model (see :func:`unet_with_lora`) are never written to.

    Raises:
        FileNotFoundError, CorruptCheckpointError: see :func:`read_lora`.
        ValueError: the LoRA's modules or shapes do not fit this UNet.
    """
    from peft import LoraModel, set_peft_model_state_dict

    lora = lora if isinstance(lora, LoraFile) else read_lora(lora)
    target = _unet(unet)
    scaled = {name: tensor * strength if ".lora_B." in name else tensor for name, tensor in lora.state_dict.items()}
    try:
        tuner = LoraModel(target, copy.deepcopy(lora.config), ADAPTER_NAME)
        result = set_peft_model_state_dict(target, scaled, adapter_name=ADAPTER_NAME)
    except (ValueError, RuntimeError) as error:
        raise ValueError(f"The LoRA does not fit this UNet: {error}") from error
    if result.unexpected_keys:
        raise ValueError(f"The LoRA has weights for modules this UNet lacks: {result.unexpected_keys[:5]}")
    tuner.merge_and_unload(safe_merge=True, adapter_names=[ADAPTER_NAME])
    return unet


def unet_with_lora(unet: MuseTalkUNet, lora: str | os.PathLike | LoraFile, strength: float = 1.0) -> MuseTalkUNet:
    """A copy of ``unet`` with the LoRA merged; ``unet`` itself is left unchanged.

    The copy shares every tensor the LoRA does not change with ``unet``, so it
    costs only the memory of the targeted weights. ``unet`` must not be compiled
    yet (a compiled forward would still run the original weights): compile the copy.
    """
    if any("forward" in vars(module) for module in unet.modules()):
        raise ValueError("This UNet is compiled (its forward is replaced); apply the LoRA first, then compile")
    shared = {}
    for tensor in itertools.chain(unet.parameters(), unet.buffers()):
        shared[id(tensor)] = nn.Parameter(tensor.data, tensor.requires_grad) if isinstance(
            tensor, nn.Parameter) else tensor
    patched = copy.deepcopy(unet, shared)
    return apply_lora(patched, lora, strength)


def merged_unet_state_dict(unet_config: str | os.PathLike, unet_weights: str | os.PathLike,
                           lora: str | os.PathLike | LoraFile, strength: float = 1.0) -> dict[str, torch.Tensor]:
    """The base UNet's full state dict (the official ``unet.pth`` keys and dtype) with the LoRA merged in."""
    unet = load_model_weights(build_unet(load_unet_config(unet_config), device="meta"), unet_weights)
    apply_lora(unet, lora, strength)
    return {name: tensor.contiguous() for name, tensor in unet.state_dict().items()}
