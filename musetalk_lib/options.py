"""The choices users pick from, in one import-cheap place (used by the CLI and the ComfyUI nodes)."""

VERSIONS = ("v15", "v1")
DTYPE_CHOICES = ("auto", "fp32", "fp16", "bf16")
FACE_BACKENDS = ("auto", "face-alignment", "dlib")  # auto: face-alignment if its weights are there, else dlib
FACE_SELECTIONS = ("largest", "index", "point")
PARSING_MODES = ("raw", "jaw", "neck")
MASK_MODES = (*PARSING_MODES, "landmarks")
BLEND_VARIANTS = ("normal", "realtime")
LENGTH_POLICIES = ("pingpong", "loop", "trim")
DECODE_MODES = ("partial", "full")
SILENCE_MODES = ("model", "gate", "source")
