"""Segmentation quality against ground truth: precision / recall / F1 at IoU >= 0.5.

Synthetic movies from :func:`napari_sima.core.synthetic.make_calcium_movie` (the sample
dataset's generator) under several conditions — the sample dataset itself, lower
signal-to-noise ratios, denser fields, smaller and larger cells, overlapping cells,
two planes — are segmented by each strategy:

* ``stica-sima``: ``STICA()`` with SIMA's defaults and the post-processing SIMA's
  documentation recommends (``SparseROIsFromMasks()``, ``SmoothROIBoundaries()``,
  ``MergeOverlapping(0.5)``);
* ``normcuts-sima``: ``PlaneNormalizedCuts()`` with SIMA's defaults;
* ``normcuts``: our tuned normalized cuts with size and circularity filters;
* ``ca1pc``: ``PlaneCA1PC()`` with SIMA's defaults;
* ``default``: :func:`~napari_sima.core.segment.defaults.default_strategy` (the
  ``'stica'`` preset: tuned STICA and post-processing).

(Presets from :data:`napari_sima.core.segment.defaults.STRATEGIES`.)

For the two-plane condition every strategy segments each plane on its own
(``PlaneWiseSegmentation``, as ``make_strategy(name, num_planes=2)`` builds it).

Truth: each synthetic cell's ``mask`` — its footprint ``> 0.5`` of its peak, i.e. the
filled ellipse of the cell body (:class:`~napari_sima.core.synthetic.SyntheticCell`).
A second score ("F1 loose", "IoU loose") uses footprint ``> 0.1`` of the peak, the
cell with its soft edge, to show how much of a low IoU is only where the boundary is
drawn.  Detected ROIs are matched one-to-one to true cells with
:func:`~napari_sima.core.segment.evaluate.match_rois` (Hungarian, IoU >= 0.5). "SNR" in
the table is the mean single-spike peak ΔF over the noise standard deviation at the
mean baseline, ``mean(brightness) / sqrt(noise_sigma**2 + baseline)``.

``PlaneCA1PC`` looks for packed cells with a bright cytoplasm and a dark nucleus,
which these movies do not have; a separate small check (:func:`ca1_rings`) scores it
on such cells against their nuclei.

Run ``python benchmarks/bench_segment_quality.py [--quick] [--strategies a,b]
[--conditions c,d]``: prints a markdown table and writes
``benchmarks/results/segment_quality.json`` (``run_all.py`` writes the same file).
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sima.core import ImagingDataset, Sequence
from napari_sima.core.segment.evaluate import match_rois
from napari_sima.core.synthetic import SyntheticMovie, make_calcium_movie

HERE = Path(__file__).resolve().parent
IOU_THRESHOLD = 0.5
#: Secondary truth: footprint above this fraction of its peak (the soft edge included).
LOOSE_FRACTION = 0.1


@dataclass(frozen=True)
class Condition:
    """One synthetic movie: generator arguments on top of the sample dataset's."""

    name: str
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def movie(self) -> SyntheticMovie:
        from napari_sima._sample_data import sample_movie

        if self.name == "sample":
            return sample_movie()
        args = {
            "num_frames": 200,
            "frame_shape": (1, 128, 128, 2),
            "num_sequences": 2,
            "num_cells": 12,
            "seed": 1,
            "allow_overlap": False,
        }
        args.update(self.kwargs)
        return make_calcium_movie(**args)


CONDITIONS = [
    Condition("sample", "the sample dataset (12 cells, r 5-7 px, no overlap)"),
    Condition(
        "snr-mid", "dimmer cells, more read noise", {"brightness": (300, 600), "noise_sigma": 30}
    ),
    Condition(
        "snr-low", "dim cells, strong read noise", {"brightness": (150, 300), "noise_sigma": 40}
    ),
    Condition("dense-30", "30 cells, no overlap", {"num_cells": 30, "seed": 2}),
    Condition(
        "dense-60",
        "60 cells (r 4-6 px), no overlap",
        {"num_cells": 60, "cell_radius": (4, 6), "seed": 7},
    ),
    Condition(
        "overlap-30",
        "30 cells, neighbours may overlap",
        {"num_cells": 30, "allow_overlap": True, "min_separation": 7.0, "seed": 3},
    ),
    Condition(
        "small-r3-4",
        "40 small cells (r 3-4 px)",
        {"num_cells": 40, "cell_radius": (3, 4), "seed": 4},
    ),
    Condition(
        "large-r8-10",
        "10 large cells (r 8-10 px)",
        {"num_cells": 10, "cell_radius": (8, 10), "seed": 5},
    ),
    Condition(
        "planes-2",
        "two planes, 12 cells each",
        {"frame_shape": (2, 128, 128, 1), "num_cells": 24, "seed": 6},
    ),
]
QUICK_CONDITIONS = ("sample", "snr-low", "overlap-30")


