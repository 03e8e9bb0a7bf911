"""Avatars: everything about a source video that does not depend on the speech.

Preparing an avatar tracks the face (boxes, landmarks), encodes the masked and
reference latents of every frame with a face, and builds each frame's 512x512
blending mask. The result is cached in a folder keyed by a hash of the source
frames, the settings and the models, so dubbing the same video with other
speech skips straight to the UNet.

Cache layout (format version 3)::

    <cache root>/<key>/
        manifest.json            format version, key, settings, mask mode, frame counts, size, frame rate,
                                 description (e.g. the source path), SHA-256 of every other file
        track.safetensors        boxes [N,4] int32, has_face [N] uint8, landmarks [N,68,2] float32,
                                 rotations [N,2,3] float64 (frame to upright view; identity: none)
        shard-00000.safetensors  latents [k,8,32,32] float32, masks [k,32768] uint8 (bit-packed 512x512)
        ...

Shards hold the frames with a face, in order, ``SHARD_SIZE`` per file, and are
read lazily, so long videos never load all latents at once.

The cache is trusted only once checked. Opening an avatar checks the manifest
strictly (no missing or unknown key, also in ``settings``; every value of its
type; this format version; a checksum for exactly the files the frame counts
call for) and the checksum of every file, so a damaged cache is found before
any work rather than in the middle of a dub; a shard is checked again each time
it is read from disk. :func:`prepare_avatar` turns any problem into one logged
warning naming the folder and the reason, and rebuilds. Should a shard change
after the avatar was opened, reading it raises :class:`AvatarCacheError`
(run again to rebuild) instead of using it.

The cost, measured on the 2-core development Xeon (SHA extensions, hashlib's
SHA-256; BLAKE2b was 2.1x slower): 12-21 ms to hash a full 256-frame shard
(16 MiB; reading it from the page cache takes 1.8 ms), so 0.05-0.08 ms per
frame, paid once when opening and once when reading. Opening the 45-frame
``talking_closeup`` avatar (2.8 MiB) went from 0.2 ms to 2.6 ms, opening it and
reading all its latents and masks from 6 ms to 17 ms; 10 000 frames (640 MiB)
take 0.5-0.8 s of hashing on top of reading them from disk. A dub on that CPU
spends about 3.6 s per output frame; even a GPU dub at 100 frames per second
spends 10 ms per frame, against 0.1-0.16 ms of checking per avatar frame.

The folder is written under a temporary name and renamed when complete, so a
reader never sees part of one, and two processes that build the same avatar at
once both succeed: the one that renames second uses the first one's cache (see
:mod:`musetalk_lib.cache_folder`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, get_type_hints

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch
from safetensors import SafetensorError

from .blending import (
    blend_alpha,
    crop_with_padding,
    expanded_square,
    first_pasted_face_row,
    landmark_mask,
    parsing_mask,
)
from .bounded_cache import BoundedCache
from .cache_folder import check_fields, checksum, discard, publish, read_verified, remove_abandoned, temporary_folder
from .crop import V15_EXTRA_MARGIN, Box, crop_face, official_face_box
from .face_parsing import PARSING_SIZE
from .faces import Face, select_faces, smooth_faces
from .mask_smoothing import MaskSmoother
from .options import MASK_MODES
from .progress import Progress
from .upright import level_rotation, transform_points, upright_frame

if TYPE_CHECKING:
    from .face_detection import FaceDetector
    from .face_parsing import FaceParser
    from .frame_source import FrameSource
    from .vae import FaceVAE

__all__ = [
    "FORMAT_VERSION",
    "Avatar",
    "AvatarCacheError",
    "AvatarInMemory",
    "AvatarSettings",
    "BlendMasks",
    "FaceLatents",
    "FaceTrack",
    "SmoothedMasks",
    "blend_masks",
    "build_track",
    "detect_faces",
    "encode_faces",
    "face_masks",
    "prepare_avatar",
    "prepare_avatar_in_memory",
    "track_faces",
]

FORMAT_VERSION = 3
_KEY_SCHEME = 1  # what goes into a cache key; the layout's own version (FORMAT_VERSION) is checked on opening
SHARD_SIZE = 256
REGION_CACHE_BYTES = 256 * 2**20  # blend alphas kept per source frame
SHARD_CACHE_BYTES = 256 * 2**20  # shard tensors kept in memory
MIN_FACE_SIZE = 8  # pixels; smaller crop boxes are treated as "no face"

logger = logging.getLogger(__name__)


class AvatarCacheError(RuntimeError):
    """An avatar folder is missing, incomplete, corrupt or from another format."""


@dataclass(frozen=True)
class AvatarSettings:
    """How faces are chosen, cropped and masked. ``None`` fields take the version's official default.

    ``align_roll``: faces whose eye line is tilted more than this many degrees
    are turned upright before cropping and turned back when pasted; ``None``
    (default) crops every face as it is (see :mod:`~musetalk_lib.upright`).

    ``mask_smoothing``: blend masks are averaged over this many frames on each
    side, aligned through the crop boxes, so the mask edge does not flicker;
    0 (default) keeps each frame's own mask (see :mod:`~musetalk_lib.mask_smoothing`).
    """

    version: str = "v15"
    bbox_shift: int = 0
    extra_margin: int | None = None
    face_selection: str = "largest"
    face_index: int = 0
    face_point: tuple[float, float] | None = None
    smoothing: int = 2
    mask_mode: str | None = None
    cheek_width: int = 90
    expand: float = 1.5
    align_roll: float | None = None
    mask_smoothing: int = 0

    def __post_init__(self):
        if self.align_roll is not None:
            if not 0 <= self.align_roll < 90:
                raise ValueError(f"align_roll must be at least 0 and below 90 degrees, got {self.align_roll}.")
            object.__setattr__(self, "align_roll", float(self.align_roll))  # 5 and 5.0: one cache key
        if self.mask_smoothing < 0:
            raise ValueError(f"mask_smoothing must be 0 (off) or more frames, got {self.mask_smoothing}.")

    @property
    def margin(self) -> int:
        """Pixels added below the chin: 10 for v1.5, 0 for v1 unless set."""
        if self.extra_margin is not None:
            return self.extra_margin
        return V15_EXTRA_MARGIN if self.version == "v15" else 0

    def resolved_mask_mode(self, has_parser: bool) -> str:
        """The mask mode to use: the version's default (``jaw``/``raw``), or ``landmarks`` without a parser."""
        mode = self.mask_mode or ("jaw" if self.version == "v15" else "raw")
        if mode not in MASK_MODES:
            raise ValueError(f"Unknown mask mode {mode!r}; choose one of {', '.join(MASK_MODES)}.")
        return mode if has_parser or mode == "landmarks" else "landmarks"


