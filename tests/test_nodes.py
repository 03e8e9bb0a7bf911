"""ComfyUI nodes called directly (no ComfyUI needed) on tiny RANDOM weights, and their declared contracts."""

import inspect
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch
from pack import REPO, load_pack

PACK = load_pack()
NODES = PACK.NODE_CLASS_MAPPINGS


def node(name):
    return NODES[name]()


@pytest.mark.parametrize("node_id", sorted(NODES))
def test_node_contract(node_id):
    cls = NODES[node_id]
    assert node_id.startswith("MuseTalk") and node_id != "MuseTalkRun"
    assert PACK.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("MuseTalk ")
    inputs = cls.INPUT_TYPES()
    assert set(inputs) <= {"required", "optional", "hidden"} and "required" in inputs
    names = list(inputs["required"]) + list(inputs.get("optional", {})) + list(inputs.get("hidden", {}))
    signature = inspect.signature(getattr(cls, cls.FUNCTION))
    parameters = [p for p in signature.parameters if p != "self"]
    assert sorted(parameters) == sorted(names), "function parameters must match the declared inputs"
    for name in inputs.get("optional", {}):
        assert signature.parameters[name].default is not inspect.Parameter.empty
    for spec in list(inputs["required"].values()) + list(inputs.get("optional", {}).values()):
        kind = spec[0]
        assert isinstance(kind, (str, list)), spec
        options = spec[1] if len(spec) > 1 else {}
        if kind in ("INT", "FLOAT"):
            assert options["min"] <= options["default"] <= options["max"]
        if isinstance(kind, list) and "default" in options:
            assert options["default"] in kind
    uploads = [name for name, spec in inputs["required"].items()
               if len(spec) > 1 and (spec[1].get("video_upload") or spec[1].get("image_upload"))]
    if uploads:  # the frontend appends an upload button after the required inputs: no widget may follow it
        assert all(spec[0] not in ("INT", "FLOAT", "STRING", "BOOLEAN") and not isinstance(spec[0], list)
                   for spec in inputs.get("optional", {}).values())
    assert isinstance(cls.RETURN_TYPES, tuple) and len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
    assert cls.CATEGORY.startswith("MuseTalk") and cls.DESCRIPTION


def test_registering_the_nodes_loads_no_model_libraries():
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('pack', {str(REPO / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(REPO)!r}])\n"
        "module = importlib.util.module_from_spec(spec); sys.modules['pack'] = module; spec.loader.exec_module(module)\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'cv2', 'av', 'face_alignment') if m in sys.modules]\n"
        "print(len(module.NODE_CLASS_MAPPINGS), heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"{len(NODES)} []"


@pytest.fixture
def workspace(tmp_path, monkeypatch, random_models, media):
    """Outside ComfyUI: models from $MUSETALK_MODELS_DIR, the input folder is the working directory."""
    monkeypatch.setenv("MUSETALK_MODELS_DIR", str(random_models))
    monkeypatch.chdir(tmp_path)
    for name in ("talking_closeup.mp4", "face_still.png"):
        (tmp_path / name).symlink_to(media / name)
    (tmp_path / "landmarks").symlink_to(media / "landmarks")
    return tmp_path


def audio_value(path):
    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return {"waveform": torch.from_numpy(samples.T.copy())[None], "sample_rate": rate}


class LazyAudio(Mapping):
    """Behaves like VHS's LazyAudioMap: a Mapping, not a dict."""

    def __init__(self, value):
        self._value = value

    def __getitem__(self, key):
        return self._value[key]

    def __iter__(self):
        return iter(self._value)

    def __len__(self):
        return len(self._value)


@pytest.fixture(scope="module")
def loaded(random_models):
    import os

    os.environ["MUSETALK_MODELS_DIR"] = str(random_models)
    try:
        return {
            "unet": node("MuseTalkUNetLoader").load("v15", "fp32")[0],
            "vae": node("MuseTalkVAELoader").load("fp32")[0],
            "whisper": node("MuseTalkWhisperLoader").load("fp32")[0],
            "parser": node("MuseTalkFaceParserLoader").load("fp32")[0],
        }
    finally:
        del os.environ["MUSETALK_MODELS_DIR"]


