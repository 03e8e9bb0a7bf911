"""Where the official MuseTalk weights live, and what to say when they are missing.

The layout is the one the official repository downloads into ``models/``::

    <models root>/
    ├── musetalkV15/        musetalk.json, unet.pth                  (v1.5 UNet)
    ├── musetalk/           musetalk.json, pytorch_model.bin         (v1.0 UNet)
    ├── sd-vae/             config.json, diffusion_pytorch_model.bin (sd-vae-ft-mse)
    ├── whisper/            config.json, pytorch_model.bin, preprocessor_config.json (whisper-tiny)
    ├── face-parse-bisent/  79999_iter.pth                           (BiSeNet, optional)
    └── face_alignment/     s3fd-619a316812.pth, 2DFAN4-11f355bf06.pth.tar (face detection)

Every weight file may also be given as ``.safetensors`` with the same stem
(``whisper/model.safetensors`` for the Whisper folder, as Hugging Face names it).
In ComfyUI the root is ``ComfyUI/models/musetalk``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .options import VERSIONS

__all__ = [
    "COMPONENTS",
    "MissingWeightsError",
    "RANDOM_MARKER",
    "ModelFiles",
    "WeightFile",
    "find_model_files",
    "first_existing",
    "locate",
    "path_identity",
    "replacement_advice",
    "unet_component",
]

UNET_VERSIONS = VERSIONS
RANDOM_MARKER = "RANDOM_WEIGHTS.txt"  # written by `musetalk weights random`


@dataclass(frozen=True)
class WeightFile:
    """One expected file of the layout and where it comes from.

    Files hosted on the Hugging Face Hub name their ``repo_id``/``repo_path``;
    others give a plain download ``url``.
    """

    path: str
    description: str
    repo_id: str | None = None
    repo_path: str | None = None
    url: str | None = None
    alternatives: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        if self.repo_id:
            return f"https://huggingface.co/{self.repo_id} (file {self.repo_path})"
        return str(self.url)

    def find(self, root: Path, fallback_dirs: Sequence[Path] = ()) -> Path | None:
        """The first existing candidate under ``root`` (then by file name in ``fallback_dirs``), or None."""
        candidates = [root / relative for relative in (self.path, *self.alternatives)]
        candidates += [Path(folder) / Path(self.path).name for folder in fallback_dirs]
        return next((candidate for candidate in candidates if candidate.is_file()), None)


def _unet_files(folder: str, weights: str, version_name: str) -> tuple[WeightFile, ...]:
    stem = Path(weights).stem
    return (
        WeightFile(f"{folder}/musetalk.json", f"MuseTalk {version_name} UNet config", "TMElyralab/MuseTalk",
                   f"{folder}/musetalk.json"),
        WeightFile(f"{folder}/{weights}", f"MuseTalk {version_name} UNet weights", "TMElyralab/MuseTalk",
                   f"{folder}/{weights}", alternatives=(f"{folder}/{stem}.safetensors",)),
    )


FACE_ALIGNMENT_URL = "https://www.adrianbulat.com/downloads/python-fan"


COMPONENTS: dict[str, tuple[WeightFile, ...]] = {
    "unet-v15": _unet_files("musetalkV15", "unet.pth", "v1.5"),
    "unet-v1": _unet_files("musetalk", "pytorch_model.bin", "v1.0"),
    "vae": (
        WeightFile("sd-vae/config.json", "SD VAE config (sd-vae-ft-mse)", "stabilityai/sd-vae-ft-mse", "config.json"),
        WeightFile("sd-vae/diffusion_pytorch_model.bin", "SD VAE weights (sd-vae-ft-mse)",
                   "stabilityai/sd-vae-ft-mse", "diffusion_pytorch_model.bin",
                   alternatives=("sd-vae/diffusion_pytorch_model.safetensors",)),
    ),
    "whisper": (
        WeightFile("whisper/config.json", "Whisper-tiny config", "openai/whisper-tiny", "config.json"),
        WeightFile("whisper/pytorch_model.bin", "Whisper-tiny weights", "openai/whisper-tiny", "pytorch_model.bin",
                   alternatives=("whisper/model.safetensors",)),
        WeightFile("whisper/preprocessor_config.json", "Whisper-tiny feature extractor config",
                   "openai/whisper-tiny", "preprocessor_config.json"),
    ),
    "face-parsing": (
        WeightFile("face-parse-bisent/79999_iter.pth", "BiSeNet face-parsing weights",
                   "ManyOtherFunctions/face-parse-bisent", "79999_iter.pth",
                   alternatives=("face-parse-bisent/79999_iter.safetensors",)),
    ),
    "face-alignment": (
        WeightFile("face_alignment/s3fd-619a316812.pth", "S3FD face detector (face-alignment)",
                   url=f"{FACE_ALIGNMENT_URL}/s3fd-619a316812.pth"),
        WeightFile("face_alignment/2DFAN4-11f355bf06.pth.tar", "2D-FAN 68-point landmarks (face-alignment)",
                   url=f"{FACE_ALIGNMENT_URL}/2DFAN4-11f355bf06.pth.tar"),
    ),
}


def path_identity(path: str | Path) -> str:
    """Cheap identity of a weight file or folder (names, sizes, modification times), for cache keys."""
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return ";".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def first_existing(folder: str | os.PathLike, names: Sequence[str], description: str) -> Path:
    """The first of ``names`` that is a file in ``folder`` (so ``names`` lists the preferred format first).

    Raises:
        FileNotFoundError: naming every candidate.
    """
    folder = Path(folder)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"No {description} in {folder}: expected {' or '.join(names)}.")


def _expected_file(path: Path) -> tuple[str, WeightFile, Path | None] | None:
    """The component and expected file that ``path`` stands for, and the models root it sits under.

    A path ending in a file's place in the layout (``.../whisper/pytorch_model.bin``) gives its root; a
    distinctive file name alone (``s3fd-619a316812.pth`` in torch hub's folder) gives None as the root.
    """
    by_name: dict[str, list[tuple[str, WeightFile]]] = {}
    for component, items in COMPONENTS.items():
        for item in items:
            for relative in map(Path, (item.path, *item.alternatives)):
                if path.parts[-len(relative.parts):] == relative.parts:
                    return component, item, path.parents[len(relative.parts) - 1]
                by_name.setdefault(relative.name, []).append((component, item))
    candidates = by_name.get(path.name, [])
    return (*candidates[0], None) if len(candidates) == 1 else None


def replacement_advice(path: str | os.PathLike) -> str:
    """How to get a good copy of the weight file at ``path``, in one or two sentences.

    For a file of the official layout: which file it should be, where it comes from, and the
    ``musetalk weights`` commands that fetch it again and check it. For RANDOM test weights: the
    command that writes them again. For any other file: replace it with an intact copy.
    """
    path = Path(os.path.abspath(path))
    expected = _expected_file(path)
    if expected is None:
        return "Replace it with an intact copy of the file."
    component, item, root = expected
    if root is None:
        return f"It should be the {item.description} from {item.source}: delete it and download it again."
    if (root / RANDOM_MARKER).is_file():
        return (f"It is one of the RANDOM test weights in {root}: write them again with "
                f"`musetalk weights random {root}`, or replace them all with the official files with "
                f"`musetalk weights download --models-dir {root}`.")
    return (f"It should be the {item.description} from {item.source}. Delete it and run "
            f"`musetalk weights download --models-dir {root} --only {component}` to download it again; "
            f"`musetalk weights check --models-dir {root}` lists every file with its size and SHA-256.")


def unet_component(version: str) -> str:
    """Component key of a UNet version (``"v15"`` or ``"v1"``)."""
    if version not in UNET_VERSIONS:
        raise ValueError(f"Unknown MuseTalk version {version!r}; choose one of {', '.join(UNET_VERSIONS)}.")
    return f"unet-{version}"


class MissingWeightsError(FileNotFoundError):
    """Raised with one message listing every missing file and where it comes from."""

    def __init__(self, root: Path, missing: list[WeightFile], fallback_dirs: Sequence[Path] = (), hint: str = ""):
        self.root = root
        self.missing = missing
        lines = [f"MuseTalk weights are missing under {root}:"]
        for item in missing:
            accepted = [str(root / p) for p in (item.path, *item.alternatives)]
            accepted += [str(Path(folder) / Path(item.path).name) for folder in fallback_dirs]
            lines.append(f"  - {' or '.join(accepted)}\n      {item.description}; get it from {item.source}")
        lines.append(
            f"Download them with `musetalk weights download --models-dir {root}` (needs internet), "
            f"or place the files there by hand; `musetalk weights random {root}` writes RANDOM test weights "
            "(no lip sync) to try the pipeline offline."
        )
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class ModelFiles:
    """Resolved paths of everything one inference run loads."""

    unet_config: Path
    unet_weights: Path
    vae_dir: Path
    whisper_dir: Path
    face_parsing: Path | None
    random_weights: bool = False


def locate(models_dir: str | Path, components: Sequence[str], fallback_dirs: Sequence[Path] = (),
           hint: str = "") -> list[Path]:
    """Paths of every file of ``components``, in order; ``hint`` is appended to the missing-files error.

    Raises:
        MissingWeightsError: listing every missing file at once.
    """
    root = Path(models_dir).expanduser()
    found: list[Path] = []
    missing: list[WeightFile] = []
    for component in components:
        for item in COMPONENTS[component]:
            location = item.find(root, fallback_dirs)
            if location is None:
                missing.append(item)
            else:
                found.append(location)
    if missing:
        raise MissingWeightsError(root, missing, fallback_dirs, hint)
    return found


def find_model_files(models_dir: str | Path, version: str = "v15", face_parsing: bool = False) -> ModelFiles:
    """Locate the files for ``version`` under ``models_dir``.

    ``face_parsing=True`` makes the BiSeNet weights required; otherwise they
    are returned when present and None when absent (blending then falls back
    to the landmark mask).

    Raises:
        MissingWeightsError: listing every missing file at once.
    """
    root = Path(models_dir).expanduser()
    wanted = [unet_component(version), "vae", "whisper"] + (["face-parsing"] if face_parsing else [])
    unet_config, unet_weights = locate(root, wanted)[:2]
    parser = COMPONENTS["face-parsing"][0].find(root)
    return ModelFiles(
        unet_config=unet_config,
        unet_weights=unet_weights,
        vae_dir=root / "sd-vae",
        whisper_dir=root / "whisper",
        face_parsing=parser,
        random_weights=(root / RANDOM_MARKER).is_file(),
    )