@dataclass
class FaceTrack:
    """One crop box per source frame (or none), with the landmarks it came from.

    Where a frame has a rotation (``align_roll``), its box and landmarks are in
    the coordinates of its upright view (:func:`~musetalk_lib.upright.upright_frame`).
    """

    boxes: np.ndarray  # [N, 4] int32; zeros where there is no face
    has_face: np.ndarray  # [N] bool
    landmarks: np.ndarray  # [N, 68, 2] float32; NaN where there is no face
    rotations: np.ndarray | None = None  # [N, 2, 3] float64 frame -> upright view; identity rows: none; None: none

    def rotation(self, index: int) -> np.ndarray | None:
        """The frame-to-upright rotation of source frame ``index``, or None where it is cropped as it is."""
        if self.rotations is None or np.array_equal(self.rotations[index], _IDENTITY):
            return None
        return self.rotations[index]

    @property
    def rotated(self) -> bool:
        """Whether any frame is turned upright."""
        return self.rotations is not None and not np.all(self.rotations == _IDENTITY)

    def upright(self, frame: np.ndarray, index: int) -> np.ndarray:
        """Source frame ``index`` (pixels ``frame``) as its box and landmarks see it."""
        rotation = self.rotation(index)
        return frame if rotation is None else upright_frame(frame, rotation)

    @property
    def num_frames(self) -> int:
        return len(self.has_face)

    @property
    def face_frames(self) -> np.ndarray:
        return np.flatnonzero(self.has_face)

    def box(self, index: int) -> Box | None:
        return tuple(int(v) for v in self.boxes[index]) if self.has_face[index] else None

    def missing_ranges(self) -> list[tuple[int, int]]:
        """Inclusive ``(first, last)`` ranges of frames without a face, for reporting."""
        ranges, start = [], None
        for index, present in enumerate(self.has_face):
            if not present and start is None:
                start = index
            if present and start is not None:
                ranges.append((start, index - 1))
                start = None
        if start is not None:
            ranges.append((start, self.num_frames - 1))
        return ranges

    def face_summary(self) -> str:
        """One line for the user: in how many frames the face was found, and which frames pass through."""
        found = int(self.has_face.sum())
        if found == self.num_frames:
            return f"Face found in all {self.num_frames} frames."
        ranges = ", ".join(f"{first}" if first == last else f"{first}-{last}" for first, last in self.missing_ranges())
        return (f"Face found in {found} of {self.num_frames} frames; frames {ranges} have no face and pass "
                "through unchanged.")


