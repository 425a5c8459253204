"""Benchmark: ROI registration across sessions (issue 7).

``main``
    1,000 ROIs across 5 sessions of a 512 x 512 field
    (:func:`napari_sima.core.synthetic_sessions.make_synthetic_sessions` defaults:
    250 cells, ~80% seen per session, 15% turnover between sessions, 1 px residual
    session offset and 1 px outline jitter (standard deviations per axis), radii
    4-9 px +-10%) registered with :func:`napari_sima.core.registration.register_rois`
    defaults.  Time: the median of a few runs, split into rasterising the ROIs and
    matching + clustering; accuracy: the mean over seeds of the fraction of correct ids
    (ROIs whose predicted cluster is exactly their true cluster) and pair
    precision / recall.
``sweep``
    Fraction of correct ids for several ``min_iou`` values and field conditions, with
    and without the residual shift correction (the numbers behind the default 0.3).
``large``
    5,000 ROIs across 5 sessions of a 1024 x 1024 field (full run only).

Run::

    .venv/bin/python benchmarks/bench_registration.py [--quick]

prints markdown tables and writes ``benchmarks/results/registration.json``
(``benchmarks/run_all.py registration`` writes the same file).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent

#: Field conditions of the sweep (keyword arguments of make_synthetic_sessions).
CONDITIONS: dict[str, dict[str, Any]] = {
    "easy (0.5 px)": {"shift": 0.5, "jitter": 0.5},
    "default (1 px)": {},
    "offset 2.5 px": {"shift": 2.5},
    "jitter 1.5 px": {"jitter": 1.5, "shift": 1.5},
    "crowded": {"spacing": 0.6, "radius": (4.0, 10.0)},
    "crowded, 40% turnover": {
        "spacing": 0.5,
        "radius": (4.0, 10.0),
        "presence": 0.6,
        "turnover": 0.4,
    },
    "small cells": {"radius": (3.0, 5.0), "n_cells": 400},
}
MIN_IOUS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)


def _median_time(fn: Any, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def _main_case(seeds: list[int], repeats: int) -> dict[str, Any]:
    from napari_sima.core.registration import (
        _check_lists,
        _common_shape,
        _pixels,
        register_rois,
        score_registration,
    )
    from napari_sima.core.synthetic_sessions import make_synthetic_sessions

    scores, totals, rasters, n_rois = [], [], [], []
    sizes: dict[str, int] = {}
    for seed in seeds:
        ss = make_synthetic_sessions(n_sessions=5, n_cells=250, im_shape=(512, 512), seed=seed)
        n_rois.append(ss.n_rois)
        total, (out, summary) = _median_time(lambda ss=ss: register_rois(ss.roi_lists), repeats)
        if seed == seeds[0]:
            sizes = {str(k): v for k, v in summary.cluster_sizes.items()}
        shape, lists = _common_shape(_check_lists(ss.roi_lists), None)
        raster, _ = _median_time(
            lambda lists=lists, shape=shape: [_pixels(r, shape, s) for s, r in enumerate(lists)],
            repeats,
        )
        totals.append(total)
        rasters.append(raster)
        scores.append(score_registration(out, ss.cells))
    keys = ("roi_accuracy", "pair_precision", "pair_recall", "pair_f1")
    return {
        "sessions": 5,
        "frame": [512, 512],
        "seeds": seeds,
        "n_rois": n_rois,
        "seconds_total": round(float(np.median(totals)), 4),
        "seconds_rasterise": round(float(np.median(rasters)), 4),
        "seconds_match_and_cluster": round(float(np.median(totals) - np.median(rasters)), 4),
        **{k: round(float(np.mean([s[k] for s in scores])), 4) for k in keys},
        "roi_accuracy_min": round(float(min(s["roi_accuracy"] for s in scores)), 4),
        "consistent": bool(all(s["consistent"] for s in scores)),
        "cluster_sizes_first_seed": sizes,
    }


def _sweep(seeds: list[int]) -> dict[str, Any]:
    from napari_sima.core.registration import register_rois, score_registration
    from napari_sima.core.synthetic_sessions import make_synthetic_sessions

    table: dict[str, Any] = {}
    for name, extra in CONDITIONS.items():
        kw = {"n_sessions": 5, "n_cells": 250, "im_shape": (512, 512), **extra}
        sessions = [make_synthetic_sessions(seed=seed, **kw) for seed in seeds]
        row: dict[str, Any] = {}
        for correct in (True, False):
            for mi in MIN_IOUS:
                acc = [
                    score_registration(
                        register_rois(ss.roi_lists, min_iou=mi, correct_shift=correct)[0], ss.cells
                    )
                    for ss in sessions
                ]
                key = f"{mi:g}" + ("" if correct else " no-shift")
                row[key] = {
                    "roi_accuracy": round(float(np.mean([a["roi_accuracy"] for a in acc])), 4),
                    "pair_precision": round(float(np.mean([a["pair_precision"] for a in acc])), 4),
                }
        table[name] = row
    return table


def _large(repeats: int) -> dict[str, Any]:
    from napari_sima.core.registration import register_rois, score_registration
    from napari_sima.core.synthetic_sessions import make_synthetic_sessions

    ss = make_synthetic_sessions(n_sessions=5, n_cells=1250, im_shape=(1024, 1024), seed=0)
    t, (out, _) = _median_time(lambda: register_rois(ss.roi_lists), repeats)
    return {
        "n_rois": ss.n_rois,
        "frame": [1024, 1024],
        "seconds_total": round(t, 4),
        "roi_accuracy": round(score_registration(out, ss.cells)["roi_accuracy"], 4),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark; return times (seconds) and accuracies."""
    seeds = [0, 1] if quick else [0, 1, 2, 3, 4]
    out: dict[str, Any] = {"main": _main_case(seeds, 1 if quick else 3)}
    out["sweep"] = _sweep([0] if quick else [0, 1, 2])
    if not quick:
        out["large"] = _large(1)
    return out


