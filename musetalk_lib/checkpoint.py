"""Safe loading of model weights.

Weights are read from safetensors files or from PyTorch pickles through
``torch.load(weights_only=True)``, which only rebuilds tensors and plain
containers. A pickle that asks for anything else (a class, a function, a
call) is refused with :class:`UnsafeCheckpointError`; nothing in it runs.
The legacy (pre-zip) PyTorch format used by the official face-parsing
checkpoint goes through the same restricted reader.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "load_state_dict",
    "save_state_dict",
]

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")


class CheckpointError(RuntimeError):
    """A weight file exists but cannot be read as a state dict."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle asked for something other than tensors and plain containers."""


def load_state_dict(path: str | os.PathLike, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Read a flat ``name -> tensor`` dict from a safetensors or PyTorch file, on the CPU.

    Floating-point tensors are converted to ``dtype`` when given (integer
    buffers such as BatchNorm counters are left alone). A dict wrapped under a
    ``"state_dict"`` key (a common training-checkpoint layout) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weight file not found: {path}")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        state_dict = _load_safetensors(path)
    else:
        state_dict = _load_torch_pickle(path)
    if dtype is not None:
        state_dict = {
            name: tensor.to(dtype) if tensor.is_floating_point() else tensor for name, tensor in state_dict.items()
        }
    return state_dict


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a state dict as safetensors, atomically (temporary name, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in state_dict.items()}
    tmp = path.with_name(path.name + ".partial")
    try:
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error}).") from error


def _load_torch_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        if "Weights only load failed" in message or "Unsupported global" in message:
            raise UnsafeCheckpointError(
                f"Refusing to load {path}: it is a pickle that asks for more than tensors "
                "(it could run code when unpickled). Use the official file, or convert a file you "
                "trust to .safetensors."
            ) from error
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({error}).") from error
    except Exception as error:  # torch.load raises many types on damaged input
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint; it may be truncated or corrupt ({type(error).__name__}: {error})."
        ) from error
    return _as_flat_state_dict(obj, path)


def _as_flat_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict.")
    state_dict = {}
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor.")
        state_dict[str(name)] = value
    return state_dict