_IDENTITY = np.eye(2, 3)


def detect_faces(source: FrameSource, detector: FaceDetector, batch_size: int = 8,
                 progress: Progress | None = None) -> list[list[Face]]:
    """Run a detector over every frame of ``source``, a batch at a time."""
    detections: list[list[Face]] = []
    for start in range(0, source.num_frames, batch_size):
        indices = range(start, min(start + batch_size, source.num_frames))
        detections.extend(detector.detect(source.frames(indices)))
        if progress:
            progress("detect faces", len(detections), source.num_frames)
    return detections


def _check_face_input(source: FrameSource, detector: FaceDetector | None,
                      faces: Sequence[Sequence[Face]] | None) -> None:
    if (detector is None) == (faces is None):
        raise ValueError("Give exactly one of detector= or faces=.")
    if faces is not None and len(faces) != source.num_frames:
        raise ValueError(f"Landmarks cover {len(faces)} frames but the source has {source.num_frames}.")


def track_faces(source: FrameSource, settings: AvatarSettings = AvatarSettings(), *,
                detector: FaceDetector | None = None, faces: Sequence[Sequence[Face]] | None = None,
                batch_size: int = 8, progress: Progress | None = None) -> FaceTrack:
    """The face track of ``source``: faces from ``faces`` (one list per frame) or found with ``detector``,
    then chosen, smoothed and boxed as ``settings`` say (:func:`build_track`)."""
    _check_face_input(source, detector, faces)
    if faces is None:
        faces = detect_faces(source, detector, batch_size, progress)
    return build_track(faces, source.width, source.height, settings)


def _clip_box(box: Box | None, width: int, height: int) -> Box | None:
    if box is None:
        return None
    x1, y1, x2, y2 = max(0, box[0]), max(0, box[1]), min(width, box[2]), min(height, box[3])
    if x2 - x1 < MIN_FACE_SIZE or y2 - y1 < MIN_FACE_SIZE:
        return None
    return (x1, y1, x2, y2)


def build_track(faces_per_frame: Sequence[Sequence[Face]], width: int, height: int,
                settings: AvatarSettings) -> FaceTrack:
    """Choose one face per frame, smooth it over time and derive the official crop boxes.

    With ``settings.align_roll``, tilted faces get their box from the landmarks turned upright.
    """
    chosen = select_faces(faces_per_frame, settings.face_selection, settings.face_index, settings.face_point)
    chosen = smooth_faces(chosen, settings.smoothing)
    count = len(chosen)
    boxes = np.zeros((count, 4), np.int32)
    has_face = np.zeros(count, bool)
    landmarks = np.full((count, 68, 2), np.nan, np.float32)
    rotations = np.tile(_IDENTITY, (count, 1, 1))
    for index, face in enumerate(chosen):
        if face is None:
            continue
        points, detector_box = face.landmarks, face.box
        rotation = None if settings.align_roll is None else level_rotation(points, settings.align_roll)
        if rotation is not None:
            points = transform_points(points, rotation)
            x1, y1, x2, y2 = detector_box
            corners = transform_points(np.array([[x1, y1], [x2, y1], [x1, y2], [x2, y2]]), rotation)
            detector_box = (*corners.min(axis=0), *corners.max(axis=0))
        box = official_face_box(points, height, settings.bbox_shift, settings.margin,
                                fallback=tuple(int(v) for v in detector_box))
        box = _clip_box(box, width, height)
        if box is not None:
            boxes[index], has_face[index], landmarks[index] = box, True, points
            if rotation is not None:
                rotations[index] = rotation
    return FaceTrack(boxes, has_face, landmarks, rotations)


