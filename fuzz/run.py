"""``make fuzz``: run every fuzz target on many inputs and print the table of outcomes.

Usage::

    python -m fuzz.run [--cases 10000] [--targets imagej-roi,tiff ...] [--memory-gb 4]

Each target runs in its own process under an address-space cap (``--memory-gb``), so
an input that would allocate gigabytes fails loudly instead of swapping; inputs have a
per-input time limit (``fuzz.harness.TIME_LIMIT``).  The table (cases, results,
documented errors by type, failures, slowest input, peak RSS) is printed and written
to ``benchmarks/results/fuzz.json``.  Exit status 1 if any target had a failure.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(name: str, cases: int, memory_gb: float, queue: mp.Queue) -> None:
    if memory_gb > 0:
        limit = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.path.insert(0, str(ROOT))
    import logging

    logging.getLogger("tifffile").setLevel(logging.ERROR)  # damaged files: one warning each
    from fuzz.harness import all_targets, fuzz

    t0 = time.perf_counter()
    outcome = fuzz(all_targets()[name], cases)
    row = outcome.as_row()
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row["peak RSS (MB)"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    row["failure examples"] = outcome.failures[:5]
    queue.put((name, row))


def main(argv: list[str] | None = None) -> int:
    """Run the fuzz targets; return 1 if any input failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="inputs per target")
    parser.add_argument("--targets", default="", help="comma-separated names (default: all)")
    parser.add_argument("--memory-gb", type=float, default=4.0, help="address-space cap")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from fuzz.harness import all_targets

    names = [n for n in args.targets.split(",") if n] or sorted(all_targets())
    ctx = mp.get_context("spawn")
    rows: dict[str, dict] = {}
    for name in names:
        queue: mp.Queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(name, args.cases, args.memory_gb, queue))
        proc.start()
        try:
            _, row = queue.get()
        except Exception as err:  # noqa: BLE001 - a crashed child is a failure
            row = {"cases": 0, "failures": 1, "failure examples": [repr(err)]}
        proc.join()
        if proc.exitcode not in (0, None):
            row = {**row, "failures": row.get("failures", 0) + 1,
                   "failure examples": [*row.get("failure examples", []),
                                        f"process exit code {proc.exitcode}"]}
        rows[name] = row
        print(f"{name:24s} {json.dumps({k: v for k, v in row.items() if k != 'failure examples'})}",
              flush=True)
        for example in row.get("failure examples", []):
            print("    FAILURE:", example.splitlines()[0][:300])
    out = ROOT / "benchmarks" / "results" / "fuzz.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    previous: dict = {}
    if out.is_file():  # keep the other targets' latest rows when running a subset
        try:
            previous = json.loads(out.read_text()).get("targets", {})
        except (ValueError, AttributeError):
            previous = {}
    for row in rows.values():
        row["cases requested"] = args.cases
    merged = {**previous, **rows}
    out.write_text(json.dumps({"targets": merged}, indent=1))
    print(f"\nwritten {out}")
    print("\n| format | cases | results | documented errors | failures | slowest (s) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        errs = ", ".join(f"{k} {v}" for k, v in (row.get("documented errors") or {}).items())
        print(f"| {name} | {row.get('cases')} | {row.get('results')} | {errs} | "
              f"{row.get('failures')} | {row.get('slowest input (s)')} | {row.get('peak RSS (MB)')} |")
    return 1 if any(r.get("failures") for r in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