AVATAR_ARGS = dict(face_backend="landmarks file", bbox_shift=0, extra_margin=10, face_selection="largest",
                   face_index=0, face_point_x=0, face_point_y=0, smoothing=2)


def avatar(file="", landmarks_file="", fps=25.0, **overrides):
    return node("MuseTalkLoadAvatar").load(file=file, fps=fps, landmarks_file=landmarks_file,
                                           **{**AVATAR_ARGS, **overrides})


def probe(path):
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        return video.frames, container.streams.audio[0].duration * container.streams.audio[0].time_base


def test_composable_blocks_make_a_video(workspace, loaded, media):
    avatar_value, preview, fps, count = avatar("talking_closeup.mp4", "landmarks/talking_closeup.json")
    assert fps == 15.0 and count == 45 and preview.shape[-1] == 3 and preview.dtype == torch.float32
    features, frames = node("MuseTalkWhisperAudioFeatures").encode(
        loaded["whisper"], LazyAudio(audio_value(media / "speech_short.wav")), fps, 2, 2, True)
    latents, = node("MuseTalkVAEEncodeMaskedFace").encode(avatar_value, loaded["vae"], 8)
    predicted, = node("MuseTalkUNet").predict(loaded["unet"], latents, features, 8, "pingpong")
    assert predicted.latents.shape == (frames, 4, 32, 32)
    images, stream, out_fps = node("MuseTalkBlendMouth").blend(predicted, loaded["vae"], "landmarks", "normal", 90, 8,
                                                               True)
    assert images.shape == (frames, 350, 350, 3) and out_fps == 15.0
    result = node("MuseTalkVideoCombine").combine(out_fps, "MuseTalk/test", 23, frames=stream,
                                                  audio=audio_value(media / "speech_short.wav"))
    path = Path(result["result"][0])
    assert path.is_file() and path.parent == workspace / "output" / "MuseTalk"
    assert result["ui"]["images"][0] == {"filename": path.name, "subfolder": "MuseTalk", "type": "output"}
    video_frames, audio_seconds = probe(path)
    assert video_frames == frames and float(audio_seconds) == pytest.approx(frames / 15, abs=0.05)
    second = node("MuseTalkVideoCombine").combine(out_fps, "MuseTalk/test", 23, images=images)
    assert Path(second["result"][0]).name == "test_00002_.mp4"


def test_blend_mouth_builds_images_only_when_they_are_used(workspace, loaded, media):
    avatar_value, *_ = avatar("face_still.png", "landmarks/face_still.json")
    features, frames = node("MuseTalkWhisperAudioFeatures").encode(
        loaded["whisper"], audio_value(media / "speech_short.wav"), 25.0, 2, 2, True)
    latents, = node("MuseTalkVAEEncodeMaskedFace").encode(avatar_value, loaded["vae"], 4)
    predicted, = node("MuseTalkUNet").predict(loaded["unet"], latents, features, 4, "pingpong")
    prompt = {"7": {"class_type": "MuseTalkVideoCombine", "inputs": {"frames": ["5", 1]}}}
    images, stream, _ = node("MuseTalkBlendMouth").blend(predicted, loaded["vae"], "jaw", "realtime", 90, 4, True,
                                                         face_parser=loaded["parser"], unique_id="5", prompt=prompt)
    assert images is None and len(list(stream)) == frames == 19


@pytest.fixture
def decode_calls(monkeypatch):
    """Rows of every ``FaceVAE.decode`` call, one entry per call."""
    from importlib import import_module

    vae = import_module(PACK.__name__ + ".musetalk_lib.vae").FaceVAE
    decode, calls = vae.decode, []
    monkeypatch.setattr(vae, "decode", lambda self, latents, *args: calls.append(len(latents)) or decode(self, latents, *args))
    return calls


