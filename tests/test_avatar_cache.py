"""Avatar caches you can trust: checksums, strict manifests, one warning and a rebuild, concurrent builders."""

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from musetalk_lib import avatar as avatar_module
from musetalk_lib.avatar import FORMAT_VERSION, Avatar, AvatarCacheError, AvatarSettings, prepare_avatar
from musetalk_lib.cache_folder import ABANDONED_AFTER, check_fields
from musetalk_cli.main import main
from musetalk_lib.faces import load_landmarks_json
from musetalk_lib.frame_source import ArraySource
from musetalk_lib.video_io import VideoReader

FAST = AvatarSettings(mask_mode="landmarks")  # no face parsing: quick on a CPU
FRAMES = 5
ALL = list(range(FRAMES))
SHARD_SIZE = 2  # so the clip has three shards (2, 2 and 1 frames)


@pytest.fixture(autouse=True)
def small_shards(monkeypatch):
    monkeypatch.setattr(avatar_module, "SHARD_SIZE", SHARD_SIZE)


@pytest.fixture(scope="module")
def clip(media):
    with VideoReader(media / "talking_closeup.mp4") as reader:
        frames = [frame for frame, _ in zip(reader, range(FRAMES))]
    return frames, load_landmarks_json(media / "landmarks" / "talking_closeup.json")[:FRAMES]


