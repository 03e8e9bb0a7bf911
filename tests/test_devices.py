"""Every model moves whole to another device, accepts the pipeline's inputs in fp16/bf16, and guards fp16 overflow.

No GPU is needed: PyTorch's ``meta`` device exists everywhere, so a helper
tensor left behind on the CPU (the first CUDA run's crash) shows up here.
"""

import numpy as np
import pytest
import torch
from torch import nn

from musetalk_lib import devices
from musetalk_lib.audio_features import load_whisper
from musetalk_lib.devices import compile_with_fallback, resolve_dtype, run_with_fp16_fallback
from musetalk_lib.face_detection import create_detector
from musetalk_lib.face_parsing import load_face_parser
from musetalk_lib.unet import load_unet
from musetalk_lib.vae import load_vae
from musetalk_lib.weights import find_model_files

META = torch.device("meta")


@pytest.fixture(scope="module")
def files(random_models):
    return find_model_files(random_models, "v15", face_parsing=True)


def model_wrappers(files) -> dict[str, nn.Module]:
    return {
        "unet": load_unet(files.unet_config, files.unet_weights),
        "vae": load_vae(files.vae_dir),
        "whisper": load_whisper(files.whisper_dir),
        "face parser": load_face_parser(files.face_parsing),
    }


def tensors_left_behind(module: nn.Module, device: torch.device) -> list[str]:
    """Names of parameters, buffers and plain tensor attributes of ``module`` not on ``device``."""
    stray = [name for name, tensor in [*module.named_parameters(), *module.named_buffers()] if tensor.device != device]
    for prefix, submodule in module.named_modules():
        for name, value in vars(submodule).items():
            if isinstance(value, torch.Tensor) and value.device != device:
                stray.append(f"{prefix}.{name}" if prefix else name)
    return stray


@pytest.mark.parametrize("name", ["unet", "vae", "whisper", "face parser"])
def test_every_tensor_of_a_model_moves_with_it(files, name):
    model = model_wrappers(files)[name].to(META)
    assert tensors_left_behind(model, META) == []
    assert model.device == META


def test_face_detector_networks_move_with_it(random_face_alignment):
    detector = create_detector("face-alignment", random_face_alignment).to(META)
    assert tensors_left_behind(detector, META) == []
    assert detector.device == META
    heatmaps = detector.landmark_net(torch.zeros(2, 3, 256, 256, device=META))
    assert (heatmaps[-1] if isinstance(heatmaps, list) else heatmaps).device == META
    assert detector.detector(torch.zeros(1, 3, 64, 64, device=META))[0].device == META


def test_models_run_on_another_device(files):
    models = {name: model.to(META) for name, model in model_wrappers(files).items()}
    predicted = models["unet"](torch.randn(2, 8, 32, 32), torch.randn(2, 50, 384))  # inputs on the CPU, as given
    assert predicted.device == META and predicted.shape == (2, 4, 32, 32)
    faces = np.zeros((2, 256, 256, 3), np.uint8)
    assert models["vae"].encode_masked_and_reference(faces).shape == (2, 8, 32, 32)
    assert models["vae"].decode_on_device(predicted, from_row=100).device == META
    logits = models["face parser"]._run(np.zeros((1, 64, 64, 3), np.uint8))
    assert logits.device == META and logits.shape == (1, 19, 64, 64)
    whisper = models["whisper"]
    mel = whisper.log_mel([np.zeros(16000, np.float32)])
    assert whisper.encoder(mel.to(whisper.device), output_hidden_states=True).last_hidden_state.device == META


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_models_accept_pipeline_inputs_in_reduced_precision(files, dtype):
    unet = load_unet(files.unet_config, files.unet_weights, dtype=dtype)
    assert unet(torch.randn(1, 8, 32, 32), torch.randn(1, 50, 384)).dtype == dtype
    vae = load_vae(files.vae_dir, dtype=dtype)
    latents = vae.encode_masked_and_reference(np.zeros((1, 256, 256, 3), np.uint8))
    assert vae.decode(latents[:, 4:], from_row=128).shape == (1, 256, 256, 3)
    whisper = load_whisper(files.whisper_dir, dtype=dtype)
    assert whisper(np.zeros(8000, np.float32)).dtype == torch.float32
    parser = load_face_parser(files.face_parsing, dtype=dtype)
    assert parser.labels([np.zeros((40, 40, 3), np.uint8)]).shape == (1, 512, 512)


@pytest.mark.parametrize(("device", "bf16", "expected"), [
    ("cuda", False, torch.float16),
    ("cpu", True, torch.bfloat16),
    ("cpu", False, torch.float32),
    ("mps", True, torch.float32),
])
def test_auto_dtype_follows_the_hardware(monkeypatch, device, bf16, expected):
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: bf16)
    assert resolve_dtype("auto", torch.device(device)) == expected
    assert resolve_dtype("fp32", torch.device(device)) == torch.float32


def test_cpu_bf16_probe_wants_amx(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert devices.cpu_has_fast_bf16()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not devices.cpu_has_fast_bf16()


def test_fp16_overflow_falls_back_to_fp32(caplog):
    module = nn.Linear(2, 2).half()
    results = iter([torch.tensor([float("inf")]), torch.tensor([1.0])])
    assert run_with_fp16_fallback("Test net", module, lambda: next(results)).item() == 1.0
    assert module.weight.dtype == torch.float32 and "fp32 from now on" in caplog.text


def test_finite_fp16_and_other_dtypes_run_once():
    calls = []
    for module, value in ((nn.Linear(2, 2).half(), 1.0), (nn.Linear(2, 2).to(torch.bfloat16), float("nan"))):
        run_with_fp16_fallback("Test net", module, lambda: calls.append(1) or torch.tensor([value]))
    assert len(calls) == 2


def test_vae_decoder_overflow_is_recovered(files, monkeypatch):
    vae = load_vae(files.vae_dir, dtype=torch.float16)
    latents = torch.randn(1, 4, 32, 32)
    decode = vae.vae.decode
    monkeypatch.setattr(vae.vae, "decode", lambda x, return_dict: (decode(x, return_dict=False)[0] * (
        float("inf") if x.dtype == torch.float16 else 1.0),))
    image = vae.decode(latents)
    assert vae.dtype == torch.float32 and image.shape == (1, 256, 256, 3)
    monkeypatch.undo()
    assert np.array_equal(image, vae.decode(latents))


def test_parser_labels_are_the_argmax_of_its_logits_in_chunks(files):
    parser = load_face_parser(files.face_parsing)
    parser.chunk_size = 2
    images = list(np.random.default_rng(3).integers(0, 256, (3, 48, 40, 3), dtype=np.uint8))
    expected = parser.logits(images).argmax(dim=1).to(torch.uint8).numpy()
    assert np.array_equal(parser.labels(images), expected)


def test_compile_falls_back_to_the_plain_module(monkeypatch, caplog):
    def broken_compile(function):
        def run(*args, **kwargs):
            raise RuntimeError("no C++ compiler found\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    module = nn.Linear(3, 2)
    expected = module(torch.ones(1, 3))
    compile_with_fallback(module, "Test net")
    assert torch.equal(module(torch.ones(1, 3)), expected)
    assert torch.equal(module(torch.ones(1, 3)), expected)
    assert caplog.text.count("could not be compiled (RuntimeError: no C++ compiler found)") == 1


def test_compiled_module_gives_the_same_result(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda function: function)  # the contract, without a compiler run
    module = nn.Linear(3, 2)
    expected = module(torch.ones(1, 3))
    assert torch.equal(compile_with_fallback(module, "Test net")(torch.ones(1, 3)), expected)
