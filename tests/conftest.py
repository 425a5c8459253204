"""Shared fixtures: SIMA's example files (read-only) and small movies written to tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sima-examples"
if not EXAMPLES.is_dir():  # a checkout elsewhere: allow an explicit location
    EXAMPLES = Path(os.environ.get("NAPARI_SIMA_EXAMPLES", str(EXAMPLES)))


@pytest.fixture(scope="session")
def examples() -> Path:
    """Folder with SIMA's example data (``../shared/data/sima-examples``)."""
    if not EXAMPLES.is_dir():
        pytest.skip(f"SIMA example data not found at {EXAMPLES}")
    return EXAMPLES


@pytest.fixture
def movie() -> np.ndarray:
    """A small deterministic uint16 movie ``(t, z, y, x, c) = (12, 2, 9, 11, 3)``."""
    rng = np.random.default_rng(1234)
    return rng.integers(0, 4000, size=(12, 2, 9, 11, 3), dtype=np.uint16)
