"""Shared fixtures.

Real data is found through ``FRUGALNN_DATA``; when unset, the tests look for
the team's ``shared/data`` beside the checkout. Tests that need it are skipped
(with the reason) when neither exists. The library itself never assumes a path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _find_data_dir() -> Path | None:
    env = os.environ.get("FRUGALNN_DATA")
    if env:
        return Path(env)
    for candidate in (REPO / "shared" / "data", REPO.parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = _find_data_dir()
    if path is None or not path.is_dir():
        pytest.skip("real data not found: set FRUGALNN_DATA to the shared data directory")
    return path


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
