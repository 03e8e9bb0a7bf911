"""ComfyUI nodes of the MuseTalk pack (V3 node API): thin adapters over ``musetalk_lib``.

Importing this package is cheap: the library's model code loads only when a node runs.
"""

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .avatar import MuseTalkLoadAvatar
from .dub import MuseTalkDub, MuseTalkDubOptions
from .generation import MuseTalkBlendMouth, MuseTalkUNet, MuseTalkVAEEncodeMaskedFace, MuseTalkWhisperAudioFeatures
from .loaders import (MuseTalkFaceParserLoader, MuseTalkLoraLoader, MuseTalkUNetLoader, MuseTalkVAELoader,
                      MuseTalkWhisperLoader)
from .runtime import register_model_folder
from .video import MuseTalkVideoCombine

NODES: list[type[io.ComfyNode]] = [
    MuseTalkUNetLoader,
    MuseTalkLoraLoader,
    MuseTalkVAELoader,
    MuseTalkWhisperLoader,
    MuseTalkFaceParserLoader,
    MuseTalkLoadAvatar,
    MuseTalkWhisperAudioFeatures,
    MuseTalkVAEEncodeMaskedFace,
    MuseTalkUNet,
    MuseTalkBlendMouth,
    MuseTalkVideoCombine,
    MuseTalkDub,
    MuseTalkDubOptions,
]


class MuseTalkExtension(ComfyExtension):
    """Registers the ``musetalk`` model folder and the pack's nodes."""

    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        register_model_folder()
        return NODES
