"""What a training run leaves on disk: checkpoints, training state, loss logs, validation images.

::

    <output_dir>/<exp_name>/
    ├── config.yaml            the resolved configuration
    ├── unet-<step>.pth        plain state dict (``torch.save(model.state_dict())``), the official format
    ├── state-<step>.pt        optimizer / scheduler / discriminator states, step and RNG states
    ├── logs/losses.csv        one row per optimizer step (logs/validation.csv: validation metrics)
    ├── logs/tensorboard/      the same scalars, when TensorBoard is installed
    └── validation/step-<step>.png

Training states hold only tensors and plain containers, so they are read
back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from musetalk_lib.run_files import write_atomically

__all__ = [
    "MetricLogger",
    "capture_rng_state",
    "find_checkpoint",
    "load_training_state",
    "prune_checkpoints",
    "read_losses",
    "restore_rng_state",
    "save_atomic",
    "save_config",
    "save_image_grid",
]

STATE_PATTERN = re.compile(r"state-(\d+)\.pt$")


def save_atomic(obj: object, path: Path) -> None:
    """``torch.save`` under a temporary name, then rename (a crash never leaves a truncated file)."""
    write_atomically(path, lambda tmp: torch.save(obj, tmp))


def save_config(config: Mapping, path: Path) -> None:
    """Write the resolved configuration as YAML."""
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")


def capture_rng_state() -> dict[str, torch.Tensor]:
    """Torch CPU and CUDA generator states as tensors (safe to store and reload)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.stack([s for s in torch.cuda.get_rng_state_all()])
    return state


def restore_rng_state(state: Mapping[str, torch.Tensor]) -> None:
    """Undo :func:`capture_rng_state` (CUDA states only where the device count matches)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def find_checkpoint(run_dir: Path, resume_from: str) -> Path:
    """The training-state file to resume from: a file, a run folder (its latest), or ``latest`` in ``run_dir``."""
    candidate = run_dir if resume_from == "latest" else Path(resume_from)
    if candidate.is_file():
        return candidate
    states = sorted(candidate.glob("state-*.pt"), key=lambda p: int(STATE_PATTERN.search(p.name).group(1)))
    if not states:
        raise FileNotFoundError(f"No state-*.pt checkpoint to resume from in {candidate}")
    return states[-1]


def load_training_state(path: Path) -> dict:
    """Read a ``state-<step>.pt`` file (tensors and plain containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def prune_checkpoints(run_dir: Path, keep: int | None, prefixes: tuple[str, ...]) -> None:
    """Delete all but the newest ``keep`` checkpoints (every ``<prefix>-<step>`` file of a step goes together)."""
    if keep is None:
        return
    steps = sorted({int(STATE_PATTERN.search(p.name).group(1)) for p in run_dir.glob("state-*.pt")})
    for step in steps[: max(0, len(steps) - keep)]:
        for prefix in ("state", *prefixes):
            for path in run_dir.glob(f"{prefix}-{step}.*"):
                path.unlink()


class MetricLogger:
    """Scalars per step to ``<name>.csv`` files (always) and TensorBoard (when importable); main process only.

    Each file's columns are fixed by its first row.
    """

    def __init__(self, log_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.log_dir = log_dir
        self.columns: dict[str, list[str]] = {}
        self.writer = None
        if not enabled:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        for path in log_dir.glob("*.csv"):
            with open(path, newline="", encoding="utf-8") as handle:
                header = next(csv.reader(handle), None)
            if header:
                self.columns[path.stem] = header
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir / "tensorboard"))
        except ImportError:
            self.writer = None

    def truncate_after(self, step: int) -> None:
        """Drop rows of steps after ``step`` (left by a run that died after its last checkpoint)."""
        if not self.enabled:
            return
        for name, columns in self.columns.items():
            path = self.log_dir / f"{name}.csv"
            with open(path, newline="", encoding="utf-8") as handle:
                rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= step]
            with open(path, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)

    def log(self, step: int, values: Mapping[str, float], name: str = "losses") -> None:
        """Append one row to ``<name>.csv`` (and ``<name>/<key>`` scalars to TensorBoard)."""
        if not self.enabled or not values:
            return
        path = self.log_dir / f"{name}.csv"
        row = {"step": step, **{key: repr(float(value)) for key, value in values.items()}}
        if name not in self.columns:
            self.columns[name] = list(row)
            with open(path, "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerow(self.columns[name])
        with open(path, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=self.columns[name], extrasaction="ignore").writerow(row)
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"{name}/{key}", float(value), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_losses(path: Path) -> list[dict[str, float]]:
    """The rows of a ``losses.csv`` as floats (``step`` as int)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [{key: int(value) if key == "step" else float(value) for key, value in row.items()}
                for row in csv.DictReader(handle)]


def save_image_grid(rows: list[list[torch.Tensor]], path: Path) -> None:
    """Save rows of ``[3, H, W]`` images in [-1, 1] side by side as one PNG."""
    lines = [torch.cat([image.detach().float().cpu() for image in row], dim=2) for row in rows]
    grid = torch.cat(lines, dim=1)
    pixels = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels)).save(path)
