"""Write tests/data/lse_parity.npz: syncnet_python's LSE of a seeded random face track with seeded random weights.

Run by hand with a clone of syncnet_python (joonson/syncnet_python on GitHub)
in any environment with torch, opencv-python, scipy and python-speech-features
(the project's venv with the ``test`` extra has them), never in CI::

    git clone https://github.com/joonson/syncnet_python /tmp/syncnet_python
    .venv/bin/python scripts/make_lse_parity_fixture.py /tmp/syncnet_python

It runs the reference ``SyncNetInstance.evaluate`` itself, on the CPU, with
weights drawn by ``tests/parity_fixtures.py`` under ``syncnet_v2.model``'s
names (loaded by its ``loadParameters``). Its two ffmpeg calls are replaced by
writing what they would produce: the 25 fps face crops as frame files (PNG
data under its ``%06d.jpg`` names, which OpenCV reads by content, so no JPEG
loss) and the 16-bit 16 kHz audio as ``audio.wav``. The fixture holds the
weight names and shapes, the seed, and the reference's results: AV offset,
minimum mean distance (LSE-D), confidence (LSE-C) and the distance matrix.
"""

import argparse
import subprocess
import sys
import tempfile
import types
from importlib.metadata import version
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.io import wavfile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from parity_fixtures import (LSE_FIXTURE, LSE_SEED, LSE_WEIGHT_SCALES, random_face_track,  # noqa: E402
                             random_weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("syncnet_python", type=Path, help="a clone of syncnet_python")
    args = parser.parse_args()
    sys.path.insert(0, str(args.syncnet_python))
    if not torch.cuda.is_available():  # the reference moves everything to CUDA; run it on the CPU instead
        torch.nn.Module.cuda = lambda module, *_, **__: module
        torch.Tensor.cuda = lambda tensor, *_, **__: tensor
    import SyncNetInstance as reference

    crops, audio = random_face_track(LSE_SEED)

    def write_what_ffmpeg_would(command: str, **_) -> int:
        folder = Path(command.split()[-1]).parent
        if "%06d.jpg" in command:
            for index, crop in enumerate(crops, start=1):
                (folder / f"{index:06d}.jpg").write_bytes(cv2.imencode(".png", crop)[1].tobytes())
        else:
            wavfile.write(folder / "audio.wav", 16000, audio)
        return 0

    reference.subprocess = types.SimpleNamespace(call=write_what_ffmpeg_would)
    instance = reference.SyncNetInstance()
    shapes = {name: tuple(tensor.shape) for name, tensor in instance.__S__.state_dict().items()
              if not name.endswith("num_batches_tracked")}
    with tempfile.TemporaryDirectory() as work:
        weights = Path(work) / "syncnet_v2.model"
        drawn = random_weights(shapes, LSE_SEED, LSE_WEIGHT_SCALES)
        torch.save({name: torch.from_numpy(values) for name, values in drawn.items()}, weights)
        instance.loadParameters(str(weights))
        options = types.SimpleNamespace(tmp_dir=work, reference="parity", batch_size=20, vshift=15)
        offset, confidence, distances = instance.evaluate(options, videofile="(frames written directly)")
    mean_distance = distances.mean(axis=0)
    commit = subprocess.run(["git", "-C", str(args.syncnet_python), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    names = sorted(shapes)
    output = ROOT / "tests" / "data" / LSE_FIXTURE
    np.savez_compressed(
        output, seed=np.int64(LSE_SEED), names=np.array(names), shapes=np.array([repr(shapes[n]) for n in names]),
        offset=np.int64(offset), lse_d=np.float64(mean_distance.min()), lse_c=np.float64(confidence),
        distances=distances.astype(np.float32),
        versions=np.array([f"syncnet_python {commit or 'unknown'}", f"torch {torch.__version__}",
                           f"python_speech_features {version('python_speech_features')}",
                           f"opencv {cv2.__version__}"]),
    )
    print(f"{output}: offset {int(offset)}, LSE-D {mean_distance.min():.4f}, LSE-C {float(confidence):.4f}, "
          f"{distances.shape[0]} windows")


if __name__ == "__main__":
    main()