@pytest.fixture(scope="module")
def pristine(clip, tiny_models, tmp_path_factory):
    """A clean build of the clip, to copy instead of building it again, and its latents and masks."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(avatar_module, "SHARD_SIZE", SHARD_SIZE)
        avatar = prepare(clip, tiny_models.vae, tmp_path_factory.mktemp("pristine"))
        return avatar.folder, contents(avatar)


@pytest.fixture
def cached(pristine, tmp_path):
    """A copy of the clean build in ``tmp_path``, as a previous run would have left it."""
    shutil.copytree(pristine[0], tmp_path / pristine[0].name)
    return tmp_path / pristine[0].name


def prepare(clip, vae, root, **kwargs):
    frames, faces = clip
    return prepare_avatar(ArraySource(frames, 15), vae, root, FAST, faces=faces, **kwargs)


def contents(avatar):
    return avatar.latents(ALL), avatar.packed_masks(ALL)


def same_contents(avatar, expected):
    latents, masks = contents(avatar)
    return torch.equal(latents, expected[0]) and np.array_equal(masks, expected[1])


def overwrite_with_ff(path, where=0.25, length=64):
    data = bytearray(path.read_bytes())
    start = int(len(data) * where)
    data[start:start + length] = b"\xff" * length
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def edit_manifest(change):
    def damage(folder):
        manifest = json.loads((folder / "manifest.json").read_text())
        change(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))

    return damage


DAMAGE = {  # name: (damage(folder), what the warning says)
    "0xFF over a shard": (lambda folder: overwrite_with_ff(folder / "shard-00001.safetensors"),
                          "shard-00001.safetensors does not match its checksum"),
    "0xFF over the track": (lambda folder: overwrite_with_ff(folder / "track.safetensors", where=0.5),
                            "track.safetensors does not match its checksum"),
    "truncated shard": (lambda folder: truncate(folder / "shard-00002.safetensors"),
                        "shard-00002.safetensors does not match its checksum"),
    "missing shard": (lambda folder: (folder / "shard-00000.safetensors").unlink(), "No such file"),
    "extra key in settings": (edit_manifest(lambda m: m["settings"].update(new_option=1)),
                              "manifest.json settings has unknown key(s) new_option"),
    "missing key in settings": (edit_manifest(lambda m: m["settings"].pop("expand")),
                                "manifest.json settings lacks expand"),
    "unknown key": (edit_manifest(lambda m: m.update(extra=True)), "manifest.json has unknown key(s) extra"),
    "missing key": (edit_manifest(lambda m: m.pop("frame_rate")), "manifest.json lacks frame_rate"),
    "wrong type": (edit_manifest(lambda m: m.update(num_frames="10")), "num_frames is '10', expected int"),
    "wrong type in settings": (edit_manifest(lambda m: m["settings"].update(bbox_shift=True)),
                               "bbox_shift is True, expected int"),
    "previous format version": (edit_manifest(lambda m: m.update(format_version=1)),
                                f"format version 1, expected {FORMAT_VERSION}"),
    "frame count": (edit_manifest(lambda m: m.update(num_frames=11)), "the manifest's 11 frames"),
    "checksum missing": (edit_manifest(lambda m: m["checksums"].pop("shard-00002.safetensors")),
                         "manifest.json has checksums of"),
    "manifest not JSON": (lambda folder: (folder / "manifest.json").write_text("{"), "manifest.json is not valid JSON"),
}


def avatar_warnings(caplog):
    return [record.getMessage() for record in caplog.records
            if record.name == "musetalk_lib.avatar" and record.levelno >= logging.WARNING]


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_cache_is_rebuilt_after_one_warning(case, clip, tiny_models, pristine, cached, tmp_path, caplog):
    damage, reason = DAMAGE[case]
    assert same_contents(prepare(clip, tiny_models.vae, tmp_path), pristine[1])  # the copy is used as it is
    damage(cached)
    with pytest.raises(AvatarCacheError, match=re.escape(reason)):  # never opened as if intact
        Avatar(cached)
    with caplog.at_level(logging.WARNING):
        rebuilt = prepare(clip, tiny_models.vae, tmp_path)
    [warning] = avatar_warnings(caplog)
    assert warning.startswith(f"Rebuilding avatar cache {cached}: ") and reason in warning
    assert rebuilt.folder == cached and same_contents(rebuilt, pristine[1])
    assert [path.name for path in tmp_path.iterdir()] == [cached.name]  # no temporary folders left


def test_a_manifest_of_another_key_is_rebuilt(clip, tiny_models, cached, tmp_path, caplog):
    edit_manifest(lambda m: m.update(key="0" * 24))(cached)
    with caplog.at_level(logging.WARNING):
        rebuilt = prepare(clip, tiny_models.vae, tmp_path)
    [warning] = avatar_warnings(caplog)
    assert "the manifest is for key 000000000000000000000000" in warning and rebuilt.key == cached.name


def test_a_shard_damaged_after_opening_is_never_used(clip, tiny_models, pristine, cached, tmp_path, capsys,
                                                    caplog):
    avatar = prepare(clip, tiny_models.vae, tmp_path)
    first_shard = avatar.latents([0, 1])  # reads and keeps shard 0
    overwrite_with_ff(avatar.folder / "shard-00001.safetensors")
    assert torch.equal(avatar.latents([0, 1]), first_shard)  # shard 0 is still the verified copy in memory
    with pytest.raises(AvatarCacheError, match="shard-00001.safetensors does not match its checksum.*run again"):
        avatar.latents([3])
    assert main(["avatar", "info", str(avatar.folder)]) == 1  # an error message, not a traceback
    assert "shard-00001.safetensors does not match its checksum" in capsys.readouterr().err
    with caplog.at_level(logging.WARNING):
        rebuilt = prepare(clip, tiny_models.vae, tmp_path)  # "run again"
    assert len(avatar_warnings(caplog)) == 1 and same_contents(rebuilt, pristine[1])


def test_the_cache_appears_under_its_name_only_when_complete(clip, tiny_models, tmp_path):
    visible = []

    def progress(stage, done, total):
        visible.append([path.name for path in tmp_path.iterdir() if not path.name.startswith(".")])

    avatar = prepare(clip, tiny_models.vae, tmp_path, progress=progress)
    assert visible and all(names == [] for names in visible)
    assert [path.name for path in tmp_path.iterdir()] == [avatar.folder.name]


@pytest.mark.parametrize("winner_intact", [True, False], ids=["winner intact", "winner damaged"])
def test_a_builder_that_loses_the_race_uses_the_winners_cache(winner_intact, clip, tiny_models, tmp_path,
                                                              monkeypatch, caplog):
    """Another builder publishes the same key while this one builds: this one discards its own copy."""
    build, winner = avatar_module._build, []

    def build_while_another_builder_finishes(*args, **kwargs):
        build(*args, **kwargs)
        monkeypatch.setattr(avatar_module, "_build", build)
        winner.append(prepare(clip, tiny_models.vae, tmp_path))  # leaves this builder's folder alone
        if not winner_intact:
            overwrite_with_ff(winner[0].folder / "shard-00000.safetensors")

    monkeypatch.setattr(avatar_module, "_build", build_while_another_builder_finishes)
    with caplog.at_level(logging.WARNING):
        loser = prepare(clip, tiny_models.vae, tmp_path)
    assert loser.folder == winner[0].folder and [path.name for path in tmp_path.iterdir()] == [loser.folder.name]
    assert same_contents(loser, contents(Avatar(loser.folder)))
    warnings = avatar_warnings(caplog)
    if winner_intact:
        assert warnings == []
    else:
        [warning] = warnings
        assert warning.startswith("Replacing avatar cache") and "does not match its checksum" in warning


def test_two_processes_preparing_the_same_avatar_both_succeed(random_models, media, tmp_path):
    command = [sys.executable, "-m", "musetalk_cli", "-q", "avatar", "prepare", str(media / "talking_closeup.mp4"),
               "--models-dir", str(random_models), "--landmarks", str(media / "landmarks" / "talking_closeup.json"),
               "--mask", "landmarks", "--cache-dir", str(tmp_path), "--device", "cpu"]
    processes = [subprocess.Popen(command, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    folders = {stdout.split("Avatar ready: ")[1].split(" (")[0] for stdout, _ in outputs}
    assert len(folders) == 1 and [path.name for path in tmp_path.iterdir()] == [Path(folders.pop()).name]


def test_temporary_folders_of_dead_builders_are_removed(clip, tiny_models, tmp_path):
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    folders = {
        "exited here": f".k.partial-{host}-{exited.stdout.strip()}-00000000",
        "running here": f".k.partial-{host}-{os.getpid()}-00000000",
        "stale elsewhere": ".k.partial-another-host-12-00000000",
        "recent elsewhere": ".k.partial-another-host-34-00000000",
    }
    for name in folders.values():
        (tmp_path / name).mkdir()
    stale = time.time() - ABANDONED_AFTER - 60
    os.utime(tmp_path / folders["stale elsewhere"], (stale, stale))
    prepare(clip, tiny_models.vae, tmp_path)
    assert sorted(path.name for path in tmp_path.glob(".*")) == sorted([folders["running here"],
                                                                        folders["recent elsewhere"]])


def test_json_fields_are_checked_strictly():
    fields = {"count": int, "scale": float, "point": tuple[float, float] | None, "names": dict[str, str]}
    check_fields({"count": 1, "scale": 2, "point": [0.5, 1], "names": {"a": "b"}}, fields, "x")
    good = {"count": 1, "scale": 2.5, "point": None, "names": {}}
    check_fields(good, fields, "x")
    for name, value in [("count", True), ("count", 1.0), ("scale", "2"), ("point", [0.5]), ("point", "0.5"),
                        ("names", {"a": 1}), ("names", [])]:
        with pytest.raises(ValueError, match=f"x: {name} is"):
            check_fields({**good, name: value}, fields, "x")
    with pytest.raises(ValueError, match="x is not a JSON object"):
        check_fields([good], fields, "x")
