"""Device and dtype selection shared by the models, the pipeline and the CLI, and the fp16 overflow guard."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "DTYPES",
    "compile_with_fallback",
    "cpu_has_fast_bf16",
    "resolve_device",
    "resolve_dtype",
    "run_with_fp16_fallback",
]

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}

logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``/``None`` into the best available device; pass others through."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def use_deterministic_algorithms() -> None:
    """Make this process pick deterministic torch kernels (the ``--deterministic`` switch).

    CPU runs are already reproducible for a given machine and dtype; on CUDA
    this turns off cuDNN's timing-based algorithm choice, asks for its
    deterministic algorithms and fixes cuBLAS's workspace (which must happen
    before the first CUDA matmul). Ops without a deterministic version warn
    instead of failing, so a dub never stops because of this switch.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def cpu_has_fast_bf16() -> bool:
    """Whether bfloat16 convolutions beat float32 on this CPU: it has AMX tiles, as PyTorch's own probe reports.

    AVX512-BF16 alone is not enough: on such a CPU (no AMX) oneDNN ran the
    models' 3x3 convolutions about 1.8x slower in bf16 than in fp32.
    """
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Map ``"auto"``, ``"fp32"``, ``"fp16"`` or ``"bf16"`` to a torch dtype.

    ``"auto"`` follows the hardware: fp16 on CUDA (what the official realtime
    inference runs; the VAE and the face parser fall back to fp32 should fp16
    overflow), bf16 on CPUs with AMX (3-6x faster than fp32 there), fp32
    elsewhere.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}; choose one of auto, {', '.join(DTYPES)}.") from None


def run_with_fp16_fallback(name: str, module: nn.Module, run: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``run()``, and if ``module`` is fp16 and the result holds inf/NaN, move it to fp32 for good and run again.

    fp16 has a small range: some SD-VAE decoders overflow in it. The check
    costs one tiny device-to-host read per call, and only in fp16.
    """
    result = run()
    if next(module.parameters()).dtype == torch.float16 and not bool(torch.isfinite(result).all()):
        logger.warning("%s overflowed in fp16 (inf/NaN); running it in fp32 from now on.", name)
        module.float()
        result = run()
    return result


def compile_with_fallback(module: nn.Module, name: str) -> nn.Module:
    """Run ``module`` through ``torch.compile`` from now on; where compiling fails, warn once and run it as it is.

    Compilation happens on the first call (and again for new input shapes), so
    that is where a missing compiler or an unsupported operation shows up.
    """
    eager = module.forward
    compiled: Callable | None = torch.compile(eager)

    def forward(*args, **kwargs):
        nonlocal compiled
        if compiled is not None:
            try:
                return compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - any compiler failure means: run uncompiled
                logger.warning("%s could not be compiled (%s: %s); running it uncompiled.", name,
                               type(error).__name__, str(error).splitlines()[0] if str(error) else "")
                compiled = None
        return eager(*args, **kwargs)

    module.forward = forward
    return module
