"""Kill-during-save campaign: SIGKILL a process saving ROI sets, signal sets and
``dataset.json`` hundreds of times; after every kill the dataset must load with every set
exactly in its old or its new version, and the killed process's lock must be broken by
the next writer.

The campaign itself lives in ``tests/core/test_faults.py`` (whose short run is part of
``make test``); this script runs it long: 200 kills with the default lock (``flock``)
and 60 with the O_EXCL fallback (``--quick``: 30 and 10).

Usage: ``python benchmarks/bench_faults.py [--quick] [--kills N]`` (or through
``benchmarks/run_all.py faults``).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
HARNESS = HERE.parent / "tests" / "core" / "test_faults.py"


def _harness():
    spec = importlib.util.spec_from_file_location("napari_sima_fault_harness", HARNESS)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def run(quick: bool = False, kills: int | None = None) -> dict:
    harness = _harness()
    n_flock = kills or (30 if quick else 200)
    n_create = max(10, n_flock * 3 // 10) if kills else (10 if quick else 60)
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        runs = (("flock", None, n_flock, 11), ("create", "create", n_create, 12))
        for name, method, n, seed in runs:
            result = harness.run_kill_campaign(Path(tmp) / name, kills=n, seed=seed, method=method)
            out[f"lock method {name}"] = result
    out["total kills survived"] = sum(
        r["kills"] for r in out.values() if isinstance(r, dict) and not r["problems"]
    )
    out["total inconsistent states"] = sum(
        r["inconsistent states"] for r in out.values() if isinstance(r, dict)
    )
    problems = [p for r in out.values() if isinstance(r, dict) for p in r["problems"]]
    if problems:
        raise AssertionError(f"{len(problems)} problems: {problems[:5]}")
    return out


def _table(out: dict) -> str:
    rows = [(k, v) for k, v in out.items() if isinstance(v, dict)]
    keys = [k for k in rows[0][1] if k not in ("method", "problems")]
    width = max(len(k) for k in keys)
    lines = [f"{'':{width}}  " + "  ".join(f"{name:>20}" for name, _ in rows)]
    for key in keys:
        lines.append(f"{key:{width}}  " + "  ".join(f"{r[key]!s:>20}" for _, r in rows))
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    n = int(args[args.index("--kills") + 1]) if "--kills" in args else None
    result = run(quick="--quick" in args, kills=n)
    print(_table(result))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=1))
