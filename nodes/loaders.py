"""Model loader nodes. Nothing loads at import; each loader reads the official layout under
``models/musetalk`` (or any folder registered for ``musetalk`` in ``extra_model_paths.yaml``)."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..musetalk_lib.options import DTYPE_CHOICES, VERSIONS
from . import sockets
from .runtime import ManagedModel, choose_dtype, models_root, offload_device, reported_as, torch_device

CATEGORY = "MuseTalk/loaders"
DTYPE_TOOLTIP = "auto: fp16 where ComfyUI judges it safe (CUDA), else fp32."
RANDOM_NOTE = "RANDOM test weights in {root}: the output will not be lip-synced."

logger = logging.getLogger(__name__)


def dtype_input() -> io.Combo.Input:
    return io.Combo.Input("dtype", options=list(DTYPE_CHOICES), default="auto", tooltip=DTYPE_TOOLTIP)


def _locate(component: str):
    """The model root holding ``component`` and the component's files (raises, naming the expected paths)."""
    from ..musetalk_lib.weights import COMPONENTS, RANDOM_MARKER, locate

    root = models_root(COMPONENTS[component][0].path)
    files = locate(root, [component])
    return files, root, (root / RANDOM_MARKER).is_file()


def _identity(component: str) -> str:
    """Changes when the weight files change, so ComfyUI reloads them."""
    from ..musetalk_lib.weights import path_identity

    try:
        files, _, _ = _locate(component)
    except FileNotFoundError:
        return "missing"
    return ";".join(path_identity(path) for path in files)


def loaded(model: ManagedModel, root, display_name: str) -> io.NodeOutput:
    """The loader's output, with the random-weights warning on the node when they are random."""
    if not model.random_weights:
        return io.NodeOutput(model)
    note = RANDOM_NOTE.format(root=root)
    logger.warning("%s: %s", display_name, note)
    return io.NodeOutput(model, ui={"text": [note]})


class MuseTalkUNetLoader(io.ComfyNode):
    """The MuseTalk UNet, v1.5 (``musetalkV15/``) or v1.0 (``musetalk/``)."""

    DISPLAY_NAME = "MuseTalk UNet Loader"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MuseTalkUNetLoader", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="Loads the MuseTalk UNet from models/musetalk (musetalkV15/unet.pth or "
                        "musetalk/pytorch_model.bin).",
            inputs=[io.Combo.Input("version", options=list(VERSIONS), default="v15",
                                   tooltip="v15 = MuseTalk 1.5, v1 = MuseTalk 1.0"),
                    dtype_input()],
            outputs=[sockets.UNet.Output(display_name="unet")],
        )

    @classmethod
    def fingerprint_inputs(cls, version, dtype):
        from ..musetalk_lib.weights import unet_component

        return _identity(unet_component(version))

    @classmethod
    def execute(cls, version: str, dtype: str) -> io.NodeOutput:
        from ..musetalk_lib.unet import load_unet
        from ..musetalk_lib.weights import unet_component

        with reported_as(cls.DISPLAY_NAME):
            (config, weights), root, random_weights = _locate(unet_component(version))
            unet = load_unet(config, weights, offload_device(), choose_dtype(dtype, torch_device()))
        return loaded(ManagedModel(unet, f"unet-{version}", str(weights), random_weights), root, cls.DISPLAY_NAME)


class MuseTalkVAELoader(io.ComfyNode):
    """The SD VAE (sd-vae-ft-mse) from ``models/musetalk/sd-vae``."""

    DISPLAY_NAME = "MuseTalk VAE Loader"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MuseTalkVAELoader", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="Loads the sd-vae-ft-mse autoencoder that MuseTalk encodes faces with (models/musetalk/sd-vae).",
            inputs=[dtype_input()],
            outputs=[sockets.VAE.Output(display_name="vae")],
        )

    @classmethod
    def fingerprint_inputs(cls, dtype):
        return _identity("vae")

    @classmethod
    def execute(cls, dtype: str) -> io.NodeOutput:
        from ..musetalk_lib.vae import load_vae

        with reported_as(cls.DISPLAY_NAME):
            (config, _), root, random_weights = _locate("vae")
            vae = load_vae(config.parent, offload_device(), choose_dtype(dtype, torch_device()))
        return loaded(ManagedModel(vae, "vae", str(config.parent), random_weights), root, cls.DISPLAY_NAME)


class MuseTalkWhisperLoader(io.ComfyNode):
    """The Whisper-tiny audio encoder from ``models/musetalk/whisper``."""

    DISPLAY_NAME = "MuseTalk Whisper Loader"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MuseTalkWhisperLoader", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="Loads the Whisper-tiny encoder MuseTalk takes audio features from (models/musetalk/whisper).",
            inputs=[dtype_input()],
            outputs=[sockets.Whisper.Output(display_name="whisper")],
        )

    @classmethod
    def fingerprint_inputs(cls, dtype):
        return _identity("whisper")

    @classmethod
    def execute(cls, dtype: str) -> io.NodeOutput:
        from ..musetalk_lib.audio_features import load_whisper

        with reported_as(cls.DISPLAY_NAME):
            (config, _, _), root, random_weights = _locate("whisper")
            whisper = load_whisper(config.parent, offload_device(), choose_dtype(dtype, torch_device()))
        return loaded(ManagedModel(whisper, "whisper", str(config.parent), random_weights), root, cls.DISPLAY_NAME)


