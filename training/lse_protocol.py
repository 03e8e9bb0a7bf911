"""LSE-D and LSE-C by the published SyncNet protocol (Chung & Zisserman's SyncNet, as syncnet_python runs it).

The lip-sync numbers in talking-face papers (Wav2Lip, MuseTalk, LatentSync)
come from syncnet_python's ``syncnet_v2.model`` evaluated by its pipeline.
This module follows that pipeline step by step, without its ffmpeg calls:

1. **25 fps.** The video is brought to 25 fps by frame selection, as ffmpeg's
   ``-r 25`` does: output frame ``k`` (time ``k / 25``) is the last input frame
   whose timestamp, rounded to the nearest 1/25 s, is at most ``k / 25``.
   A 50 fps clip keeps every other frame; a 30 fps clip drops one in six.
2. **Face track crops.** Face boxes are linearly interpolated over frames
   without a detection, their centres and half-sizes median-filtered over 13
   frames, and each frame cropped around them: ``crop_scale`` 0.4 (the crop
   spans the half-size above the centre and 1.8 half-sizes below it, 2.8
   half-sizes wide), padded with grey 110 outside the frame, resized to
   224x224, in BGR channel order (the reference reads frames with OpenCV).
3. **Audio.** 16 kHz mono as 16-bit samples, 13 MFCCs at 100 Hz
   (``python_speech_features.mfcc`` with its defaults), 4 MFCC frames per
   video frame.
4. **Embeddings.** Windows of 5 frames (``[3, 5, 224, 224]``, pixel values
   0-255) and 20 MFCC frames (``[1, 13, 20]``) start at every frame but the
   last 5 of ``min(frames, samples // 640)``; each tower ends in a 1024-d
   embedding (not normalised).
5. **Offset search.** For each video window, the Euclidean distance to the
   audio windows shifted by -15..15 frames (zero embeddings past either end);
   the mean over windows per shift gives ``LSE-D`` (its minimum) and ``LSE-C``
   (its median minus its minimum); the best shift is the AV offset, positive
   when the audio leads the video. The per-window confidence at that shift
   (median of the mean distances minus the window's distance) is median
   filtered over 9 windows, as the reference reports it.

What differs from running syncnet_python itself: frames are not round-tripped
through JPEG, the face boxes come from this package's landmark files or
detectors (face-alignment's detector is the same S3FD), and the whole video is
one face track (no scene cuts, no 100-frame minimum track).

Given the same weights and inputs, :func:`sync_scores` gives syncnet_python's
offset, distances, LSE-D and LSE-C (``tests/test_training_lse.py`` against a
fixture made by ``scripts/make_lse_parity_fixture.py`` from the reference code).

The weights are ``syncnet_v2.model`` from syncnet_python (its
``download_model.sh``): a PyTorch state dict, read by
:func:`musetalk_lib.checkpoint.load_state_dict` (``weights_only=True``, which
handles the file's pre-zip format) with no conversion.
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from musetalk_lib.checkpoint import StateDict, load_model_weights

__all__ = [
    "SYNCNET_V2_WEIGHTS",
    "missing_packages",
    "ChungZissermanSyncNet",
    "SyncResult",
    "crop_face_track",
    "load_chung_zisserman_syncnet",
    "median_filter",
    "mfcc_features",
    "offset_search",
    "resample_indices",
    "sync_scores",
]

FPS = 25
SAMPLE_RATE = 16000
MFCC_PER_FRAME = 4  # 100 Hz MFCC frames per 25 fps video frame
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
WINDOW_FRAMES = 5
CROP_SIZE = 224
CROP_SCALE = 0.4
CROP_FILL = 110
TRACK_FILTER = 13
CONFIDENCE_FILTER = 9
VSHIFT = 15
SYNCNET_V2_WEIGHTS = ("the SyncNet of Chung & Zisserman: syncnet_v2.model from syncnet_python "
                      "(its download_model.sh), passed with --lse-syncnet")


def missing_packages() -> str | None:
    """None when the MFCC and median-filter packages are importable, else the reason they are not."""
    missing = [name for name in ("python_speech_features", "scipy") if importlib.util.find_spec(name) is None]
    return (f"not installed: {', '.join(missing)} (pip install python-speech-features scipy, or the project's "
            "train extra)") if missing else None


def _conv_bn(convolution: nn.Module, channels: int, batch_norm: type[nn.Module]) -> list[nn.Module]:
    return [convolution, batch_norm(channels), nn.ReLU(inplace=True)]


class ChungZissermanSyncNet(nn.Module):
    """SyncNet's audio and lip towers (the "S" model of syncnet_python); names match ``syncnet_v2.model``.

    ``embed_audio``: MFCC windows ``[B, 1, 13, 20]`` -> ``[B, 1024]``.
    ``embed_video``: BGR frame windows ``[B, 3, 5, 224, 224]`` (0-255) -> ``[B, 1024]``.
    """

    def __init__(self, embedding_size: int = 1024):
        super().__init__()
        bn2, bn3 = nn.BatchNorm2d, nn.BatchNorm3d
        self.netcnnaud = nn.Sequential(
            *_conv_bn(nn.Conv2d(1, 64, 3, padding=1), 64, bn2),
            nn.MaxPool2d(1, stride=1),
            *_conv_bn(nn.Conv2d(64, 192, 3, padding=1), 192, bn2),
            nn.MaxPool2d(3, stride=(1, 2)),
            *_conv_bn(nn.Conv2d(192, 384, 3, padding=1), 384, bn2),
            *_conv_bn(nn.Conv2d(384, 256, 3, padding=1), 256, bn2),
            *_conv_bn(nn.Conv2d(256, 256, 3, padding=1), 256, bn2),
            nn.MaxPool2d(3, stride=2),
            *_conv_bn(nn.Conv2d(256, 512, (5, 4)), 512, bn2),
        )
        self.netfcaud = self._head(embedding_size)
        self.netfclip = self._head(embedding_size)
        self.netcnnlip = nn.Sequential(
            *_conv_bn(nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2)), 96, bn3),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn(nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), 256, bn3),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            *_conv_bn(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn3),
            *_conv_bn(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn3),
            *_conv_bn(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn3),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn(nn.Conv3d(256, 512, (1, 6, 6)), 512, bn3),
        )

    @staticmethod
    def _head(embedding_size: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding_size))

    def embed_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def embed_video(self, frames: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def _add_batch_counters(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Files saved before PyTorch 0.4.1 lack BatchNorm's ``num_batches_tracked`` (unused in evaluation)."""
    counters = {name: tensor for name, tensor in model.state_dict().items()
                if name.endswith("num_batches_tracked") and name not in state_dict}
    return {**state_dict, **counters}


