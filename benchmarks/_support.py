"""Pieces the benchmarks share: a display for GUI benchmarks, phases in fresh processes.

The benchmarks run as scripts (``python benchmarks/bench_x.py``, or through
``run_all.py``), so this folder is on ``sys.path`` and they import this module as
``_support``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Set in the environment of a benchmark re-executed under ``xvfb-run``.
_REEXEC_FLAG = "NAPARI_SIMA_BENCH_UNDER_XVFB"


def ensure_display(size: tuple[int, int] = (1600, 1000)) -> Any:
    """Start Xvfb when there is no display; return the display to stop (or None).

    Uses ``pyvirtualdisplay`` when installed, else re-executes the running script
    under ``xvfb-run`` (this call then does not return).

    Raises
    ------
    RuntimeError
        If there is no display and neither tool is available.
    """
    if os.environ.get("DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
        return None
    try:
        from pyvirtualdisplay import Display
    except ImportError:
        Display = None  # noqa: N806
    if Display is not None:
        display = Display(visible=False, size=size, color_depth=24)
        display.start()
        os.environ["QT_QPA_PLATFORM"] = "xcb"
        return display
    xvfb_run = shutil.which("xvfb-run")
    if xvfb_run is None or os.environ.get(_REEXEC_FLAG):
        raise RuntimeError("no DISPLAY, and neither pyvirtualdisplay nor xvfb-run is available")
    env = {**os.environ, _REEXEC_FLAG: "1", "QT_QPA_PLATFORM": "xcb"}
    screen = f"-screen 0 {size[0]}x{size[1]}x24"
    os.execvpe(xvfb_run, [xvfb_run, "-a", "-s", screen, sys.executable, *sys.argv], env)
    return None  # pragma: no cover - exec does not return


def run_phase(script: str | Path, workdir: Path, name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one phase of a benchmark in a fresh Python process; return what it wrote.

    The script is called as ``script --phase NAME --workdir DIR --config JSON`` and
    must write ``DIR/phase_NAME.json``; its progress goes to stderr as it happens.
    The result gets ``process_s``, the wall time of the whole process.

    Raises
    ------
    RuntimeError
        If the phase fails or writes no result (with the end of its output).
    """
    result = workdir / f"phase_{name}.json"
    cmd = [sys.executable, str(Path(script).resolve()), "--phase", name,
           "--workdir", str(workdir), "--config", json.dumps(cfg)]
    print(f"== {name}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0 or not result.is_file():
        raise RuntimeError(f"benchmark phase {name!r} failed (exit code {proc.returncode}); "
                           f"its output:\n{proc.stdout[-4000:]}")
    out = json.loads(result.read_text())
    out["process_s"] = round(time.perf_counter() - t0, 2)
    return out


def phase_main(
    phase: str, workdir: str, config: str, phases: dict[str, Callable[[Path, dict[str, Any]], Any]]
) -> int:
    """Run one phase (the ``--phase`` side of :func:`run_phase`) and write its result.

    Raises
    ------
    SystemExit
        For an unknown phase name.
    """
    if phase not in phases:
        raise SystemExit(f"unknown phase {phase!r}; expected one of {sorted(phases)}")
    out = phases[phase](Path(workdir), json.loads(config))
    (Path(workdir) / f"phase_{phase}.json").write_text(json.dumps(out, indent=2, default=str))
    return 0
