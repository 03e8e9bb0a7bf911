"""The part of ComfyUI's ``comfy_api.latest`` (V3 node API, as in ComfyUI 0.3.64) that the pack uses.

Tests only: it lets the nodes be imported and called without a ComfyUI checkout. It mirrors the real
module's behaviour where the tests look: ``INPUT_TYPES``/``RETURN_TYPES`` derived from the schema,
``(io_type, options)`` input specs with the options of a combo in ``options``, ``hidden`` left
``None`` on the class (ComfyUI fills it on a clone per run), and ``NodeOutput``'s ``args``/``ui``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class _classproperty:
    def __init__(self, getter):
        self.getter = getter

    def __get__(self, instance, owner):
        return self.getter(owner)


class _Io:
    """Namespace mirroring ``comfy_api.latest.io``."""

    class UploadType(str, Enum):
        image = "image_upload"
        audio = "audio_upload"
        video = "video_upload"

    class Hidden(str, Enum):
        unique_id = "UNIQUE_ID"
        prompt = "PROMPT"
        extra_pnginfo = "EXTRA_PNGINFO"

    class Input:
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, **settings: Any):
            self.id, self.display_name, self.optional, self.tooltip = id, display_name, optional, tooltip
            self.settings = settings
            self.options = settings.get("options")  # a combo's choices, as on the real Combo.Input

        def get_io_type(self):
            return self.io_type

        def as_dict(self) -> dict:
            options = {key: value for key, value in self.settings.items() if value is not None}
            upload = options.pop("upload", None)
            if upload is not None:
                options[upload.value] = True
            if self.tooltip is not None:
                options["tooltip"] = self.tooltip
            if self.display_name is not None:
                options["display_name"] = self.display_name
            return options

    class Output:
        def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None):
            self.id, self.display_name, self.tooltip = id, display_name, tooltip

    @dataclass
    class Schema:
        node_id: str
        display_name: str | None = None
        category: str = "sd"
        inputs: list = field(default_factory=list)
        outputs: list = field(default_factory=list)
        hidden: list = field(default_factory=list)
        description: str = ""
        is_output_node: bool = False
        not_idempotent: bool = False

    class NodeOutput:
        def __init__(self, *args: Any, ui: dict | None = None):
            self.args, self.ui = args, ui

        @property
        def result(self):
            return self.args if self.args else None

        def __getitem__(self, index):
            return self.args[index]

    class ComfyNode:
        hidden = None  # ComfyUI sets a holder of the hidden values on the class clone it runs

        @classmethod
        def define_schema(cls):
            raise NotImplementedError

        @classmethod
        def execute(cls, **kwargs):
            raise NotImplementedError

        @classmethod
        def GET_SCHEMA(cls):
            return cls.define_schema()

        @classmethod
        def INPUT_TYPES(cls) -> dict:
            schema = cls.define_schema()
            declared: dict = {"required": {}}
            for item in schema.inputs:
                declared.setdefault("optional" if item.optional else "required", {})[item.id] = (
                    item.get_io_type(), item.as_dict())
            if schema.hidden:
                declared["hidden"] = {hidden.name: hidden.value for hidden in schema.hidden}
            return declared

        @_classproperty
        def RETURN_TYPES(cls) -> tuple:
            return tuple(output.io_type for output in cls.define_schema().outputs)

        @_classproperty
        def RETURN_NAMES(cls) -> tuple:
            return tuple(output.display_name or output.id for output in cls.define_schema().outputs)

        @_classproperty
        def OUTPUT_TOOLTIPS(cls) -> tuple:
            return tuple(output.tooltip for output in cls.define_schema().outputs)

        @_classproperty
        def OUTPUT_NODE(cls) -> bool:
            return cls.define_schema().is_output_node

        @_classproperty
        def CATEGORY(cls) -> str:
            return cls.define_schema().category

        @_classproperty
        def DESCRIPTION(cls) -> str:
            return cls.define_schema().description


def _comfytype(io_type: str) -> type:
    """A socket type with ``Input`` and ``Output`` classes carrying ``io_type``."""
    input_class = type("Input", (_Io.Input,), {"io_type": io_type})
    output_class = type("Output", (_Io.Output,), {"io_type": io_type})
    return type(io_type.title(), (), {"io_type": io_type, "Input": input_class, "Output": output_class})


class io(_Io):  # noqa: N801 - the real module's name
    Int = _comfytype("INT")
    Float = _comfytype("FLOAT")
    String = _comfytype("STRING")
    Boolean = _comfytype("BOOLEAN")
    Combo = _comfytype("COMBO")
    Image = _comfytype("IMAGE")
    Audio = _comfytype("AUDIO")
    Mask = _comfytype("MASK")

    @staticmethod
    def Custom(io_type: str) -> type:  # noqa: N802 - the real function's name
        return _comfytype(io_type)


class ComfyExtension:
    async def on_load(self) -> None:
        pass

    async def get_node_list(self) -> list[type]:
        raise NotImplementedError


class ui:  # noqa: N801 - the real module's name
    class PreviewText:
        def __init__(self, value: str):
            self.value = value

        def as_dict(self) -> dict:
            return {"text": (self.value,)}
