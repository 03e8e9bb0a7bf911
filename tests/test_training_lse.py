"""LSE-D / LSE-C by the published SyncNet protocol (training.lse_protocol) with random weights."""

import ast
import importlib.util
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import medfilt

from musetalk_lib.checkpoint import CheckpointMismatchError
from parity_fixtures import LSE_FIXTURE, LSE_WEIGHT_SCALES, random_face_track, random_weights
from musetalk_lib.video_io import VideoReader, VideoWriter
from training.evaluate import evaluate
from training.lse_protocol import (ChungZissermanSyncNet, crop_face_track, load_chung_zisserman_syncnet,
                                   missing_packages, offset_search, resample_indices, sync_scores)


@pytest.fixture(scope="module")
def syncnet_v2_file(tmp_path_factory):
    """Random weights under syncnet_v2.model's names, in the pre-zip format and without BatchNorm counters."""
    torch.manual_seed(0)
    state = {name: tensor for name, tensor in ChungZissermanSyncNet().state_dict().items()
             if not name.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return path


def test_chung_zisserman_syncnet_has_the_reference_layout_and_loads_safely(syncnet_v2_file, tmp_path):
    model = load_chung_zisserman_syncnet(syncnet_v2_file)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    assert shapes["netcnnaud.0.weight"] == (64, 1, 3, 3) and shapes["netcnnaud.18.weight"] == (512, 256, 5, 4)
    assert shapes["netcnnlip.0.weight"] == (96, 3, 5, 7, 7) and shapes["netcnnlip.18.weight"] == (512, 256, 1, 6, 6)
    assert shapes["netfcaud.3.weight"] == shapes["netfclip.3.weight"] == (1024, 512)
    with torch.no_grad():
        assert model.embed_video(torch.rand(2, 3, 5, 224, 224) * 255).shape == (2, 1024)
        assert model.embed_audio(torch.randn(2, 1, 13, 20)).shape == (2, 1024)
    wrong = tmp_path / "other.model"
    torch.save({"netcnnaud.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(CheckpointMismatchError, match="syncnet_v2.model"):
        load_chung_zisserman_syncnet(wrong)


def test_lse_equals_syncnet_python_on_the_same_random_weights_and_inputs(tmp_path):
    """tests/data/lse_parity.npz holds syncnet_python's own results (scripts/make_lse_parity_fixture.py)."""
    fixture = np.load(Path(__file__).parent / "data" / LSE_FIXTURE)
    seed = int(fixture["seed"])
    shapes = {str(name): ast.literal_eval(str(shape)) for name, shape in zip(fixture["names"], fixture["shapes"])}
    path = tmp_path / "syncnet_v2.model"
    torch.save({name: torch.from_numpy(values) for name, values in random_weights(shapes, seed,
                                                                                   LSE_WEIGHT_SCALES).items()}, path)
    crops, audio = random_face_track(seed)
    result = sync_scores(load_chung_zisserman_syncnet(path), crops, audio / 32768)
    assert (result.offset, result.windows) == (int(fixture["offset"]), len(fixture["distances"]))
    np.testing.assert_allclose(result.mean_distances, fixture["distances"].mean(0), rtol=1e-5)
    assert result.lse_d == pytest.approx(float(fixture["lse_d"]), rel=1e-5)
    assert result.lse_c == pytest.approx(float(fixture["lse_c"]), rel=1e-4)


def write_numbered_clip(path, fps: int, count: int) -> None:
    """Frame i is a flat grey of level 4 * i, so decoded frames tell their index."""
    with VideoWriter(path, 32, 32, fps, crf=0) as writer:
        for index in range(count):
            writer.write(np.full((32, 32, 3), 4 * index, np.uint8))


@pytest.mark.parametrize("fps, expected", [
    (30, [0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 22, 23, 24, 25, 26, 28, 29]),  # drops 1 in 6
    (50, list(range(0, 50, 2))),  # every other frame
])
def test_25_fps_resampling_picks_the_frames_ffmpeg_shows(tmp_path, fps, expected):
    path = tmp_path / f"numbered_{fps}.mp4"
    write_numbered_clip(path, fps, fps)  # one second
    with VideoReader(path) as reader:
        frames, rate = list(reader), reader.info.fps
    picked = resample_indices(len(frames), rate)
    assert picked == expected
    assert [round(frames[index].mean() / 4) for index in picked] == expected
    assert resample_indices(10, 25) == list(range(10))
    assert resample_indices(8, 20) == [0, 1, 1, 2, 3, 4, 5, 5, 6, 7]  # 20 fps: frames repeat
    ntsc = resample_indices(3003, Fraction(30000, 1001))  # 100.2 s at 29.97 fps: 2505 ticks, none repeated
    assert len(ntsc) == len(set(ntsc)) == 2505 and ntsc[:6] == [0, 1, 2, 4, 5, 6] and ntsc[-1] == 3002


def test_offset_search_finds_an_injected_shift():
    rng = np.random.default_rng(0)
    shift, windows = 3, 60
    sequence = torch.from_numpy(rng.normal(size=(windows + 2 * shift, 8)).astype(np.float32))
    video = sequence[shift:shift + windows]
    audio = sequence[2 * shift:2 * shift + windows]  # the sound of video window i is at audio window i - 3
    result = offset_search(video, audio + 0.01 * torch.randn(audio.shape))
    assert result.offset == shift  # positive: the audio leads
    assert result.windows == windows and result.lse_d < 1.0 and result.lse_c > 2.0
    assert offset_search(audio, video).offset == -shift


def test_framewise_confidence_is_median_filtered():
    rng = np.random.default_rng(1)
    video = torch.from_numpy(rng.normal(size=(30, 8)).astype(np.float32))
    audio = video.clone()
    audio[12] += 5.0  # one window out of sync
    result = offset_search(video, audio)
    distances = torch.stack([torch.nn.functional.pairwise_distance(
        video, torch.nn.functional.pad(audio, (0, 0, 15, 15))[s:s + 30]) for s in range(31)], dim=1)
    raw = (distances.mean(0).median() - distances[:, 15]).numpy()
    assert raw[12] < raw[11] - 4  # the dip is there before filtering ...
    np.testing.assert_allclose(result.framewise_confidence, medfilt(raw.astype(np.float64), 9), rtol=1e-6)
    assert result.framewise_confidence[12] == pytest.approx(raw[11], rel=1e-5)  # ... and gone after it


class LoudnessSyncNet(ChungZissermanSyncNet):
    """Embeds what a correct SyncNet would match: frame brightness against MFCC log energy, per frame."""

    @staticmethod
    def _standardised(values: torch.Tensor) -> torch.Tensor:
        centred = values - values.mean(dim=1, keepdim=True)
        return centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-6)

    def embed_video(self, frames: torch.Tensor) -> torch.Tensor:
        return self._standardised(frames.mean(dim=(1, 3, 4)))  # [B, 5]

    def embed_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self._standardised(mfcc[:, 0, 0].reshape(len(mfcc), 5, 4).mean(-1))  # log energy per frame


def test_sync_scores_recover_a_shift_between_frames_and_audio():
    """The crops, MFCC windows and offset search line up: video that lags its audio by 3 frames reads offset 3."""
    rng = np.random.default_rng(2)
    count, lag = 40, 3
    levels = rng.uniform(-3.0, 0.0, count + lag)  # log amplitude per 25 fps frame
    audio = np.concatenate([np.exp(level) * rng.normal(0, 0.2, 640) for level in levels[lag:]])
    brightness = 120 + 40 * levels[:count]  # frame i shows the loudness of audio frame i - 3
    frames = [np.full((64, 64, 3), value, np.uint8) for value in brightness]
    crops = crop_face_track(frames, [(24, 16, 40, 32)] * count)
    assert crops.shape == (count, 224, 224, 3)
    result = sync_scores(LoudnessSyncNet().eval(), crops, audio.astype(np.float32))
    assert result.offset == lag and result.windows == count - 5
    assert result.lse_c > 0.5


def test_face_track_crops_follow_the_reference_geometry():
    frame = np.zeros((200, 200, 3), np.uint8)
    frame[:, :, 0] = 255  # red in RGB: the crops are BGR
    boxes = [(80, 60, 120, 100)] * 3 + [None] + [(84, 60, 124, 100)] * 3  # a missed detection is interpolated
    crops = crop_face_track([frame] * 7, boxes)
    assert crops.shape == (7, 224, 224, 3) and crops[..., 2].min() == 255 and crops[..., 0].max() == 0
    edge = crop_face_track([frame] * 7, [(0, 0, 40, 40)] * 7)[0]  # crop reaches past the frame: grey 110 padding
    assert (edge[0, 0] == 110).all() and (edge[-1, -1] == [0, 0, 255]).all()
    with pytest.raises(LookupError, match="no face"):
        crop_face_track([frame] * 7, [None] * 7)
    with pytest.raises(ValueError, match="at least 7"):
        crop_face_track([frame] * 6, boxes[:6])


def test_evaluate_reports_lse_by_the_protocol_with_its_coverage(syncnet_v2_file, media):
    video = str(media / "talking_closeup_with_audio.mp4")  # 15 fps: 8 frames become 13 at 25 fps
    results = evaluate([video], [video], lse_syncnet=str(syncnet_v2_file), landmarks_dir=str(media / "landmarks"),
                       max_frames=8)
    lse_d, lse_c = results["lse_d"], results["lse_c"]
    assert lse_d["available"] and lse_c["available"], results
    assert (lse_d["frames"], lse_d["of"], lse_d["windows"]) == (13, 13, 8)
    assert np.isfinite(lse_d["value"]) and lse_c["value"] >= 0 and -15 <= lse_c["offsets"][0] <= 15
    assert "syncnet_python" in lse_d["protocol"] and len(lse_c["framewise_confidence"][0]) == 8
    assert results["lse_d_latentsync"]["available"] is False
    missing = evaluate([video], [video], lse_syncnet=None, max_frames=2)["lse_d"]
    assert missing["available"] is False and "syncnet_v2.model" in missing["reason"]


def test_a_missing_mfcc_package_is_named(monkeypatch):
    assert missing_packages() is None
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "python_speech_features" else find_spec(name, *args))
    assert "python_speech_features" in missing_packages() and "train extra" in missing_packages()


@pytest.mark.usefixtures("repository_root")
def test_evaluate_keeps_the_latentsync_architecture_lse_under_its_own_names(tmp_path, media):
    from training.syncnet import SyncNet
    from training.train import load_syncnet_config

    config = load_syncnet_config("training/configs/tiny_syncnet.yaml")  # 4 frames
    torch.manual_seed(0)
    path = tmp_path / "syncnet.pt"
    torch.save({"state_dict": SyncNet(config).state_dict()}, path)
    video = str(media / "talking_closeup_with_audio.mp4")
    results = evaluate([video], [video], syncnet=str(path), syncnet_config=config,
                       landmarks_dir=str(media / "landmarks"), max_frames=8)
    lse_d, lse_c = results["lse_d_latentsync"], results["lse_c_latentsync"]
    assert lse_d["available"] and (lse_d["frames"], lse_d["of"], lse_d["windows"]) == (8, 8, 5)
    assert np.isfinite(lse_d["value"]) and lse_c["value"] >= 0 and len(lse_c["offsets"]) == 1
    assert results["lse_d"]["available"] is False  # the published protocol needs syncnet_v2.model
