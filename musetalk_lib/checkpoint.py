"""Safe loading of model weights, with errors that say what is wrong and how to get a good file.

Weights are read from safetensors files or from PyTorch pickles through
``torch.load(weights_only=True)``, which only rebuilds tensors and plain
containers. A pickle that asks for anything else (a class, a function, a
call) is refused with :class:`UnsafeCheckpointError`; nothing in it runs.
The legacy (pre-zip) PyTorch format used by the official face-parsing
checkpoint goes through the same restricted reader.

Every existing file that cannot be used raises a :class:`CheckpointError`. Its
message names the file, says in plain words what is wrong, and says how to get
a good copy (:func:`musetalk_lib.weights.replacement_advice`):

- :class:`CorruptCheckpointError`: truncated, damaged, or not a weights file;
- :class:`UnsafeCheckpointError`: a pickle that could run code;
- :class:`CheckpointMismatchError`: readable, but its tensors do not fit the model.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from .run_files import write_atomically
from .weights import replacement_advice

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "load_model_weights",
    "load_state_dict",
    "save_state_dict",
    "save_torch_state_dict",
]

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
NAMES_SHOWN = 5  # weight names listed per kind of mismatch

StateDict = dict[str, torch.Tensor]


class CheckpointError(RuntimeError):
    """A weight file exists but cannot be used.

    The message is ``problem`` (which names the file) followed by how to get a good copy.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{problem}\n{replacement_advice(path)}")


class CorruptCheckpointError(CheckpointError):
    """The file is truncated or damaged, or holds something other than weights."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle asked for something other than tensors and plain containers; nothing in it ran."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """The file is readable, but its tensors do not fit the model (missing, unexpected or wrongly shaped)."""


def load_state_dict(path: str | os.PathLike, dtype: torch.dtype | None = None) -> StateDict:
    """Read a flat ``name -> tensor`` dict from a safetensors or PyTorch file, on the CPU.

    Floating-point tensors are converted to ``dtype`` when given (integer
    buffers such as BatchNorm counters are left alone). A dict wrapped under a
    ``"state_dict"`` key (a common training-checkpoint layout) is unwrapped.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        CorruptCheckpointError: the file is truncated or damaged, or holds no state dict.
        UnsafeCheckpointError: the file is a pickle that asks for more than tensors.
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


def load_model_weights(
    model: nn.Module,
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    convert: Callable[[StateDict], StateDict] | None = None,
    hint: str = "",
) -> nn.Module:
    """Load the weights in ``path`` into ``model`` strictly and return the model.

    The file is read with :func:`load_state_dict` (floating-point tensors
    converted to ``dtype``), ``convert`` maps the file's names onto the
    model's when the file uses an older layout, and every weight of the model
    must then be there with its shape, and nothing else. The model adopts the
    file's tensors (``assign=True``), so it may be built on the meta device.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        CheckpointError: :class:`CorruptCheckpointError` or :class:`UnsafeCheckpointError` from
            reading; :class:`CheckpointMismatchError` when the tensors do not fit the model (its
            message ends with ``hint``, if given).
    """
    state_dict = load_state_dict(path, dtype)
    if convert is not None:
        state_dict = convert(state_dict)
    problems = _mismatches(state_dict, model.state_dict())
    if problems:
        problem = f"{path} does not match the {type(model).__name__} model: {'; '.join(problems)}."
        raise CheckpointMismatchError(path, f"{problem} {hint}".rstrip())
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                    metadata: Mapping[str, str] | None = None) -> None:
    """Write a state dict as safetensors (with string ``metadata``), atomically (temporary name, then rename)."""
    from safetensors.torch import save_file

    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in state_dict.items()}
    write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=dict(metadata) if metadata else None))


