"""The end-to-end dubbing pipeline: a talking video (or still) plus speech in, a lip-synced MP4 out.

Work is streamed in batches: for each batch of output frames the audio chunks
and avatar latents go through the UNet and the VAE decoder, the generated faces
are pasted into the decoded source frames, and the frames go straight to the
encoder. Memory therefore stays bounded whatever the length. Blending runs on
a worker thread while the models work on the next batch.

With ``decode="partial"`` (the default) the decoder does most of its work
only on the face rows the paste shows (:class:`~musetalk_lib.vae.PartialDecoder`:
faster; the rows above go through at a lower resolution, for the GroupNorm
statistics, so the output changes slightly, less than bf16 does: see README);
``"full"`` decodes the whole face as the official code does. With the models on a GPU the generated faces stay there: the
frames are uploaded once (through a pinned buffer) and pasted on the device
(:mod:`~musetalk_lib.device_blend`), so the only copies per batch are the
source frames in and the finished frames out.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .audio_features import DEFAULT_CONTEXT, AudioFeatures, WhisperAudioEncoder, load_whisper
from .audio_io import WHISPER_SAMPLE_RATE, load_audio, to_whisper_input
from .avatar import Avatar, AvatarInMemory, AvatarSettings, FaceTrack, blend_masks, prepare_avatar
from .device_blend import paste_faces
from .devices import compile_with_fallback, resolve_device, resolve_dtype
from .face_detection import create_detector
from .face_parsing import FaceParser, load_face_parser
from .faces import load_landmarks_json
from .frame_source import FrameSource, open_source
from .head_pose import head_yaws
from .lora import apply_lora
from .options import BLEND_VARIANTS, DECODE_MODES, LENGTH_POLICIES, SILENCE_MODES
from .passthrough import crossfade_weights, mix_frames, true_ranges
from .progress import Progress
from .read_ahead import ReadAhead
from .run_files import check_input_files, check_output_path
from .silence import detect_speech, gate_silence, silent_spans
from .unet import MuseTalkUNet, load_unet
from .upright import paste_face_upright
from .vae import FaceVAE, load_vae
from .video_io import VideoWriter
from .weights import ModelFiles, find_model_files

__all__ = [
    "DubOptions",
    "DevicePaste",
    "DubReport",
    "FrameStream",
    "LipSync",
    "MuseTalkModels",
    "NoFaceError",
    "OutputPlan",
    "beyond_yaw",
    "blend_frames",
    "blended_frames",
    "check_dub_files",
    "check_faces_found",
    "compute_audio_features",
    "decode_and_blend",
    "dub",
    "lip_sync",
    "lip_sync_frames",
    "mask_notes",
    "output_frame_count",
    "output_plan",
    "pass_through_notes",
    "pass_through_plan",
    "predict_all",
    "predict_faces",
    "source_frame_indices",
    "speech_features",
    "turned_ranges",
]

logger = logging.getLogger(__name__)


def source_frame_indices(output_frames: Sequence[int] | np.ndarray, num_source: int, policy: str = "pingpong") -> np.ndarray:
    """Which source frame each output frame shows.

    ``pingpong`` plays the video forwards then backwards (the official cycle),
    ``loop`` restarts it, ``trim`` plays it once (see :func:`output_frame_count`).
    """
    frames = np.asarray(output_frames, dtype=np.int64)
    if policy == "pingpong":
        if num_source == 1:
            return np.zeros_like(frames)
        position = frames % (2 * num_source)
        return np.where(position < num_source, position, 2 * num_source - 1 - position)
    if policy == "loop":
        return frames % num_source
    if policy == "trim":
        return np.minimum(frames, num_source - 1)
    raise ValueError(f"Unknown length policy {policy!r}; choose one of {', '.join(LENGTH_POLICIES)}.")


def output_frame_count(audio_frames: int, num_source: int, policy: str, still: bool = False) -> int:
    """As many frames as the audio covers; ``trim`` also stops at the end of the video (never for a still)."""
    if policy == "trim" and not still:
        return min(audio_frames, num_source)
    return audio_frames


@dataclass
class MuseTalkModels:
    """The loaded networks of one MuseTalk version on one device."""

    unet: MuseTalkUNet
    vae: FaceVAE
    whisper: WhisperAudioEncoder
    parser: FaceParser | None
    files: ModelFiles

    @classmethod
    def load(cls, models_dir: str | os.PathLike, version: str = "v15", device: str | torch.device = "auto",
             dtype: str | torch.dtype = "auto", face_parsing: bool = True, lora: str | os.PathLike | None = None,
             lora_strength: float = 1.0) -> MuseTalkModels:
        """Load UNet, VAE, Whisper and (if present and wanted) BiSeNet from the official layout.

        ``lora``: a LoRA file (``musetalk finetune``) merged into the UNet with ``lora_strength``
        (:func:`musetalk_lib.lora.apply_lora`).
        """
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        files = find_model_files(models_dir, version)
        if files.random_weights:
            logger.warning("Models in %s are RANDOM test weights: the output will not be lip-synced.", models_dir)
        parser = None
        if face_parsing and files.face_parsing is not None:
            parser = load_face_parser(files.face_parsing, device, dtype)
        unet = load_unet(files.unet_config, files.unet_weights, device, dtype)
        if lora is not None:
            apply_lora(unet, lora, lora_strength)
        return cls(
            unet=unet,
            vae=load_vae(files.vae_dir, device, dtype),
            whisper=load_whisper(files.whisper_dir, device, dtype),
            parser=parser,
            files=files,
        )

    def compile(self) -> MuseTalkModels:
        """``torch.compile`` the UNet and the VAE decoder (the per-frame work); falls back cleanly where it cannot."""
        compile_with_fallback(self.unet.unet, "The UNet")
        compile_with_fallback(self.vae.vae.decoder, "The VAE decoder")
        if self.vae.partial_decoder is not None:
            compile_with_fallback(self.vae.partial_decoder, "The VAE partial decoder")
        return self


@dataclass(frozen=True)
class DubOptions:
    """Generation options that do not change the avatar.

    ``silence``: what silent stretches of the speech do to the mouth: ``model``
    lets the model decide (official), ``gate`` turns silence into digital
    zeros before Whisper, ``source`` shows the source frames there.

    ``max_yaw``: frames whose head is turned further than this many degrees
    from frontal keep the source face (crossfaded) instead of a generated
    mouth; ``None`` (default) generates every frame with a face.
    """

    batch_size: int = 8
    length_policy: str = "pingpong"
    blend_variant: str = "normal"
    context_left: int = DEFAULT_CONTEXT
    context_right: int = DEFAULT_CONTEXT
    exact_fps: bool = True  # False reproduces the official int(fps) truncation (drifts on 29.97 fps)
    decode: str = "partial"  # "partial" decodes exactly only the rows the paste shows; "full" the whole face (official)
    paste_on_device: bool | None = None  # paste where the VAE runs; None: when that is not the CPU
    allow_no_face: bool = False  # a source with no face anywhere: write it unchanged instead of failing
    preview_seconds: float | None = None  # dub only the first seconds of the speech (quick tuning)
    silence: str = "model"  # "model" (official), "gate" or "source": see musetalk_lib.silence
    max_yaw: float | None = None  # degrees; None: no face quality gate (see musetalk_lib.head_pose)

    def __post_init__(self):
        if self.length_policy not in LENGTH_POLICIES:
            raise ValueError(f"Unknown length policy {self.length_policy!r}; choose one of {', '.join(LENGTH_POLICIES)}.")
        if self.blend_variant not in BLEND_VARIANTS:
            raise ValueError(f"Unknown blend variant {self.blend_variant!r}; choose one of {', '.join(BLEND_VARIANTS)}.")
        if self.decode not in DECODE_MODES:
            raise ValueError(f"Unknown decode mode {self.decode!r}; choose one of {', '.join(DECODE_MODES)}.")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.preview_seconds is not None and self.preview_seconds <= 0:
            raise ValueError("preview_seconds must be positive (or unset for the whole speech).")
        if self.silence not in SILENCE_MODES:
            raise ValueError(f"Unknown silence mode {self.silence!r}; choose one of {', '.join(SILENCE_MODES)}.")
        if self.max_yaw is not None and not 0 < self.max_yaw < 90:
            raise ValueError(f"max_yaw must be between 0 and 90 degrees (exclusive), got {self.max_yaw}.")

    def speech_to_dub(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """The part of ``samples`` (``[channels, samples]``) to dub: the first ``preview_seconds``, or all."""
        if self.preview_seconds is None:
            return samples
        return samples[:, :round(self.preview_seconds * sample_rate)]


def compute_audio_features(whisper: WhisperAudioEncoder, audio_16k: np.ndarray, fps: float,
                           options: DubOptions = DubOptions()) -> AudioFeatures:
    """Whisper features of the speech and the per-frame windows for a video at ``fps``."""
    return AudioFeatures.for_video(whisper(audio_16k), audio_16k.shape[0], fps, options.context_left,
                                   options.context_right, options.exact_fps)


def speech_features(whisper: WhisperAudioEncoder, samples: np.ndarray, sample_rate: int, fps: float,
                    options: DubOptions = DubOptions(), progress: Progress | None = None) -> AudioFeatures:
    """Whisper features of the speech to dub (``[channels, samples]`` at ``sample_rate``; see
    :meth:`DubOptions.speech_to_dub`) for a video at ``fps``.

    With ``options.silence`` other than ``"model"`` the features carry the
    speech activity of each video frame (:attr:`AudioFeatures.speech`), and
    with ``"gate"`` the silent spans are zeroed before Whisper hears them.

    Raises:
        ValueError: the speech is shorter than one video frame.
    """
    audio_16k = to_whisper_input(options.speech_to_dub(samples, sample_rate), sample_rate)
    speech = None
    if options.silence != "model":  # speech activity per video frame; "gate" silences the rest before Whisper
        speech_fps = fps if options.exact_fps else float(int(fps))
        speech = detect_speech(audio_16k, speech_fps, int(np.ceil(len(audio_16k) / WHISPER_SAMPLE_RATE * speech_fps)))
        logger.info("Silent output frames (silence=%s): %s", options.silence, silent_spans(speech) or "none")
        if options.silence == "gate":
            audio_16k = gate_silence(audio_16k, speech, speech_fps)
    features = compute_audio_features(whisper, audio_16k, fps, options)
    if features.num_frames == 0:
        raise ValueError(f"The speech ({audio_16k.shape[0] / WHISPER_SAMPLE_RATE:.3f} s) is shorter than one video "
                         f"frame ({1 / fps:.3f} s).")
    if speech is not None:
        features.speech = np.pad(speech, (0, max(features.num_frames - len(speech), 0)), constant_values=True)[
            :features.num_frames]
    if progress:
        progress("audio", 1, 1)
    return features


@dataclass
class OutputPlan:
    """Which source frame each output frame shows, and whether it has a face to generate."""

    source_indices: np.ndarray  # [T] int64
    has_face: np.ndarray  # [T] bool: the frame gets a generated face
    weights: np.ndarray | None = None  # [T] float32 weight of the generated frame (crossfades); None: all 1

    @classmethod
    def build(cls, audio_frames: int, has_face: np.ndarray, policy: str = "pingpong") -> OutputPlan:
        """Plan ``audio_frames`` output frames over a source whose frames have faces where ``has_face``."""
        num_source = len(has_face)
        total = output_frame_count(audio_frames, num_source, policy, still=num_source == 1)
        sources = source_frame_indices(np.arange(total), num_source, policy)
        return cls(sources, np.asarray(has_face, bool)[sources])

    @property
    def num_frames(self) -> int:
        return len(self.source_indices)

    def with_pass_through(self, pass_through: np.ndarray) -> OutputPlan:
        """This plan with the output frames ``pass_through`` showing their source frame, crossfaded at the edges."""
        pass_through = np.asarray(pass_through, bool) & self.has_face
        weights = crossfade_weights(pass_through)
        return OutputPlan(self.source_indices, self.has_face & (weights > 0), weights)

    def face_rows(self, output_indices: np.ndarray) -> np.ndarray:
        """Positions within ``output_indices`` whose source frame has a face."""
        return np.flatnonzero(self.has_face[output_indices])


class LatentSource(Protocol):
    def latents(self, frames: Sequence[int]) -> torch.Tensor: ...


class RegionSource(Protocol):
    track: FaceTrack

    def blend_regions(self, indices: Sequence[int], frames: Sequence[np.ndarray], variant: str = "normal") -> list: ...

    def first_pasted_row(self, indices: Sequence[int], variant: str = "normal") -> int: ...


def predict_faces(unet: MuseTalkUNet, faces: LatentSource, audio: AudioFeatures, plan: OutputPlan,
                  output_indices: np.ndarray) -> torch.Tensor:
    """UNet predictions ``[k, 4, 32, 32]`` for the output frames among ``output_indices`` that have a face."""
    rows = output_indices[plan.face_rows(output_indices)]
    return unet(faces.latents(plan.source_indices[rows]), audio.chunks(rows))


def predict_all(unet: MuseTalkUNet, faces: LatentSource, audio: AudioFeatures, plan: OutputPlan,
                batch_size: int = 8, progress: Progress | None = None) -> torch.Tensor:
    """UNet predictions for every output frame with a face, in output order, gathered on the CPU."""
    pieces = []
    for output_indices in _batches(plan.num_frames, batch_size):
        if len(plan.face_rows(output_indices)):
            pieces.append(predict_faces(unet, faces, audio, plan, output_indices).cpu())
        if progress:
            progress("unet", int(output_indices[-1]) + 1, plan.num_frames)
    return torch.cat(pieces) if pieces else torch.zeros((0, 4, 32, 32))


def blend_frames(frames: list[np.ndarray], regions: RegionSource, plan: OutputPlan, output_indices: np.ndarray,
                 faces: np.ndarray | torch.Tensor, variant: str = "normal",
                 device_paste: DevicePaste | None = None) -> list[np.ndarray]:
    """The source ``frames`` of ``output_indices`` with the generated ``faces`` (one per face row) pasted in.

    ``frames`` (``source.frames(plan.source_indices[output_indices])``) may be
    read-only: pasting makes new arrays, frames without a face are returned as
    given. With ``device_paste`` the faces are a tensor on its device and the
    paste runs there.
    """
    source_indices = plan.source_indices[output_indices]
    face_rows = plan.face_rows(output_indices)
    if len(face_rows) == 0:
        return frames
    with_face = [int(source_indices[row]) for row in face_rows]
    areas = regions.blend_regions(with_face, [frames[row] for row in face_rows], variant)
    if device_paste is not None:
        pasted = device_paste([frames[row] for row in face_rows], faces, areas)
    else:
        pasted = [paste_face_upright(frames[row], face, *area, regions.track.rotation(index))
                  for row, index, face, area in zip(face_rows, with_face, faces, areas)]
    for row, frame in zip(face_rows, pasted):
        weight = 1.0 if plan.weights is None else float(plan.weights[output_indices[row]])
        frames[row] = frame if weight == 1.0 else mix_frames(frames[row], frame, weight)
    return frames


class DevicePaste:
    """Pastes faces into frames on the faces' device: one upload of the frames, one copy of the results back.

    On CUDA the upload goes through a pinned host buffer kept between
    batches, so it is asynchronous; the copy back is the one synchronisation.
    """

    def __init__(self):
        self._pinned: torch.Tensor | None = None

    def _upload(self, frames: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
        shape = (len(frames), *frames[0].shape)
        if device.type != "cuda":
            return torch.from_numpy(np.stack(frames)).to(device)
        if self._pinned is None or self._pinned.shape[0] < shape[0] or self._pinned.shape[1:] != shape[1:]:
            self._pinned = torch.empty(shape, dtype=torch.uint8).pin_memory()
        staging = self._pinned[:len(frames)]
        np.stack(frames, out=staging.numpy())
        return staging.to(device, non_blocking=True)

    def __call__(self, frames: Sequence[np.ndarray], faces: torch.Tensor,
                 areas: Sequence[tuple[tuple, tuple, np.ndarray]]) -> list[np.ndarray]:
        batch = self._upload(frames, faces.device)
        boxes, squares, alphas = zip(*areas)
        paste_faces(batch, faces, boxes, squares, alphas)
        return list(batch.cpu().numpy())


def _batches(total: int, batch_size: int):
    for start in range(0, total, batch_size):
        yield np.arange(start, min(start + batch_size, total))


def _generate(source: FrameSource, regions: RegionSource, plan: OutputPlan,
              predict: Callable[[np.ndarray], torch.Tensor], vae: FaceVAE, variant: str, batch_size: int,
              decode: str, progress: Progress | None, paste_on_device: bool | None) -> Iterator[np.ndarray]:
    """The one generation loop: per batch, ``predict(output_indices)`` -> decode -> paste (on a worker thread).

    Source frames are decoded ahead on another worker thread; results are
    yielded in order while the next batch is computed.
    """
    if paste_on_device is None:
        paste_on_device = vae.device.type != "cpu"
    if paste_on_device and regions.track.rotated:
        logger.info("Faces turned upright (align_roll) are pasted on the CPU.")
        paste_on_device = False
    device_paste = DevicePaste() if paste_on_device else None
    empty = np.zeros((0, 256, 256, 3), np.uint8)
    batches = list(_batches(plan.num_frames, batch_size))
    with (ThreadPoolExecutor(max_workers=1, thread_name_prefix="musetalk-blend") as blender,
          ReadAhead(source, (plan.source_indices[batch] for batch in batches)) as source_frames):
        def work(output_indices: np.ndarray):
            rows = plan.face_rows(output_indices)
            faces = empty
            if len(rows):
                shown = plan.source_indices[output_indices[rows]]
                from_row = regions.first_pasted_row(shown, variant) if decode == "partial" else 0
                decode_faces = vae.decode_on_device if paste_on_device else vae.decode
                faces = decode_faces(predict(output_indices), from_row)
            return blender.submit(blend_frames, next(source_frames), regions, plan, output_indices, faces, variant,
                                  device_paste)

        pending: deque = deque()
        for output_indices in batches:
            pending.append(work(output_indices))
            while len(pending) > 1:
                yield from pending.popleft().result()
            if progress:
                progress("lip sync", int(output_indices[-1]) + 1, plan.num_frames)
        while pending:
            yield from pending.popleft().result()


def decode_and_blend(source: FrameSource, regions: RegionSource, plan: OutputPlan, predicted: torch.Tensor,
                     vae: FaceVAE, variant: str = "normal", batch_size: int = 8,
                     progress: Progress | None = None, decode: str = "partial",
                     paste_on_device: bool | None = None) -> Iterator[np.ndarray]:
    """Yield the output frames from precomputed UNet predictions (one row per output frame with a face)."""
    first_row = np.concatenate([[0], np.cumsum(plan.has_face)])

    def predict(output_indices: np.ndarray) -> torch.Tensor:
        return predicted[first_row[output_indices[0]]:first_row[output_indices[-1] + 1]]

    yield from _generate(source, regions, plan, predict, vae, variant, batch_size, decode, progress, paste_on_device)


def mask_notes(settings: AvatarSettings, mask_mode: str) -> list[str]:
    """The fallback to note when the mask used (``mask_mode``) is not the one ``settings`` asked for."""
    requested = settings.resolved_mask_mode(True)
    return [] if mask_mode == requested else [
        f"No face parser: the landmark mask was used instead of '{requested}'."]


def blended_frames(source: FrameSource, track: FaceTrack, settings: AvatarSettings, plan: OutputPlan,
                   predicted: torch.Tensor, vae: FaceVAE, parser: FaceParser | None,
                   options: DubOptions = DubOptions(), progress: Progress | None = None) -> tuple[FrameStream, list[str]]:
    """The output frames of precomputed UNet predictions as a lazy stream, and the fallbacks taken.

    The blend masks are :func:`~musetalk_lib.avatar.blend_masks`'; without a
    ``parser`` that is the landmark mask, and the returned notes say so.
    """
    masks = blend_masks(source, track, settings, parser, options.batch_size, progress)
    stream = FrameStream(plan.num_frames, source.width, source.height, source.frame_rate,
                         lambda: decode_and_blend(source, masks, plan, predicted, vae, options.blend_variant,
                                                  options.batch_size, progress, options.decode,
                                                  options.paste_on_device))
    return stream, mask_notes(settings, masks.mode)


def beyond_yaw(track: FaceTrack, max_yaw: float) -> np.ndarray:
    """``[N]`` bool: source frames with a face turned more than ``max_yaw`` degrees (see :mod:`.head_pose`)."""
    return track.has_face & (np.abs(np.nan_to_num(head_yaws(track.landmarks))) > max_yaw)


def turned_ranges(track: FaceTrack, options: DubOptions) -> list[tuple[int, int]]:
    """Inclusive source-frame ranges that ``options.max_yaw`` lets pass through (none without it)."""
    return true_ranges(beyond_yaw(track, options.max_yaw)) if options.max_yaw is not None else []


def pass_through_plan(plan: OutputPlan, track: FaceTrack, options: DubOptions,
                      speech: np.ndarray | None = None) -> OutputPlan:
    """``plan`` with the frames that ``silence="source"`` (silent per ``speech``) and ``max_yaw`` pass through."""
    pass_through = np.zeros(plan.num_frames, bool)
    if options.silence == "source" and speech is not None:
        pass_through |= ~np.asarray(speech, bool)[:plan.num_frames]
    if options.max_yaw is not None:
        pass_through |= beyond_yaw(track, options.max_yaw)[plan.source_indices]
    return plan.with_pass_through(pass_through) if pass_through.any() else plan


def pass_through_notes(audio: AudioFeatures, track: FaceTrack, options: DubOptions) -> list[str]:
    """One line each for the silent spans and the turned heads ``options`` handle, for reports."""
    notes = []
    if audio.speech is not None:
        notes.append(f"Silent output frames (silence={options.silence}): {silent_spans(audio.speech) or 'none'}.")
    turned = turned_ranges(track, options)
    if turned:
        notes.append(f"Head turned more than {options.max_yaw:g} degrees in source frames {turned}: they keep "
                     "the source face.")
    return notes


def output_plan(audio: AudioFeatures, track: FaceTrack, options: DubOptions = DubOptions()) -> OutputPlan:
    """The output frames for ``audio`` over ``track``'s source: which source frame each shows, which get a face.

    Frames ``options`` lets pass through (silent ones with ``silence="source"``,
    turned heads beyond ``max_yaw``) keep the source face, crossfaded.
    """
    plan = OutputPlan.build(audio.num_frames, track.has_face, options.length_policy)
    return pass_through_plan(plan, track, options, audio.speech)


@dataclass
class FrameStream:
    """Generated frames that are produced only when iterated (so long videos stream to the encoder)."""

    num_frames: int
    width: int
    height: int
    frame_rate: Fraction
    produce: Callable[[], Iterator[np.ndarray]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.produce()


@dataclass
class LipSync:
    """A dub before it is written: the output frames, produced when iterated, and the plan that shapes them."""

    frames: FrameStream
    plan: OutputPlan


def lip_sync(source: FrameSource, avatar: Avatar | AvatarInMemory, audio: AudioFeatures, unet: MuseTalkUNet,
             vae: FaceVAE, options: DubOptions = DubOptions(), progress: Progress | None = None) -> LipSync:
    """Lip-sync ``source`` (prepared as ``avatar``) to ``audio`` (:func:`speech_features`): the stage the
    ``musetalk dub`` command and the MuseTalk Dub node share.

    The frames (RGB ``uint8``) are made only when :attr:`LipSync.frames` is
    iterated: UNet, decode and blend one batch at a time, blending on a worker
    thread while the models work on the next batch. Frames whose source frame
    has no face come out unchanged, and so do the frames :func:`output_plan`
    lets pass through (crossfaded at the edges).
    """
    plan = output_plan(audio, avatar.track, options)

    def predict(output_indices: np.ndarray) -> torch.Tensor:
        return predict_faces(unet, avatar, audio, plan, output_indices)

    frames = FrameStream(plan.num_frames, source.width, source.height, source.frame_rate,
                         lambda: _generate(source, avatar, plan, predict, vae, options.blend_variant,
                                           options.batch_size, options.decode, progress, options.paste_on_device))
    return LipSync(frames, plan)


def lip_sync_frames(
    source: FrameSource,
    avatar: Avatar | AvatarInMemory,
    audio: AudioFeatures,
    unet: MuseTalkUNet,
    vae: FaceVAE,
    options: DubOptions = DubOptions(),
    progress: Progress | None = None,
) -> Iterator[np.ndarray]:
    """The output frames of :func:`lip_sync`, as one iterator (for callers that only want the frames)."""
    return iter(lip_sync(source, avatar, audio, unet, vae, options, progress).frames)


@dataclass
class DubReport:
    """What a dubbing run produced and how long each part took."""

    output: Path
    frames: int
    frame_rate: Fraction
    frames_without_face: list[tuple[int, int]]
    random_weights: bool
    seconds: dict[str, float] = field(default_factory=dict)
    silent_spans: list[tuple[int, int]] = field(default_factory=list)  # output frames, with silence != "model"
    frames_beyond_yaw: list[tuple[int, int]] = field(default_factory=list)  # source frames, with max_yaw

    @property
    def duration(self) -> float:
        return self.frames / float(self.frame_rate)


class NoFaceError(ValueError):
    """The face to dub is in no frame of the source, so a dub would change nothing."""


def check_faces_found(track: FaceTrack, allow_no_face: bool = False) -> None:
    """Raise :class:`NoFaceError` when ``track`` has no face in any frame, unless ``allow_no_face``."""
    if not track.has_face.any() and not allow_no_face:
        raise NoFaceError(f"No face found in any of the {track.num_frames} frame(s), so nothing would be dubbed "
                          "and no output was written. Use a clip where the face is visible (or other landmarks), "
                          "or allow_no_face (--allow-no-face) to write it unchanged.")


def check_dub_files(source_path: str | os.PathLike, audio_path: str | os.PathLike,
                    output_path: str | os.PathLike, landmarks_path: str | os.PathLike | None = None,
                    cache_root: str | os.PathLike | None = None) -> None:
    """Raise :class:`~musetalk_lib.run_files.RunFileError` before any work if a dub must not start.

    The inputs must be readable files; the output must not be one of them or
    lie in the avatar cache, and must be a writable video file name.
    """
    inputs = {"video": source_path, "audio": audio_path, "landmarks file": landmarks_path}
    check_input_files(inputs)
    check_output_path(output_path, inputs, {"avatar cache": cache_root})


def dub(
    source_path: str | os.PathLike,
    audio_path: str | os.PathLike,
    output_path: str | os.PathLike,
    models: MuseTalkModels,
    *,
    settings: AvatarSettings = AvatarSettings(),
    options: DubOptions = DubOptions(),
    cache_root: str | os.PathLike,
    landmarks_path: str | os.PathLike | None = None,
    face_backend: str = "face-alignment",
    face_models_dir: str | os.PathLike | None = None,
    still_fps: float = 25.0,
    crf: int = 18,
    progress: Progress | None = None,
) -> DubReport:
    """Lip-sync ``source_path`` (video or image) to ``audio_path`` and write ``output_path`` (MP4).

    The speech features come first, then the avatar (prepared, or loaded from ``cache_root``). The output
    has as many frames as the speech covers at the source frame rate
    (``options.length_policy`` decides how the source is extended) and carries
    the speech. It is written under a temporary name and renamed when done.
    """
    check_dub_files(source_path, audio_path, output_path, landmarks_path, cache_root)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    source = open_source(source_path, still_fps)
    samples, sample_rate = load_audio(audio_path)
    samples = options.speech_to_dub(samples, sample_rate)
    timings["load"] = time.perf_counter() - started

    started = time.perf_counter()  # before the avatar: a speech too short fails in a second, not minutes
    try:
        features = speech_features(models.whisper, samples, sample_rate, float(source.frame_rate), options, progress)
    except ValueError as error:
        raise ValueError(f"{audio_path}: {error}") from None
    timings["audio features"] = time.perf_counter() - started

    started = time.perf_counter()
    if landmarks_path is not None:
        faces, detector = load_landmarks_json(landmarks_path), None
    else:
        faces, detector = None, create_detector(face_backend, face_models_dir, models.vae.device)
    avatar = prepare_avatar(source, models.vae, cache_root, settings, detector=detector, faces=faces,
                            parser=models.parser, batch_size=options.batch_size, progress=progress,
                            description={"source": str(Path(source_path).resolve())})
    timings["avatar"] = time.perf_counter() - started
    check_faces_found(avatar.track, options.allow_no_face)
    if avatar.track.missing_ranges():
        logger.warning(avatar.track.face_summary())
    turned = turned_ranges(avatar.track, options)
    if turned:
        logger.warning("Head turned more than %g degrees in source frames %s: they keep the source face.",
                       options.max_yaw, turned)

    started = time.perf_counter()
    frames = 0
    with VideoWriter(output_path, source.width, source.height, source.frame_rate, samples, sample_rate,
                     crf=crf) as writer:
        for frame in lip_sync(source, avatar, features, models.unet, models.vae, options, progress).frames:
            writer.write(frame)
            frames += 1
    timings["lip sync + encode"] = time.perf_counter() - started
    return DubReport(
        output=Path(output_path),
        frames=frames,
        frame_rate=source.frame_rate,
        frames_without_face=avatar.track.missing_ranges(),
        random_weights=models.files.random_weights,
        seconds=timings,
        silent_spans=silent_spans(features.speech[:frames]) if features.speech is not None else [],
        frames_beyond_yaw=turned,
    )
