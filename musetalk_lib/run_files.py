"""Checks on a run's files, made before any work so that a mistake costs nothing and destroys nothing.

Inputs must be readable files. The output must be a file name (not a
folder) with a supported video extension, in a folder that exists or can be
created and that this process can write, and it must not be, or lie inside,
anything the run reads: an input file, or the avatar cache in use. An
existing output that is none of these is replaced, atomically, when the run
succeeds (see :class:`~musetalk_lib.video_io.VideoWriter`).

Other files (weights, checkpoints) are written with :func:`write_atomically`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from .video_io import OUTPUT_CONTAINERS

__all__ = [
    "RunFileError",
    "check_input_files",
    "check_output_path",
    "write_atomically",
]

class RunFileError(ValueError):
    """An input or output path that the run must not use; nothing has been read or written yet."""


def check_input_files(inputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Raise :class:`RunFileError` unless every given input (``name -> path``; ``None`` = not used) is a readable file."""
    for name, path in inputs.items():
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise RunFileError(f"The {name} {path} is a folder; give a file.")
        if not path.is_file():
            raise RunFileError(f"The {name} {path} does not exist.")
        if not os.access(path, os.R_OK):
            raise RunFileError(f"The {name} {path} cannot be read (permissions).")


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # hard links and bind mounts too
    except OSError:
        return a == b


def _nearest_existing_folder(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_output_path(output: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None] | None = None,
                      caches: Mapping[str, str | os.PathLike | None] | None = None) -> Path:
    """Return ``output`` resolved, or raise :class:`RunFileError` saying why the run must not write there.

    ``inputs`` are files the run reads, ``caches`` folders it reads and
    writes (``name -> path``; ``None`` entries are skipped).
    """
    given = Path(output)
    resolved = given.resolve()
    if given.is_dir():
        raise RunFileError(f"The output {given} is a folder; give a file name such as {given / 'dubbed.mp4'}.")
    for name, path in (inputs or {}).items():
        if path is not None and given.exists() and _same_file(given, Path(path)):
            raise RunFileError(f"The output {given} is also the {name}; choose another output name "
                               "(nothing was written).")
    for name, path in (caches or {}).items():
        if path is not None and _is_within(resolved, Path(path).resolve()):
            raise RunFileError(f"The output {given} is inside the {name} {path}; write it somewhere else.")
    if given.suffix.lower() not in OUTPUT_CONTAINERS:
        supported = ", ".join(OUTPUT_CONTAINERS)
        raise RunFileError(f"The output {given} has an unsupported extension; use one of {supported} "
                           f"(H.264 + AAC), e.g. {given.with_suffix('.mp4')}.")
    folder = _nearest_existing_folder(resolved.parent)
    if not folder.is_dir():
        raise RunFileError(f"The output folder {resolved.parent} cannot be created: {folder} is not a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RunFileError(f"Cannot write to {folder} (permissions); choose another output folder.")
    return resolved


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """``write(temporary path)``, then rename onto ``path``: an error or interrupt leaves nothing under ``path``
    (and no temporary file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
