"""Audio loading for any rate/format, and the per-frame window rule at any fps."""

import math
import shutil

import av
import numpy as np
import pytest
import soundfile
import torch

from musetalk_lib.audio_features import AudioFeatures, frame_window_index, load_whisper
from musetalk_lib.audio_io import AudioError, downmix_to_stereo, load_audio, load_audio_16k, to_whisper_input
from musetalk_lib.video_io import VideoWriter


def official_window_index(num_samples: int, fps: float, num_features: int, left: int = 2, right: int = 2):
    """The official procedure, literally: zero-pad the features, slide a window, abort past the end."""
    fps = int(fps)
    step = 50.0 / fps
    num_frames = math.floor(num_samples / 16000 * fps)
    pad = math.ceil(step)
    padded = [-1] * (pad * left) + list(range(num_features)) + [-1] * (pad * 3 * right)
    width = 2 * (left + right + 1)
    rows = []
    for frame in range(num_frames):
        start = math.floor(frame * step)
        if start + width > len(padded):
            raise AssertionError("the official code aborts here")
        rows.append(padded[start:start + width])
    return np.array(rows, dtype=np.int64).reshape(num_frames, width)


@pytest.mark.parametrize("fps", [24, 25, 29.97, 30, 23.976, 12.5])
@pytest.mark.parametrize("num_samples", [16000, 12345, 16000 * 7 + 321])
def test_window_index_matches_the_official_procedure(fps, num_samples):
    num_features = math.floor(num_samples / 16000 * 50)
    expected = official_window_index(num_samples, fps, num_features)
    assert np.array_equal(frame_window_index(num_samples, fps, num_features), expected)


@pytest.mark.parametrize("fps", [50, 59.94, 60])
def test_high_frame_rates_work_where_the_official_code_aborts(fps):
    num_samples = 16000 * 3
    num_features = 150
    with pytest.raises(AssertionError):
        official_window_index(num_samples, fps, num_features)
    index = frame_window_index(num_samples, fps, num_features)
    assert index.shape == (math.floor(3 * int(fps)), 10)
    assert index.max() == num_features - 1 and index.min() == -1


def test_exact_fps_keeps_fractional_rates_in_sync():
    num_samples = 16000 * 60
    truncated = frame_window_index(num_samples, 29.97, 3000)
    exact = frame_window_index(num_samples, 29.97, 3000, exact_fps=True)
    assert truncated.shape[0] == 29 * 60 and exact.shape[0] == math.floor(60 * 29.97)
    # With the exact rate, the last frame's window sits at the end of the audio, not 2 s past it.
    assert exact[-1, 4] == math.floor((exact.shape[0] - 1) * 50 / 29.97)


def test_window_width_follows_the_context():
    index = frame_window_index(16000 * 2, 25, 100, context_left=1, context_right=3)
    assert index.shape == (50, 10)
    assert list(index[10]) == list(range(20 - 2, 20 - 2 + 10))


def test_chunks_are_frame_major_with_zero_padding():
    features = torch.arange(20 * 5 * 384, dtype=torch.float32).reshape(20, 5, 384)
    audio = AudioFeatures.for_video(features, num_samples=16000 * 20 // 50, fps=25)
    chunks = audio.chunks([0, 5])
    assert chunks.shape == (2, 50, 384)
    assert torch.count_nonzero(chunks[0, :20]) == 0  # frame 0: four zero Whisper frames in front
    assert torch.equal(chunks[0, 20:25], features[0])
    assert torch.equal(chunks[1, 5 * 3 + 2], features[10 - 4 + 3, 2])
    assert audio.tokens_per_frame == 50 and audio.num_frames == 10  # 0.4 s at 25 fps


def write_wav(path, samples, rate, subtype):
    soundfile.write(str(path), samples, rate, subtype=subtype)
    return path


@pytest.fixture
def tone():
    t = np.arange(44100 * 2) / 44100
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_stereo_44k1_is_mixed_then_resampled(tmp_path, tone):
    stereo = np.stack([tone, 0.5 * tone], axis=1)
    audio = load_audio_16k(write_wav(tmp_path / "stereo.wav", stereo, 44100, "PCM_16"))
    assert audio.dtype == np.float32 and audio.shape == (math.ceil(88200 * 16000 / 44100),)
    samples, rate = load_audio(tmp_path / "stereo.wav")
    assert rate == 44100 and samples.shape == (2, 88200)
    assert np.allclose(audio, to_whisper_input(samples.mean(axis=0), 44100))
    assert 0.3 < np.abs(audio).max() < 0.4  # (1 + 0.5) / 2 * 0.5


@pytest.mark.parametrize("subtype,tolerance", [("PCM_U8", 1 / 64), ("PCM_16", 1e-4), ("PCM_24", 1e-6), ("FLOAT", 0)])
def test_sample_formats(tmp_path, tone, subtype, tolerance):
    samples, rate = load_audio(write_wav(tmp_path / f"{subtype}.wav", tone, 44100, subtype))
    assert samples.dtype == np.float32 and rate == 44100
    assert np.abs(samples[0] - tone).max() <= tolerance


def test_float_48k(tmp_path):
    samples = (0.25 * np.random.default_rng(0).standard_normal(48000)).astype(np.float32)
    audio = load_audio_16k(write_wav(tmp_path / "float.wav", samples, 48000, "FLOAT"))
    assert audio.shape == (16000,)


def test_audio_track_of_a_video_is_read_with_pyav(tmp_path, tone):
    path = tmp_path / "speech.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100, layout="mono")
        frame = av.AudioFrame.from_ndarray(tone[None, :], format="fltp", layout="mono")
        frame.sample_rate = 44100
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    samples, rate = load_audio(path)
    assert rate == 44100 and abs(samples.shape[1] - tone.shape[0]) < 4096


def test_bad_audio_gives_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000, "PCM_16")
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(empty)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF....nonsense" * 20)
    with pytest.raises(AudioError, match="Cannot decode"):
        load_audio(garbage)
    with pytest.raises(AudioError, match="NaN"):
        to_whisper_input(np.array([0.0, np.nan], np.float32), 16000)


