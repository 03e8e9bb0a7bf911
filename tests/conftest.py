"""Shared test setup: make ``tests/`` helpers importable and keep torch on few threads."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
