"""End to end on the shared media with tiny RANDOM weights: outputs, pass-through, caching, bad input."""

import json
import shutil

import av
import numpy as np
import pytest

from musetalk_lib.audio_io import AudioError, load_audio, load_audio_16k
from musetalk_lib.avatar import FORMAT_VERSION, AvatarSettings, prepare_avatar, prepare_avatar_in_memory, track_faces
from musetalk_lib.blending import expanded_square
from musetalk_lib.faces import load_landmarks_json
from musetalk_lib.frame_source import ArraySource, open_source
from musetalk_lib.pipeline import (
    DubOptions,
    compute_audio_features,
    dub,
    lip_sync,
    lip_sync_frames,
    output_frame_count,
    source_frame_indices,
    speech_features,
)
from musetalk_lib.run_files import RunFileError
from musetalk_lib.video_io import VideoError, VideoReader

FAST = AvatarSettings(mask_mode="landmarks")  # no face parsing: quick on a CPU


def probe(path):
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio
        return {
            "frames": video.frames,
            "fps": float(video.average_rate),
            "size": (video.codec_context.width, video.codec_context.height),
            "video_seconds": float(video.duration * video.time_base),
            "audio_seconds": float(audio[0].duration * audio[0].time_base) if audio else 0.0,
        }


def leftovers(folder):
    return [path.name for path in folder.iterdir() if "partial" in path.name]


def run_dub(tiny_models, media, tmp_path, source, audio, landmarks, **kwargs):
    output = tmp_path / "out.mp4"
    report = dub(media / source, media / audio, output, tiny_models, cache_root=tmp_path / "avatars",
                 landmarks_path=media / "landmarks" / landmarks, settings=kwargs.pop("settings", FAST), **kwargs)
    return output, report


def test_dub_writes_frames_fps_and_matching_audio(tiny_models, media, tmp_path):
    output, report = run_dub(tiny_models, media, tmp_path, "talking_closeup.mp4", "speech_short.wav",
                             "talking_closeup.json")
    expected = int(len(load_audio_16k(media / "speech_short.wav")) / 16000 * 15)
    info = probe(output)
    assert report.frames == info["frames"] == expected
    assert info["fps"] == 15 and info["size"] == (350, 350)
    assert info["audio_seconds"] == pytest.approx(expected / 15, abs=0.05)
    assert report.random_weights and report.frames_without_face == []
    assert leftovers(tmp_path) == []


def test_longer_speech_ping_pongs_the_video(tiny_models, media, tmp_path):
    output, report = run_dub(tiny_models, media, tmp_path, "talking_closeup_with_audio.mp4", "speech_44k_stereo.wav",
                             "talking_closeup_with_audio.json", options=DubOptions(batch_size=16))
    samples, rate = load_audio(media / "speech_44k_stereo.wav")
    assert report.frames == int(samples.shape[1] / rate * 15) > 45
    info = probe(output)
    assert info["frames"] == report.frames
    assert info["audio_seconds"] == pytest.approx(report.frames / 15, abs=0.05)


def test_trim_stops_at_the_end_of_the_video(tiny_models, media, tmp_path):
    output, report = run_dub(tiny_models, media, tmp_path, "talking_closeup.mp4", "speech_44k_stereo.wav",
                             "talking_closeup.json", options=DubOptions(batch_size=16, length_policy="trim"))
    assert report.frames == 45
    assert probe(output)["audio_seconds"] == pytest.approx(3.0, abs=0.05)


@pytest.mark.parametrize("image", ["face_still.png", "face_still_rgba.png"])
def test_still_image_becomes_a_talking_video(tiny_models, media, tmp_path, image):
    output, report = run_dub(tiny_models, media, tmp_path, image, "speech_short.wav", "face_still.json",
                             settings=AvatarSettings(), still_fps=25)  # with the face-parsing (jaw) mask
    assert report.frames == int(len(load_audio_16k(media / "speech_short.wav")) / 16000 * 25)
    info = probe(output)
    assert info["fps"] == 25 and info["size"] == (350, 350)


