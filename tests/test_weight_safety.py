"""Every weight slot goes through the safe loader: code-running pickles, truncated and garbage files give our error.

Each test builds a models folder of symbolic links to the tiny RANDOM weights (without the RANDOM marker, so the
advice is the one for official files), replaces one slot's file with a bad one and loads that slot the way the
pipeline does. The error must be a :class:`CheckpointError` naming the exact file, say how to get a good copy, never
mention ``weights_only``, and no code in the file may have run.
"""

import io
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from musetalk_lib.audio_features import load_whisper
from musetalk_lib.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_state_dict,
    save_state_dict,
)
from musetalk_cli.main import main
from musetalk_lib.face_detection import create_detector
from musetalk_lib.face_parsing import load_face_parser
from musetalk_lib.unet import load_unet
from musetalk_lib.vae import load_vae
from musetalk_lib.weights import COMPONENTS, RANDOM_MARKER, find_model_files


def _load_unet(root: Path, version: str) -> None:
    files = find_model_files(root, version)
    load_unet(files.unet_config, files.unet_weights)


LOADERS: dict[str, Callable[[Path], object]] = {
    "unet-v15": lambda root: _load_unet(root, "v15"),
    "unet-v1": lambda root: _load_unet(root, "v1"),
    "vae": lambda root: load_vae(root / "sd-vae"),
    "whisper": lambda root: load_whisper(root / "whisper"),
    "face-parsing": lambda root: load_face_parser(find_model_files(root, face_parsing=True).face_parsing),
    "face-alignment": lambda root: create_detector("face-alignment", root),
}


@dataclass(frozen=True)
class Slot:
    component: str
    official: str  # the official file's place in the layout
    path: str  # the file under test: the official one or its .safetensors alternative

    @property
    def safetensors(self) -> bool:
        return self.path.endswith(".safetensors")

    def __str__(self) -> str:
        return self.path


SLOTS = [
    Slot(component, item.path, path)
    for component, items in COMPONENTS.items()
    for item in items
    if not item.path.endswith(".json")
    for path in (item.path, *item.alternatives)
]
TORCH_SLOTS = [slot for slot in SLOTS if not slot.safetensors]
SAFETENSORS_SLOTS = [slot for slot in SLOTS if slot.safetensors]


def test_every_weight_file_of_the_layout_is_covered():
    assert {slot.path for slot in SLOTS} == {
        "musetalkV15/unet.pth", "musetalkV15/unet.safetensors",
        "musetalk/pytorch_model.bin", "musetalk/pytorch_model.safetensors",
        "sd-vae/diffusion_pytorch_model.bin", "sd-vae/diffusion_pytorch_model.safetensors",
        "whisper/pytorch_model.bin", "whisper/model.safetensors",
        "face-parse-bisent/79999_iter.pth", "face-parse-bisent/79999_iter.safetensors",
        "face_alignment/s3fd-619a316812.pth", "face_alignment/2DFAN4-11f355bf06.pth.tar",
    }


@pytest.fixture(scope="module")
def good_files(random_models, random_face_alignment, tmp_path_factory) -> dict[str, Path]:
    """A good file for every slot (safetensors conversions written once)."""
    folder = tmp_path_factory.mktemp("good")
    files = {}
    for slot in SLOTS:
        root = random_face_alignment if slot.component == "face-alignment" else random_models
        files[slot.path] = root / slot.official
        if slot.safetensors:
            files[slot.path] = folder / slot.path.replace("/", "_")
            save_state_dict(load_state_dict(root / slot.official), files[slot.path])
    return files