def _snr(movie: SyntheticMovie) -> float:
    brightness = np.mean([c.brightness for c in movie.cells]) if movie.cells else 0.0
    return float(brightness / math.sqrt(movie.noise_sigma**2 + movie.baseline))


def _overlapping_cells(movie: SyntheticMovie) -> int:
    """Number of cells whose true mask overlaps another cell's in the same plane."""
    count = 0
    for z in range(movie.frame_shape[0]):
        masks = movie.true_masks(plane=z)
        if len(masks) == 0:
            continue
        cover = masks.sum(axis=0)
        count += int(sum(np.any(cover[m] > 1) for m in masks))
    return count


def _dataset(movie: SyntheticMovie) -> ImagingDataset:
    sequences = [Sequence.create("ndarray", array, "tzyxc") for array in movie.sequences]
    names = ["GCaMP", "tdTomato"][: movie.frame_shape[3]]
    return ImagingDataset(sequences, None, channel_names=names)


def _truth(movie: SyntheticMovie) -> np.ndarray:
    return movie.true_masks()  # (n_cells, z, y, x): footprint > 0.5


def _loose_truth(movie: SyntheticMovie) -> np.ndarray:
    """The cells' whole soft edge: footprint > ``LOOSE_FRACTION`` of the peak."""
    return movie.true_footprints() > LOOSE_FRACTION


#: Strategies measured: registry presets (SIMA's defaults and ours) and the default.
#: ``'stica'`` is left out: it is the default for single-plane data.
BENCH_STRATEGIES = ("stica-sima", "normcuts-sima", "normcuts", "ca1pc", "default")


def strategy_factories() -> dict[str, Callable[..., Any]]:
    """Factories ``(num_planes=1) -> strategy`` of the measured strategies, by name.

    With ``num_planes > 1`` every strategy is wrapped in ``PlaneWiseSegmentation``
    (each plane segmented on its own), as :func:`make_strategy` does.
    """
    from napari_sima.core.segment.defaults import default_strategy, make_strategy

    out: dict[str, Callable[..., Any]] = {}
    for name in BENCH_STRATEGIES:
        if name == "default":
            out[name] = default_strategy
        else:
            out[name] = lambda num_planes=1, name=name: make_strategy(name, num_planes=num_planes)
    return out


