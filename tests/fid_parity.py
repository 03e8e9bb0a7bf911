"""Deterministic random weights and inputs for the FID InceptionV3 parity test (numpy only).

``scripts/make_fid_parity_fixture.py`` feeds them to pytorch-fid's network and
stores its features in ``tests/data/fid_parity.npz``; the test feeds the same
weights to ``training.evaluate.FIDInceptionV3``. Both sides draw from numpy's
PCG64 generator, which gives the same numbers on every platform and version.
"""

from collections.abc import Mapping, Sequence

import numpy as np

FIXTURE_NAME = "fid_parity.npz"
SEED = 20151205
INPUT_SHAPE = (3, 3, 75, 100)  # three RGB images in [0, 1], resized to 299x299 by both networks


def random_inception_weights(shapes: Mapping[str, Sequence[int]], seed: int = SEED) -> dict[str, np.ndarray]:
    """float32 weights for the ``pt_inception`` names in ``shapes``, drawn in sorted name order.

    Scales keep activations of order one through the network: He-normal
    convolutions, BatchNorm scales near 1 with positive running variances.
    """
    rng = np.random.default_rng(seed)
    weights = {}
    for name in sorted(shapes):
        shape = tuple(int(size) for size in shapes[name])
        if name.endswith("running_var"):
            values = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("bn.weight"):
            values = rng.uniform(0.8, 1.2, shape)
        elif name.endswith(("bn.bias", "running_mean")) or name == "fc.bias":
            values = rng.normal(0.0, 0.1, shape)
        else:  # convolution and classifier weights
            fan_in = int(np.prod(shape[1:]))
            values = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        weights[name] = values.astype(np.float32)
    return weights


def random_images(seed: int = SEED) -> np.ndarray:
    """``INPUT_SHAPE`` float32 images in [0, 1)."""
    return np.random.default_rng(seed + 1).random(INPUT_SHAPE, dtype=np.float32)