@pytest.fixture
def layout(tmp_path, random_models, random_face_alignment) -> Path:
    """A models root of links to the RANDOM weights, without the RANDOM marker."""
    root = tmp_path / "models"
    for source in (random_models, random_face_alignment):
        for file in source.rglob("*"):
            if file.is_file() and file.name != RANDOM_MARKER:
                (root / file.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
                (root / file.relative_to(source)).symlink_to(file)
    return root


def place(root: Path, slot: Slot, content: bytes) -> Path:
    """Put ``content`` in the slot's file; the slot's other formats are removed so this one is loaded."""
    item = next(item for item in COMPONENTS[slot.component] if item.path == slot.official)
    for relative in (item.path, *item.alternatives):
        (root / relative).unlink(missing_ok=True)
    path = root / slot.path
    path.write_bytes(content)
    return path


def load_fails(root: Path, slot: Slot, path: Path, kind: type[CheckpointError] = CheckpointError) -> str:
    with pytest.raises(kind) as raised:
        LOADERS[slot.component](root)
    message = str(raised.value)
    assert raised.value.path == path and str(path) in message
    assert "weights_only" not in message and "Traceback" not in message
    assert f"musetalk weights download --models-dir {root} --only {slot.component}" in message
    return message


class RunsCommand:
    """Unpickling this runs a shell command that creates ``sentinel``."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


class OpensFile:
    """Unpickling this creates ``sentinel`` with ``open``."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (str(self.sentinel), "w"))


def save(state_dict: dict[str, torch.Tensor]) -> bytes:
    """``state_dict`` as safetensors bytes."""
    from safetensors.torch import save

    return save(state_dict)


def _torch_zip(payload) -> bytes:
    buffer = io.BytesIO()
    torch.save({"conv.weight": torch.zeros(2), "payload": payload}, buffer)
    return buffer.getvalue()


def _torch_legacy(payload) -> bytes:
    buffer = io.BytesIO()
    torch.save({"conv.weight": torch.zeros(2), "payload": payload}, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


PAYLOADS = {
    "zip-os.system": lambda sentinel: _torch_zip(RunsCommand(sentinel)),
    "legacy-open": lambda sentinel: _torch_legacy(OpensFile(sentinel)),
    "pickle2-os.system": lambda sentinel: pickle.dumps(RunsCommand(sentinel), protocol=2),
    "pickle5-open": lambda sentinel: pickle.dumps({"weight": OpensFile(sentinel)}, protocol=5),
}


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("slot", SLOTS, ids=str)
def test_code_running_pickle_is_refused(layout, tmp_path, slot, payload):
    sentinel = tmp_path / "code-ran"
    path = place(layout, slot, PAYLOADS[payload](sentinel))
    message = load_fails(layout, slot, path, CorruptCheckpointError if slot.safetensors else UnsafeCheckpointError)
    assert not sentinel.exists()
    if not slot.safetensors:
        assert message.startswith(f"Refusing to load {path}") and "Nothing in it was run" in message


@pytest.mark.parametrize("slot", SLOTS, ids=str)
def test_truncated_file(layout, good_files, slot):
    good = good_files[slot.path].read_bytes()
    for size in (0, 1, 100, len(good) // 3, len(good) // 2, len(good) - 1):
        path = place(layout, slot, good[:size])
        message = load_fails(layout, slot, path, CorruptCheckpointError)
        assert ("empty" if size == 0 else "truncated or damaged") in message


@pytest.mark.parametrize("slot", TORCH_SLOTS, ids=str)
def test_truncated_legacy_format_file(layout, good_files, slot, tmp_path):
    legacy = tmp_path / "legacy.pth"
    torch.save(load_state_dict(good_files[slot.path]), legacy, _use_new_zipfile_serialization=False)
    good = legacy.read_bytes()
    for size in (10, len(good) // 2, len(good) - 1):
        path = place(layout, slot, good[:size])
        assert "truncated or damaged" in load_fails(layout, slot, path, CorruptCheckpointError)


@pytest.mark.parametrize("slot", SLOTS, ids=str)
def test_random_bytes(layout, slot):
    generator = np.random.default_rng(sum(map(ord, slot.path)))
    for size in (8, 10_000):
        path = place(layout, slot, generator.integers(0, 256, size, dtype=np.uint8).tobytes())
        load_fails(layout, slot, path)


@pytest.mark.parametrize("slot", SLOTS, ids=str)
def test_not_weights_at_all(layout, slot):
    lfs_pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 3400017735\n"
    path = place(layout, slot, lfs_pointer)
    assert "Git LFS pointer" in load_fails(layout, slot, path, CorruptCheckpointError)
    path = place(layout, slot, b"<!DOCTYPE html><html><body>404 Not Found</body></html>")
    assert "web page" in load_fails(layout, slot, path, CorruptCheckpointError)


@pytest.mark.parametrize("slot", SLOTS, ids=str)
def test_weights_of_another_model_are_reported(layout, good_files, slot):
    other = good_files["sd-vae/diffusion_pytorch_model.bin" if slot.component == "face-parsing"
                       else "face-parse-bisent/79999_iter.safetensors"]
    state_dict = load_state_dict(other)
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    path = place(layout, slot, save(state_dict) if slot.safetensors else buffer.getvalue())
    message = load_fails(layout, slot, path, CheckpointMismatchError)
    assert "weights missing" in message and "unexpected weights" in message


def test_random_test_weights_are_rewritten_not_downloaded(random_models, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(random_models / "whisper", root / "whisper")
    (root / RANDOM_MARKER).write_text("random")
    (root / "whisper" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match=f"musetalk weights random {root}"):
        load_whisper(root / "whisper")


def test_files_outside_the_layout_get_plain_advice(tmp_path):
    path = tmp_path / "checkpoint-100.pth"
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(CorruptCheckpointError) as raised:
        load_state_dict(path)
    assert str(raised.value).endswith("Replace it with an intact copy of the file.")


def test_dub_with_a_code_running_whisper_file_prints_one_error(layout, media, tmp_path, capsys):
    sentinel = tmp_path / "code-ran"
    path = place(layout, Slot("whisper", "whisper/pytorch_model.bin", "whisper/pytorch_model.bin"),
                 PAYLOADS["zip-os.system"](sentinel))
    code = main(["-q", "dub", str(media / "talking_closeup.mp4"), str(media / "speech_short.wav"),
                 "-o", str(tmp_path / "out.mp4"), "--models-dir", str(layout), "--mask", "landmarks",
                 "--landmarks", str(media / "landmarks" / "talking_closeup.json"), "--device", "cpu",
                 "--cache-dir", str(tmp_path / "avatars")])
    err = capsys.readouterr().err
    assert code == 1 and not sentinel.exists() and not (tmp_path / "out.mp4").exists()
    assert f"error: Refusing to load {path}" in err
    assert "Traceback" not in err and "weights_only" not in err


def test_loader_node_surfaces_the_same_message(layout, monkeypatch):
    from pack import load_pack, node_classes, use_models_dir

    path = place(layout, Slot("vae", "sd-vae/diffusion_pytorch_model.bin", "sd-vae/diffusion_pytorch_model.bin"),
                 b"\x80\x02truncated")
    with pytest.raises(CheckpointError) as direct:
        load_vae(layout / "sd-vae")
    use_models_dir(monkeypatch, layout)
    with pytest.raises(RuntimeError) as from_node:
        node_classes(load_pack())["MuseTalkVAELoader"].execute("fp32")
    assert type(from_node.value).__module__ == "builtins"  # ComfyUI shows the type: no module path
    assert str(from_node.value) == f"MuseTalk VAE Loader: {direct.value}" and str(path) in str(direct.value)