def face_masks(frames: Sequence[np.ndarray], track: FaceTrack, indices: Sequence[int], mode: str,
               settings: AvatarSettings, parser: FaceParser | None) -> np.ndarray:
    """512x512 blending masks (0/255) of source frames ``indices`` (all with a face), ``frames`` their pixels."""
    squares = [expanded_square(track.box(i), settings.expand) for i in indices]
    if mode == "landmarks":
        return np.stack([landmark_mask(track.landmarks[i], square) for i, square in zip(indices, squares)])
    if parser is None:
        raise ValueError(f"Mask mode {mode!r} needs the face-parsing model; use 'landmarks' without it.")
    labels = parser.labels([crop_with_padding(track.upright(frame, i), square)
                            for frame, i, square in zip(frames, indices, squares)])
    return np.stack([parsing_mask(label, mode, settings.cheek_width) for label in labels])


def _face_batches(source: FrameSource, track: FaceTrack, batch_size: int):
    """``(indices, frames)`` of the frames with a face, ``batch_size`` at a time."""
    face_frames = track.face_frames
    for start in range(0, len(face_frames), batch_size):
        indices = [int(i) for i in face_frames[start:start + batch_size]]
        yield indices, source.frames(indices)


def _encode(vae: FaceVAE, track: FaceTrack, indices: Sequence[int], frames: Sequence[np.ndarray]) -> torch.Tensor:
    crops = np.stack([crop_face(track.upright(frame, i), track.box(i)) for frame, i in zip(frames, indices)])
    return vae.encode_masked_and_reference(crops)


def _unpack_mask(packed: np.ndarray) -> np.ndarray:
    return (np.unpackbits(packed).reshape(PARSING_SIZE, PARSING_SIZE) * 255).astype(np.uint8)


class BlendRegions:
    """Where and how generated faces are pasted: ``(box, square, alpha)`` per source frame, computed once.

    The alpha depends only on the source frame (and the blend variant), so it
    is kept (least recently used dropped past :data:`REGION_CACHE_BYTES`) and
    every output frame that shows the same source frame reuses it. Subclasses
    say where the 512x512 masks come from.
    """

    def __init__(self, track: FaceTrack, settings: AvatarSettings):
        self.track, self.settings = track, settings
        self._regions = BoundedCache(REGION_CACHE_BYTES, lambda region: region[2].nbytes)

    def packed_masks(self, indices: Sequence[int], frames: Sequence[np.ndarray] | None) -> np.ndarray:
        """Bit-packed 512x512 masks ``[k, 32768]`` of source frames ``indices`` (``frames``: their pixels)."""
        raise NotImplementedError

    def _square(self, index: int) -> tuple[Box, Box]:
        box = self.track.box(index)
        return box, expanded_square(box, self.settings.expand)

    def blend_regions(self, indices: Sequence[int], frames: Sequence[np.ndarray] | None = None,
                      variant: str = "normal") -> list[tuple[Box, Box, np.ndarray]]:
        """``(box, square, alpha)`` for each source frame in ``indices`` (each must have a face)."""
        indices = [int(i) for i in indices]
        missing = [position for position, i in enumerate(indices) if (i, variant) not in self._regions]
        masks = {}
        if missing:
            pixels = None if frames is None else [frames[position] for position in missing]
            packed = self.packed_masks([indices[position] for position in missing], pixels)
            masks = {indices[position]: mask for position, mask in zip(missing, packed)}

        def region(index: int) -> tuple[Box, Box, np.ndarray]:
            box, square = self._square(index)
            return box, square, blend_alpha(_unpack_mask(masks[index]), box, square, variant)

        return [self._regions.get_or_compute((i, variant), lambda i=i: region(i)) for i in indices]

    def first_pasted_row(self, indices: Sequence[int], variant: str = "normal") -> int:
        """The first generated-face row that the paste can show for any of source frames ``indices``."""
        return min(first_pasted_face_row(*self._square(int(i)), variant) for i in indices)


class FaceLatents:
    """UNet input latents (masked, reference) of every source frame with a face, held in memory."""

    def __init__(self, track: FaceTrack, latents: torch.Tensor):
        self.track = track
        self._latents = latents
        self._row = np.full(track.num_frames, -1, np.int64)
        self._row[track.face_frames] = np.arange(len(track.face_frames))

    def latents(self, frames: Sequence[int]) -> torch.Tensor:
        """``[k, 8, 32, 32]`` latents of source frames that have a face."""
        rows = self._row[np.asarray(frames, dtype=np.int64)]
        if (rows < 0).any():
            raise ValueError(f"Frames without a face have no latents: {np.asarray(frames)[rows < 0].tolist()}")
        return self._latents[torch.from_numpy(rows)]