def test_odd_size_video(tiny_models, media, tmp_path):
    output, report = run_dub(tiny_models, media, tmp_path, "odd_size.mp4", "speech_short.wav", "odd_size.json")
    assert probe(output)["size"] == (352, 350)  # H.264 4:2:0 needs even sizes: one edge pixel added


def frames_of(media, name):
    with VideoReader(media / name) as reader:
        return list(reader)


def generate(tiny_models, media, tmp_path, clip, landmarks, audio="speech_short.wav", settings=FAST):
    source = open_source(media / clip)
    avatar = prepare_avatar(source, tiny_models.vae, tmp_path / "avatars", settings,
                            faces=load_landmarks_json(media / "landmarks" / landmarks))
    features = compute_audio_features(tiny_models.whisper, load_audio_16k(media / audio), float(source.frame_rate))
    options = DubOptions(batch_size=8, length_policy="trim")
    return avatar, list(lip_sync_frames(source, avatar, features, tiny_models.unet, tiny_models.vae, options))


@pytest.mark.parametrize("settings", [FAST, AvatarSettings(mask_mode="landmarks", mask_smoothing=2)],
                         ids=["masks on demand", "smoothed masks"])
def test_an_avatar_in_memory_dubs_exactly_like_a_cached_one(tiny_models, media, tmp_path, settings):
    """The CLI (cached avatar) and the Dub node (avatar in memory) run the same stage, :func:`lip_sync`."""
    source = open_source(media / "face_occluded.mp4")
    faces = load_landmarks_json(media / "landmarks" / "face_occluded.json")
    samples, sample_rate = load_audio(media / "speech_short.wav")
    cached = prepare_avatar(source, tiny_models.vae, tmp_path / "avatars", settings, faces=faces)
    in_memory = prepare_avatar_in_memory(source, track_faces(source, settings, faces=faces), tiny_models.vae,
                                         settings)
    assert in_memory.mask_mode == cached.mask_mode == "landmarks"
    options = DubOptions(batch_size=4, length_policy="trim")
    features = speech_features(tiny_models.whisper, samples, sample_rate, float(source.frame_rate), options)
    runs = [lip_sync(source, avatar, features, tiny_models.unet, tiny_models.vae, options)
            for avatar in (cached, in_memory)]
    assert runs[0].plan.num_frames == runs[1].plan.num_frames == len(list(runs[0].frames)) > 0
    assert all(np.array_equal(a, b) for a, b in zip(runs[0].frames, runs[1].frames, strict=True))


def test_only_the_face_region_changes_and_faceless_frames_pass_through(tiny_models, media, tmp_path):
    source_frames = frames_of(media, "face_occluded.mp4")
    avatar, output = generate(tiny_models, media, tmp_path, "face_occluded.mp4", "face_occluded.json",
                              audio="speech_44k_stereo.wav")
    assert len(output) == len(source_frames) == 45
    missing = [index for index in range(45) if not avatar.track.has_face[index]]
    assert missing, "the occluded clip has frames without a face"
    for index, (before, after) in enumerate(zip(source_frames, output)):
        assert after.shape == before.shape
        if index in missing:
            assert np.array_equal(before, after)
            continue
        xs, ys, xe, ye = expanded_square(avatar.track.box(index))
        outside = np.ones(before.shape[:2], bool)
        outside[max(ys, 0):ye, max(xs, 0):xe] = False
        assert np.array_equal(before[outside], after[outside])
    assert any(not np.array_equal(before, after) for before, after in zip(source_frames, output))


def test_no_face_anywhere_passes_every_frame_through(tiny_models, media, tmp_path):
    source_frames = frames_of(media, "no_face.mp4")
    avatar, output = generate(tiny_models, media, tmp_path, "no_face.mp4", "no_face.json")
    assert avatar.track.missing_ranges() == [(0, 26)]
    assert len(output) == int(len(load_audio_16k(media / "speech_short.wav")) / 16000 * 10)
    assert all(np.array_equal(a, b) for a, b in zip(source_frames, output))


