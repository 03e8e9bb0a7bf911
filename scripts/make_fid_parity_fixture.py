"""Write tests/data/fid_parity.npz: pytorch-fid's InceptionV3 features for seeded random weights and images.

Run by hand, in a separate environment that has pytorch-fid (and so
torchvision), never in CI or the project's venv::

    python3 -m venv /tmp/fidvenv
    /tmp/fidvenv/bin/pip install torch torchvision pytorch-fid numpy scipy pillow
    /tmp/fidvenv/bin/python scripts/make_fid_parity_fixture.py

pytorch-fid's ``InceptionV3([3])`` (the FID variant: ``use_fid_inception=True``,
inputs resized to 299x299 and scaled to [-1, 1]) is built the way the library
builds it, except that its download of ``pt_inception-2015-12-05`` is replaced
by weights drawn by ``tests/parity_fixtures.py`` under the same names. The fixture
holds those names and shapes (so the test draws the same weights), the seed,
and the 2048-d features of the seeded images; the images themselves are
redrawn from the seed.
"""

import sys
from pathlib import Path

import numpy as np
import pytorch_fid
import torch
import torchvision
from pytorch_fid import inception

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from parity_fixtures import FID_FIXTURE, FID_SEED, random_images, random_weights  # noqa: E402


def pt_inception_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of the ``pt_inception`` file: torchvision's InceptionV3 with 1008 classes, no aux head."""
    network = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    return {name: tuple(tensor.shape) for name, tensor in network.state_dict().items()
            if not name.endswith("num_batches_tracked")}


def main() -> None:
    shapes = pt_inception_shapes()
    weights = {name: torch.from_numpy(values) for name, values in random_weights(shapes, FID_SEED).items()}
    inception.load_state_dict_from_url = lambda *args, **kwargs: weights  # instead of downloading pt_inception
    network = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    with torch.no_grad():
        features = network(torch.from_numpy(random_images(FID_SEED)))[0].flatten(1).numpy()
    names = sorted(shapes)
    output = ROOT / "tests" / "data" / FID_FIXTURE
    np.savez_compressed(
        output, seed=np.int64(FID_SEED), names=np.array(names), shapes=np.array([repr(shapes[n]) for n in names]),
        features=features.astype(np.float32),
        versions=np.array([f"pytorch-fid {pytorch_fid.__version__}", f"torch {torch.__version__}",
                           f"torchvision {torchvision.__version__}"]),
    )
    print(f"{output}: features {features.shape}, |mean| {np.abs(features).mean():.4f}, "
          f"std {features.std():.4f}, max {features.max():.4f}")


if __name__ == "__main__":
    main()
