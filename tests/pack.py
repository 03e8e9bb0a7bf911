"""Load the node pack the way ComfyUI does: its ``__init__.py`` as a package named after a module path."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_pack(name: str = "musetalk_pack_under_test") -> ModuleType:
    """The imported pack (imported once per name)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
