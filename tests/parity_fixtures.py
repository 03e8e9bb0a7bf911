"""Deterministic random weights and inputs for the parity tests against reference code (numpy only).

``scripts/make_fid_parity_fixture.py`` feeds them to pytorch-fid's InceptionV3,
``scripts/make_lse_parity_fixture.py`` to syncnet_python's evaluation and
``scripts/make_mel_parity_fixture.py`` to the official MuseTalk training's mel
spectrogram; they store the results in ``tests/data/``, and the tests feed the same weights and
inputs to this package's code. Everything is drawn from numpy's PCG64
generator, which gives the same numbers on every platform and version.
"""

from collections.abc import Mapping, Sequence

import numpy as np

FID_FIXTURE = "fid_parity.npz"
FID_SEED = 20151205
FID_INPUT_SHAPE = (3, 3, 75, 100)  # three RGB images in [0, 1], resized to 299x299 by both networks

LSE_FIXTURE = "lse_parity.npz"
LSE_SEED = 2016
LSE_FRAMES = 24  # 25 fps: 19 windows of 5 frames
LSE_SAMPLES = LSE_FRAMES * 640 + 333  # 16 kHz, a little longer than the video
# The towers' first layers read pixels (0-255) and MFCCs (tens): scaled down so activations stay of order one.
LSE_WEIGHT_SCALES = {"netcnnlip.0.weight": 1 / 128, "netcnnaud.0.weight": 1 / 16}


def random_weights(shapes: Mapping[str, Sequence[int]], seed: int,
                   scales: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
    """float32 weights for the names in ``shapes``, drawn in sorted name order, times ``scales[name]`` if given.

    Scales keep activations finite and varied through the network: He-normal
    convolution and linear weights, BatchNorm scales near 1 with positive
    running variances, small biases and running means.
    """
    rng = np.random.default_rng(seed)
    weights = {}
    for name in sorted(shapes):
        shape = tuple(int(size) for size in shapes[name])
        if name.endswith("running_var"):
            values = rng.uniform(0.5, 1.5, shape)
        elif len(shape) == 1 and name.endswith("weight"):  # BatchNorm scale
            values = rng.uniform(0.8, 1.2, shape)
        elif len(shape) == 1:  # biases, running means
            values = rng.normal(0.0, 0.1, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            values = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        weights[name] = (values * (scales or {}).get(name, 1.0)).astype(np.float32)
    return weights


def random_images(seed: int = FID_SEED) -> np.ndarray:
    """``FID_INPUT_SHAPE`` float32 images in [0, 1)."""
    return np.random.default_rng(seed + 1).random(FID_INPUT_SHAPE, dtype=np.float32)


def random_face_track(seed: int = LSE_SEED) -> tuple[np.ndarray, np.ndarray]:
    """``LSE_FRAMES`` 224x224 uint8 BGR crops and ``LSE_SAMPLES`` int16 samples of 16 kHz audio."""
    rng = np.random.default_rng(seed + 1)
    crops = rng.integers(0, 256, (LSE_FRAMES, 224, 224, 3), dtype=np.uint8)
    audio = np.clip(rng.normal(0.0, 3000.0, LSE_SAMPLES), -32768, 32767).astype(np.int16)
    return crops, audio


MEL_FIXTURE = "mel_parity.npz"
MEL_SEED = 80


def random_speechlike_audio(seed: int = MEL_SEED) -> np.ndarray:
    """0.6 s of float32 16 kHz audio: noise under a syllable-rate envelope plus a 220 Hz tone, with 0.1 s of
    silence in the middle (the dB floor) and sound up to both ends (where the STFT's padding shows)."""
    rng = np.random.default_rng(seed)
    t = np.arange(8000) / 16000
    envelope = 0.2 + 0.8 * np.abs(np.sin(2 * np.pi * 4 * t))
    sound = 0.3 * envelope * rng.normal(0.0, 1.0, t.size) + 0.2 * np.sin(2 * np.pi * 220 * t)
    return np.concatenate([sound[:4000], np.zeros(1600), sound[4000:]]).astype(np.float32)
