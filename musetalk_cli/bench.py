"""``musetalk bench``: frames per second per stage and peak memory, chosen configuration against a reference.

Two configurations are measured in one run, on the same device, batch sizes
and input: the chosen one (``--dtype``, ``--decode``) and the reference one
(fp32 weights, full decode: what the official code runs). For each stage the
table shows both frame rates and their ratio (chosen / reference), so a
speed-up is read directly and not compared across runs. ``--no-reference``
measures the chosen configuration only.

Stages: audio features (Whisper), avatar preparation (crop + VAE encode +
masks), UNet and VAE decode (including the copy to the CPU) at each
``--batch-size``, blend (mask resize + blur + paste of one face), encode
(H.264 crf 18) and end to end (UNet + decode + blend + encode with the avatar
cached, at the first batch size). Peak resident memory and, on CUDA, peak
allocated CUDA memory are reported per configuration.

Everything can run on generated input (a synthetic face video and noise
"speech" made on the fly), so no media file is needed. ``--long`` dubs ten
minutes of 1080p and samples the resident memory as it goes, to show that it
stays flat whatever the length.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from functools import partial
from pathlib import Path

import numpy as np
import torch

__all__ = ["REFERENCE_DECODE", "REFERENCE_DTYPE", "BenchReport", "Configuration", "ConfigurationResult",
           "Measurement", "SyntheticSource", "add_arguments", "run"]

REFERENCE_DTYPE = "fp32"
REFERENCE_DECODE = "full"

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
    """A generated video (gradient, noise and a bright face-sized square), made frame by frame on demand.

    The face is ``face_size`` pixels square (default: a third of the shorter side), centred.
    """

    def __init__(self, width: int, height: int, num_frames: int, fps: float = 25.0, seed: int = 0,
                 face_size: int | None = None):
        side = min(width, height) // 3 if face_size is None else face_size
        if not 0 < side <= min(width, height):
            raise ValueError(f"A {side}-pixel face does not fit a {width}x{height} frame.")
        self.width, self.height, self.num_frames = width, height, num_frames
        self.frame_rate = Fraction(fps).limit_denominator(100000)
        self.seed = seed
        ys, xs = np.mgrid[0:height, 0:width]
        self._background = ((xs * 255 // max(width - 1, 1))[..., None] * [1, 0, 0]
                            + (ys * 255 // max(height - 1, 1))[..., None] * [0, 1, 0]).astype(np.uint8)
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
        x1, _, x2, _ = self.face_box
        return f"synthetic:{self.width}x{self.height}x{self.num_frames}@{self.frame_rate}:{self.seed}:face{x2 - x1}"


def _rss_mb() -> float:
    """This process's resident memory now, in MB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class PeakRss:
    """The highest resident memory (MB) of this process while the ``with`` block runs, sampled every ``interval`` s.

    A sampling thread rather than the OS's high-water mark, which covers the
    whole process life and so cannot tell two configurations apart.
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="musetalk-bench-rss", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, _rss_mb())

    def __enter__(self) -> PeakRss:
        self.peak_mb = _rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, function: Callable[[], object], calls: int) -> float:
    """Seconds taken by ``calls`` calls of ``function`` after one untimed warm-up call."""
    function()
    _sync(device)
    started = time.perf_counter()
    for _ in range(calls):
        function()
    _sync(device)
    return time.perf_counter() - started


def _release_memory(device: torch.device) -> None:
    """Give back the memory of models nobody references any more, before the next configuration loads."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class Configuration:
    """What the two measured configurations differ in: model precision and decoder."""

    name: str  # "chosen" or "reference"
    dtype: str  # as for --dtype: auto, fp32, fp16 or bf16
    decode: str  # "partial" or "full" (see DubOptions.decode)


