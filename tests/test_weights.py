import shutil

import pytest

from musetalk_lib.weights import COMPONENTS, MissingWeightsError, find_model_files, locate


@pytest.fixture
def models(tmp_path, random_models):
    root = tmp_path / "models"
    shutil.copytree(random_models, root)
    return root


def test_finds_every_file_and_flags_random_weights(models):
    files = find_model_files(models, "v15", face_parsing=True)
    assert files.unet_weights == models / "musetalkV15" / "unet.pth"
    assert files.vae_dir == models / "sd-vae" and files.whisper_dir == models / "whisper"
    assert files.face_parsing == models / "face-parse-bisent" / "79999_iter.pth"
    assert files.random_weights
    assert find_model_files(models, "v1").unet_weights == models / "musetalk" / "pytorch_model.bin"


ALL_FILES = [(component, item) for component, items in COMPONENTS.items() for item in items]


@pytest.mark.parametrize("component,item", ALL_FILES, ids=[item.path for _, item in ALL_FILES])
def test_each_missing_file_is_named_with_its_source(models, component, item):
    for other in COMPONENTS["face-alignment"]:  # not part of the random set
        (models / other.path).parent.mkdir(exist_ok=True)
        (models / other.path).write_bytes(b"")
    (models / item.path).unlink()
    with pytest.raises(MissingWeightsError) as raised:
        if component == "face-alignment":
            locate(models, [component])
        else:
            find_model_files(models, "v1" if component == "unet-v1" else "v15", face_parsing=True)
    message = str(raised.value)
    assert str(models / item.path) in message
    assert item.source in message
    assert "musetalk weights download" in message
    assert [missing.path for missing in raised.value.missing] == [item.path]


def test_fallback_folders_are_searched_and_named(models, tmp_path):
    cache = tmp_path / "hub" / "checkpoints"
    with pytest.raises(MissingWeightsError, match=str(cache / "s3fd-619a316812.pth")):
        locate(models, ["face-alignment"], fallback_dirs=[cache])
    cache.mkdir(parents=True)
    for item in COMPONENTS["face-alignment"]:
        (cache / item.path.split("/")[-1]).write_bytes(b"")
    assert [path.parent for path in locate(models, ["face-alignment"], fallback_dirs=[cache])] == [cache, cache]


def test_all_missing_files_are_listed_at_once(tmp_path):
    with pytest.raises(MissingWeightsError) as raised:
        find_model_files(tmp_path, "v15")
    assert len(raised.value.missing) == len(COMPONENTS["unet-v15"]) + len(COMPONENTS["vae"]) + len(COMPONENTS["whisper"])


def test_face_parsing_is_optional_unless_asked_for(models):
    shutil.rmtree(models / "face-parse-bisent")
    assert find_model_files(models, "v15").face_parsing is None
    with pytest.raises(MissingWeightsError, match="79999_iter"):
        find_model_files(models, "v15", face_parsing=True)


def test_safetensors_alternative_is_accepted(models):
    weights = models / "musetalkV15" / "unet.pth"
    weights.rename(weights.with_suffix(".safetensors"))
    assert find_model_files(models, "v15").unet_weights.name == "unet.safetensors"


def test_unknown_version(models):
    with pytest.raises(ValueError, match="v2"):
        find_model_files(models, "v2")