@pytest.fixture(scope="module")
def whisper(random_models):
    return load_whisper(random_models / "whisper")


def test_whisper_features_span_segments(whisper):
    audio = (0.1 * np.random.default_rng(0).standard_normal(16000 * 31 + 77)).astype(np.float32)
    features = whisper(audio)
    assert features.shape == (math.floor(audio.shape[0] / 320), 5, 384)
    assert features.dtype == torch.float32
    whisper.segments_per_batch = 1  # batching segments must not change the result
    assert torch.allclose(whisper(audio), features, atol=1e-5)
    whisper.segments_per_batch = 4


def test_silence_gives_finite_features(whisper):
    features = whisper(np.zeros(32000, np.float32))
    assert features.shape == (100, 5, 384) and torch.isfinite(features).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_whisper_reduced_precision(random_models, whisper, dtype):
    audio = (0.1 * np.random.default_rng(3).standard_normal(16000)).astype(np.float32)
    reduced = load_whisper(random_models / "whisper", dtype=dtype)(audio)
    reference = whisper(audio)
    assert reduced.dtype == torch.float32
    assert float((reduced - reference).norm() / reference.norm()) < 0.05


def _five_one(tmp_path, centre: np.ndarray, name: str = "five_one.wav"):
    """A 5.1 WAV (standard order FL FR FC LFE BL BR) with ``centre`` on FC and a loud hum on the LFE."""
    channels = np.zeros((centre.size, 6), np.float32)
    channels[:, 2] = centre
    channels[:, 3] = 0.5 * np.sin(np.arange(centre.size) * 2 * np.pi * 50 / 16000)
    path = tmp_path / name
    soundfile.write(str(path), channels, 16000, subtype="FLOAT")
    return path


def test_surround_speech_on_the_centre_reaches_both_sides_and_the_model_at_minus_3_db(tmp_path, tone):
    speech = tone[:8000]
    samples, rate = load_audio(_five_one(tmp_path, speech))
    assert samples.shape == (2, speech.size) and rate == 16000
    np.testing.assert_allclose(samples[0], samples[1])
    np.testing.assert_allclose(samples[0], math.sqrt(0.5) * speech, atol=1e-6)  # no LFE in the mix
    np.testing.assert_allclose(load_audio_16k(_five_one(tmp_path, speech)), math.sqrt(0.5) * speech, atol=1e-6)


def test_downmix_follows_the_declared_layout(tone):
    left_surround = tone[:1600]
    side = np.zeros((6, left_surround.size), np.float32)
    side[4] = left_surround  # "5.1(side)": FL FR FC LFE SL SR
    mixed = downmix_to_stereo(side, "5.1(side)")
    np.testing.assert_allclose(mixed[0], math.sqrt(0.5) * left_surround, atol=1e-6)
    assert not mixed[1].any()
    stereo = side[:2]
    assert downmix_to_stereo(stereo) is stereo
    with pytest.raises(AudioError, match="9 unnamed audio channels"):
        downmix_to_stereo(np.zeros((9, 10), np.float32))


def test_the_muxed_track_of_surround_speech_is_a_balanced_stereo_downmix(tmp_path, tone):
    speech = tone[:16000]
    samples, rate = load_audio(_five_one(tmp_path, speech))
    with VideoWriter(tmp_path / "out.mp4", 64, 48, 10, samples, rate) as writer:
        for _ in range(10):
            writer.write(np.zeros((48, 64, 3), np.uint8))
    with av.open(str(tmp_path / "out.mp4")) as container:
        stream = container.streams.audio[0]
        assert stream.layout.name == "stereo"
        decoded = np.concatenate([frame.to_ndarray() for frame in container.decode(stream)], axis=1)
    left, right = (float(np.sqrt(np.mean(channel ** 2))) for channel in decoded)
    assert abs(20 * math.log10(left / right)) < 0.5  # balanced, not centre-to-left
    expected = math.sqrt(0.5) * float(np.sqrt(np.mean(speech ** 2)))
    assert abs(20 * math.log10(left / expected)) < 1.0


@pytest.mark.parametrize("layout", ["conditional-generation", "encoder-only"])
def test_whisper_loads_the_official_checkpoint_layouts(random_models, whisper, tmp_path, layout):
    # openai/whisper-tiny's pytorch_model.bin is a WhisperForConditionalGeneration checkpoint: `model.`-prefixed
    # names plus `proj_out`. Only the encoder is loaded, so its weights alone are enough.
    folder = tmp_path / "whisper"
    shutil.copytree(random_models / "whisper", folder)
    state_dict = torch.load(folder / "pytorch_model.bin", weights_only=True)
    if layout == "conditional-generation":
        state_dict = {**{f"model.{name}": tensor for name, tensor in state_dict.items()},
                      "proj_out.weight": state_dict["decoder.embed_tokens.weight"]}
    else:
        state_dict = {name: tensor for name, tensor in state_dict.items() if name.startswith("encoder.")}
    torch.save(state_dict, folder / "pytorch_model.bin")
    loaded = load_whisper(folder).encoder.state_dict()
    assert loaded.keys() == whisper.encoder.state_dict().keys()
    assert all(torch.equal(tensor, whisper.encoder.state_dict()[name]) for name, tensor in loaded.items())