def encode_faces(source: FrameSource, track: FaceTrack, vae: FaceVAE, batch_size: int = 8,
                 progress: Progress | None = None) -> FaceLatents:
    """Encode the masked and reference latents of every frame with a face (kept on the CPU)."""
    pieces, done = [], 0
    for indices, frames in _face_batches(source, track, batch_size):
        pieces.append(_encode(vae, track, indices, frames).float().cpu())
        done += len(indices)
        if progress:
            progress("encode faces", done, len(track.face_frames))
    # contiguous like the cached shards: the UNet's CPU kernels round differently on other memory layouts
    latents = torch.cat(pieces).contiguous() if pieces else torch.zeros((0, 8, 32, 32))
    return FaceLatents(track, latents)


class BlendMasks(BlendRegions):
    """Blend regions whose masks are computed on demand from the frames given (face parsing or landmarks)."""

    def __init__(self, track: FaceTrack, settings: AvatarSettings, mode: str, parser: FaceParser | None = None):
        if mode not in MASK_MODES:
            raise ValueError(f"Unknown mask mode {mode!r}; choose one of {', '.join(MASK_MODES)}.")
        if settings.mask_smoothing:
            raise ValueError("mask_smoothing needs the masks of the neighbouring frames: use SmoothedMasks or "
                             "prepare the avatar (prepare_avatar) instead of computing masks on demand.")
        super().__init__(track, settings)
        self.mode, self.parser = mode, parser

    def packed_masks(self, indices: Sequence[int], frames: Sequence[np.ndarray] | None) -> np.ndarray:
        if frames is None:
            raise ValueError("BlendMasks needs the source frames to compute their masks.")
        masks = face_masks(frames, self.track, indices, self.mode, self.settings, self.parser)
        return np.packbits(masks > 127, axis=None).reshape(len(masks), -1)


class SmoothedMasks(BlendRegions):
    """Blend regions with time-smoothed masks (``settings.mask_smoothing``), computed for every face frame at once.

    Smoothing needs each frame's neighbours, so the masks are made in one pass
    over ``source`` when this is built (as :func:`prepare_avatar` does) and
    kept bit-packed (32 KiB a frame).
    """

    def __init__(self, source: FrameSource, track: FaceTrack, settings: AvatarSettings, mode: str,
                 parser: FaceParser | None = None, batch_size: int = 8, progress: Progress | None = None):
        if mode not in MASK_MODES:
            raise ValueError(f"Unknown mask mode {mode!r}; choose one of {', '.join(MASK_MODES)}.")
        super().__init__(track, settings)
        self.mode = mode
        smoother = MaskSmoother(track, settings.expand, settings.mask_smoothing)
        smoothed, done = [], 0
        for indices, frames in _face_batches(source, track, batch_size):
            smoothed.append(smoother.push(indices, face_masks(frames, track, indices, mode, settings, parser)))
            done += len(indices)
            if progress:
                progress("smooth masks", done, len(track.face_frames))
        smoothed.append(smoother.finish())
        masks = np.concatenate([batch.reshape(-1, PARSING_SIZE, PARSING_SIZE) for batch in smoothed])
        packed = np.packbits(masks > 127, axis=None).reshape(len(masks), -1)
        self._packed = dict(zip(track.face_frames.tolist(), packed))

    def packed_masks(self, indices: Sequence[int], frames: Sequence[np.ndarray] | None = None) -> np.ndarray:
        return np.stack([self._packed[int(index)] for index in indices])


def blend_masks(source: FrameSource, track: FaceTrack, settings: AvatarSettings, parser: FaceParser | None = None,
                batch_size: int = 8, progress: Progress | None = None) -> BlendMasks | SmoothedMasks:
    """The blend regions of ``track`` in ``settings``' mask mode (the landmark mask without a ``parser``).

    Masks are made as frames are blended, or all at once here when
    ``settings.mask_smoothing`` needs each frame's neighbours.
    """
    mode = settings.resolved_mask_mode(parser is not None)
    if settings.mask_smoothing:
        return SmoothedMasks(source, track, settings, mode, parser, batch_size, progress)
    return BlendMasks(track, settings, mode, parser)


