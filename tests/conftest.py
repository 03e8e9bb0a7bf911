"""Shared test setup: ``tests/`` helpers on the path, few torch threads, tiny random models."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

from musetalk_lib.random_weights import write_random_weights  # noqa: E402


@pytest.fixture(scope="session")
def random_models(tmp_path_factory) -> Path:
    """A models folder with tiny RANDOM weights in the official layout."""
    return write_random_weights(tmp_path_factory.mktemp("models"), size="tiny", seed=0)
