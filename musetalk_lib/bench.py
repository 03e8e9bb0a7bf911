"""``musetalk bench``: frames per second per stage and peak memory, printed as a table.

Everything can run on generated input (a synthetic face video and noise
"speech" made on the fly), so no media file is needed. ``--long`` dubs ten
minutes of 1080p and samples the resident memory as it goes, to show that it
stays flat whatever the length.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

__all__ = ["SyntheticSource", "add_arguments", "run"]

# A 68-point face shape normalised to its bounding box (mean of a real talking clip).
FACE_TEMPLATE = np.array([
    [0.0, 0.359], [0.009, 0.467], [0.028, 0.575], [0.062, 0.677], [0.108, 0.772], [0.167, 0.857], [0.245, 0.931],
    [0.337, 0.986], [0.449, 1.0], [0.574, 0.972], [0.693, 0.913], [0.808, 0.844], [0.902, 0.756], [0.958, 0.642],
    [0.985, 0.514], [0.994, 0.381], [1.0, 0.25], [0.006, 0.182], [0.037, 0.111], [0.108, 0.069], [0.192, 0.062],
    [0.274, 0.08], [0.423, 0.056], [0.513, 0.011], [0.617, 0.0], [0.72, 0.027], [0.802, 0.093], [0.34, 0.183],
    [0.334, 0.226], [0.326, 0.268], [0.317, 0.312], [0.278, 0.452], [0.314, 0.456], [0.353, 0.457], [0.399, 0.445],
    [0.445, 0.433], [0.092, 0.279], [0.135, 0.235], [0.195, 0.224], [0.256, 0.252], [0.201, 0.276], [0.14, 0.287],
    [0.504, 0.223], [0.557, 0.177], [0.626, 0.172], [0.691, 0.201], [0.634, 0.226], [0.565, 0.231], [0.256, 0.693],
    [0.278, 0.588], [0.325, 0.534], [0.362, 0.542], [0.4, 0.526], [0.484, 0.565], [0.573, 0.654], [0.502, 0.724],
    [0.432, 0.758], [0.387, 0.768], [0.345, 0.768], [0.299, 0.747], [0.289, 0.68], [0.332, 0.601], [0.368, 0.597],
    [0.408, 0.593], [0.534, 0.646], [0.419, 0.68], [0.377, 0.688], [0.339, 0.687],
])


class SyntheticSource:
    """A generated video (gradient, noise and a bright face-sized ellipse), made frame by frame on demand."""

    def __init__(self, width: int, height: int, num_frames: int, fps: float = 25.0, seed: int = 0):
        self.width, self.height, self.num_frames = width, height, num_frames
        self.frame_rate = Fraction(fps).limit_denominator(100000)
        self.seed = seed
        ys, xs = np.mgrid[0:height, 0:width]
        self._background = ((xs * 255 // max(width - 1, 1))[..., None] * [1, 0, 0]
                            + (ys * 255 // max(height - 1, 1))[..., None] * [0, 1, 0]).astype(np.uint8)
        side = min(width, height) // 3
        self.face_box = ((width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2)

    def landmarks(self, index: int) -> np.ndarray:
        x1, y1, x2, y2 = self.face_box
        wobble = 2.0 * np.sin(index / 5.0)
        return FACE_TEMPLATE * [x2 - x1, y2 - y1] + [x1 + wobble, y1]

    def frames(self, indices: Sequence[int]) -> list[np.ndarray]:
        out = []
        for index in indices:
            generator = np.random.default_rng(self.seed * 1_000_003 + int(index))
            frame = self._background.copy()
            x1, y1, x2, y2 = self.face_box
            frame[y1:y2, x1:x2] = 200 + generator.integers(0, 40, (y2 - y1, x2 - x1, 1), dtype=np.uint8)
            out.append(frame)
        return out

    def fingerprint(self) -> str:
        return f"synthetic:{self.width}x{self.height}x{self.num_frames}@{self.frame_rate}:{self.seed}"


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if os.uname().sysname == "Darwin" else peak / 2**10
    except ImportError:  # Windows: the current value is the best available
        return _rss_mb()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Measurement:
    stage: str
    frames: int
    seconds: float
    note: str = ""

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class BenchReport:
    config: dict
    stages: list[Measurement] = field(default_factory=list)
    memory: dict = field(default_factory=dict)
    rss_over_time: list[tuple[int, float]] = field(default_factory=list)

    def table(self) -> str:
        lines = ["| stage | frames | seconds | fps | note |", "|---|---:|---:|---:|---|"]
        lines += [f"| {m.stage} | {m.frames} | {m.seconds:.2f} | {m.fps:.1f} | {m.note} |" for m in self.stages]
        lines.append("")
        lines += [f"{name}: {value:.0f} MB" for name, value in self.memory.items()]
        if self.rss_over_time:
            lines.append("resident memory while dubbing: " + ", ".join(
                f"{frames} frames {rss:.0f} MB" for frames, rss in self.rss_over_time))
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"config": self.config,
                "stages": [{"stage": m.stage, "frames": m.frames, "seconds": m.seconds, "fps": m.fps, "note": m.note}
                           for m in self.stages],
                "memory_mb": self.memory,
                "rss_over_time": [{"frames": f, "rss_mb": r} for f, r in self.rss_over_time]}


def _timed(device: torch.device, function: Callable, repeats: int) -> float:
    function()  # warm-up
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    _sync(device)
    return (time.perf_counter() - started) / repeats


def run(args: argparse.Namespace) -> BenchReport:
    """Measure each stage, then the whole dubbing loop; print (and optionally save) the report."""
    from .avatar import AvatarSettings, prepare_avatar
    from .blending import blend_alpha, expanded_square, landmark_mask, paste_face
    from .faces import Face
    from .pipeline import DubOptions, MuseTalkModels, compute_audio_features, lip_sync_frames
    from .random_weights import write_random_weights
    from .video_io import VideoWriter

    if args.long:
        args.width, args.height, args.seconds = 1920, 1080, max(args.seconds, 600.0)
    with tempfile.TemporaryDirectory(prefix="musetalk-bench-") as scratch:
        models_dir = args.models_dir
        if models_dir is None:
            models_dir = write_random_weights(Path(scratch) / "models", args.random, seed=0)
        models = MuseTalkModels.load(models_dir, args.version, args.device, args.dtype, face_parsing=False)
        device, batch = models.unet.device, args.batch_size
        fps = args.fps
        num_frames = int(args.seconds * fps)
        report = BenchReport(config={
            "device": str(device), "dtype": str(models.unet.dtype).removeprefix("torch."), "batch_size": batch,
            "models": "RANDOM " + args.random if args.models_dir is None else str(args.models_dir),
            "size": f"{args.width}x{args.height}", "seconds": args.seconds, "fps": fps,
            "torch_threads": torch.get_num_threads()})
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        print(f"Benchmarking on {device} ({report.config['dtype']}), batch {batch}, "
              f"{args.width}x{args.height}, {args.seconds:g} s at {fps:g} fps, models: {report.config['models']}",
              flush=True)

        speech = (0.1 * np.random.default_rng(1).standard_normal(int(args.seconds * 16000))).astype(np.float32)
        started = time.perf_counter()
        features = compute_audio_features(models.whisper, speech, fps, DubOptions())
        report.stages.append(Measurement("audio features", features.num_frames, time.perf_counter() - started,
                                         f"{args.seconds:g} s of speech"))

        latents = torch.randn(batch, 8, 32, 32, device=device)
        chunks = features.chunks(np.arange(batch) % features.num_frames)
        repeats = max(1, args.repeats)
        seconds = _timed(device, lambda: models.unet(latents, chunks), repeats)
        report.stages.append(Measurement("unet", batch * repeats, seconds * repeats))
        predicted = models.unet(latents, chunks)
        seconds = _timed(device, lambda: models.vae.decode(predicted), repeats)
        report.stages.append(Measurement("vae decode", batch * repeats, seconds * repeats, "incl. copy to CPU"))

        source = SyntheticSource(args.width, args.height, num_frames, fps)
        frame = source.frames([0])[0]
        face = models.vae.decode(predicted[:1])[0]
        box = tuple(int(v) for v in source.face_box)
        square = expanded_square(box)
        mask = landmark_mask(source.landmarks(0), square)
        seconds = _timed(device, lambda: paste_face(frame, face, box, square, blend_alpha(mask, box, square)), repeats * 4)
        report.stages.append(Measurement("blend", repeats * 4, seconds * repeats * 4, "mask resize + blur + paste"))

        encode_frames = min(num_frames, max(2 * int(fps), batch * repeats))
        frames = source.frames(range(min(encode_frames, 50)))
        started = time.perf_counter()  # until close() returns: the writer encodes on its own thread
        with VideoWriter(Path(scratch) / "encode.mp4", args.width, args.height, fps) as writer:
            for index in range(encode_frames):
                writer.write(frames[index % len(frames)])
        report.stages.append(Measurement("encode", encode_frames, time.perf_counter() - started, "H.264 crf 18"))

        faces = [[Face(source.face_box, source.landmarks(i))] for i in range(num_frames)]
        started = time.perf_counter()
        avatar = prepare_avatar(source, models.vae, Path(scratch) / "avatars", AvatarSettings(mask_mode="landmarks"),
                                faces=faces, batch_size=batch)
        report.stages.append(Measurement("avatar preparation", num_frames, time.perf_counter() - started,
                                         "crop + VAE encode + masks"))

        checkpoints = set(np.linspace(0, features.num_frames, 11).astype(int)[1:].tolist())
        started = time.perf_counter()
        done = 0
        with VideoWriter(Path(scratch) / "dub.mp4", args.width, args.height, fps, speech[None], 16000) as writer:
            for output in lip_sync_frames(source, avatar, features, models.unet, models.vae, DubOptions(batch_size=batch)):
                writer.write(output)
                done += 1
                if done in checkpoints:
                    report.rss_over_time.append((done, _rss_mb()))
        report.stages.append(Measurement("end to end", done, time.perf_counter() - started,
                                         "UNet + decode + blend + encode, avatar cached"))
        report.memory["peak RSS"] = _peak_rss_mb()
        if device.type == "cuda":
            report.memory["peak CUDA allocated"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2), encoding="utf-8")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``musetalk bench`` options."""
    parser.description = ("Frames per second of each stage (audio features, UNet, VAE decode, blend, encode) and of the "
                          "whole dubbing loop, plus peak memory, on generated input.")
    parser.add_argument("--models-dir", help="official weights folder; default: generated RANDOM weights (--random)")
    parser.add_argument("--random", choices=["tiny", "full"], default="tiny",
                        help="size of the random weights used without --models-dir (default: %(default)s)")
    parser.add_argument("--version", choices=["v15", "v1"], default="v15")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of the generated clip and speech")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per model stage")
    parser.add_argument("--long", action="store_true",
                        help="10 minutes of 1080p, with resident memory sampled along the way")
    parser.add_argument("--json", help="also write the report to this JSON file")
