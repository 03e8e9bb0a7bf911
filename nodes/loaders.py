"""Model loader nodes. Nothing loads at import; each loader reads the official layout under
``models/musetalk`` (or any folder registered for ``musetalk`` in ``extra_model_paths.yaml``)."""

from __future__ import annotations

import logging

from ..musetalk_lib.options import DTYPE_CHOICES, VERSIONS
from .runtime import ManagedModel, choose_dtype, models_root, offload_device, torch_device

CATEGORY = "MuseTalk/loaders"
DTYPE_TOOLTIP = "auto: fp16 where ComfyUI judges it safe (CUDA), else fp32."

logger = logging.getLogger(__name__)


def _locate(component: str):
    """The model root holding ``component`` and the component's files (raises, naming the expected paths)."""
    from ..musetalk_lib.weights import COMPONENTS, RANDOM_MARKER, locate

    root = models_root(COMPONENTS[component][0].path)
    files = locate(root, [component])
    random_weights = (root / RANDOM_MARKER).is_file()
    if random_weights:
        logger.warning("MuseTalk: %s in %s are RANDOM test weights; the output will not be lip-synced.", component, root)
    return files, random_weights


def _identity(component: str) -> str:
    """Changes when the weight files change, so ComfyUI reloads them."""
    from ..musetalk_lib.weights import path_identity

    try:
        files, _ = _locate(component)
    except FileNotFoundError:
        return "missing"
    return ";".join(path_identity(path) for path in files)


class MuseTalkUNetLoader:
    """The MuseTalk UNet, v1.5 (``musetalkV15/``) or v1.0 (``musetalk/``)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "version": (list(VERSIONS), {"default": "v15", "tooltip": "v15 = MuseTalk 1.5, v1 = MuseTalk 1.0"}),
            "dtype": (list(DTYPE_CHOICES), {"default": "auto", "tooltip": DTYPE_TOOLTIP}),
        }}

    RETURN_TYPES = ("MUSETALK_UNET",)
    RETURN_NAMES = ("unet",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads the MuseTalk UNet from models/musetalk (musetalkV15/unet.pth or musetalk/pytorch_model.bin)."

    @classmethod
    def IS_CHANGED(cls, version, dtype):
        from ..musetalk_lib.weights import unet_component

        return _identity(unet_component(version))

    def load(self, version: str, dtype: str):
        from ..musetalk_lib.unet import load_unet
        from ..musetalk_lib.weights import unet_component

        (config, weights), random_weights = _locate(unet_component(version))
        unet = load_unet(config, weights, offload_device(), choose_dtype(dtype, torch_device()))
        return (ManagedModel(unet, f"unet-{version}", str(weights), random_weights),)


class MuseTalkVAELoader:
    """The SD VAE (sd-vae-ft-mse) from ``models/musetalk/sd-vae``."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"dtype": (list(DTYPE_CHOICES), {"default": "auto", "tooltip": DTYPE_TOOLTIP})}}

    RETURN_TYPES = ("MUSETALK_VAE",)
    RETURN_NAMES = ("vae",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads the sd-vae-ft-mse autoencoder that MuseTalk encodes faces with (models/musetalk/sd-vae)."

    @classmethod
    def IS_CHANGED(cls, dtype):
        return _identity("vae")

    def load(self, dtype: str):
        from ..musetalk_lib.vae import load_vae

        (config, _), random_weights = _locate("vae")
        vae = load_vae(config.parent, offload_device(), choose_dtype(dtype, torch_device()))
        return (ManagedModel(vae, "vae", str(config.parent), random_weights),)


class MuseTalkWhisperLoader:
    """The Whisper-tiny audio encoder from ``models/musetalk/whisper``."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"dtype": (list(DTYPE_CHOICES), {"default": "auto", "tooltip": DTYPE_TOOLTIP})}}

    RETURN_TYPES = ("MUSETALK_WHISPER",)
    RETURN_NAMES = ("whisper",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads the Whisper-tiny encoder MuseTalk takes audio features from (models/musetalk/whisper)."

    @classmethod
    def IS_CHANGED(cls, dtype):
        return _identity("whisper")

    def load(self, dtype: str):
        from ..musetalk_lib.audio_features import load_whisper

        (config, _, _), random_weights = _locate("whisper")
        whisper = load_whisper(config.parent, offload_device(), choose_dtype(dtype, torch_device()))
        return (ManagedModel(whisper, "whisper", str(config.parent), random_weights),)


class MuseTalkFaceParserLoader:
    """The BiSeNet face parser (optional: without it, Blend Mouth uses a landmark mask)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"dtype": (list(DTYPE_CHOICES), {"default": "auto", "tooltip": DTYPE_TOOLTIP})}}

    RETURN_TYPES = ("MUSETALK_FACE_PARSER",)
    RETURN_NAMES = ("face_parser",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Loads the BiSeNet face-parsing model (models/musetalk/face-parse-bisent/79999_iter.pth) "
                   "for the official jaw/raw/neck blending masks.")

    @classmethod
    def IS_CHANGED(cls, dtype):
        return _identity("face-parsing")

    def load(self, dtype: str):
        from ..musetalk_lib.face_parsing import load_face_parser

        (weights,), random_weights = _locate("face-parsing")
        parser = load_face_parser(weights, offload_device(), choose_dtype(dtype, torch_device()))
        return (ManagedModel(parser, "face-parsing", str(weights), random_weights),)
