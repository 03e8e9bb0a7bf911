"""Shared test setup: ``tests/`` helpers on the path, few torch threads, tiny random models."""

import sys
from pathlib import Path

import pytest
import torch
from media_dir import MEDIA, MISSING_MEDIA

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1]))  # the `training` package is used from the repository root
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

from musetalk_lib.random_weights import write_random_weights  # noqa: E402


@pytest.fixture(scope="session")
def random_models(tmp_path_factory) -> Path:
    """A models folder with tiny RANDOM weights in the official layout."""
    return write_random_weights(tmp_path_factory.mktemp("models"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def random_face_alignment(tmp_path_factory) -> Path:
    """A models folder with RANDOM S3FD and FAN weights in ``face_alignment/`` (S3FD detects nothing)."""
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    folder = tmp_path_factory.mktemp("models") / "face_alignment"
    folder.mkdir()
    torch.manual_seed(0)
    detector = s3fd()
    with torch.no_grad():  # make "face" scores negligible so nothing is detected
        for name, parameter in detector.named_parameters():
            if "mbox_conf" in name and name.endswith("bias"):
                parameter[:] = torch.tensor([20.0, -20.0]).repeat(len(parameter) // 2)[: len(parameter)]
    torch.save(detector.state_dict(), folder / "s3fd-619a316812.pth")
    torch.save(FAN(4).state_dict(), folder / "2DFAN4-11f355bf06.pth.tar")
    return folder.parent


@pytest.fixture(scope="session")
def media() -> Path:
    """The shared test clips, speech and landmark files (``$MUSETALK_MEDIA_DIR``, default ../shared/media)."""
    assert MEDIA.is_dir(), MISSING_MEDIA
    return MEDIA


@pytest.fixture(scope="session")
def tiny_models(random_models):
    """Tiny RANDOM MuseTalk models loaded on the CPU in float32 (with the face parser)."""
    from musetalk_lib.pipeline import MuseTalkModels

    return MuseTalkModels.load(random_models, "v15", device="cpu", dtype="fp32")


@pytest.fixture
def repository_root(monkeypatch) -> Path:
    """Run the test from the repository root, where the training configs' relative paths point."""
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    return root


GOLDEN_DIFFERENCES: list = []  # (case id, golden_harness.Difference) recorded by test_golden.py in fp16/bf16


def pytest_runtest_logreport(report) -> None:
    if report.when == "call":
        GOLDEN_DIFFERENCES.extend(row for name, rows in report.user_properties if name == "golden_differences"
                                  for row in rows)


def pytest_terminal_summary(terminalreporter) -> None:
    """After a golden run in fp16/bf16, print the differences the cases recorded (identical arrays left out)."""
    if not GOLDEN_DIFFERENCES:
        return
    from golden_harness import differences_table, golden_device, golden_dtype

    differing = [(case, difference) for case, difference in GOLDEN_DIFFERENCES if difference.max_abs != 0]
    terminalreporter.write_sep("=", f"golden differences on {golden_device()} in {golden_dtype()} "
                                    "(reported, not asserted)")
    terminalreporter.write_line(differences_table(differing))
    if len(differing) < len(GOLDEN_DIFFERENCES):
        terminalreporter.write_line(f"{len(GOLDEN_DIFFERENCES) - len(differing)} more arrays equal the expected ones.")