class AvatarInMemory:
    """A prepared avatar held in memory instead of a cache folder: the face latents and blend regions of a
    track, with the interface of :class:`Avatar` that generation uses (``track``, ``mask_mode``,
    ``latents``, ``blend_regions``, ``first_pasted_row``).

    For callers that keep results themselves (the ComfyUI nodes); :func:`prepare_avatar` caches on disk.
    """

    def __init__(self, faces: FaceLatents, regions: BlendMasks | SmoothedMasks):
        self.track = regions.track
        self.mask_mode = regions.mode
        self._faces, self._regions = faces, regions

    def latents(self, frames: Sequence[int]) -> torch.Tensor:
        return self._faces.latents(frames)

    def blend_regions(self, indices: Sequence[int], frames: Sequence[np.ndarray] | None = None,
                      variant: str = "normal") -> list[tuple[Box, Box, np.ndarray]]:
        return self._regions.blend_regions(indices, frames, variant)

    def first_pasted_row(self, indices: Sequence[int], variant: str = "normal") -> int:
        return self._regions.first_pasted_row(indices, variant)


def prepare_avatar_in_memory(source: FrameSource, track: FaceTrack, vae: FaceVAE,
                             settings: AvatarSettings = AvatarSettings(), parser: FaceParser | None = None,
                             batch_size: int = 8, progress: Progress | None = None) -> AvatarInMemory:
    """What :func:`prepare_avatar` makes, in memory and from a ready ``track``: encoded faces and blend masks."""
    faces = encode_faces(source, track, vae, batch_size, progress)
    return AvatarInMemory(faces, blend_masks(source, track, settings, parser, batch_size, progress))


TRACK_FILE = "track.safetensors"
_MANIFEST_FIELDS: dict[str, object] = {
    "format_version": int,
    "key": str,
    "settings": dict,
    "mask_mode": str,
    "num_frames": int,
    "frames_with_face": int,
    "width": int,
    "height": int,
    "frame_rate": tuple[int, int],
    "description": dict,
    "checksums": dict[str, str],
}
_SETTINGS_FIELDS = get_type_hints(AvatarSettings)


def _shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