def test_blend_mouth_decodes_once_for_both_outputs(workspace, loaded, media, decode_calls):
    avatar_value, *_ = avatar("face_still.png", "landmarks/face_still.json")
    features, frames = node("MuseTalkWhisperAudioFeatures").encode(
        loaded["whisper"], audio_value(media / "speech_short.wav"), 25.0, 2, 2, True)
    latents, = node("MuseTalkVAEEncodeMaskedFace").encode(avatar_value, loaded["vae"], 4)
    predicted, = node("MuseTalkUNet").predict(loaded["unet"], latents, features, 4, "pingpong")
    blend = node("MuseTalkBlendMouth").blend
    only_frames = {"7": {"class_type": "MuseTalkVideoCombine", "inputs": {"frames": ["5", 1]}}}
    _, stream, _ = blend(predicted, loaded["vae"], "landmarks", "normal", 90, 4, True, unique_id="5", prompt=only_frames)
    streamed = list(stream)
    assert decode_calls == [4, 4, 4, 4, 3]
    decode_calls.clear()
    images, stream, _ = blend(predicted, loaded["vae"], "landmarks", "normal", 90, 4, True)  # both outputs linked
    replayed = list(stream)
    assert decode_calls == [4, 4, 4, 4, 3] and len(replayed) == frames == 19
    assert all(np.array_equal(a, b) for a, b in zip(replayed, streamed))
    assert np.array_equal(np.stack(replayed), (images * 255).round().byte().numpy())


def test_dub_node_decodes_once_for_both_outputs(workspace, loaded, media, decode_calls):
    images, _, _, stream = node("MuseTalkDub").dub(
        loaded["unet"], loaded["vae"], loaded["whisper"], audio_value(media / "speech_short.wav"), "face_still.png",
        25.0, mask_mode="landmarks", blend="normal", length_policy="pingpong", batch_size=8,
        landmarks_file="landmarks/face_still.json", **AVATAR_ARGS)
    assert decode_calls == [8, 8, 3]
    frames = list(stream)
    assert decode_calls == [8, 8, 3] and len(frames) == len(images) == 19
    assert np.array_equal(np.stack(frames), (images * 255).round().byte().numpy())


def test_image_frames_invert_frames_to_image():
    from importlib import import_module

    convert = import_module(PACK.__name__ + ".nodes.convert")
    frames = np.arange(3 * 5 * 7 * 3).reshape(3, 5, 7, 3).astype(np.uint8)  # odd size, every value 0..255 twice
    image = convert.frames_to_image(frames, 3, even=True)
    assert image.shape == (3, 6, 8, 3)
    assert np.array_equal(np.stack(list(convert.image_frames(image, 7, 5))), frames)


