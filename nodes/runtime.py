"""ComfyUI services the nodes use, with plain fallbacks so the nodes also run outside ComfyUI (tests, scripts).

Inside ComfyUI: model folders come from ``folder_paths`` (so ``extra_model_paths.yaml``
works), devices and memory from ``comfy.model_management``, progress and
interrupts from ``comfy.utils.ProgressBar``. Outside it: ``$MUSETALK_MODELS_DIR``,
the working directory as the input folder, the best torch device, and no-op progress.

File names given to nodes are confined to ComfyUI's input, output and temp folders
(:func:`resolve_input_file`, :func:`output_prefix_problem`); the CLI takes any path.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath

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


FOLDERS = {"input": input_directory, "output": output_directory, "temp": temp_directory}


def split_annotation(name: str) -> tuple[str, str]:
    """``(relative name, folder)`` of a file-name value.

    ComfyUI's annotated forms ``clip.mp4 [input]``, ``clip.mp4 [output]`` and
    ``clip.mp4 [temp]`` pick the folder, read exactly as core's
    ``folder_paths.annotated_filepath`` reads them; any other name is in the input folder.
    """
    for folder in ("output", "input", "temp"):
        if name.endswith(f"[{folder}]"):
            return name[:-len(folder) - 3], folder
    return name, "input"


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path``, links resolved, lies in ``folder``."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def may_escape(relative: str) -> bool:
    """Whether a name could reach outside the folder it is joined to: absolute, drive or UNC paths, ``..``
    components; NUL characters too (no file has them)."""
    return ("\0" in relative or bool(PurePosixPath(relative).anchor or PureWindowsPath(relative).anchor)
            or ".." in re.split(r"[\\/]", relative))


def resolve_input_file(name: str, node: str, input_name: str) -> Path:
    """The file that ``name``, the value of file-name input ``input_name`` of node ``node``, designates.

    ``name`` is a file in ComfyUI's input folder (subfolders allowed) or an annotated
    name (see :func:`split_annotation`). A name reaching outside its folder (absolute,
    ``..``, a link to elsewhere) raises PermissionError, one that is not a file
    FileNotFoundError; the messages start with ``node`` (a display name) for ComfyUI to show.
    """
    relative, folder_name = split_annotation(name)
    folder = FOLDERS[folder_name]()
    path = folder / relative
    advice = "put the file in input/ and pick it from the list"
    if may_escape(relative) or not is_inside(path, folder):
        raise PermissionError(f"{node}: {input_name} '{name}' is outside ComfyUI's {folder_name} folder; {advice}.")
    if not path.is_file():
        raise FileNotFoundError(f"{node}: {input_name} '{name}' is not a file in ComfyUI's {folder_name} folder; "
                                f"{advice}.")
    return path


def input_file_problem(name: str | None, node: str, input_name: str) -> str | None:
    """Why ``validate_inputs`` refuses a file-name input, or None. Empty and linked (None) values pass."""
    if not name:
        return None
    try:
        resolve_input_file(name, node, input_name)
    except OSError as error:
        return str(error)
    return None


def output_prefix_problem(prefix: str | None, node: str, input_name: str = "filename_prefix") -> str | None:
    """Why a ``filename_prefix`` would write outside ComfyUI's output folder, or None. Linked (None) values pass."""
    if prefix is None:
        return None
    folder = output_directory()
    if may_escape(prefix) or not is_inside(folder / prefix, folder):
        return (f"{node}: {input_name} '{prefix}' is outside ComfyUI's output folder; "
                "use a relative name such as MuseTalk/dub.")
    return None


def input_files(suffixes: Collection[str], recursive: bool = False) -> list[str]:
    """Sorted ``/``-separated names of the input folder's files with one of ``suffixes`` (lower case).

    Files reached through links to elsewhere are left out (the nodes refuse them);
    ``recursive`` also lists subfolders, hidden ones excepted.
    """
    folder = input_directory()
    found = []
    for root, subfolders, files in os.walk(folder):
        subfolders[:] = sorted(name for name in subfolders if recursive and not name.startswith("."))
        for name in files:
            path = Path(root, name)
            if path.suffix.lower() in suffixes and path.is_file() and is_inside(path, folder):
                found.append(path.relative_to(folder).as_posix())
    return sorted(found)


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


class NodeProgress:
    """The library's :class:`~musetalk_lib.progress.Progress` as ComfyUI progress bars on the node that is
    working, one per stage; also where ComfyUI notices an interrupt (Cancel).

    The bars carry no node id: ComfyUI shows them on the node executing when they
    advance. Frames streamed to Video Combine (``MUSETALK_FRAMES``) are generated
    while Video Combine runs, so their progress and Cancel land there.
    """

    def __init__(self):
        self._bars: dict[str, object] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if folder_paths is None:
            return
        import comfy.model_management
        import comfy.utils

        comfy.model_management.throw_exception_if_processing_interrupted()
        bar = self._bars.get(stage)
        if bar is None:
            bar = self._bars[stage] = comfy.utils.ProgressBar(total)
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


def hidden_value(node_class, name: str):
    """A hidden input (``unique_id``, ``prompt``) of the running node; None when called outside ComfyUI's executor."""
    return getattr(node_class.hidden, name, None) if node_class.hidden is not None else None


@contextmanager
def reported_as(node: str) -> Iterator[None]:
    """Re-raise the library's errors as ``<node>: <message>`` with a built-in exception type.

    ComfyUI shows an exception's type with its module path (``…musetalk_lib.video_io.VideoError``);
    a built-in type shows as its bare name. Errors of other packages (ComfyUI's interrupt, torch's
    out-of-memory) pass unchanged, so ComfyUI still handles them.
    """
    try:
        yield
    except Exception as error:
        kind = type(error)
        if kind.__module__ != "builtins" and "musetalk_lib" not in kind.__module__:
            raise
        message = str(error) if str(error).startswith(f"{node}:") else f"{node}: {error}"
        builtin = next(base for base in kind.__mro__ if base.__module__ == "builtins")
        try:
            reported = builtin(message)
        except TypeError:  # a built-in type with more arguments (UnicodeDecodeError...)
            reported = RuntimeError(message)
        raise reported from error
