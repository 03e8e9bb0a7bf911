"""Silence detection, the noise gate and source frames in silent spans (``silence`` option)."""

import numpy as np
import pytest

from musetalk_lib.audio_io import load_audio_16k
from musetalk_lib.avatar import AvatarSettings, prepare_avatar
from musetalk_lib.faces import load_landmarks_json
from musetalk_lib.frame_source import ArraySource
from musetalk_lib.passthrough import CROSSFADE_FRAMES, crossfade_weights, true_ranges
from musetalk_lib.pipeline import DubOptions, compute_audio_features, dub, lip_sync_frames, source_frame_indices
from musetalk_lib.silence import RAMP_SECONDS, detect_speech, gate_silence, silence_sample_ranges, silent_spans
from musetalk_lib.video_io import VideoReader

FPS = 15
SAMPLES_PER_SECOND = 16000  # one second is exactly 15 frames at 15 fps


def insert(audio, at_frame, inserted):
    at = round(at_frame * SAMPLES_PER_SECOND / FPS)
    return np.concatenate([audio[:at], inserted, audio[at:]]).astype(np.float32)


@pytest.fixture(scope="module")
def speech_with_gaps(media):
    """Speech with 1 s of digital silence at frame 20 and 1 s of -50 dBFS room noise at (new) frame 95."""
    speech = load_audio_16k(media / "speech_16k_mono.wav")
    noise = np.random.default_rng(0).normal(0, 10 ** (-50 / 20), SAMPLES_PER_SECOND)
    audio = insert(insert(speech, 80, noise), 20, np.zeros(SAMPLES_PER_SECOND))
    return audio, [(20, 34), (95, 109)]


def test_inserted_silence_and_noise_are_found_within_one_frame(speech_with_gaps):
    audio, inserted = speech_with_gaps
    frames = len(audio) * FPS // SAMPLES_PER_SECOND
    spans = [span for span in silent_spans(detect_speech(audio, FPS, frames)) if 0 < span[0] and span[1] < frames - 3]
    assert len(spans) == len(inserted)
    for (first, last), (want_first, want_last) in zip(spans, inserted):
        assert abs(first - want_first) <= 1 and abs(last - want_last) <= 1


def test_short_pauses_count_as_speech_and_silence_is_silent(media):
    speech = load_audio_16k(media / "speech_16k_mono.wav")
    gap = insert(speech, 20, np.zeros(SAMPLES_PER_SECOND // 10))  # 0.1 s: a pause between words
    assert silent_spans(detect_speech(gap, FPS, 30))[1:] == []
    assert silent_spans(detect_speech(np.zeros(32000, np.float32), FPS, 30)) == [(0, 29)]


def test_gate_zeroes_exactly_the_silent_samples(speech_with_gaps):
    audio, _ = speech_with_gaps
    frames = len(audio) * FPS // SAMPLES_PER_SECOND
    speech = detect_speech(audio, FPS, frames)
    gated = gate_silence(audio, speech, FPS)
    ramp = round(RAMP_SECONDS * SAMPLES_PER_SECOND)
    silent = np.zeros(len(audio), bool)
    interior = np.zeros(len(audio), bool)
    for start, end in silence_sample_ranges(speech, FPS, len(audio)):
        silent[start:end] = True
        interior[start + (ramp if start > 0 else 0):end - (ramp if end < len(audio) else 0)] = True
    assert np.array_equal(gated[~silent], audio[~silent])
    assert not gated[interior].any()
    ramps = silent & ~interior
    assert np.all(np.abs(gated[ramps]) <= np.abs(audio[ramps]))
    assert np.array_equal(gated == 0, silent & ((audio == 0) | interior) | (~silent & (audio == 0)))


def test_crossfade_weights_stay_inside_the_span():
    pass_through = np.zeros(20, bool)
    pass_through[5:15] = True
    weights = crossfade_weights(pass_through, 3)
    assert np.all(weights[:5] == 1) and np.all(weights[15:] == 1)
    assert weights[5:15].tolist() == [0.75, 0.5, 0.25, 0, 0, 0, 0, 0.25, 0.5, 0.75]
    assert true_ranges(pass_through) == [(5, 14)]


def test_source_mode_shows_the_source_frames_in_silence(tiny_models, media, tmp_path):
    short = load_audio_16k(media / "speech_short.wav")
    audio = np.concatenate([short, np.zeros(SAMPLES_PER_SECOND * 3 // 5, np.float32), short[:8000]])
    with VideoReader(media / "talking_closeup.mp4") as reader:
        source = ArraySource([frame for frame, _ in zip(reader, range(6))], FPS)
    avatar = prepare_avatar(source, tiny_models.vae, tmp_path, AvatarSettings(mask_mode="landmarks"),
                            faces=load_landmarks_json(media / "landmarks" / "talking_closeup.json")[:6])
    features = compute_audio_features(tiny_models.whisper, audio, FPS)
    speech = detect_speech(audio, FPS, features.num_frames)
    weights = crossfade_weights(~speech)
    assert any(last - first + 1 > 2 * CROSSFADE_FRAMES for first, last in silent_spans(speech) if first > 0)
    model = list(lip_sync_frames(source, avatar, features, tiny_models.unet, tiny_models.vae, DubOptions()))
    features.speech = speech  # as speech_features sets it with silence="source"
    quiet = list(lip_sync_frames(source, avatar, features, tiny_models.unet, tiny_models.vae,
                                 DubOptions(silence="source")))
    originals = source.frames(source_frame_indices(range(len(quiet)), source.num_frames))
    for index, (generated, shown, original) in enumerate(zip(model, quiet, originals)):
        if weights[index] == 0:
            assert np.array_equal(shown, original), index
        elif weights[index] == 1:  # batches hold other frames than without the option: float rounding differs
            assert np.abs(shown.astype(int) - generated).max() <= 2, index
        else:  # the crossfade: between the two
            low, high = np.minimum(generated, original), np.maximum(generated, original)
            assert np.all((shown >= low) & (shown <= high)) and not np.array_equal(shown, original), index


def test_dub_reports_silent_spans_and_turned_heads(tiny_models, media, tmp_path):
    report = dub(media / "talking_closeup.mp4", media / "silence_2s.wav", tmp_path / "out.mp4", tiny_models,
                 cache_root=tmp_path / "avatars", landmarks_path=media / "landmarks" / "talking_closeup.json",
                 settings=AvatarSettings(mask_mode="landmarks"), options=DubOptions(silence="gate", max_yaw=10))
    assert report.silent_spans == [(0, report.frames - 1)]
    assert report.frames_beyond_yaw == [(0, 12)]  # talking_closeup starts turned 13-16 degrees


def test_silence_mode_is_checked():
    with pytest.raises(ValueError, match="silence mode 'mute'.*model, gate, source"):
        DubOptions(silence="mute")