@dataclass
class Measurement:
    """``frames`` frames of one stage took ``seconds``."""

    stage: str
    frames: int
    seconds: float

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class ConfigurationResult:
    """Everything measured for one configuration: stages in order, peak memory, resident memory while dubbing."""

    name: str
    dtype: str  # the resolved torch dtype, e.g. "float16"
    decode: str
    stages: list[Measurement] = field(default_factory=list)
    memory_mb: dict[str, float] = field(default_factory=dict)  # "peak RSS", and on CUDA "peak CUDA allocated"
    rss_over_time: list[tuple[int, float]] = field(default_factory=list)  # (frames dubbed, resident MB)

    def fps(self) -> dict[str, float]:
        return {m.stage: m.fps for m in self.stages}

    def describe(self) -> str:
        return f"{self.dtype}, {self.decode} decode"

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "decode": self.decode,
                "stages": [{**asdict(m), "fps": m.fps} for m in self.stages],
                "memory_mb": self.memory_mb,
                "rss_over_time": [{"frames": f, "rss_mb": r} for f, r in self.rss_over_time]}


@dataclass
class BenchReport:
    """The chosen configuration's measurements and, unless skipped, the reference's from the same run."""

    setup: dict
    chosen: ConfigurationResult
    reference: ConfigurationResult | None = None

    def ratios(self) -> dict[str, dict[str, float]]:
        """Chosen / reference: ``{"fps": {stage: ratio}, "memory": {name: ratio}}`` (empty without a reference)."""
        if self.reference is None:
            return {"fps": {}, "memory": {}}
        reference_fps = self.reference.fps()
        return {"fps": {stage: fps / reference_fps[stage] for stage, fps in self.chosen.fps().items()},
                "memory": {name: value / self.reference.memory_mb[name]
                           for name, value in self.chosen.memory_mb.items()}}

    def table(self) -> str:
        """A Markdown table ``stage | reference fps | chosen fps | ratio`` with the memory rows below the stages."""
        ratios = self.ratios()
        reference_fps = self.reference.fps() if self.reference else {}
        reference_memory = self.reference.memory_mb if self.reference else {}

        def row(label: str, reference: float | None, chosen: float, ratio: float | None, digits: int) -> str:
            cells = [f"{reference:.{digits}f}" if reference is not None else "-", f"{chosen:.{digits}f}",
                     f"{ratio:.2f}" if ratio is not None else "-"]
            return f"| {label} | " + " | ".join(cells) + " |"

        lines = ["| stage | reference fps | chosen fps | ratio |", "|---|---:|---:|---:|"]
        lines += [row(m.stage, reference_fps.get(m.stage), m.fps, ratios["fps"].get(m.stage), 1)
                  for m in self.chosen.stages]
        lines += [row(f"{name} (MB)", reference_memory.get(name), value, ratios["memory"].get(name), 0)
                  for name, value in self.chosen.memory_mb.items()]
        reference = self.reference.describe() if self.reference else "not measured (--no-reference)"
        lines += ["", f"reference: {reference}; chosen: {self.chosen.describe()}; "
                      "ratio = chosen / reference (fps: above 1 is faster; memory: below 1 is smaller)"]
        for result in (self.chosen, self.reference):
            if result is not None and result.rss_over_time:
                lines.append(f"resident memory while dubbing ({result.name}): " + ", ".join(
                    f"{frames} frames {rss:.0f} MB" for frames, rss in result.rss_over_time))
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"setup": self.setup, "chosen": self.chosen.to_json(),
                "reference": self.reference.to_json() if self.reference else None, "ratios": self.ratios()}


