"""The on-disk layout of one preprocessed clip, shared by ``preprocess`` (writer) and ``data`` (reader).

::

    <root>/<clip_id>/
    ├── meta.json        clip facts: fps, frame count, crop boxes, face regions, audio/feature shapes
    ├── landmarks.json   the chosen face per frame (box + 68 landmarks, frame pixels; musetalk_lib.faces format)
    ├── crops/000000.png 256x256 face crops (crop box, Lanczos), one per frame
    ├── faces/000000.png the crop box extended down by ``max_margin`` pixels, native resolution
    ├── audio.wav        16 kHz mono PCM16, exactly the clip's duration
    ├── whisper.npy      Whisper features [L, 5, 384] at 50 Hz of audio.wav
    └── mel.npy          SyncNet mel spectrogram [80, M] at 80 Hz of audio.wav

A clip is complete once ``meta.json`` exists: the writer fills a
``<clip_id>.partial`` folder and renames it at the end.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from musetalk_lib.crop import FACE_SIZE

__all__ = [
    "FORMAT_VERSION",
    "ClipMeta",
    "crop_from_region",
    "find_clips",
    "frame_name",
]

FORMAT_VERSION = 1
META = "meta.json"
LANDMARKS = "landmarks.json"
CROPS = "crops"
FACES = "faces"
AUDIO = "audio.wav"
WHISPER = "whisper.npy"
MEL = "mel.npy"


def frame_name(index: int) -> str:
    """File name of frame ``index`` inside ``crops/`` and ``faces/``."""
    return f"{index:06d}.png"


@dataclass
class ClipMeta:
    """Everything about a clip except pixels, audio and landmarks."""

    clip_id: str
    identity: str  # the source video; SyncNet batches never mix identities
    source: str
    fps: float
    num_frames: int
    start_frame: int  # first frame in the (possibly resampled) frame sequence of the source
    width: int
    height: int
    boxes: list[list[int]]  # crop box per frame (x1, y1, x2, y2), end-exclusive
    regions: list[list[int]]  # the saved face region per frame: the box with its bottom extended
    face_size: float  # median crop-box width in pixels
    audio_samples: int
    box_type: str = "union"
    max_margin: int = 20
    version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def save(self, folder: str | os.PathLike) -> None:
        path = Path(folder) / META
        path.write_text(json.dumps(asdict(self)), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ClipMeta:
        data = json.loads((Path(folder) / META).read_text(encoding="utf-8"))
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"{folder}: clip format version {data.get('version')}, expected {FORMAT_VERSION}; "
                             "preprocess the videos again")
        return cls(**data)


def crop_from_region(region: np.ndarray, box: list[int] | tuple[int, ...], region_box: list[int] | tuple[int, ...],
                     margin: int = 0, size: int = FACE_SIZE) -> np.ndarray:
    """The ``size x size`` crop of ``box`` with its bottom moved down ``margin`` pixels, from a saved face region.

    The bottom is clipped to the region (which ends at the frame edge or at
    ``max_margin``). Resizing uses Pillow's Lanczos filter, as the official
    training data pipeline.
    """
    x1, y1, x2, y2 = box
    bottom = min(y2 + int(margin), region_box[3]) - region_box[1]
    pixels = region[: max(bottom, 1), : x2 - x1]
    return np.array(Image.fromarray(pixels).resize((size, size), Image.Resampling.LANCZOS))


def find_clips(root: str | os.PathLike) -> list[Path]:
    """Complete clip folders under ``root`` (those with a ``meta.json``), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Preprocessed data folder not found: {root}")
    return sorted(path.parent for path in root.glob(f"*/{META}"))