def load_chung_zisserman_syncnet(path: str | os.PathLike, device: str | torch.device = "cpu") -> ChungZissermanSyncNet:
    """``syncnet_v2.model`` (or any state dict with its names and shapes), strictly, in eval mode."""
    model = ChungZissermanSyncNet()
    load_model_weights(model, path, dtype=torch.float32, convert=lambda weights: _add_batch_counters(weights, model),
                       hint=f"Expected {SYNCNET_V2_WEIGHTS}.")
    return model.to(device).eval()


def resample_indices(num_frames: int, fps: float | Fraction, target_fps: int = FPS) -> list[int]:
    """Input frame shown at each ``target_fps`` tick, as ffmpeg's ``-r`` picks it (frames dropped or repeated).

    Frame ``i`` (time ``i / fps``) is placed at tick ``round(i * target_fps / fps)`` (halves up); tick ``k``
    shows the last frame placed at or before it. ``round(num_frames * target_fps / fps)`` ticks.
    """
    if num_frames < 1:
        return []
    rate = Fraction(fps).limit_denominator(1001) / target_fps  # input frames per output tick, exact
    ticks = max(1, math.floor(num_frames / rate + Fraction(1, 2)))
    # last i with i / rate + 1/2 < k + 1, i.e. i < (k + 1/2) * rate
    return [min(num_frames - 1, max(0, math.ceil((k + Fraction(1, 2)) * rate) - 1)) for k in range(ticks)]


def mfcc_features(audio_16k: np.ndarray) -> np.ndarray:
    """``[13, T]`` MFCCs at 100 Hz of float audio in [-1, 1], from its 16-bit samples (as the reference's wav)."""
    from python_speech_features import mfcc

    samples = np.clip(np.rint(np.asarray(audio_16k, dtype=np.float64) * 32768), -32768, 32767).astype(np.int16)
    return mfcc(samples, SAMPLE_RATE).T


def median_filter(values: np.ndarray, kernel_size: int) -> np.ndarray:
    """Running median over ``kernel_size`` (odd) values, zero-padded at the ends (``scipy.signal.medfilt``)."""
    from scipy.signal import medfilt

    with warnings.catch_warnings():  # a series shorter than the kernel is zero-padded, as intended
        warnings.simplefilter("ignore", UserWarning)
        return medfilt(np.asarray(values, dtype=np.float64), kernel_size=kernel_size)


def _interpolate_missing(boxes: Sequence[Sequence[float] | None]) -> np.ndarray:
    found = [index for index, box in enumerate(boxes) if box is not None]
    if not found:
        raise LookupError("no face in any frame")
    known = np.array([boxes[index] for index in found], dtype=np.float64)
    frames = np.arange(len(boxes))
    return np.stack([np.interp(frames, found, known[:, axis]) for axis in range(4)], axis=1)