def save_torch_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a state dict with ``torch.save`` (the official ``.pth`` format: plain tensors, loadable with
    ``weights_only=True``), atomically."""
    tensors = {name: tensor.detach().cpu() for name, tensor in state_dict.items()}
    write_atomically(path, lambda tmp: torch.save(tensors, tmp))


def _mismatches(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> list[str]:
    """Plain descriptions of the missing, unexpected and wrongly shaped weights (empty when everything fits)."""
    missing = [name for name in expected if name not in state_dict]
    unexpected = [name for name in state_dict if name not in expected]
    reshaped = [
        f"{name} is {list(state_dict[name].shape)} in the file, {list(tensor.shape)} in the model"
        for name, tensor in expected.items()
        if name in state_dict and state_dict[name].shape != tensor.shape
    ]
    return [
        f"{len(names)} {kind} ({', '.join(names[:NAMES_SHOWN])}{', ...' if len(names) > NAMES_SHOWN else ''})"
        for kind, names in (("weights missing", missing), ("unexpected weights", unexpected),
                            ("weights with another shape", reshaped))
        if names
    ]


def _unusable_content(path: Path) -> str | None:
    """What ``path`` holds instead of weights, when its first bytes make that plain; else None."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    if not head:
        return "the file is empty"
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the weights themselves (fetch them with `git lfs pull`)"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html", b"<?xml")):
        return "it is a web page (an error page saved in place of the download), not weights"
    return None


def _load_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (PermissionError, MemoryError):
        raise
    except (SafetensorError, OSError, ValueError) as error:
        content = _unusable_content(path)
        problem = content or f"it is truncated or damaged (safetensors: {_reason(error)})"
        raise CorruptCheckpointError(path, f"Cannot load {path}: {problem}.") from error


# What torch's restricted unpickler says when a pickle asks for a function or class it does not allow.
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)")
_REFUSED_CALL = ("Trying to call reduce", "Can only create new object")
# ... and when it meets an instruction that plain weights never use.
_REFUSED_OPCODE = re.compile(r"Unsupported operand (\d+)")
_PICKLE_PROTO = 0x80  # first byte of every pickle of protocol 2 and later


def _load_torch_pickle(path: Path) -> StateDict:
    try:
        with warnings.catch_warnings():  # the protocol warning asks users to file an issue with PyTorch
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (PermissionError, MemoryError):
        raise
    except pickle.UnpicklingError as error:
        # torch's text advises loading with weights_only=False, which is exactly what must not be done:
        # neither it nor the error is passed on.
        raise _explain_refusal(path, str(error)) from None
    except Exception as error:  # torch.load raises many types on damaged input
        content = _unusable_content(path)
        problem = content or f"it is truncated or damaged (PyTorch: {_reason(error)})"
        raise CorruptCheckpointError(path, f"Cannot load {path}: {problem}.") from error
    return _as_flat_state_dict(obj, path)


def _explain_refusal(path: Path, message: str) -> CheckpointError:
    """The error for a pickle that torch's restricted unpickler refused with ``message``."""
    refused_global = _REFUSED_GLOBAL.search(message)
    refused_opcode = _REFUSED_OPCODE.search(message)
    unsafe = " Nothing in it was run."
    if refused_global:
        return UnsafeCheckpointError(path, f"Refusing to load {path}: it is a pickle that asks for "
                                           f"{refused_global.group(1)}, so loading it could run code.{unsafe}")
    if any(text in message for text in _REFUSED_CALL):
        return UnsafeCheckpointError(path, f"Refusing to load {path}: it is a pickle that asks to call functions "
                                           f"or build objects other than tensors, so loading it could run code.{unsafe}")
    content = _unusable_content(path)
    if content is None and refused_opcode:
        with open(path, "rb") as handle:
            is_pickle = handle.read(1) == bytes([_PICKLE_PROTO])
        if is_pickle:
            return UnsafeCheckpointError(
                path, f"Refusing to load {path}: it is a pickle with instructions that PyTorch weights never use "
                      f"(opcode {refused_opcode.group(1)}), so it may be damaged or may run code.{unsafe}")
    problem = content or "it is truncated or damaged, or not a PyTorch weights file"
    return CorruptCheckpointError(path, f"Cannot load {path}: {problem}.")


def _reason(error: BaseException) -> str:
    """The first sentence of a reader's error, for the parenthesis after our own words."""
    if isinstance(error, EOFError):
        return "the data ends too early"
    first_sentence = str(error).strip().split("\n")[0].split(". ")[0].rstrip(".")
    return first_sentence or type(error).__name__


def _as_flat_state_dict(obj: object, path: Path) -> StateDict:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CorruptCheckpointError(path, f"Cannot load {path}: it holds a {type(obj).__name__}, not a state dict.")
    state_dict = {}
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CorruptCheckpointError(
                path, f"Cannot load {path}: entry {name!r} is a {type(value).__name__}, not a tensor, so it is not "
                      "a state dict.")
        state_dict[str(name)] = value
    return state_dict
