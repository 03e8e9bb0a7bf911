"""ComfyUI nodes of the MuseTalk pack: thin adapters over ``musetalk_lib``.

Importing this package is cheap: the library's model code loads only when a node runs.
"""

from .avatar import MuseTalkLoadAvatar
from .dub import MuseTalkDub
from .generation import MuseTalkBlendMouth, MuseTalkUNet, MuseTalkVAEEncodeMaskedFace, MuseTalkWhisperAudioFeatures
from .loaders import MuseTalkFaceParserLoader, MuseTalkUNetLoader, MuseTalkVAELoader, MuseTalkWhisperLoader
from .runtime import register_model_folder
from .video import MuseTalkVideoCombine

register_model_folder()

NODE_CLASS_MAPPINGS = {
    "MuseTalkUNetLoader": MuseTalkUNetLoader,
    "MuseTalkVAELoader": MuseTalkVAELoader,
    "MuseTalkWhisperLoader": MuseTalkWhisperLoader,
    "MuseTalkFaceParserLoader": MuseTalkFaceParserLoader,
    "MuseTalkLoadAvatar": MuseTalkLoadAvatar,
    "MuseTalkWhisperAudioFeatures": MuseTalkWhisperAudioFeatures,
    "MuseTalkVAEEncodeMaskedFace": MuseTalkVAEEncodeMaskedFace,
    "MuseTalkUNet": MuseTalkUNet,
    "MuseTalkBlendMouth": MuseTalkBlendMouth,
    "MuseTalkVideoCombine": MuseTalkVideoCombine,
    "MuseTalkDub": MuseTalkDub,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "MuseTalkUNetLoader": "MuseTalk UNet Loader",
    "MuseTalkVAELoader": "MuseTalk VAE Loader",
    "MuseTalkWhisperLoader": "MuseTalk Whisper Loader",
    "MuseTalkFaceParserLoader": "MuseTalk Face Parser Loader",
    "MuseTalkLoadAvatar": MuseTalkLoadAvatar.DISPLAY_NAME,
    "MuseTalkWhisperAudioFeatures": "MuseTalk Whisper Audio Features",
    "MuseTalkVAEEncodeMaskedFace": "MuseTalk VAE Encode Masked Face",
    "MuseTalkUNet": "MuseTalk UNet",
    "MuseTalkBlendMouth": "MuseTalk Blend Mouth",
    "MuseTalkVideoCombine": MuseTalkVideoCombine.DISPLAY_NAME,
    "MuseTalkDub": MuseTalkDub.DISPLAY_NAME,
}
