"""A short fuzz run of every reader (``make fuzz`` runs >= 10,000 inputs per format)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fuzz.harness import all_targets, fuzz  # noqa: E402

#: Inputs per target in `make test` (the full job: `make fuzz`).
SHORT_RUN = 150

TARGETS = all_targets()


def test_targets_are_registered():
    assert TARGETS, "no fuzz targets found in fuzz/targets_*.py"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_short_fuzz_run(name):
    outcome = fuzz(TARGETS[name], SHORT_RUN)
    assert outcome.cases >= SHORT_RUN // 2
    assert not outcome.failures, "\n\n".join(outcome.failures[:3])