def markdown(result: dict[str, Any]) -> str:
    """Format the result as markdown tables."""
    m = result["main"]
    lines = [
        "### Register ~1,000 ROIs across 5 sessions (512 x 512)",
        "",
        "| ROIs | total (s) | rasterise (s) | match + cluster (s) | correct ids "
        "| min over seeds | pair precision | pair recall |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {int(np.mean(m['n_rois']))} | {m['seconds_total']:.3f} | {m['seconds_rasterise']:.3f} "
        f"| {m['seconds_match_and_cluster']:.3f} | {m['roi_accuracy']:.2%} "
        f"| {m['roi_accuracy_min']:.2%} | {m['pair_precision']:.2%} | {m['pair_recall']:.2%} |",
        "",
        "### Fraction of correct ids by min_iou (with / without shift correction)",
        "",
        "| condition | " + " | ".join(f"{mi:g}" for mi in MIN_IOUS) + " |",
        "|---|" + "---:|" * len(MIN_IOUS),
    ]
    for name, row in result["sweep"].items():
        cells = []
        for mi in MIN_IOUS:
            a = row[f"{mi:g}"]["roi_accuracy"]
            b = row[f"{mi:g} no-shift"]["roi_accuracy"]
            cells.append(f"{a:.1%} / {b:.1%}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "### Pair precision by min_iou (with shift correction)",
        "",
        "| condition | " + " | ".join(f"{mi:g}" for mi in MIN_IOUS) + " |",
        "|---|" + "---:|" * len(MIN_IOUS),
    ]
    for name, row in result["sweep"].items():
        cells = [f"{row[f'{mi:g}']['pair_precision']:.2%}" for mi in MIN_IOUS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "large" in result:
        g = result["large"]
        lines += [
            "",
            f"Large: {g['n_rois']} ROIs across 5 sessions of 1024 x 1024 in "
            f"{g['seconds_total']:.2f} s, {g['roi_accuracy']:.2%} correct ids.",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    t0 = time.perf_counter()
    res = run(quick=args.quick)
    print(markdown(res))
    record = {
        "benchmark": "registration",
        "quick": args.quick,
        "seconds": round(time.perf_counter() - t0, 2),
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "results": res,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "registration.json").write_text(json.dumps(record, indent=2))
