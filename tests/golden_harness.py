"""Runs golden parity cases (see ``shared/golden/README.md``) through musetalk_lib.

Each case kind has a runner that returns our value for every array named in
the case's tolerance table; ``compare`` applies the case's rules. Models are
found in ``<golden>/models`` by what they contain, not by their names, so any
folder in the same format works.

The networks run on ``$MUSETALK_TEST_DEVICE`` (default ``cpu``) in
``$MUSETALK_TEST_DTYPE`` (``fp32``, the default, ``fp16`` or ``bf16``):
models and inputs go there, results come back to the CPU as float32 or
integer arrays before they are compared.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

import numpy as np
import torch

from musetalk_lib.audio_features import AudioFeatures, WhisperAudioEncoder, load_whisper
from musetalk_lib.audio_io import load_audio_16k
from musetalk_lib.blending import (
    blend_alpha,
    blur_kernel_size,
    expanded_square,
    parsing_mask,
    paste_face,
    resize_mask_to_square,
)
from musetalk_lib.crop import crop_face, face_box_from_landmarks, official_face_box, resize_face_to_box
from musetalk_lib.devices import DTYPES
from musetalk_lib.face_parsing import FaceParser, load_face_parser
from musetalk_lib.unet import MuseTalkUNet, load_unet
from musetalk_lib.vae import FaceVAE, load_vae

REPO_ROOT = Path(__file__).resolve().parents[1]
WEIGHT_SUFFIXES = (".pth", ".bin", ".pt", ".safetensors")


def golden_device() -> torch.device:
    """``$MUSETALK_TEST_DEVICE`` (default ``cpu``): where the golden networks run."""
    return torch.device(os.environ.get("MUSETALK_TEST_DEVICE") or "cpu")


def golden_dtype() -> str:
    """``$MUSETALK_TEST_DTYPE`` (default ``fp32``): the golden networks' precision, one of ``DTYPES``."""
    name = os.environ.get("MUSETALK_TEST_DTYPE") or "fp32"
    if name not in DTYPES:
        raise ValueError(f"MUSETALK_TEST_DTYPE={name!r}; choose one of {', '.join(DTYPES)}")
    return name



def golden_dir() -> Path:
    """``$MUSETALK_GOLDEN_DIR``, or ``../shared/golden`` beside the repository."""
    configured = os.environ.get("MUSETALK_GOLDEN_DIR")
    return Path(configured).resolve() if configured else (REPO_ROOT.parent / "shared" / "golden").resolve()


def load_manifest(folder: Path) -> dict:
    with open(folder / "manifest.json", encoding="utf-8") as handle:
        return json.load(handle)


def flip_channels(image: np.ndarray) -> np.ndarray:
    """BGR <-> RGB (the golden data is BGR, the library works in RGB)."""
    return np.ascontiguousarray(image[..., ::-1])


@dataclass
class GoldenModels:
    """The random models shipped in ``<golden>/models``, found by content and loaded once on ``device`` in ``dtype``."""

    folder: Path
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    def _directories(self) -> list[Path]:
        return sorted(path for path in self.folder.rglob("*") if path.is_dir()) + [self.folder]

    def _find_dir(self, marker: str, predicate=lambda path: True) -> Path:
        for directory in self._directories():
            if (directory / marker).is_file() and predicate(directory):
                return directory
        raise FileNotFoundError(f"No model folder with {marker} under {self.folder}")

    @cached_property
    def unet(self) -> MuseTalkUNet:
        directory = self._find_dir("musetalk.json")
        weights = next(p for p in sorted(directory.iterdir()) if p.suffix in WEIGHT_SUFFIXES)
        return load_unet(directory / "musetalk.json", weights, self.device, self.dtype)

    @cached_property
    def vae(self) -> FaceVAE:
        def is_vae(directory: Path) -> bool:
            config = json.loads((directory / "config.json").read_text())
            return config.get("_class_name") == "AutoencoderKL"

        return load_vae(self._find_dir("config.json", is_vae), self.device, self.dtype)

    @cached_property
    def whisper(self) -> WhisperAudioEncoder:
        return load_whisper(self._find_dir("preprocessor_config.json"), self.device, self.dtype)

    @cached_property
    def face_parser(self) -> FaceParser:
        # The one weight file that is not part of a configured (UNet, VAE, Whisper) folder.
        candidates = [
            path for path in sorted(self.folder.rglob("*"))
            if path.is_file() and path.suffix in WEIGHT_SUFFIXES
            and not (path.parent / "config.json").is_file() and not (path.parent / "musetalk.json").is_file()
        ]
        if not candidates:
            raise FileNotFoundError(f"No face-parsing weights under {self.folder}")
        return load_face_parser(candidates[0], self.device, self.dtype)


