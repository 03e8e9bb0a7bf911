"""Preprocess a folder of talking-face videos into training clips (layout: :mod:`training.clips`).

For every video: frames are read at the video's own frame rate (or resampled
to ``--fps`` by taking the latest frame at or before each output time), one
face per frame is taken from a landmark JSON (``<landmarks-dir>/<stem>.json``
or ``<video>.json`` beside the video, the ``musetalk_lib.faces`` format) or
from a face detector, and the video is cut into clips: runs of consecutive
frames with a face, at most ``--segment-seconds`` long (the official 30 s).
Gaps of at most ``--max-gap`` frames without a face inside a run (a missed
detection, a hand passing) are filled by interpolating the landmarks of the
frames on both sides. Runs shorter than ``--min-frames`` are skipped and
logged; a video without a usable face or without audio is skipped and logged.

The crop box is the union of the detector box and the landmark extent, as the
official training data uses (``--box landmark`` uses the inference box
instead). Audio comes from ``<stem>.wav`` beside the video (or in
``--audio-dir``) or from the video's own audio track.

The run is resumable: finished clips and videos are skipped when the command
runs again, and half-written clips are redone. Each video's record holds the
options that shape its clips; a video done with other options is redone (its
old clips removed), and ``--retry-skipped`` retries skipped videos. ``--workers`` processes videos
in parallel. Every outcome goes to ``<output>/preprocess_log.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
from PIL import Image

from musetalk_lib.audio_features import WhisperAudioEncoder, load_whisper
from musetalk_lib.audio_io import WHISPER_SAMPLE_RATE, load_audio, to_whisper_input
from musetalk_lib.crop import face_box_from_landmarks
from musetalk_lib.faces import Face, load_landmarks_json, save_landmarks_json, select_faces
from musetalk_lib.progress import TerminalProgress
from musetalk_lib.video_io import VideoReader

from . import clips as layout
from .clips import ClipMeta, crop_from_region, frame_name
from .mel import melspectrogram

__all__ = [
    "VIDEO_SUFFIXES",
    "PreprocessOptions",
    "Preprocessor",
    "face_box",
    "fill_gaps",
    "find_videos",
    "plan_clips",
    "preprocess",
    "resample_indices",
    "summarize",
]

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
BOX_TYPES = ("union", "landmark")
LOG_NAME = "preprocess_log.jsonl"
DONE_DIR = ".done"


@dataclass
class PreprocessOptions:
    """Settings of a preprocessing run."""

    output_dir: str
    landmarks_dir: str | None = None
    audio_dir: str | None = None
    detector: str | None = None  # face-alignment | dlib; None: landmark JSONs only
    models_dir: str = "./models"
    whisper_dir: str | None = None  # default: <models_dir>/whisper
    device: str = "cpu"
    fps: float | None = None  # resample to this rate; None keeps each video's rate
    segment_seconds: float = 30.0
    min_frames: int = 16  # shortest clip kept: one stage 2 / SyncNet sample
    max_gap: int = 5  # detection gaps up to this many frames inside a run are interpolated
    max_frames: int | None = None  # read at most this many frames per video (quick runs)
    box: str = "union"
    max_margin: int = 20
    whisper_dtype: str = "float16"
    detect_batch: int = 16
    png_compression: int = 1
    retry_skipped: bool = False  # process videos again whose record says skipped

    def clip_settings(self) -> dict:
        """The options that decide what a video's clips hold (recorded with each video)."""
        return {key: getattr(self, key) for key in ("landmarks_dir", "audio_dir", "detector", "fps", "segment_seconds",
                                                    "min_frames", "max_gap", "max_frames", "box", "max_margin",
                                                    "whisper_dtype")}


