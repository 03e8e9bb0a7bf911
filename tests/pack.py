"""Load the node pack the way ComfyUI does: its ``__init__.py`` as a package named after a module path, then
its nodes through the V3 entry point (``comfy_entrypoint``)."""

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
COMFY_FAKE = Path(__file__).resolve().parent / "comfy_fake"


def use_comfy_fake() -> None:
    """Make ``comfy_api`` importable from the test fake unless a real one (ComfyUI on the path) is."""
    if importlib.util.find_spec("comfy_api") is None:
        sys.path.insert(0, str(COMFY_FAKE))


def load_pack(name: str = "musetalk_pack_under_test") -> ModuleType:
    """The imported pack (imported once per name)."""
    if name not in sys.modules:
        use_comfy_fake()
        spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def node_classes(pack: ModuleType) -> dict[str, type]:
    """Node id -> class, as ComfyUI registers them from ``comfy_entrypoint``."""
    extension = asyncio.run(pack.comfy_entrypoint())
    return {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(extension.get_node_list())}