@cache
def models_for(folder: Path, device: torch.device, dtype: str) -> GoldenModels:
    return GoldenModels(folder / "models", device, DTYPES[dtype])


def run_audio_chunks(case: dict, inputs: dict, expected, models: GoldenModels) -> dict:
    params = case["params"]
    left = params.get("audio_padding_length_left", 2)
    right = params.get("audio_padding_length_right", 2)
    frames = np.asarray(params.get("frame_indices", expected["frame_indices"]), dtype=np.int64)

    def chunks_from(audio: np.ndarray) -> tuple[np.ndarray, AudioFeatures]:
        features = AudioFeatures.for_video(models.whisper(audio), audio.shape[0], params["fps"], left, right)
        return features.chunks(frames).numpy(), features

    audio = load_audio_16k(inputs["wav"])
    chunks, features = chunks_from(audio)
    outputs = {
        "num_frames": np.int64(features.num_frames),
        "num_samples_16k": np.int64(audio.shape[0]),
        "index_map": features.index.astype(np.int32),
        "frame_indices": frames,
        "chunks": chunks,
        "wav16k": audio,
        "input_features": models.whisper.log_mel(
            [audio[start:start + 480000] for start in range(0, audio.shape[0], 480000)]
        ).cpu().numpy(),
    }
    if "feature_indices" in expected:
        feature_indices = np.asarray(expected["feature_indices"], dtype=np.int64)
    else:
        feature_indices = np.arange(features.features.shape[0])
    outputs["feature_indices"] = feature_indices
    outputs["features"] = features.features[torch.from_numpy(feature_indices)].numpy()
    if "chunks@wav16k" in case["tolerance"]:
        outputs["chunks@wav16k"] = chunks_from(np.asarray(expected["wav16k"], dtype=np.float32))[0]
    return outputs


def run_crop_box(case: dict, inputs: dict, expected, models: GoldenModels) -> dict:
    params = case["params"]
    frame, landmarks = inputs["frame_bgr"], inputs["landmarks"]
    margin = params.get("extra_margin", 10 if params["version"] == "v15" else 0)
    box = official_face_box(landmarks, frame.shape[0], params["bbox_shift"], margin)
    return {
        "box_landmark": np.asarray(face_box_from_landmarks(landmarks, params["bbox_shift"]), dtype=np.int64),
        "box": np.asarray(box, dtype=np.int64),
        "crop_bgr": crop_face(frame, box),
    }


def run_vae_encode(case: dict, inputs: dict, expected, models: GoldenModels) -> dict:
    if case["params"].get("posterior", "mode") != "mode":
        raise ValueError(f"Unsupported posterior {case['params']['posterior']!r}")
    latents = models.vae.encode_masked_and_reference(flip_channels(inputs["crops_bgr"]))
    return {"latents": latents.float().cpu().numpy()}


def run_unet(case: dict, inputs: dict, expected, models: GoldenModels) -> dict:
    params = case["params"]
    if params.get("timestep", 0) != 0 or not params.get("add_positional_encoding", True):
        raise ValueError(f"Unsupported UNet parameters {params}: inference runs at timestep 0 with the encoding")
    latents = torch.from_numpy(inputs["latents"])
    chunks = torch.from_numpy(inputs["whisper_chunks"])
    return {"pred_latents": models.unet(latents, chunks).float().cpu().numpy()}


