import os
import pickle

import pytest
import torch

from musetalk_lib.checkpoint import CheckpointError, UnsafeCheckpointError, load_state_dict, save_state_dict


class RunsCode:
    """Unpickling this would create a file: the loader must never do it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def state():
    return {"weight": torch.randn(3, 4, dtype=torch.float16), "steps": torch.tensor(7)}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_pickles_load_with_dtype_conversion(tmp_path, state, zip_format):
    path = tmp_path / "weights.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    loaded = load_state_dict(path, dtype=torch.float32)
    assert loaded["weight"].dtype == torch.float32
    assert torch.equal(loaded["weight"], state["weight"].float())
    assert loaded["steps"].dtype == torch.int64  # integer buffers keep their type


def test_safetensors_roundtrip_is_atomic(tmp_path, state):
    path = tmp_path / "weights.safetensors"
    save_state_dict(state, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.safetensors"]
    assert torch.equal(load_state_dict(path)["weight"], state["weight"])


def test_training_checkpoint_wrapper_is_unwrapped(tmp_path, state):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": state}, path)
    assert set(load_state_dict(path)) == {"weight", "steps"}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickle_that_runs_code_is_refused(tmp_path, zip_format):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": RunsCode(marker)}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError, match="Refusing to load"):
        load_state_dict(path)
    assert not marker.exists()


def test_plain_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.bin"
    with open(path, "wb") as handle:
        pickle.dump(RunsCode(marker), handle, protocol=2)
    with pytest.raises(UnsafeCheckpointError):
        load_state_dict(path)
    assert not marker.exists()


def test_truncated_and_garbage_files_give_clear_errors(tmp_path, state):
    good = tmp_path / "good.pth"
    torch.save(state, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a tensor file" * 10)
    for path in (truncated, garbage):
        with pytest.raises(CheckpointError, match=path.name):
            load_state_dict(path)


def test_non_tensor_entries_are_rejected(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"weight": torch.zeros(1), "note": "text"}, path)
    with pytest.raises(CheckpointError, match="'note'"):
        load_state_dict(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_state_dict(tmp_path / "nothing.pth")
