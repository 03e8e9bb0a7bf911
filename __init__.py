"""ComfyUI entry point of the MuseTalk lip-sync node pack (V3 node API, ``comfy_entrypoint``).

ComfyUI imports this file; it only registers node classes (no model loading,
no downloads). The library behind the nodes is ``musetalk_lib``.
"""

from .nodes import MuseTalkExtension


async def comfy_entrypoint() -> MuseTalkExtension:
    return MuseTalkExtension()