def test_face_detector_is_managed_and_kept_between_runs(workspace, random_face_alignment, monkeypatch):
    import os
    from importlib import import_module

    monkeypatch.setenv("MUSETALK_MODELS_DIR", str(random_face_alignment))
    nodes_avatar = import_module(PACK.__name__ + ".nodes.avatar")
    runtime = import_module(PACK.__name__ + ".nodes.runtime")
    detection = import_module(PACK.__name__ + ".musetalk_lib.face_detection")
    monkeypatch.setattr(nodes_avatar, "_detectors", {})
    built, readied = [], []
    create, ready = detection.create_detector, runtime.ManagedModel.ready
    monkeypatch.setattr(detection, "create_detector", lambda *args: built.append(args) or create(*args))
    monkeypatch.setattr(runtime.ManagedModel, "ready", lambda self: readied.append(self.kind) or ready(self))
    for _ in range(2):
        value, *_ = avatar("face_still.png", face_backend="face-alignment")
        assert not value.track.has_face.any()  # the random S3FD finds nothing
    assert len(built) == 1 and built[0][0] == "face-alignment" and built[0][2] == runtime.offload_device()
    assert readied == ["face-alignment", "face-alignment"]  # moved to the compute device before each detection
    _, managed = nodes_avatar._detectors["face-alignment"]
    assert isinstance(managed, runtime.ManagedModel) and isinstance(managed.module, detection.FaceAlignmentDetector)

    weights = random_face_alignment / "face_alignment" / "s3fd-619a316812.pth"
    stat = weights.stat()
    try:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
        assert nodes_avatar.face_detector("face-alignment") is not managed.module and len(built) == 2
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_dub_node_returns_matching_frames_and_audio(workspace, loaded, media):
    with av.open(str(media / "talking_closeup.mp4")) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    images = torch.from_numpy(frames).float() / 255
    speech = audio_value(media / "speech_44k_stereo.wav")
    out_images, out_audio, fps, stream = node("MuseTalkDub").dub(
        loaded["unet"], loaded["vae"], loaded["whisper"], speech, "", 15.0, mask_mode="landmarks", blend="normal",
        length_policy="trim", batch_size=8, images=images, landmarks_file="landmarks/talking_closeup.json",
        **AVATAR_ARGS)
    assert out_images.shape == (45, 350, 350, 3) and fps == 15.0 and stream.num_frames == 45
    assert out_audio["sample_rate"] == 44100
    assert out_audio["waveform"].shape == (1, 2, 3 * 44100)


def test_image_batch_input_and_odd_sizes_pad_to_even(workspace, loaded, media):
    with av.open(str(media / "odd_size.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(4), container.decode(video=0))]
    images = torch.from_numpy(np.stack(frames)).float() / 255
    landmarks = Path("odd.json")
    import json

    data = json.loads((media / "landmarks" / "odd_size.json").read_text())
    data["frames"] = data["frames"][:4]
    landmarks.write_text(json.dumps(data))
    out_images, *_ = node("MuseTalkDub").dub(
        loaded["unet"], loaded["vae"], loaded["whisper"], audio_value(media / "speech_short.wav"), "", 15.0,
        mask_mode="landmarks", blend="normal", length_policy="pingpong", batch_size=8, images=images,
        landmarks_file=str(landmarks), **AVATAR_ARGS)
    assert out_images.shape[1:] == (350, 352, 3)


def test_fps_mismatch_is_explained(workspace, loaded, media):
    avatar_value, *_ = avatar("face_still.png", "landmarks/face_still.json")
    features, _ = node("MuseTalkWhisperAudioFeatures").encode(
        loaded["whisper"], audio_value(media / "speech_short.wav"), 30.0, 2, 2, True)
    latents, = node("MuseTalkVAEEncodeMaskedFace").encode(avatar_value, loaded["vae"], 4)
    with pytest.raises(ValueError, match="Load Avatar's fps"):
        node("MuseTalkUNet").predict(loaded["unet"], latents, features, 4, "pingpong")


def test_missing_weights_fail_only_the_loader(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSETALK_MODELS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "musetalkV15" / "unet.pth")):
        node("MuseTalkUNetLoader").load("v15", "auto")
    assert node("MuseTalkUNetLoader").IS_CHANGED("v15", "auto") == "missing"


def test_load_avatar_validation(workspace):
    cls = NODES["MuseTalkLoadAvatar"]
    assert cls.VALIDATE_INPUTS(file="talking_closeup.mp4") is True
    assert "not found" in cls.VALIDATE_INPUTS(file="nope.mp4")
    with pytest.raises(ValueError, match="Connect an IMAGE"):
        avatar()


def test_output_link_detection():
    from importlib import import_module

    runtime = import_module(PACK.__name__ + ".nodes.runtime")
    prompt = {"3": {"inputs": {"images": ["2", 0], "fps": 25}}, "4": {"inputs": {"frames": ["2", 1]}}}
    assert runtime.output_is_linked(prompt, "2", 0) and runtime.output_is_linked(prompt, "2", 1)
    assert not runtime.output_is_linked(prompt, "2", 2) and runtime.output_is_linked(None, "2", 0)
