"""ComfyUI entry point of the MuseTalk lip-sync node pack.

ComfyUI imports this file; it only registers node classes (no model loading,
no downloads). The library behind the nodes is ``musetalk_lib``.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