class MuseTalkFaceParserLoader(io.ComfyNode):
    """The BiSeNet face parser, optional: without its weights the output is empty and blending uses landmarks."""

    DISPLAY_NAME = "MuseTalk Face Parser Loader"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MuseTalkFaceParserLoader", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="Loads the BiSeNet face-parsing model (models/musetalk/face-parse-bisent/79999_iter.pth) "
                        "for the official jaw/raw/neck blending masks. Optional: without the weights it outputs "
                        "nothing and says so, and Blend Mouth / Dub use the landmark mask.",
            inputs=[dtype_input()],
            outputs=[sockets.FaceParser.Output(display_name="face_parser",
                                               tooltip="Empty when the BiSeNet weights are missing.")],
        )

    @classmethod
    def fingerprint_inputs(cls, dtype):
        return _identity("face-parsing")

    @classmethod
    def execute(cls, dtype: str) -> io.NodeOutput:
        from ..musetalk_lib.face_parsing import load_face_parser
        from ..musetalk_lib.weights import MissingWeightsError

        with reported_as(cls.DISPLAY_NAME):
            try:
                (weights,), root, random_weights = _locate("face-parsing")
            except MissingWeightsError as error:
                note = (f"No BiSeNet weights ({error.root / error.missing[0].path}): blending will use the landmark "
                        "mask. For the jaw/raw/neck masks run `musetalk weights download`.")
                logger.warning("%s: %s", cls.DISPLAY_NAME, note)
                return io.NodeOutput(None, ui={"text": [note]})
            parser = load_face_parser(weights, offload_device(), choose_dtype(dtype, torch_device()))
        return loaded(ManagedModel(parser, "face-parsing", str(weights), random_weights), root, cls.DISPLAY_NAME)


LORA_FOLDER = "loras"  # under models/musetalk: the identity LoRAs `musetalk finetune` writes


def lora_files() -> list[str]:
    """The ``.safetensors`` files in ``models/musetalk/loras`` (for the LoRA widget)."""
    from .runtime import model_roots

    names = set()
    for root in model_roots():
        folder = root / LORA_FOLDER
        if folder.is_dir():
            names.update(path.relative_to(folder).as_posix() for path in folder.rglob("*.safetensors"))
    return sorted(names)


def _lora_path(name: str):
    """The file ``name`` stands for in the first models/musetalk/loras that has it, or None (never outside it)."""
    from .runtime import model_roots

    if name not in lora_files():
        return None
    return next(root / LORA_FOLDER / name for root in model_roots() if (root / LORA_FOLDER / name).is_file())


class MuseTalkLoraLoader(io.ComfyNode):
    """An identity LoRA (``musetalk finetune``) merged into a copy of the MuseTalk UNet."""

    DISPLAY_NAME = "MuseTalk LoRA Loader"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MuseTalkLoraLoader", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="Applies an actor's identity LoRA (trained with `musetalk finetune`) to the MuseTalk UNet, "
                        "for a sharper mouth on that person. The UNet coming in is left unchanged.",
            inputs=[sockets.UNet.Input("unet"),
                    io.Combo.Input("lora_file", options=lora_files(),
                                   tooltip="A LoRA file from models/musetalk/loras (musetalk finetune -o ...)."),
                    io.Float.Input("strength", default=1.0, min=-2.0, max=2.0, step=0.05,
                                   tooltip="How much of the LoRA's change to apply: 0 = the base UNet exactly, "
                                           "1 = as trained.")],
            outputs=[sockets.UNet.Output(display_name="unet")],
        )

    @classmethod
    def fingerprint_inputs(cls, unet=None, lora_file="", strength=1.0):
        from ..musetalk_lib.weights import path_identity

        path = _lora_path(lora_file)
        return f"{path_identity(path) if path is not None else 'missing'}:{strength}"

    @classmethod
    def validate_inputs(cls, lora_file: str | None = None) -> bool | str:
        if lora_file is not None and _lora_path(lora_file) is None:
            return (f"{cls.DISPLAY_NAME}: no LoRA file '{lora_file}' in models/musetalk/{LORA_FOLDER}. Train one "
                    "with `musetalk finetune VIDEO -o ACTOR.safetensors` and put it there.")
        return True

    @classmethod
    def execute(cls, unet: ManagedModel, lora_file: str, strength: float) -> io.NodeOutput:
        from ..musetalk_lib.lora import unet_with_lora

        path = _lora_path(lora_file)
        with reported_as(cls.DISPLAY_NAME):
            if path is None:
                raise FileNotFoundError(f"No LoRA file '{lora_file}' in models/musetalk/{LORA_FOLDER}.")
            patched = unet_with_lora(unet.module, path, strength)
        return io.NodeOutput(ManagedModel(patched, f"{unet.kind}+lora", f"{unet.files}+{path}", unet.random_weights))