def _measure(configuration: Configuration, args: argparse.Namespace, device: torch.device,
             models_dir: str | os.PathLike, source: SyntheticSource, speech: np.ndarray, latents: torch.Tensor,
             scratch: Path) -> ConfigurationResult:
    """Load the models in ``configuration``'s dtype on ``device``, measure every stage and the peak memory.

    The peaks cover loading the models and every stage. The models are
    unreferenced when this returns (call :func:`_release_memory` before loading others).
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with PeakRss() as rss:
        result = _measure_stages(configuration, args, device, models_dir, source, speech, latents, scratch)
    result.memory_mb["peak RSS"] = rss.peak_mb
    if device.type == "cuda":
        result.memory_mb["peak CUDA allocated"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def _measure_stages(configuration: Configuration, args: argparse.Namespace, device: torch.device,
                    models_dir: str | os.PathLike, source: SyntheticSource, speech: np.ndarray,
                    latents: torch.Tensor, scratch: Path) -> ConfigurationResult:
    """The frames per second of every stage (see the module docstring) with models loaded for ``configuration``."""
    from musetalk_lib.avatar import AvatarSettings, prepare_avatar
    from musetalk_lib.blending import blend_alpha, expanded_square, landmark_mask, paste_face
    from musetalk_lib.faces import Face
    from musetalk_lib.pipeline import DubOptions, MuseTalkModels, compute_audio_features, lip_sync_frames
    from musetalk_lib.video_io import VideoWriter

    models = MuseTalkModels.load(models_dir, args.version, device, configuration.dtype, face_parsing=False)
    result = ConfigurationResult(configuration.name, str(models.unet.dtype).removeprefix("torch."),
                                 configuration.decode)
    print(f"Measuring the {result.name} configuration ({result.describe()}) ...", flush=True)
    fps, batch, repeats = args.fps, args.batch_size[0], max(1, args.repeats)

    started = time.perf_counter()
    features = compute_audio_features(models.whisper, speech, fps, DubOptions())
    result.stages.append(Measurement("audio features", features.num_frames, time.perf_counter() - started))

    faces = [[Face(source.face_box, source.landmarks(i))] for i in range(source.num_frames)]
    started = time.perf_counter()
    avatar = prepare_avatar(source, models.vae, scratch / f"avatars-{configuration.name}",
                            AvatarSettings(mask_mode="landmarks"), faces=faces, batch_size=batch)
    result.stages.append(Measurement("avatar preparation", source.num_frames, time.perf_counter() - started))
    from_row = avatar.first_pasted_row([0]) if configuration.decode == "partial" else 0

    predicted = {}
    for size in args.batch_size:
        sample, chunks = latents[:size].to(device), features.chunks(np.arange(size) % features.num_frames)
        seconds = _timed(device, partial(models.unet, sample, chunks), repeats)
        result.stages.append(Measurement(f"unet (batch {size})", size * repeats, seconds))
        predicted[size] = models.unet(sample, chunks)
    for size in args.batch_size:
        seconds = _timed(device, partial(models.vae.decode, predicted[size], from_row), repeats)
        result.stages.append(Measurement(f"vae decode (batch {size})", size * repeats, seconds))

    frame = source.frames([0])[0]
    face = models.vae.decode(predicted[batch][:1], from_row)[0]
    box = source.face_box
    square = expanded_square(box)
    mask = landmark_mask(source.landmarks(0), square)
    blends = 4 * repeats
    seconds = _timed(device, lambda: paste_face(frame, face, box, square, blend_alpha(mask, box, square)), blends)
    result.stages.append(Measurement("blend", blends, seconds))

    encode_frames = min(source.num_frames, max(2 * int(fps), batch * repeats))
    frames = source.frames(range(min(encode_frames, 50)))
    started = time.perf_counter()  # until close() returns: the writer encodes on its own thread
    with VideoWriter(scratch / "encode.mp4", source.width, source.height, fps) as writer:
        for index in range(encode_frames):
            writer.write(frames[index % len(frames)])
    result.stages.append(Measurement("encode", encode_frames, time.perf_counter() - started))

    checkpoints = set(np.linspace(0, features.num_frames, 11).astype(int)[1:].tolist())
    options = DubOptions(batch_size=batch, decode=configuration.decode)
    started = time.perf_counter()
    done = 0
    with VideoWriter(scratch / "dub.mp4", source.width, source.height, fps, speech[None], 16000) as writer:
        for output in lip_sync_frames(source, avatar, features, models.unet, models.vae, options):
            writer.write(output)
            done += 1
            if done in checkpoints:
                result.rss_over_time.append((done, _rss_mb()))
    result.stages.append(Measurement("end to end", done, time.perf_counter() - started))
    return result


def run(args: argparse.Namespace) -> BenchReport:
    """Measure the chosen configuration, then (unless ``args.no_reference``) the reference; print the report.

    ``args`` are the options of :func:`add_arguments`. The report is also
    written to ``args.json`` when given.
    """
    from musetalk_lib.devices import resolve_device
    from musetalk_lib.random_weights import write_random_weights

    if args.long:
        args.width, args.height, args.seconds = 1920, 1080, max(args.seconds, 600.0)
    device = resolve_device(args.device)
    num_frames = int(args.seconds * args.fps)
    if num_frames < 1:
        raise ValueError(f"{args.seconds:g} s at {args.fps:g} fps is not a single frame.")
    source = SyntheticSource(args.width, args.height, num_frames, args.fps, face_size=args.face_size)
    speech = (0.1 * np.random.default_rng(1).standard_normal(int(args.seconds * 16000))).astype(np.float32)
    latents = torch.randn(max(args.batch_size), 8, 32, 32, generator=torch.Generator().manual_seed(0))
    configurations = [Configuration("chosen", args.dtype, args.decode)]
    if not args.no_reference:
        configurations.append(Configuration("reference", REFERENCE_DTYPE, REFERENCE_DECODE))
    setup = {
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "batch_sizes": args.batch_size,
        "models": "RANDOM " + args.random if args.models_dir is None else str(args.models_dir),
        "size": f"{args.width}x{args.height}", "face_size": source.face_box[2] - source.face_box[0],
        "seconds": args.seconds, "fps": args.fps}
    print(f"Benchmarking on {device}{' (' + setup['gpu'] + ')' if setup['gpu'] else ''}, batch sizes "
          f"{' '.join(map(str, args.batch_size))}, {setup['size']} with a {setup['face_size']}-pixel face, "
          f"{args.seconds:g} s at {args.fps:g} fps, models: {setup['models']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="musetalk-bench-") as folder:
        scratch = Path(folder)
        models_dir = args.models_dir or write_random_weights(scratch / "models", args.random, seed=0)
        results = []
        for configuration in configurations:
            results.append(_measure(configuration, args, device, models_dir, source, speech, latents, scratch))
            _release_memory(device)
    report = BenchReport(setup, *results)
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2), encoding="utf-8")
    return report


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``musetalk bench`` options."""
    from musetalk_lib.options import DECODE_MODES, DTYPE_CHOICES, VERSIONS

    parser.description = (
        "Frames per second of each stage (audio features, avatar preparation, UNet, VAE decode, blend, encode) and "
        "of the whole dubbing loop, plus peak memory, on generated input. The chosen configuration (--dtype, "
        f"--decode) is measured next to the reference ({REFERENCE_DTYPE} weights, {REFERENCE_DECODE} decode) on the "
        "same device and input, and the table shows the ratio chosen / reference per stage.")
    parser.add_argument("--models-dir", help="official weights folder; default: generated RANDOM weights (--random)")
    parser.add_argument("--random", choices=["tiny", "full"], default="tiny",
                        help="size of the random weights used without --models-dir (default: %(default)s)")
    parser.add_argument("--version", choices=VERSIONS, default="v15")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps ... (default: %(default)s)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                        help="precision of the chosen configuration; auto = fp16 on CUDA, bf16 on CPUs with AMX, "
                             "fp32 elsewhere (default: %(default)s)")
    parser.add_argument("--decode", choices=DECODE_MODES, default="partial",
                        help="decoder of the chosen configuration: partial skips the face rows the paste never "
                             "shows, full decodes them all (default: %(default)s)")
    parser.add_argument("--no-reference", action="store_true",
                        help=f"skip the reference configuration ({REFERENCE_DTYPE}, {REFERENCE_DECODE} decode): "
                             "about half the time, no ratios")
    parser.add_argument("--batch-size", type=_positive_int, nargs="+", default=[8], metavar="N",
                        help="frames per model batch; several sizes (e.g. 8 16 32 64) measure UNet and VAE decode at "
                             "each, avatar preparation and end to end use the first (default: 8)")
    parser.add_argument("--width", type=int, default=640, help="frame width in pixels (default: %(default)s)")
    parser.add_argument("--height", type=int, default=360, help="frame height in pixels (default: %(default)s)")
    parser.add_argument("--face-size", type=_positive_int, metavar="PX",
                        help="side of the square synthetic face in pixels (default: a third of the shorter frame side)")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="length of the generated clip and speech (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=25.0,
                        help="frame rate of the generated clip (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed batches per model stage and batch size (default: %(default)s)")
    parser.add_argument("--long", action="store_true",
                        help="10 minutes of 1080p, with resident memory sampled along the way "
                             "(add --no-reference to halve the time)")
    parser.add_argument("--json", help="also write the report (both configurations and the ratios) to this JSON file")