def find_videos(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Video files given directly or found (recursively) in the given folders, sorted."""
    videos: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            videos += [p for p in item.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()]
        elif item.is_file():
            videos.append(item)
        else:
            raise FileNotFoundError(f"Input not found: {item}")
    return sorted(set(videos))


def resample_indices(num_frames: int, source_fps: float, target_fps: float | None) -> list[int]:
    """Source frame shown at each output frame time (the latest one not after it)."""
    if target_fps is None or math.isclose(target_fps, source_fps):
        return list(range(num_frames))
    count = math.floor(num_frames * target_fps / source_fps + 1e-9)
    return [min(num_frames - 1, math.floor(j * source_fps / target_fps + 1e-9)) for j in range(count)]


def face_box(face: Face, width: int, height: int, box_type: str = "union") -> list[int] | None:
    """The crop box of a face, clipped to the frame; None if it is empty.

    ``union``: the smallest box holding the detector box and every landmark
    (official training). ``landmark``: the inference box, symmetric about the
    nose bridge (detector box where that is degenerate).
    """
    if box_type == "union":
        points = face.landmarks
        x1 = min(face.box[0], points[:, 0].min())
        y1 = min(face.box[1], points[:, 1].min())
        x2 = max(face.box[2], points[:, 0].max())
        y2 = max(face.box[3], points[:, 1].max())
    elif box_type == "landmark":
        x1, y1, x2, y2 = face_box_from_landmarks(face.landmarks) or face.box
    else:
        raise ValueError(f"Unknown box type {box_type!r}; choose one of {', '.join(BOX_TYPES)}.")
    x1, y1 = max(0, int(x1)), max(0, int(y1))
    x2, y2 = min(width, int(math.ceil(x2))), min(height, int(math.ceil(y2)))
    return [x1, y1, x2, y2] if x2 > x1 and y2 > y1 else None


def fill_gaps(faces: Sequence[Face | None], max_gap: int) -> tuple[list[Face | None], int]:
    """Fill runs of at most ``max_gap`` missing faces between two found ones by linear interpolation.

    Returns the faces and how many were filled; gaps at either end of the video stay empty.
    """
    filled = list(faces)
    count = 0
    known = [index for index, face in enumerate(faces) if face is not None]
    for before, after in zip(known, known[1:]):
        gap = after - before - 1
        if not 0 < gap <= max_gap:
            continue
        first, last = faces[before], faces[after]
        for index in range(before + 1, after):
            weight = (index - before) / (after - before)
            box = tuple((1 - weight) * a + weight * b for a, b in zip(first.box, last.box))
            landmarks = (1 - weight) * first.landmarks + weight * last.landmarks
            filled[index] = Face(box, landmarks, min(first.score, last.score))
        count += gap
    return filled, count


def plan_clips(has_face: Sequence[bool], max_length: int, min_length: int) -> tuple[list[range], list[range]]:
    """Split frames into clips: runs of faces cut to ``max_length``; returns (kept, too short)."""
    kept, short = [], []
    start = None
    for index, present in enumerate([*has_face, False]):
        if present and start is None:
            start = index
        elif not present and start is not None:
            for first in range(start, index, max_length):
                piece = range(first, min(first + max_length, index))
                (kept if len(piece) >= min_length else short).append(piece)
            start = None
    return kept, short


def _video_key(video: Path, roots: Sequence[Path]) -> str:
    """A unique, file-system safe name for a video (its path below the input folder, '/' -> '__')."""
    for root in roots:
        if root.is_dir() and video.is_relative_to(root):
            relative = video.relative_to(root).with_suffix("")
            return "__".join(relative.parts)
    return video.stem


class Preprocessor:
    """Turns one video into clips; holds the Whisper encoder and (optionally) a face detector."""

    def __init__(self, options: PreprocessOptions, whisper: WhisperAudioEncoder | None = None):
        self.options = options
        if options.box not in BOX_TYPES:
            raise ValueError(f"Unknown box type {options.box!r}; choose one of {', '.join(BOX_TYPES)}.")
        whisper_dir = options.whisper_dir or os.path.join(options.models_dir, "whisper")
        self.whisper = whisper or load_whisper(whisper_dir, device=options.device)
        self.detector = None
        if options.detector:
            from musetalk_lib.face_detection import create_detector

            self.detector = create_detector(options.detector, options.models_dir, options.device)
        self.output = Path(options.output_dir)

    def _landmark_file(self, video: Path) -> Path | None:
        candidates = [video.with_suffix(".json")]
        if self.options.landmarks_dir:
            candidates.insert(0, Path(self.options.landmarks_dir) / f"{video.stem}.json")
        return next((path for path in candidates if path.is_file()), None)

    def _audio(self, video: Path) -> np.ndarray:
        candidates = [video.with_suffix(".wav")]
        if self.options.audio_dir:
            candidates.insert(0, Path(self.options.audio_dir) / f"{video.stem}.wav")
        source = next((path for path in candidates if path.is_file()), video)
        samples, rate = load_audio(source)
        return to_whisper_input(samples, rate)

    def _faces(self, video: Path, indices: list[int]) -> list[Face | None]:
        landmark_file = self._landmark_file(video)
        if landmark_file is not None:
            detections = load_landmarks_json(landmark_file)
            per_frame = [detections[i] if i < len(detections) else [] for i in indices]
        elif self.detector is not None:
            per_frame = []
            wanted = iter(indices)
            with VideoReader(video) as reader:
                for start in range(0, len(indices), self.options.detect_batch):
                    batch = [next(wanted) for _ in range(min(self.options.detect_batch, len(indices) - start))]
                    per_frame += self.detector.detect(reader.frames(batch))
        else:
            raise LookupError("no landmark JSON found and no --detector given")
        return select_faces(per_frame, mode="largest")

    def process(self, video: Path, key: str) -> dict:
        """Preprocess one video; returns a log record (``status`` ok or skipped, clips, reasons)."""
        started = time.time()
        record: dict = {"video": str(video), "key": key, "clips": [], "skipped_runs": [],
                        "settings": self.options.clip_settings()}
        try:
            with VideoReader(video) as reader:
                info = reader.info
            fps = float(self.options.fps or info.fps)
            indices = resample_indices(info.num_frames, info.fps, self.options.fps)
            if self.options.max_frames is not None:
                indices = indices[: self.options.max_frames]
            faces, record["interpolated_frames"] = fill_gaps(self._faces(video, indices), self.options.max_gap)
            boxes = [face_box(f, info.width, info.height, self.options.box) if f is not None else None for f in faces]
            max_length = max(1, round(self.options.segment_seconds * fps))
            runs, short = plan_clips([b is not None for b in boxes], max_length, self.options.min_frames)
            record["skipped_runs"] = [[r.start, r.stop] for r in short]
            if not runs:
                raise LookupError(f"no run of at least {self.options.min_frames} frames with a usable face "
                                  f"({sum(b is not None for b in boxes)} of {len(boxes)} frames have one)")
            audio = self._audio(video)
        except (LookupError, ValueError, OSError) as error:
            record.update(status="skipped", reason=f"{type(error).__name__}: {error}")
            return record
        for run in runs:
            clip_id = f"{key}_{run.start:06d}"
            if not (self.output / clip_id / layout.META).is_file():
                self._write_clip(video, clip_id, key, run, indices, faces, boxes, audio, fps, info)
            record["clips"].append(clip_id)
        record.update(status="ok", seconds=round(time.time() - started, 2))
        return record

    def _write_clip(self, video: Path, clip_id: str, identity: str, run: range, indices: list[int],
                    faces: list[Face | None], boxes: list[list[int] | None], audio: np.ndarray, fps: float,
                    info) -> None:
        options = self.options
        partial = self.output / f"{clip_id}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        (partial / layout.CROPS).mkdir(parents=True)
        (partial / layout.FACES).mkdir()
        clip_boxes = [boxes[i] for i in run]
        regions = [[x1, y1, x2, min(info.height, y2 + options.max_margin)] for x1, y1, x2, y2 in clip_boxes]
        with VideoReader(video) as reader:
            for number, (frame, box, region) in enumerate(
                    zip(reader.frames([indices[i] for i in run]), clip_boxes, regions)):
                pixels = np.ascontiguousarray(frame[region[1]:region[3], region[0]:region[2]])
                Image.fromarray(pixels).save(partial / layout.FACES / frame_name(number),
                                             compress_level=options.png_compression)
                crop = crop_from_region(pixels, box, region)
                Image.fromarray(crop).save(partial / layout.CROPS / frame_name(number),
                                           compress_level=options.png_compression)

        num_samples = round(len(run) / fps * WHISPER_SAMPLE_RATE)
        first = round(run.start / fps * WHISPER_SAMPLE_RATE)
        segment = audio[first:first + num_samples]
        segment = np.pad(segment, (0, num_samples - segment.shape[0]))
        pcm = np.clip(np.round(segment * 32767.0), -32768, 32767).astype(np.int16)
        soundfile.write(partial / layout.AUDIO, pcm, WHISPER_SAMPLE_RATE, subtype="PCM_16")
        samples = pcm.astype(np.float32) / 32768.0  # what reading audio.wav back gives
        features = self.whisper(samples).numpy().astype(options.whisper_dtype)
        np.save(partial / layout.WHISPER, features)
        np.save(partial / layout.MEL, melspectrogram(samples))

        save_landmarks_json(partial / layout.LANDMARKS, [[faces[i]] for i in run],
                            width=info.width, height=info.height, fps=fps, source=str(video))
        ClipMeta(
            clip_id=clip_id, identity=identity, source=str(video), fps=fps, num_frames=len(run),
            start_frame=run.start, width=info.width, height=info.height, boxes=clip_boxes, regions=regions,
            face_size=float(np.median([b[2] - b[0] for b in clip_boxes])), audio_samples=num_samples,
            box_type=options.box, max_margin=options.max_margin,
            extra={"whisper_shape": list(features.shape), "source_fps": info.fps},
        ).save(partial)
        target = self.output / clip_id
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)


_worker: Preprocessor | None = None


def _init_worker(options: PreprocessOptions, threads: int) -> None:
    global _worker
    torch.set_num_threads(threads)
    _worker = Preprocessor(options)


def _run_worker(video: Path, key: str) -> dict:
    assert _worker is not None
    return _worker.process(video, key)


def preprocess(inputs: Sequence[str | os.PathLike], options: PreprocessOptions, workers: int = 1,
               progress: bool = True) -> list[dict]:
    """Preprocess every video under ``inputs``; returns the log records of the videos processed now.

    Videos with a record in ``<output>/.done/`` made with the same clip settings are skipped (delete it to
    redo one); with other settings, or skipped with ``retry_skipped``, they are processed again.
    """
    output = Path(options.output_dir)
    (output / DONE_DIR).mkdir(parents=True, exist_ok=True)
    for leftover in output.glob("*.partial"):
        shutil.rmtree(leftover, ignore_errors=True)
    roots = [Path(item) for item in inputs]
    jobs = []
    for video in find_videos(inputs):
        key = _video_key(video, roots)
        done = output / DONE_DIR / f"{key}.json"
        if done.is_file():
            previous = json.loads(done.read_text(encoding="utf-8"))
            same_settings = previous.get("settings") == json.loads(json.dumps(options.clip_settings()))
            if same_settings and not (options.retry_skipped and previous["status"] != "ok"):
                continue
            for clip_id in previous.get("clips", []):  # made with other settings: they go
                shutil.rmtree(output / clip_id, ignore_errors=True)
            done.unlink()
        jobs.append((video, key))
    records: list[dict] = []

    def finish(record: dict) -> None:
        records.append(record)
        with open(output / LOG_NAME, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        (output / DONE_DIR / f"{record['key']}.json").write_text(json.dumps(record), encoding="utf-8")
        if record["status"] != "ok":
            bar.write(f"skipped {record['video']}: {record['reason']}")

    bar = TerminalProgress(enabled=progress, unit="video")
    if workers <= 1:
        processor = Preprocessor(options) if jobs else None
        for video, key in jobs:
            finish(processor.process(video, key))
            bar("videos", len(records), len(jobs))
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                 initargs=(options, threads)) as pool:
            futures = [pool.submit(_run_worker, video, key) for video, key in jobs]
            for future in futures:
                finish(future.result())
                bar("videos", len(records), len(jobs))
    bar.close()
    return records


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.preprocess", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="video files or folders (searched recursively)")
    parser.add_argument("--output", required=True, help="folder for the clips")
    parser.add_argument("--landmarks-dir", help="folder with <video stem>.json landmark files")
    parser.add_argument("--audio-dir", help="folder with <video stem>.wav files (default: the video's audio)")
    parser.add_argument("--detector", choices=["face-alignment", "dlib"],
                        help="detect faces where no landmark JSON exists")
    parser.add_argument("--models-dir", default="./models", help="models root (whisper/, face_alignment/)")
    parser.add_argument("--whisper-dir", help="Whisper folder (default: <models-dir>/whisper)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fps", type=float, help="resample frames to this rate (25 for LatentSync's SyncNet)")
    parser.add_argument("--segment-seconds", type=float, default=30.0)
    parser.add_argument("--min-frames", type=int, default=16, help="shorter face runs are skipped")
    parser.add_argument("--max-gap", type=int, default=5,
                        help="interpolate the face over gaps of up to this many frames inside a run (0: off)")
    parser.add_argument("--retry-skipped", action="store_true", help="process skipped videos again")
    parser.add_argument("--max-frames", type=int, help="read at most this many frames per video")
    parser.add_argument("--box", choices=BOX_TYPES, default="union")
    parser.add_argument("--max-margin", type=int, default=20, help="pixels kept below the box (dynamic margin)")
    parser.add_argument("--whisper-dtype", choices=["float16", "float32"], default="float16")
    parser.add_argument("--png-compression", type=int, default=1, choices=range(10), metavar="0-9",
                        help="PNG zlib level of crops and face regions (1: fast, 9: smallest)")
    parser.add_argument("--workers", type=int, default=1, help="videos processed in parallel")
    args = parser.parse_args(argv)
    options = PreprocessOptions(
        output_dir=args.output, landmarks_dir=args.landmarks_dir, audio_dir=args.audio_dir, detector=args.detector,
        models_dir=args.models_dir, whisper_dir=args.whisper_dir, device=args.device, fps=args.fps,
        segment_seconds=args.segment_seconds, min_frames=args.min_frames, max_gap=args.max_gap,
        retry_skipped=args.retry_skipped, max_frames=args.max_frames,
        box=args.box, max_margin=args.max_margin, whisper_dtype=args.whisper_dtype,
        png_compression=args.png_compression,
    )
    records = preprocess(args.inputs, options, workers=args.workers)
    (Path(args.output) / "preprocess_options.json").write_text(json.dumps(asdict(options), indent=2), encoding="utf-8")
    print(summarize(records, Path(args.output) / LOG_NAME))


def summarize(records: Sequence[dict], log: Path) -> str:
    """One paragraph: videos kept (clips, interpolated frames) and skipped, grouped by reason."""
    ok = [r for r in records if r["status"] == "ok"]
    lines = [f"{len(ok)} videos -> {sum(len(r['clips']) for r in ok)} clips "
             f"({sum(r.get('interpolated_frames', 0) for r in ok)} frames interpolated over detection gaps); "
             f"{len(records) - len(ok)} videos skipped (details: {log})"]
    reasons = Counter(r["reason"].split(" (")[0] for r in records if r["status"] != "ok")
    lines += [f"  {count} x {reason}" for reason, count in reasons.most_common()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