def _read_manifest(folder: Path) -> dict:
    """The manifest of ``folder``, checked against this format; :class:`ValueError` if it does not fit."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"manifest.json is not valid JSON ({error})") from error
    if isinstance(manifest, dict) and manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"format version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}")
    check_fields(manifest, _MANIFEST_FIELDS, "manifest.json")
    check_fields(manifest["settings"], _SETTINGS_FIELDS, "manifest.json settings")
    if manifest["mask_mode"] not in MASK_MODES:
        raise ValueError(f"manifest.json: unknown mask mode {manifest['mask_mode']!r}")
    checksums, shards = manifest["checksums"], -(-manifest["frames_with_face"] // SHARD_SIZE)
    if len(checksums) != 1 + max(shards, 0) or checksums.keys() != {TRACK_FILE, *map(_shard_name, range(shards))}:
        raise ValueError(f"manifest.json has checksums of {', '.join(sorted(checksums))}, expected {TRACK_FILE} "
                         f"and {shards} shard(s) for {manifest['frames_with_face']} frames with a face")
    return manifest


class Avatar(BlendRegions):
    """A prepared (cached) avatar: the face track plus lazily read latents and masks.

    Opening one checks the manifest and the checksum of every file, and raises
    :class:`AvatarCacheError` if anything is off. Shards are then read whole
    when first needed, checked again, and kept (least recently used dropped
    past :data:`SHARD_CACHE_BYTES`), so playing a clip back and forth reads each
    shard once while it fits.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        try:
            self.manifest = _read_manifest(self.folder)
            track = safetensors.numpy.load(self._read(TRACK_FILE))
            self.track = FaceTrack(track["boxes"], track["has_face"].astype(bool), track["landmarks"],
                                   track["rotations"])
            counts = self.manifest["num_frames"], self.manifest["frames_with_face"]
            if (self.track.num_frames, len(self.track.face_frames)) != counts:
                raise ValueError(f"the track does not have the manifest's {counts[0]} frames, {counts[1]} with a face")
            for name in sorted(self.manifest["checksums"].keys() - {TRACK_FILE}):  # all now: see the module docstring
                self._read(name)
        except (OSError, ValueError, KeyError, SafetensorError) as error:
            raise AvatarCacheError(f"{self.folder}: {error}") from error
        self.settings = AvatarSettings(**{name: tuple(value) if isinstance(value, list) else value
                                          for name, value in self.manifest["settings"].items()})
        self.mask_mode: str = self.manifest["mask_mode"]
        super().__init__(self.track, self.settings)
        self._shards = BoundedCache(SHARD_CACHE_BYTES, lambda tensors: sum(t.nbytes for t in tensors.values()))
        self._row = np.full(self.track.num_frames, -1, np.int64)
        self._row[self.track.face_frames] = np.arange(len(self.track.face_frames))

    def _read(self, name: str) -> bytes:
        return read_verified(self.folder / name, self.manifest["checksums"][name])

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def num_frames(self) -> int:
        return self.track.num_frames

    def _rows(self, frames: Sequence[int], name: str) -> torch.Tensor:
        rows = self._row[np.asarray(frames, dtype=np.int64)]
        if (rows < 0).any():
            raise ValueError(f"Frames without a face have no {name}: {np.asarray(frames)[rows < 0].tolist()}")
        pieces = []
        for shard in np.unique(rows // SHARD_SIZE):
            in_shard = rows // SHARD_SIZE == shard
            block = self._shard(int(shard))[name]
            pieces.append((np.flatnonzero(in_shard), block[torch.from_numpy(rows[in_shard] % SHARD_SIZE)]))
        result = torch.empty((len(rows), *pieces[0][1].shape[1:]), dtype=pieces[0][1].dtype)
        for positions, block in pieces:
            result[torch.from_numpy(positions)] = block
        return result

    def _shard(self, shard: int) -> dict[str, torch.Tensor]:
        def read() -> dict[str, torch.Tensor]:
            try:
                return safetensors.torch.load(self._read(_shard_name(shard)))
            except (OSError, ValueError, SafetensorError) as error:
                raise AvatarCacheError(f"{self.folder}: {error}, after the avatar was opened intact; "
                                       "run again to rebuild it") from error

        return self._shards.get_or_compute(shard, read)

    def latents(self, frames: Sequence[int]) -> torch.Tensor:
        """UNet input latents ``[k, 8, 32, 32]`` (masked, reference) of source frames that have a face."""
        return self._rows(frames, "latents")

    def mask(self, frame: int) -> np.ndarray:
        """The 512x512 blending mask (0/255) of a source frame that has a face."""
        return _unpack_mask(self._rows([frame], "masks")[0].numpy())

    def packed_masks(self, indices: Sequence[int], frames: Sequence[np.ndarray] | None = None) -> np.ndarray:
        return self._rows(indices, "masks").numpy()


def _cache_key(source: FrameSource, settings: AvatarSettings, detection_id: str, vae: FaceVAE,
               mask_mode: str, parser: FaceParser | None) -> str:
    parts = {
        "format": _KEY_SCHEME,
        "source": source.fingerprint(),
        "size": [source.width, source.height, source.num_frames],
        "settings": asdict(settings),
        "detection": detection_id,
        "vae": [vae.weights_id, str(vae.dtype)],
        "mask": [mask_mode, parser.weights_id if parser is not None and mask_mode != "landmarks" else None],
    }
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=12).hexdigest()