def run_vae_decode(case: dict, inputs: dict, expected, models: GoldenModels) -> dict:
    return {"images_bgr": flip_channels(models.vae.decode(torch.from_numpy(inputs["latents"])))}


def run_face_parsing(case: dict, inputs: dict, expected, models: GoldenModels) -> dict:
    params = case["params"]
    stride = params.get("logit_stride", 8)
    y0, x0, size = params["logit_window"]
    parser = models.face_parser

    def network_outputs(resized: np.ndarray, suffix: str) -> dict:
        logits = parser.logits_from_resized(resized[None])[0].cpu().numpy()
        return {
            f"logits_strided{suffix}": logits[:, ::stride, ::stride],
            f"logits_window{suffix}": logits[:, y0:y0 + size, x0:x0 + size],
            f"labels{suffix}": logits.argmax(axis=0).astype(np.uint8),
        }

    resized = parser.resize_for_parsing(inputs["image_rgb"])
    outputs = network_outputs(resized, "")
    outputs["resized_rgb"] = resized
    outputs["input_tensor_strided"] = parser.normalize(resized[None])[0, :, ::stride, ::stride].cpu().numpy()
    if any(key.endswith("@resized_rgb") for key in case["tolerance"]):
        outputs.update(network_outputs(np.asarray(expected["resized_rgb"]), "@resized_rgb"))
    labels = outputs["labels"]
    outputs["mask_raw"] = parsing_mask(labels, "raw")
    outputs["mask_neck"] = parsing_mask(labels, "neck")
    for key in case["tolerance"]:
        if key.startswith("mask_jaw_cheek"):
            outputs[key] = parsing_mask(labels, "jaw", int(key.removeprefix("mask_jaw_cheek")))
    return outputs


def run_blend(case: dict, inputs: dict, expected, models: GoldenModels) -> dict:
    params = case["params"]
    frame, face = flip_channels(inputs["frame_bgr"]), flip_channels(inputs["face_bgr"])
    box = tuple(int(value) for value in inputs["box"])
    square = expanded_square(box, params.get("expand", 1.5))
    mask = parsing_mask(inputs["label_map"], params["mode"], params.get("cheek_width", 90))
    ratio = params.get("upper_boundary_ratio", 0.5)
    alpha = blend_alpha(mask, box, square, params["variant"], ratio)
    return {
        "output_bgr": flip_channels(paste_face(frame, face, box, square, alpha)),
        "crop_box": np.asarray(square, dtype=np.int64),
        "blur_ksize": np.int64(blur_kernel_size(square[2] - square[0], params["variant"])),
        "face_resized_bgr": resize_face_to_box(inputs["face_bgr"], box),
        "mask512": mask,
        "mask_resized": resize_mask_to_square(mask, square),
        "blur_mask": alpha,
    }


RUNNERS = {
    "audio_chunks": run_audio_chunks,
    "crop_box": run_crop_box,
    "vae_encode": run_vae_encode,
    "unet": run_unet,
    "vae_decode": run_vae_decode,
    "face_parsing": run_face_parsing,
    "blend": run_blend,
}


def load_inputs(folder: Path, case: dict) -> dict:
    inputs: dict = {}
    for name, relative in case.get("inputs", {}).items():
        path = folder / relative
        if path.suffix == ".npz":
            with np.load(path) as arrays:
                inputs.update({key: arrays[key] for key in arrays.files})
        else:
            inputs[name] = path
    return inputs


