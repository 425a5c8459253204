"""Fuzzing harness: run a reader on many generated inputs and classify the outcomes.

A *target* is a function ``target(data, workdir)`` that writes ``data`` (bytes or a
structured value drawn by the target's hypothesis strategy) into ``workdir`` and runs
napari-sima's reader on it.  Each input must end in a result or one of
:data:`napari_sima.core.errors.READ_ERRORS`; anything else, a hang (per-input time
limit) or a memory blow-up (address-space cap in ``make fuzz``) is a failure.

Targets are registered in the ``TARGETS`` dicts of ``fuzz/targets_*.py``::

    TARGETS = {"imagej-roi": Target(strategy=st.binary(max_size=4096), run=read_roi_bytes)}

Used by ``fuzz/run.py`` (``make fuzz``: >= 10,000 cases per format, table of outcomes)
and by ``tests/fuzz/test_fuzz.py`` (a short run in ``make test``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import pkgutil
import shutil
import signal
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_sima.core.errors import READ_ERRORS

#: Seconds one input may take before it counts as a hang.
TIME_LIMIT = 5.0


@dataclasses.dataclass
class Target:
    """A reader under test and the strategy drawing its inputs."""

    strategy: st.SearchStrategy[Any]
    run: Callable[[Any, Path], Any]
    description: str = ""


class Hang(Exception):
    """An input took longer than :data:`TIME_LIMIT`."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread after ``seconds`` (SIGALRM timer)."""

    def alarm(signum: int, frame: Any) -> None:
        raise Hang(f"input took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclasses.dataclass
class Outcome:
    """Counts of one target's outcomes."""

    cases: int = 0
    results: int = 0
    errors: Counter = dataclasses.field(default_factory=Counter)  # documented, by type
    failures: list[str] = dataclasses.field(default_factory=list)  # anything else
    max_seconds: float = 0.0

    def as_row(self) -> dict[str, Any]:
        """Return the counts as a table row."""
        return {
            "cases": self.cases,
            "results": self.results,
            "documented errors": dict(self.errors.most_common()),
            "failures": len(self.failures),
            "slowest input (s)": round(self.max_seconds, 3),
        }


def run_one(target: Target, data: Any, outcome: Outcome) -> None:
    """Run ``target`` on one input and record what happened (never raises)."""
    workdir = Path(tempfile.mkdtemp(prefix="napari_sima_fuzz_"))
    t0 = time.perf_counter()
    try:
        with time_limit(TIME_LIMIT):
            target.run(data, workdir)
        outcome.results += 1
    except READ_ERRORS as err:
        outcome.errors[type(err).__name__] += 1
    except Hang as err:
        outcome.failures.append(f"hang: {err}; input {data!r:.300}")
    except Exception as err:  # noqa: BLE001 - the point: any other type is a failure
        outcome.failures.append(
            f"{type(err).__name__}: {err}; input {data!r:.300}\n"
            + "".join(traceback.format_exception(err)[-6:])
        )
    except MemoryError as err:  # pragma: no cover - with the address-space cap
        outcome.failures.append(f"MemoryError: {err}; input {data!r:.300}")
    finally:
        outcome.cases += 1
        outcome.max_seconds = max(outcome.max_seconds, time.perf_counter() - t0)
        shutil.rmtree(workdir, ignore_errors=True)


def fuzz(target: Target, max_examples: int, seed: int | None = 0) -> Outcome:
    """Run ``target`` on ``max_examples`` inputs drawn by hypothesis; return the counts."""
    outcome = Outcome()

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=seed is not None,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(target.strategy)
    def check(data: Any) -> None:
        run_one(target, data, outcome)

    check()
    return outcome


def all_targets() -> dict[str, Target]:
    """Every registered target, from the ``TARGETS`` of the ``fuzz.targets_*`` modules."""
    import fuzz

    out: dict[str, Target] = {}
    for info in pkgutil.iter_modules(fuzz.__path__):
        if info.name.startswith("targets_"):
            module = importlib.import_module(f"fuzz.{info.name}")
            out.update(getattr(module, "TARGETS", {}))
    return out