def _faces_digest(faces_per_frame: Sequence[Sequence[Face]]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for faces in faces_per_frame:
        digest.update(str(len(faces)).encode())
        for face in faces:
            digest.update(np.asarray(face.box, np.float64).tobytes())
            digest.update(np.asarray(face.landmarks, np.float64).tobytes())
    return digest.hexdigest()


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Write ``tensors`` as a safetensors file and return its checksum."""
    data = safetensors.torch.save(tensors)
    path.write_bytes(data)
    return checksum(data)


@dataclass
class _ShardWriter:
    folder: Path
    checksums: dict[str, str]  # file name -> checksum, filled in as shards are written
    latents: list[torch.Tensor] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    written: int = 0

    def add(self, latents: torch.Tensor, masks: np.ndarray) -> None:
        """Queue latents and masks of the next frames; the masks may lag behind (``mask_smoothing``)."""
        self.latents.extend(latents.float().cpu())
        self.masks.extend(np.packbits(mask > 127) for mask in masks)
        while min(len(self.latents), len(self.masks)) >= SHARD_SIZE:
            self._flush(SHARD_SIZE)

    def _flush(self, count: int) -> None:
        if count == 0:
            return
        tensors = {"latents": torch.stack(self.latents[:count]).contiguous(),
                   "masks": torch.from_numpy(np.stack(self.masks[:count]))}
        name = _shard_name(self.written)
        self.checksums[name] = _write_tensors(self.folder / name, tensors)
        del self.latents[:count], self.masks[:count]
        self.written += 1

    def close(self) -> None:
        self._flush(len(self.latents))


def _build(folder: Path, key: str, source: FrameSource, track: FaceTrack, settings: AvatarSettings,
           vae: FaceVAE, parser: FaceParser | None, mask_mode: str, batch_size: int,
           progress: Progress | None, description: dict) -> None:
    folder.mkdir(parents=True)
    checksums = {TRACK_FILE: _write_tensors(folder / TRACK_FILE, {
        "boxes": torch.from_numpy(track.boxes), "has_face": torch.from_numpy(track.has_face.astype(np.uint8)),
        "landmarks": torch.from_numpy(track.landmarks),
        "rotations": torch.from_numpy(np.tile(_IDENTITY, (track.num_frames, 1, 1)) if track.rotations is None
                                      else track.rotations)})}
    shards = _ShardWriter(folder, checksums)
    smoother = MaskSmoother(track, settings.expand, settings.mask_smoothing) if settings.mask_smoothing else None
    done = 0
    for indices, frames in _face_batches(source, track, batch_size):
        masks = face_masks(frames, track, indices, mask_mode, settings, parser)
        shards.add(_encode(vae, track, indices, frames), masks if smoother is None else smoother.push(indices, masks))
        done += len(indices)
        if progress:
            progress("encode avatar", done, len(track.face_frames))
    if smoother is not None:
        shards.add(torch.zeros((0, 8, 32, 32)), smoother.finish())
    shards.close()
    manifest = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "settings": asdict(settings),
        "mask_mode": mask_mode,
        "num_frames": track.num_frames,
        "frames_with_face": int(len(track.face_frames)),
        "width": source.width,
        "height": source.height,
        "frame_rate": [source.frame_rate.numerator, source.frame_rate.denominator],
        "description": description,
        "checksums": checksums,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def _open_cached(folder: Path, key: str) -> Avatar:
    """The avatar in ``folder``, checked in full and against ``key``; :class:`AvatarCacheError` otherwise."""
    avatar = Avatar(folder)
    if avatar.key != key:
        raise AvatarCacheError(f"{folder}: the manifest is for key {avatar.key}")
    return avatar


def prepare_avatar(
    source: FrameSource,
    vae: FaceVAE,
    cache_root: str | os.PathLike,
    settings: AvatarSettings = AvatarSettings(),
    *,
    detector: FaceDetector | None = None,
    faces: Sequence[Sequence[Face]] | None = None,
    parser: FaceParser | None = None,
    batch_size: int = 8,
    progress: Progress | None = None,
    description: dict | None = None,
) -> Avatar:
    """Load the cached avatar of ``source`` for these settings and models, or build and cache it.

    Faces come from ``faces`` (precomputed, one list per frame) or are found
    with ``detector``. Without a ``parser`` the masks come from the landmarks.
    ``description`` is stored in the manifest (a JSON object, e.g. the source path).

    A cached avatar is used only if it passes every check (see the module
    docstring); otherwise one warning names the folder and the reason and the
    avatar is built again. If another process publishes the same avatar while
    this one builds it, its cache is used and this build is dropped.
    """
    _check_face_input(source, detector, faces)
    mask_mode = settings.resolved_mask_mode(parser is not None)
    detection_id = f"faces:{_faces_digest(faces)}" if faces is not None else detector.identity
    key = _cache_key(source, settings, detection_id, vae, mask_mode, parser)
    folder = Path(cache_root).expanduser() / key
    if folder.exists():
        try:
            return _open_cached(folder, key)
        except AvatarCacheError as error:
            logger.warning("Rebuilding avatar cache %s", error)
            discard(folder)
    track = track_faces(source, settings, detector=detector, faces=faces, batch_size=batch_size, progress=progress)
    remove_abandoned(folder.parent)
    built = temporary_folder(folder)
    try:
        _build(built, key, source, track, settings, vae, parser, mask_mode, batch_size, progress,
               description or {})
        while not publish(built, folder):  # another process published this key first: use its cache
            try:
                return _open_cached(folder, key)
            except AvatarCacheError as error:
                logger.warning("Replacing avatar cache %s", error)
                discard(folder)
    finally:
        shutil.rmtree(built, ignore_errors=True)
    return Avatar(folder)
