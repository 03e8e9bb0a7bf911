"""Datasets over preprocessed clips (layout: :mod:`training.clips`).

Every sample is a pure function of ``(seed, index)``: the dataset draws its
clip, frames, references and margins from ``numpy.random.default_rng([seed,
index])``. Iterating indices in order therefore gives the same data on any
number of workers and processes, and resuming a run only needs to skip the
indices already used.

:class:`LipSyncDataset` (UNet training) returns ``n_sample_frames``
consecutive target frames with one reference per target, chosen by a
:class:`~training.sampling.ReferenceSampler`, their audio tokens and, for the
sync loss, the mel window. :class:`SyncNetDataset` returns positive
(aligned) and negative (shifted audio) pairs, every batch from one identity.
"""

from __future__ import annotations

import os
from collections import defaultdict
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from musetalk_lib.audio_features import frame_window_index
from musetalk_lib.crop import FACE_SIZE
from musetalk_lib.faces import load_landmarks_json

from . import clips as layout
from .clips import ClipMeta, crop_from_region, find_clips, frame_name
from .config import DataConfig
from .mel import MEL_RATE, mel_steps, mel_window
from .sampling import ReferenceSampler, landmarks_in_crop

__all__ = [
    "CROP_TYPES",
    "Clip",
    "LipSyncDataset",
    "SyncNetDataset",
    "load_clips",
    "mouth_box",
    "to_tensor",
]

CROP_TYPES = ("crop_resize", "dynamic_margin_crop_resize")
MOUTH_POINTS = slice(48, 68)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 -> contiguous ``[3, H, W]`` float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous().float() / 127.5 - 1.0


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def mouth_box(landmarks: np.ndarray, padding: int = 10, size: int = FACE_SIZE) -> np.ndarray:
    """The mouth region of one crop: lip landmarks' x range widened by ``padding``, half as tall, lip-centred.

    ``landmarks`` are ``[68, 2]`` in crop coordinates; returns int ``[x1, y1, x2, y2]`` inside the crop.
    """
    lips = landmarks[MOUTH_POINTS]
    x1, x2 = lips[:, 0].min() - padding, lips[:, 0].max() + padding
    centre_y = (lips[:, 1].min() + lips[:, 1].max()) / 2
    half_height = (x2 - x1) / 4
    box = np.array([x1, centre_y - half_height, x2, centre_y + half_height])
    box = np.clip(np.round(box), 0, size).astype(np.int64)
    box[2:] = np.maximum(box[2:], box[:2] + 2)
    box[:2] = np.minimum(box[:2], size - 2)
    return box