def evaluate(strategy: Any, movie: SyntheticMovie) -> dict[str, Any]:
    """Segment ``movie`` with ``strategy`` and score it against the true masks."""
    dataset = _dataset(movie)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rois = strategy.segment(dataset)
    seconds = time.perf_counter() - t0
    result = match_rois(rois, _truth(movie), iou_threshold=IOU_THRESHOLD)
    out = {k: v for k, v in result.todict().items() if k not in ("pairs", "ious")}
    loose = match_rois(rois, _loose_truth(movie), iou_threshold=IOU_THRESHOLD)
    out["loose_truth"] = {
        k: v for k, v in loose.todict().items() if k in ("f1", "median_iou", "n_matched")
    }
    out["seconds"] = round(seconds, 2)
    if caught:
        out["warnings"] = sorted({f"{w.category.__name__}: {w.message}"[:200] for w in caught})
    return out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(results: dict[str, Any]) -> str:
    """One row per condition and strategy: P / R / F1 / median IoU / counts / seconds."""
    lines = [
        "| condition | SNR | cells (overlapping) | strategy | precision | recall | F1 | "
        "median IoU | detected | matched | F1 loose | IoU loose | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cname, entry in results["conditions"].items():
        for sname, r in entry["strategies"].items():
            if "error" in r:
                lines.append(
                    f"| {cname} | {entry['snr']:.1f} | {entry['n_cells']} "
                    f"({entry['overlapping_cells']}) | {sname} | error: {r['error'][:60]} "
                    "| | | | | | | | |"
                )
                continue
            lines.append(
                f"| {cname} | {entry['snr']:.1f} | {entry['n_cells']} "
                f"({entry['overlapping_cells']}) | {sname} | {_fmt(r['precision'])} | "
                f"{_fmt(r['recall'])} | **{_fmt(r['f1'])}** | {_fmt(r['median_iou'])} | "
                f"{r['n_detected']} | {r['n_matched']} | {_fmt(r['loose_truth']['f1'])} | "
                f"{_fmt(r['loose_truth']['median_iou'])} | {_fmt(r['seconds'], 1)} |"
            )
    return "\n".join(lines)


def run(
    quick: bool = False,
    strategies: list[str] | None = None,
    conditions: list[str] | None = None,
) -> dict[str, Any]:
    """Score every strategy on every condition.

    Parameters
    ----------
    quick : bool
        Only the conditions in ``QUICK_CONDITIONS``.
    strategies, conditions : list of str, optional
        Restrict to these names.

    Returns
    -------
    dict
        ``conditions``: per condition its description, generator arguments, SNR,
        number of cells and of overlapping cells, and per strategy the scores
        (``precision``, ``recall``, ``f1``, ``median_iou``, counts, ``seconds``,
        ``warnings``); ``strategies``: the parameters of each strategy;
        ``table_markdown``.
    """
    factories = strategy_factories()
    if strategies:
        unknown = set(strategies) - set(factories)
        if unknown:
            raise ValueError(f"unknown strategies {sorted(unknown)}; known: {sorted(factories)}")
        factories = {k: v for k, v in factories.items() if k in strategies}
    chosen = [c for c in CONDITIONS if not quick or c.name in QUICK_CONDITIONS]
    if conditions:
        chosen = [c for c in CONDITIONS if c.name in conditions]
    results: dict[str, Any] = {"iou_threshold": IOU_THRESHOLD, "conditions": {}, "strategies": {}}
    for name, factory in factories.items():
        try:
            results["strategies"][name] = factory().parameters()
        except Exception as err:  # noqa: BLE001 - a strategy module may be missing
            results["strategies"][name] = {"error": f"{type(err).__name__}: {err}"}
    for condition in chosen:
        movie = condition.movie()
        entry: dict[str, Any] = {
            "description": condition.description,
            "generator": {
                k: (list(v) if isinstance(v, tuple) else v) for k, v in condition.kwargs.items()
            },
            "frames": [len(s) for s in movie.sequences],
            "frame_shape": list(movie.frame_shape),
            "snr": round(_snr(movie), 2),
            "n_cells": len(movie.cells),
            "overlapping_cells": _overlapping_cells(movie),
            "strategies": {},
        }
        for name, factory in factories.items():
            try:
                strategy = factory(num_planes=movie.frame_shape[0])
                entry["strategies"][name] = evaluate(strategy, movie)
            except Exception as err:  # noqa: BLE001 - report and go on
                entry["strategies"][name] = {"error": f"{type(err).__name__}: {err}"}
            print(
                f"  {condition.name:12s} {name:14s} {_summary(entry['strategies'][name])}",
                flush=True,
            )
        results["conditions"][condition.name] = entry
    results["table_markdown"] = markdown_table(results)
    if not conditions and (not strategies or "ca1pc" in strategies):
        results["ca1_rings"] = ca1_rings()
        print(results["ca1_rings"]["table_markdown"], flush=True)
    return results


def _ring_cell_movie(seed: int = 11) -> tuple[ImagingDataset, np.ndarray]:
    """Packed cells with a bright cytoplasm and a dark nucleus (what PlaneCA1PC expects).

    Cells and calcium traces come from :func:`make_calcium_movie` (40 cells of radius
    6-7 px in 128 x 128, no overlap); each footprint is dimmed by 80 % inside half its
    radius (the nucleus), the cytoplasm has a resting brightness, and shot noise is
    added.  Truth: the nuclei (elliptical radius < 0.55).
    """
    m = make_calcium_movie(
        num_frames=200,
        frame_shape=(1, 128, 128, 1),
        num_sequences=2,
        num_cells=40,
        cell_radius=(6, 7),
        seed=seed,
        allow_overlap=False,
    )
    yy, xx = np.mgrid[:128, :128] + 0.5
    rng = np.random.default_rng(seed)
    nuclei, rings = [], []
    for cell in m.cells:
        _, cy, cx = cell.center
        ry, rx = cell.radii
        d = np.hypot((yy - cy) / ry, (xx - cx) / rx)
        nuclei.append(d < 0.55)
        rings.append(cell.footprint * (1 - 0.8 * 2.0 ** -((d / 0.55) ** 6)))
    rings_arr = np.array(rings)
    sequences = []
    for s in range(m.num_sequences):
        movie = 200.0 + np.einsum("kt,kyx->tyx", 300 + 400 * m.true_calcium(s), rings_arr)
        movie += rng.standard_normal(movie.shape) * np.sqrt(movie + 100.0)
        array = movie[:, None, :, :, None].astype(np.float32)
        sequences.append(Sequence.create("ndarray", array, "tzyxc"))
    return ImagingDataset(sequences, None), np.array(nuclei)[:, None]


def ca1_rings() -> dict[str, Any]:
    """PlaneCA1PC on cells with dark nuclei (its model), scored against the nuclei."""
    from napari_sima.core.segment.ca1pc import PlaneCA1PC
    from napari_sima.core.segment.defaults import default_strategy

    dataset, nuclei = _ring_cell_movie()
    out: dict[str, Any] = {"n_cells": int(len(nuclei)), "strategies": {}}
    candidates = {
        "ca1pc": PlaneCA1PC(),
        "ca1pc (diameter 13)": PlaneCA1PC(x_diameter=13, y_diameter=13),
        "default": default_strategy(),
    }
    lines = [
        "| cells with dark nuclei (truth: nuclei) | precision | recall | F1 | median IoU | "
        "detected | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, strategy in candidates.items():
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rois = strategy.segment(dataset)
        seconds = time.perf_counter() - t0
        r = match_rois(rois, nuclei, iou_threshold=IOU_THRESHOLD)
        entry = {k: v for k, v in r.todict().items() if k not in ("pairs", "ious")}
        entry["seconds"] = round(seconds, 2)
        out["strategies"][name] = entry
        lines.append(
            f"| {name} | {_fmt(entry['precision'])} | {_fmt(entry['recall'])} | "
            f"**{_fmt(entry['f1'])}** | {_fmt(entry['median_iou'])} | {entry['n_detected']} | "
            f"{_fmt(entry['seconds'], 1)} |"
        )
    out["table_markdown"] = "\n".join(lines)
    return out


def _summary(r: dict[str, Any]) -> str:
    if "error" in r:
        return r["error"][:120]
    return (
        f"P={_fmt(r['precision'])} R={_fmt(r['recall'])} F1={_fmt(r['f1'])} "
        f"IoU={_fmt(r['median_iou'])} n={r['n_detected']} {r['seconds']:.1f}s"
    )


def _option(argv: list[str], name: str) -> list[str] | None:
    for k, arg in enumerate(argv):
        if arg == name and k + 1 < len(argv):
            return [s for s in argv[k + 1].split(",") if s]
        if arg.startswith(name + "="):
            return [s for s in arg.split("=", 1)[1].split(",") if s]
    return None


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    t0 = time.perf_counter()
    results = run(quick, _option(argv, "--strategies"), _option(argv, "--conditions"))
    print(results["table_markdown"])
    out = {
        "benchmark": "segment_quality",
        "quick": quick,
        "seconds": round(time.perf_counter() - t0, 2),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "results": results,
    }
    if _option(argv, "--strategies") is None and _option(argv, "--conditions") is None:
        (HERE / "results").mkdir(exist_ok=True)
        path = HERE / "results" / "segment_quality.json"
        path.write_text(json.dumps(out, indent=2, default=str))
        print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