def compare(name: str, got: np.ndarray, expected: np.ndarray, rule: dict) -> str | None:
    """None when ``got`` satisfies ``rule`` against ``expected``, else a description of the failure."""
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        return f"{name}: shape {got.shape} != expected {expected.shape}"
    if rule.get("exact"):
        if not np.array_equal(got, expected):
            return f"{name}: {int(np.sum(got != expected))} values differ (exact match required)"
        return None
    if "min_agreement" in rule:
        agreement = float(np.mean(got == expected))
        return None if agreement >= rule["min_agreement"] else f"{name}: agreement {agreement:.5f} < {rule['min_agreement']}"
    if "max_abs" in rule:
        difference = np.abs(got.astype(np.int64) - expected.astype(np.int64))
        mismatch = float(np.mean(got != expected))
        if difference.max(initial=0) > rule["max_abs"] or mismatch > rule["max_mismatch_frac"]:
            return (f"{name}: max |diff| {difference.max(initial=0)} (limit {rule['max_abs']}), "
                    f"mismatch {mismatch:.4%} (limit {rule['max_mismatch_frac']:.4%})")
        return None
    if "atol" in rule:
        got64, expected64 = got.astype(np.float64), expected.astype(np.float64)
        limit = rule["atol"] + rule.get("rtol", 0.0) * np.abs(expected64)
        excess = np.abs(got64 - expected64) - limit
        if not np.all(excess <= 0):
            worst = float(np.max(np.abs(got64 - expected64)))
            return f"{name}: {int(np.sum(excess > 0))} values out of tolerance (max |diff| {worst:.3g}, rule {rule})"
        return None
    return f"{name}: unknown tolerance rule {rule}"


@dataclass
class Difference:
    """How far one produced array is from the expected one (NaN when the shapes differ)."""

    array: str
    max_abs: float
    mean_abs: float
    within_tolerance: bool


def difference(name: str, got: np.ndarray, expected: np.ndarray, within_tolerance: bool) -> Difference:
    """Largest and mean absolute difference of ``got`` from ``expected``, computed in float64."""
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        return Difference(name, math.nan, math.nan, within_tolerance)
    delta = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    return Difference(name, float(delta.max(initial=0.0)), float(delta.mean()) if delta.size else 0.0,
                      within_tolerance)


def differences_table(rows: list[tuple[str, Difference]]) -> str:
    """``(case id, difference)`` rows as a Markdown table: case, array, max and mean abs diff, within tolerance."""
    lines = ["| case | array | max abs diff | mean abs diff | within tolerance |", "|---|---|---:|---:|---|"]
    lines += [f"| {case} | {d.array} | {d.max_abs:.3g} | {d.mean_abs:.3g} | {'yes' if d.within_tolerance else 'no'} |"
              for case, d in rows]
    return "\n".join(lines)


@dataclass
class CaseResult:
    """Failures of required and of diagnostic arrays, and the difference of every compared array."""

    required_failures: list[str]
    diagnostic_failures: list[str]
    differences: list[Difference]


def run_case(folder: Path, case: dict) -> CaseResult:
    """Run one case on :func:`golden_device` in :func:`golden_dtype` and compare it with the case's rules."""
    kind = case.get("kind")
    if kind not in RUNNERS:
        return CaseResult([f"unknown case kind {kind!r}"], [], [])
    expected_path = folder / case["expected"]
    with np.load(expected_path) as archive:
        expected = {key: archive[key] for key in archive.files}
    models = models_for(folder, golden_device(), golden_dtype())
    outputs = RUNNERS[kind](case, load_inputs(folder, case), expected, models)
    required_failures, diagnostic_failures, differences = [], [], []
    for name, rule in case["tolerance"].items():
        required = rule.get("required", True)
        failures = required_failures if required else diagnostic_failures
        reference_name = name.split("@", 1)[0]
        if reference_name not in expected:
            if required:
                failures.append(f"{name}: missing from {expected_path.name}")
            continue
        if name not in outputs:
            failures.append(f"{name}: not produced by the {kind} runner")
            continue
        problem = compare(name, outputs[name], expected[reference_name], rule)
        if problem:
            failures.append(problem)
        differences.append(difference(name, outputs[name], expected[reference_name], problem is None))
    return CaseResult(required_failures, diagnostic_failures, differences)