class Clip:
    """One preprocessed clip; images are read on demand, features memory-mapped."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.meta = ClipMeta.load(self.folder)
        faces = load_landmarks_json(self.folder / layout.LANDMARKS)
        self.landmarks = np.stack([frame[0].landmarks for frame in faces])  # [N, 68, 2] frame pixels
        self.boxes = np.asarray(self.meta.boxes, dtype=np.float64)
        self.landmarks_256 = landmarks_in_crop(self.landmarks, self.boxes)

    @property
    def num_frames(self) -> int:
        return self.meta.num_frames

    @cached_property
    def frames_with_audio(self) -> int:
        """How many leading frames have audio tokens (the audio track may end before the video)."""
        windows = frame_window_index(self.meta.audio_samples, self.meta.fps, self.whisper.shape[0], 0, 0)
        return min(self.num_frames, len(windows))

    @cached_property
    def whisper(self) -> np.ndarray:
        return np.load(self.folder / layout.WHISPER, mmap_mode="r")

    @cached_property
    def mel(self) -> np.ndarray:
        return np.load(self.folder / layout.MEL, mmap_mode="r")

    def crop(self, index: int) -> np.ndarray:
        """The stored 256x256 crop of frame ``index``."""
        return _read_png(self.folder / layout.CROPS / frame_name(index))

    def crop_with_margin(self, index: int, margin: int) -> tuple[np.ndarray, np.ndarray]:
        """Crop of frame ``index`` with the box bottom lowered by ``margin`` px; also its landmarks in the crop."""
        box, region = self.meta.boxes[index], self.meta.regions[index]
        if margin == 0:
            return self.crop(index), self.landmarks_256[index]
        pixels = _read_png(self.folder / layout.FACES / frame_name(index))
        crop = crop_from_region(pixels, box, region, margin)
        bottom = min(box[3] + margin, region[3])
        moved = np.array([[box[0], box[1], box[2], bottom]], dtype=np.float64)
        return crop, landmarks_in_crop(self.landmarks[index:index + 1], moved)[0]

    def audio_features(self, frames: np.ndarray, context_left: int, context_right: int) -> torch.Tensor:
        """Whisper tokens ``[K, 2*(L+R+1)*5, 384]`` of the given frames, as inference builds them.

        Only the Whisper frames inside the windows are read from disk; window
        slots outside the audio are zeros.
        """
        index = frame_window_index(self.meta.audio_samples, self.meta.fps, self.whisper.shape[0],
                                   context_left, context_right)[np.asarray(frames)]
        gathered = np.array(self.whisper[np.clip(index, 0, None)], dtype=np.float32)  # [K, W, 5, 384]
        gathered[index < 0] = 0.0
        return torch.from_numpy(gathered.reshape(gathered.shape[0], -1, gathered.shape[-1]))

    def last_mel_start(self, num_frames: int) -> int:
        """The last first frame whose ``num_frames`` mel window fits in the audio (-1 if none does)."""
        steps = mel_steps(num_frames, self.meta.fps)
        last = min(self.num_frames - num_frames, int((self.mel.shape[1] - steps) * self.meta.fps / MEL_RATE) + 1)
        while last >= 0 and mel_window(self.mel, last, num_frames, self.meta.fps) is None:
            last -= 1
        return last


def load_clips(root: str | os.PathLike, min_face_size: float, min_frames: int) -> list[Clip]:
    """The usable clips under ``root``: face at least ``min_face_size`` wide, at least ``min_frames`` long."""
    found = [Clip(folder) for folder in find_clips(root)]
    usable = [c for c in found if c.meta.face_size >= min_face_size and c.num_frames >= min_frames]
    if not usable:
        raise ValueError(
            f"No usable clips in {root}: {len(found)} found, none with a face of at least {min_face_size} px "
            f"and {min_frames} frames. Lower data.min_face_size / data.min_clip_frames or preprocess more videos."
        )
    return usable


class LipSyncDataset(Dataset):
    """UNet training samples: target frames, their references, audio tokens (and the mel window).

    Items are dicts of tensors: ``pixel_values`` and ``ref_pixel_values``
    ``[T, 3, 256, 256]`` in [-1, 1], ``audio_features`` ``[T, tokens, 384]``,
    ``mouth_boxes`` ``[T, 4]`` (the target crops' mouth regions), ``frames``
    and ``references`` ``[T]`` (frame numbers), ``clip`` (index into
    :attr:`clips`) and, with ``with_mel``, ``mel`` ``[1, 80, S]``.
    """

    def __init__(self, root: str | os.PathLike, config: DataConfig, seed: int, length: int,
                 with_mel: bool = False, mouth_padding: int = 10):
        if config.crop_type not in CROP_TYPES:
            raise ValueError(f"Unknown crop_type {config.crop_type!r}; choose one of {', '.join(CROP_TYPES)}.")
        self.config = config
        self.seed = seed
        self.length = length
        self.with_mel = with_mel
        self.mouth_padding = mouth_padding
        frames = config.n_sample_frames
        min_frames = config.min_clip_frames if config.min_clip_frames is not None else 10 * frames
        clips = [clip for clip in load_clips(root, config.min_face_size, max(min_frames, frames))
                 if clip.frames_with_audio >= frames]
        if not clips:
            raise ValueError(f"No clip in {root} has audio for {frames} frames")
        if with_mel:
            clips = [clip for clip in clips if clip.last_mel_start(frames) >= 0]
            if not clips:
                raise ValueError(f"No clip in {root} has audio for a {frames}-frame mel window")
        self.clips = clips
        self.samplers = [
            ReferenceSampler(clip.landmarks_256, config.sampling, config.top_k_ratio, config.min_reference_gap, frames,
                             config.reference_selection)
            for clip in clips
        ]

    def __len__(self) -> int:
        return self.length

    def _margin(self, rng: np.random.Generator) -> int:
        if self.config.crop_type == "crop_resize":
            return 0
        margin = rng.normal(self.config.margin_mean, self.config.margin_std)
        return int(np.clip(round(margin), 0, self.config.margin_max))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        clip_index = int(rng.integers(len(self.clips)))
        clip, sampler = self.clips[clip_index], self.samplers[clip_index]
        count = self.config.n_sample_frames
        last_start = min(clip.last_mel_start(count) if self.with_mel else clip.num_frames - count,
                         clip.frames_with_audio - count)
        start = int(rng.integers(0, last_start + 1))
        frames = np.arange(start, start + count)
        references = np.array([sampler.sample(int(t), rng) for t in frames])
        target_margin = self._margin(rng)
        targets, refs, mouths = [], [], []
        for target, reference in zip(frames, references):
            image, landmarks = clip.crop_with_margin(int(target), target_margin)
            targets.append(to_tensor(image))
            mouths.append(mouth_box(landmarks, self.mouth_padding))
            refs.append(to_tensor(clip.crop_with_margin(int(reference), self._margin(rng))[0]))
        item = {
            "pixel_values": torch.stack(targets),
            "ref_pixel_values": torch.stack(refs),
            "audio_features": clip.audio_features(frames, self.config.audio_context_left,
                                                  self.config.audio_context_right),
            "mouth_boxes": torch.from_numpy(np.stack(mouths)),
            "frames": torch.from_numpy(frames),
            "references": torch.from_numpy(references),
            "clip": torch.tensor(clip_index),
        }
        if self.with_mel:
            window = mel_window(clip.mel, start, count, clip.meta.fps)
            item["mel"] = torch.from_numpy(np.array(window, dtype=np.float32))[None]
        return item


class SyncNetDataset(Dataset):
    """SyncNet pairs: ``frames [3F, 128, 256]`` (lower crop halves), ``mel [1, 80, S]``, ``label`` (1 = in sync)
    and ``clip`` (index into :attr:`clips`).

    Indices ``[b * batch_size, (b + 1) * batch_size)`` form batch ``b``; all of
    them come from one identity (source video), drawn for the batch, so the
    network cannot tell positives from negatives by who is speaking. Negatives
    take the audio of the same clip shifted by at least ``min_offset`` frames
    (clips need audio for windows ``2 * min_offset`` apart, so every window has
    one). Use a sequential sampler with this ``batch_size``.
    """

    def __init__(self, root: str | os.PathLike, num_frames: int, batch_size: int, seed: int, length: int,
                 min_offset: int = 5, min_face_size: float = 0.0):
        self.num_frames = num_frames
        self.batch_size = batch_size
        self.seed = seed
        self.length = length
        self.min_offset = min_offset
        clips = load_clips(root, min_face_size, num_frames + 2 * min_offset)
        clips = [clip for clip in clips if clip.last_mel_start(num_frames) >= 2 * min_offset]
        if not clips:
            raise ValueError(f"No clip in {root} is long enough for {num_frames}-frame windows "
                             f"{min_offset} frames apart")
        self.clips = clips
        by_identity: dict[str, list[int]] = defaultdict(list)
        for number, clip in enumerate(clips):
            by_identity[clip.meta.identity].append(number)
        self.identities = sorted(by_identity.items())

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        batch, slot = divmod(index, self.batch_size)
        batch_rng = np.random.default_rng([self.seed, batch])
        _, members = self.identities[int(batch_rng.integers(len(self.identities)))]
        rng = np.random.default_rng([self.seed, batch, slot])
        clip_index = members[int(rng.integers(len(members)))]
        clip = self.clips[clip_index]
        last = clip.last_mel_start(self.num_frames)
        video_start = int(rng.integers(0, last + 1))
        positive = bool(rng.integers(2))
        audio_start = video_start
        if not positive:
            shifts = np.array([s for s in range(last + 1) if abs(s - video_start) >= self.min_offset])
            audio_start = int(rng.choice(shifts))
        crops = np.stack([clip.crop(i) for i in range(video_start, video_start + self.num_frames)])
        frames = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [F, 3, 256, 256]
        lower = frames[:, :, FACE_SIZE // 2:, :].reshape(-1, FACE_SIZE // 2, FACE_SIZE).contiguous()
        window = mel_window(clip.mel, audio_start, self.num_frames, clip.meta.fps)
        return {
            "frames": lower,
            "mel": torch.from_numpy(np.array(window, dtype=np.float32))[None],
            "label": torch.tensor(float(positive)),
            "clip": torch.tensor(clip_index),
        }
