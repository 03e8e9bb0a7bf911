"""Load the node pack the way ComfyUI does: its ``__init__.py`` as a package named after a module path, then
its nodes through the V3 entry point (``comfy_entrypoint``).

With ``COMFYUI_PATH`` set to a ComfyUI checkout, the pack runs on ComfyUI's real modules (``comfy_api``,
``folder_paths``, ``comfy.model_management``...) imported in-process, on the CPU, with ComfyUI's folders in a
temporary directory; the interpreter then needs ComfyUI's requirements too. Otherwise ``comfy_api`` is the
minimal fake in ``tests/comfy_fake`` and there is no ``folder_paths``: the nodes use their outside-ComfyUI
fallbacks (``$MUSETALK_MODELS_DIR``, the working directory as input folder). Tests set folders through
:func:`use_models_dir` and :func:`use_folders`, which work both ways.
"""

import asyncio
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
COMFY_FAKE = Path(__file__).resolve().parent / "comfy_fake"
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
MODEL_FOLDER = "musetalk"  # the pack's folder name in ComfyUI's models/


def use_comfyui() -> None:
    """Make ComfyUI's modules importable: the real ones from ``$COMFYUI_PATH``, else the ``comfy_api`` fake."""
    if COMFYUI_PATH:
        if COMFYUI_PATH not in sys.path:
            assert (Path(COMFYUI_PATH) / "folder_paths.py").is_file(), f"COMFYUI_PATH={COMFYUI_PATH} is no ComfyUI"
            sys.path.insert(0, COMFYUI_PATH)
            from comfy.cli_args import args

            args.cpu = True
            args.base_directory = tempfile.mkdtemp(prefix="comfyui-base-")  # models/, input/, output/, temp/
            import folder_paths  # noqa: F401 - reads args.base_directory once, on first import
    elif importlib.util.find_spec("comfy_api") is None:
        sys.path.insert(0, str(COMFY_FAKE))


def real_folder_paths() -> ModuleType | None:
    """ComfyUI's ``folder_paths`` when the tests run on the real modules, else None."""
    return sys.modules.get("folder_paths") if COMFYUI_PATH else None


def load_pack(name: str = "musetalk_pack_under_test") -> ModuleType:
    """The imported pack (imported once per name)."""
    if name not in sys.modules:
        use_comfyui()
        spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def node_classes(pack: ModuleType) -> dict[str, type]:
    """Node id -> class, as ComfyUI registers them from ``comfy_entrypoint``."""
    extension = asyncio.run(pack.comfy_entrypoint())
    return {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(extension.get_node_list())}


def use_models_dir(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make ``folder`` the nodes' models folder: ComfyUI's ``musetalk`` model folder, or ``$MUSETALK_MODELS_DIR``."""
    monkeypatch.setenv("MUSETALK_MODELS_DIR", str(folder))
    folder_paths = real_folder_paths()
    if folder_paths is not None:
        monkeypatch.setitem(folder_paths.folder_names_and_paths, MODEL_FOLDER, ([str(folder)], set()))


def use_folders(monkeypatch: pytest.MonkeyPatch, runtime: ModuleType, input: Path, output: Path, temp: Path,
                outside_comfyui: bool = False) -> None:
    """Make ``input``, ``output`` and ``temp`` ComfyUI's folders for the nodes (``runtime`` is the pack's
    ``nodes.runtime``). Without real ComfyUI modules, ``outside_comfyui`` keeps the nodes' own fallbacks (input
    and output must then be the working directory and its output/; temp is the system's), else a stand-in
    ``folder_paths`` holds the three folders."""
    folder_paths = real_folder_paths()
    if folder_paths is not None:
        monkeypatch.setattr(folder_paths, "input_directory", str(input))
        monkeypatch.setattr(folder_paths, "output_directory", str(output))
        monkeypatch.setattr(folder_paths, "temp_directory", str(temp))
    elif outside_comfyui:
        assert (runtime.input_directory(), runtime.output_directory()) == (input, output)
    else:
        monkeypatch.setattr(runtime, "folder_paths", SimpleNamespace(
            get_input_directory=lambda: str(input), get_output_directory=lambda: str(output),
            get_temp_directory=lambda: str(temp)))