def test_odd_size_frames_keep_their_size_before_encoding(tiny_models, media, tmp_path):
    _, output = generate(tiny_models, media, tmp_path, "odd_size.mp4", "odd_size.json")
    assert {frame.shape for frame in output} == {(349, 351, 3)}


@pytest.mark.parametrize("policy,expected", [
    ("pingpong", [0, 1, 2, 2, 1, 0, 0, 1]),
    ("loop", [0, 1, 2, 0, 1, 2, 0, 1]),
    ("trim", [0, 1, 2, 2, 2, 2, 2, 2]),
])
def test_length_policies(policy, expected):
    assert source_frame_indices(range(8), 3, policy).tolist() == expected
    assert source_frame_indices(range(4), 1, policy).tolist() == [0, 0, 0, 0]


def test_output_length():
    assert output_frame_count(100, 40, "pingpong") == 100
    assert output_frame_count(100, 40, "trim") == 40
    assert output_frame_count(30, 40, "trim") == 30
    assert output_frame_count(100, 1, "trim", still=True) == 100


def count_calls(detector):
    calls = []

    class Counting:
        identity = detector.identity

        def detect(self, frames):
            calls.append(len(frames))
            return detector.detect(frames)

    return Counting(), calls


class FixedFaces:
    """A detector returning given detections (stands in for a backend in cache tests)."""

    def __init__(self, faces):
        self.faces, self.identity, self.position = faces, "fixed", 0

    def detect(self, frames):
        out = self.faces[self.position:self.position + len(frames)]
        self.position += len(frames)
        return out


def test_avatar_cache_is_reused_and_invalidated(tiny_models, media, tmp_path, caplog):
    source = open_source(media / "talking_avatar.mp4")
    faces = load_landmarks_json(media / "landmarks" / "talking_avatar.json")
    detector, calls = count_calls(FixedFaces(faces))
    first = prepare_avatar(source, tiny_models.vae, tmp_path, FAST, detector=detector)
    assert sum(calls) == 56
    again = prepare_avatar(source, tiny_models.vae, tmp_path, FAST, detector=FixedFaces(faces))
    assert again.folder == first.folder and sum(calls) == 56  # no second detection
    assert np.array_equal(again.latents([0, 55]), first.latents([0, 55]))

    shifted = prepare_avatar(source, tiny_models.vae, tmp_path, AvatarSettings(mask_mode="landmarks", bbox_shift=5),
                             faces=faces)
    assert shifted.folder != first.folder

    shard = first.folder / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])  # corrupt
    rebuilt = prepare_avatar(source, tiny_models.vae, tmp_path, FAST, detector=FixedFaces(faces))
    assert rebuilt.folder == first.folder and "Rebuilding avatar cache" in caplog.text
    assert np.array_equal(rebuilt.latents([3]), again.latents([3]))

    manifest = json.loads((first.folder / "manifest.json").read_text())
    (first.folder / "manifest.json").write_text(json.dumps({**manifest, "format_version": 0}))
    assert prepare_avatar(source, tiny_models.vae, tmp_path, FAST,
                          detector=FixedFaces(faces)).manifest["format_version"] == FORMAT_VERSION
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_in_memory_frames_get_their_own_cache_key(tiny_models, media, tmp_path):
    frames = frames_of(media, "talking_closeup.mp4")[:6]
    faces = load_landmarks_json(media / "landmarks" / "talking_closeup.json")[:6]
    first = prepare_avatar(ArraySource(frames, 15), tiny_models.vae, tmp_path, FAST, faces=faces)
    frames[0] = frames[0].copy()
    frames[0][0, 0] ^= 1
    assert prepare_avatar(ArraySource(frames, 15), tiny_models.vae, tmp_path, FAST, faces=faces).key != first.key


