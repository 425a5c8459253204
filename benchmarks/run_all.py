"""Run every benchmark in this folder and print/save the numbers.

Usage: ``python benchmarks/run_all.py [--quick] [name ...]`` where each name is a module
``bench_<name>.py`` of this folder exposing ``run(quick: bool) -> dict``.  Results are
written to ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("-")]
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    scripts = sorted(HERE.glob("bench_*.py"))
    if names:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in names]
    failed = 0
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            result = _load(script).run(quick=quick)
        except Exception as err:  # noqa: BLE001 - report and go on with the others
            print(f"   FAILED: {type(err).__name__}: {err}", flush=True)
            failed += 1
            continue
        result = {
            "benchmark": name,
            "quick": quick,
            "seconds": round(time.perf_counter() - t0, 2),
            "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
            "results": result,
        }
        (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
        print(json.dumps(result["results"], indent=2, default=str), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