def crop_face_track(frames: Sequence[np.ndarray], boxes: Sequence[Sequence[float] | None]) -> np.ndarray:
    """``[N, 224, 224, 3]`` uint8 BGR crops of RGB ``frames`` around their face boxes ``(x1, y1, x2, y2)``.

    Boxes missing (None) are interpolated from their neighbours; centres and
    half-sizes are median-filtered over 13 frames, zero-padded at the ends as
    in the reference, which takes at least 7 frames to leave the ends alone.
    """
    if len(boxes) <= TRACK_FILTER // 2:  # the zero-padded median filter needs a majority of real boxes
        raise ValueError(f"{len(boxes)} frames at 25 fps: the SyncNet protocol needs at least {TRACK_FILTER // 2 + 1}")
    track = _interpolate_missing(boxes)
    half = median_filter(np.maximum(track[:, 2] - track[:, 0], track[:, 3] - track[:, 1]) / 2, TRACK_FILTER)
    centre_x = median_filter((track[:, 0] + track[:, 2]) / 2, TRACK_FILTER)
    centre_y = median_filter((track[:, 1] + track[:, 3]) / 2, TRACK_FILTER)
    crops = []
    for frame, size, x, y in zip(frames, half, centre_x, centre_y):
        pad = int(size * (1 + 2 * CROP_SCALE))
        padded = np.pad(np.ascontiguousarray(frame[..., ::-1]), ((pad, pad), (pad, pad), (0, 0)),
                        constant_values=CROP_FILL)
        y, x = y + pad, x + pad
        face = padded[int(y - size):int(y + size * (1 + 2 * CROP_SCALE)),
                      int(x - size * (1 + CROP_SCALE)):int(x + size * (1 + CROP_SCALE))]
        if face.size == 0:
            raise LookupError(f"an empty face box (half-size {size:.1f} px)")
        crops.append(cv2.resize(face, (CROP_SIZE, CROP_SIZE)))
    return np.stack(crops)


@dataclass
class SyncResult:
    """One video's scores: ``lse_d``, ``lse_c``, the AV ``offset`` (frames, positive: audio leads), the
    ``windows`` scored, the mean distance at each audio shift -vshift..vshift, and the median-filtered
    per-window confidence at the best shift."""

    lse_d: float
    lse_c: float
    offset: int
    windows: int
    mean_distances: np.ndarray
    framewise_confidence: np.ndarray


def offset_search(video: torch.Tensor, audio: torch.Tensor, vshift: int = VSHIFT) -> SyncResult:
    """Scores from window embeddings ``video [W, D]`` and ``audio [W, D]`` (step 5 of the module docstring)."""
    windows = len(video)
    padded = F.pad(audio, (0, 0, vshift, vshift))
    distances = torch.stack([F.pairwise_distance(video, padded[shift:shift + windows])
                             for shift in range(2 * vshift + 1)], dim=1)  # [windows, shifts]
    mean_distance = distances.mean(0)
    minimum, best = torch.min(mean_distance, 0)
    median = torch.median(mean_distance)
    confidence = (median - distances[:, best]).numpy()
    return SyncResult(lse_d=float(minimum), lse_c=float(median - minimum), offset=vshift - int(best),
                      windows=windows, mean_distances=mean_distance.numpy(),
                      framewise_confidence=median_filter(confidence, CONFIDENCE_FILTER))


@torch.no_grad()
def sync_scores(model: ChungZissermanSyncNet, crops: np.ndarray, audio_16k: np.ndarray, vshift: int = VSHIFT,
                batch_size: int = 20) -> SyncResult:
    """LSE of one 25 fps face track: ``crops`` from :func:`crop_face_track` and the video's 16 kHz audio."""
    usable = min(len(crops), len(audio_16k) // SAMPLES_PER_FRAME)
    windows = usable - WINDOW_FRAMES  # the reference's range(0, min_length - 5)
    if windows < 1:
        raise ValueError(f"{usable} frames of 25 fps video with audio: the SyncNet protocol needs at least "
                         f"{WINDOW_FRAMES + 1}")
    device = next(model.parameters()).device
    frames = torch.from_numpy(np.ascontiguousarray(crops[:usable])).permute(3, 0, 1, 2).float()  # [3, N, H, W]
    mfcc = torch.from_numpy(mfcc_features(audio_16k)).float()[None]  # [1, 13, T]
    video, audio = [], []
    for start in range(0, windows, batch_size):
        starts = range(start, min(windows, start + batch_size))
        clips = torch.stack([frames[:, s:s + WINDOW_FRAMES] for s in starts]).to(device)
        sounds = torch.stack([mfcc[:, :, s * MFCC_PER_FRAME:s * MFCC_PER_FRAME + MFCC_PER_FRAME * WINDOW_FRAMES]
                              for s in starts]).to(device)
        video.append(model.embed_video(clips).float().cpu())
        audio.append(model.embed_audio(sounds).float().cpu())
    return offset_search(torch.cat(video), torch.cat(audio), vshift)
