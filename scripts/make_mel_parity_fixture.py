"""Write tests/data/mel_parity.npz: the official MuseTalk training's SyncNet mel spectrogram of a seeded signal.

Run by hand with a clone of MuseTalk (TMElyralab/MuseTalk on GitHub) in a
separate environment with the librosa version its requirements pin, never in
CI or the project's venv::

    git clone https://github.com/TMElyralab/MuseTalk /tmp/MuseTalk
    /tmp/fidvenv/bin/pip install librosa==0.11.0 scipy numpy
    /tmp/fidvenv/bin/python scripts/make_mel_parity_fixture.py /tmp/MuseTalk

``musetalk/data/audio.py`` (Wav2Lip's settings, what the official stage 2
feeds its SyncNet) computes ``melspectrogram`` of the seeded signal from
``tests/parity_fixtures.py``; the fixture holds the seed and the result.
"""

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from parity_fixtures import MEL_FIXTURE, MEL_SEED, random_speechlike_audio  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("musetalk", type=Path, help="a clone of MuseTalk")
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("musetalk_audio", args.musetalk / "musetalk" / "data" / "audio.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    audio = random_speechlike_audio(MEL_SEED)
    mel = reference.melspectrogram(audio.astype(np.float64))
    commit = subprocess.run(["git", "-C", str(args.musetalk), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    output = ROOT / "tests" / "data" / MEL_FIXTURE
    np.savez_compressed(output, seed=np.int64(MEL_SEED), mel=mel.astype(np.float32),
                        versions=np.array([f"MuseTalk {commit or 'unknown'}", f"librosa {librosa.__version__}"]))
    print(f"{output}: mel {mel.shape}, range {mel.min():.3f} .. {mel.max():.3f}")


if __name__ == "__main__":
    main()
