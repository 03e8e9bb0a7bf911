"""ComfyUI services the nodes use, with plain fallbacks so the nodes also run outside ComfyUI (tests, scripts).

Inside ComfyUI: model folders come from ``folder_paths`` (so ``extra_model_paths.yaml``
works), devices and memory from ``comfy.model_management``, progress and
interrupts from ``comfy.utils.ProgressBar``. Outside it: ``$MUSETALK_MODELS_DIR``,
the best torch device, and no-op progress.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

MODEL_FOLDER = "musetalk"

try:
    import folder_paths
except ImportError:  # not running inside ComfyUI
    folder_paths = None


def in_comfyui() -> bool:
    return folder_paths is not None


def register_model_folder() -> None:
    """Add ``models/musetalk`` to ComfyUI's model folders (keeps any ``extra_model_paths.yaml`` entries)."""
    if folder_paths is not None:
        folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))


def model_roots() -> list[Path]:
    """Every folder that may hold the official MuseTalk layout, in priority order."""
    if folder_paths is not None:
        return [Path(p) for p in folder_paths.get_folder_paths(MODEL_FOLDER)]
    return [Path(os.environ.get("MUSETALK_MODELS_DIR", "models"))]


def models_root(marker: str) -> Path:
    """The first model root containing ``marker`` (a relative path), else the first root (for the error message)."""
    roots = model_roots()
    return next((root for root in roots if (root / marker).exists()), roots[0])


def input_directory() -> Path:
    return Path(folder_paths.get_input_directory()) if folder_paths is not None else Path.cwd()


def output_directory() -> Path:
    return Path(folder_paths.get_output_directory()) if folder_paths is not None else Path.cwd() / "output"


def temp_directory() -> Path:
    if folder_paths is not None:
        return Path(folder_paths.get_temp_directory())
    return Path(tempfile.gettempdir()) / "musetalk"


def torch_device():
    """ComfyUI's compute device, or the best available one outside ComfyUI."""
    if folder_paths is not None:
        import comfy.model_management

        return comfy.model_management.get_torch_device()
    from ..musetalk_lib.devices import resolve_device

    return resolve_device("auto")


def offload_device():
    if folder_paths is not None:
        import comfy.model_management

        return comfy.model_management.unet_offload_device()
    import torch

    return torch.device("cpu")


def choose_dtype(choice: str, device):
    """Resolve a dtype widget: ``auto`` follows ComfyUI's fp16 judgement for the device."""
    import torch

    from ..musetalk_lib.devices import resolve_dtype

    if choice == "auto" and folder_paths is not None:
        import comfy.model_management

        return torch.float16 if comfy.model_management.should_use_fp16(device) else torch.float32
    return resolve_dtype(choice, torch.device(device))


class ManagedModel:
    """A loaded network registered with ComfyUI's model management (moved to the GPU on use, offloaded after).

    ``module`` is the network; call :meth:`ready` before running it.
    """

    def __init__(self, module, kind: str, files: str, random_weights: bool = False):
        self.module = module
        self.kind = kind
        self.files = files
        self.random_weights = random_weights
        self.patcher = None
        if folder_paths is not None:
            import comfy.model_patcher
            import torch

            # The patcher records the device on the module it manages; a plain holder accepts that.
            holder = torch.nn.Module()
            holder.inner = module
            self.patcher = comfy.model_patcher.ModelPatcher(holder, load_device=torch_device(),
                                                            offload_device=offload_device())

    def ready(self):
        """Load onto the compute device (freeing room through ComfyUI if needed) and return the module."""
        if self.patcher is not None:
            import comfy.model_management

            comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)
        else:
            self.module.to(torch_device())
        return self.module


class Progress:
    """Per-node progress bar; also where ComfyUI notices an interrupt (Cancel)."""

    def __init__(self, node_id: str | None = None):
        self.node_id = node_id
        self._bars: dict[str, object] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if folder_paths is None:
            return
        import comfy.model_management
        import comfy.utils

        comfy.model_management.throw_exception_if_processing_interrupted()
        bar = self._bars.get(stage)
        if bar is None:
            bar = self._bars[stage] = comfy.utils.ProgressBar(total, node_id=self.node_id)
        bar.update_absolute(done, total)


def output_is_linked(prompt: dict | None, node_id: str | None, slot: int) -> bool:
    """Whether any node of the queued prompt reads output ``slot`` of ``node_id`` (True when unknown)."""
    if prompt is None or node_id is None:
        return True
    for node in prompt.values():
        for value in node.get("inputs", {}).values():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == str(node_id) and value[1] == slot:
                return True
    return False
