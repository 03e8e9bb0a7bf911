"""``musetalk weights download``: fetch the official weights into the official layout.

This is the only place that touches the network, and only when a user runs
the command. Hugging Face files go through ``huggingface_hub``; the
face-alignment files come from their authors' site. Each file is written under
a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .weights import COMPONENTS, RANDOM_MARKER, WeightFile

__all__ = ["download_weights"]


def _fetch(item: WeightFile, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as scratch:
        if item.repo_id:
            from huggingface_hub import hf_hub_download

            fetched = Path(hf_hub_download(item.repo_id, item.repo_path, local_dir=scratch))
        else:
            fetched = Path(scratch) / target.name
            with urllib.request.urlopen(item.url, timeout=60) as response, open(fetched, "wb") as handle:
                shutil.copyfileobj(response, handle, length=1 << 20)
        os.replace(fetched, target)


def download_weights(models_dir: str | os.PathLike, components: Sequence[str] | None = None,
                     dry_run: bool = False) -> list[Path]:
    """Download the missing files of ``components`` (all by default); returns the files written.

    Files of a folder marked as RANDOM weights are replaced; the marker is
    removed only when every component was downloaded.
    """
    root = Path(models_dir).expanduser()
    names = list(components or COMPONENTS)
    unknown = [name for name in names if name not in COMPONENTS]
    if unknown:
        raise ValueError(f"Unknown component(s) {unknown}; choose from {', '.join(COMPONENTS)}.")
    replacing_random = (root / RANDOM_MARKER).is_file()
    written = []
    for name in names:
        for item in COMPONENTS[name]:
            target = root / item.path
            if item.find(root) is not None and not replacing_random:
                print(f"[present]  {item.path}")
                continue
            print(f"[{'would get' if dry_run else 'download'}] {item.path}  <- {item.source}", flush=True)
            if not dry_run:
                _fetch(item, target)
                written.append(target)
    if replacing_random and not dry_run and set(names) == set(COMPONENTS):
        (root / RANDOM_MARKER).unlink()
    return written