def test_bad_inputs_fail_clearly_and_leave_no_output(tiny_models, media, tmp_path):
    output = tmp_path / "out.mp4"
    common = dict(cache_root=tmp_path / "avatars", settings=FAST,
                  landmarks_path=media / "landmarks" / "talking_closeup.json")
    with pytest.raises(RunFileError, match="missing.mp4"):
        dub(tmp_path / "missing.mp4", media / "speech_short.wav", output, tiny_models, **common)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes((media / "talking_closeup.mp4").read_bytes()[:20000])
    with pytest.raises(VideoError):
        dub(truncated, media / "speech_short.wav", output, tiny_models, **common)
    empty = tmp_path / "empty.wav"
    import soundfile

    soundfile.write(str(empty), np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="no audio samples"):
        dub(media / "talking_closeup.mp4", empty, output, tiny_models, **common)
    tiny = tmp_path / "tiny.wav"
    soundfile.write(str(tiny), np.zeros(500, np.float32), 16000)
    with pytest.raises(ValueError, match="shorter than one video frame"):
        dub(media / "talking_closeup.mp4", tiny, output, tiny_models, **common)
    with pytest.raises(ValueError, match="cover 45 frames"):
        dub(media / "talking_avatar.mp4", media / "speech_short.wav", output, tiny_models, **common)
    assert not output.exists() and leftovers(tmp_path) == []


def test_silence_gives_a_normal_video(tiny_models, media, tmp_path):
    output, report = run_dub(tiny_models, media, tmp_path, "talking_closeup.mp4", "silence_2s.wav",
                             "talking_closeup.json")
    assert report.frames == 30 and probe(output)["frames"] == 30


def test_an_interrupted_run_leaves_nothing_under_the_final_name(tiny_models, media, tmp_path):
    def interrupt(stage, done, total):
        if stage == "lip sync" and done >= 8:
            raise KeyboardInterrupt

    output = tmp_path / "out.mp4"
    with pytest.raises(KeyboardInterrupt):
        dub(media / "talking_closeup.mp4", media / "speech_16k_mono.wav", output, tiny_models,
            cache_root=tmp_path / "avatars", settings=FAST, progress=interrupt,
            landmarks_path=media / "landmarks" / "talking_closeup.json")
    assert not output.exists() and leftovers(tmp_path) == []


def test_existing_output_is_replaced_only_when_complete(tiny_models, media, tmp_path):
    output = tmp_path / "out.mp4"
    output.write_bytes(b"previous result")
    shutil.copy(media / "talking_closeup.mp4", tmp_path / "clip.mp4")
    with pytest.raises(AudioError):
        dub(tmp_path / "clip.mp4", tmp_path / "clip.mp4", output, tiny_models, cache_root=tmp_path / "avatars",
            settings=FAST, landmarks_path=media / "landmarks" / "talking_closeup.json")
    assert output.read_bytes() == b"previous result"


def test_output_onto_an_input_is_refused_before_any_work(tiny_models, media, tmp_path):
    speech = tmp_path / "speech.wav"
    shutil.copy(media / "speech_short.wav", speech)
    before = speech.read_bytes()
    with pytest.raises(ValueError, match="also the audio"):
        dub(media / "talking_closeup.mp4", speech, speech, tiny_models, cache_root=tmp_path / "avatars",
            landmarks_path=media / "landmarks" / "talking_closeup.json", settings=FAST)
    with pytest.raises(ValueError, match="is a folder"):
        dub(media / "talking_closeup.mp4", speech, tmp_path, tiny_models, cache_root=tmp_path / "avatars")
    assert speech.read_bytes() == before and not (tmp_path / "avatars").exists()


def test_preview_seconds_keeps_the_start_of_the_speech():
    from musetalk_cli.main import build_parser

    samples = np.arange(2 * 16000 * 3, dtype=np.float32).reshape(2, -1)
    assert DubOptions(preview_seconds=1.5).speech_to_dub(samples, 16000).shape == (2, 24000)
    assert DubOptions().speech_to_dub(samples, 16000) is samples
    with pytest.raises(ValueError, match="preview_seconds must be positive"):
        DubOptions(preview_seconds=0)
    args = build_parser().parse_args(["dub", "a.mp4", "b.wav", "-o", "c.mp4", "--preview-seconds", "2.5"])
    assert args.preview_seconds == 2.5 and args.face_backend == "auto"
