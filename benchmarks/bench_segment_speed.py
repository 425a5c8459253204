"""Runtime and peak memory of the segmentation strategies on a 512 x 512 x 2,000 movie.

Writes a synthetic calcium movie (``make_calcium_movie``: 512 x 512 pixels, 150 cells,
four 500-frame sessions of the same cells written one after the other as 2,000 frames,
uint16, 1 GB) as one TIFF into a temporary folder
(``NAPARI_SIMA_BENCH_DIR`` or the system temp dir; reused between runs), then, for
every strategy in :data:`STRATEGIES` and for the offset PCA alone
(:data:`OPCA_METHODS`), starts a fresh Python process that opens the TIFF as an
in-memory dataset (no caches: time average, offset PCA and everything else are part
of the timing) and runs it.  It reports wall time and the peak resident memory of that
process (``VmHWM`` from ``/proc/self/status``, as ``bench_io.py``), the memory after
imports, the CPU time (user + system, all threads: a shared machine inflates the wall
time, less so the CPU time) and the number of ROIs found.

Strategies are imported lazily: one whose module or class does not exist yet is
skipped with a printed note.  Add an entry to :data:`STRATEGIES` to measure another.

Run ``python benchmarks/bench_segment_speed.py [--quick] [name ...]``; ``--quick`` uses a
128 x 128 x 400 movie; names (keys of :data:`STRATEGIES`, or ``opca_gram`` /
``opca_em``) restrict the run to those entries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: name -> strategy ("module:Class"), its keyword arguments, and post-processing steps
#: (each "module:Class" with keyword arguments), appended in order.
STRATEGIES: dict[str, dict] = {
    "STICA": {
        "strategy": "napari_sima.core.segment.stica:STICA",
        "kwargs": {},
        "steps": [],
    },
    "STICA+postprocess": {
        "strategy": "napari_sima.core.segment.stica:STICA",
        "kwargs": {},
        "steps": [
            ("napari_sima.core.segment.postprocess:SparseROIsFromMasks", {"min_size": 50}),
            ("napari_sima.core.segment.postprocess:SmoothROIBoundaries", {"tolerance": 1}),
            ("napari_sima.core.segment.postprocess:MergeOverlapping", {"threshold": 0.5}),
        ],
    },
    "default": {  # the tuned STICA + post-processing of defaults.py
        "strategy": "napari_sima.core.segment.defaults:default_strategy",
        "kwargs": {},
        "steps": [],
    },
    "PlaneNormalizedCuts": {
        "strategy": "napari_sima.core.segment.normcut:PlaneNormalizedCuts",
        "kwargs": {},
        "steps": [],
    },
    "PlaneCA1PC": {
        "strategy": "napari_sima.core.segment.ca1pc:PlaneCA1PC",
        "kwargs": {},
        "steps": [],
    },
}

#: The offset PCA alone (75 components, channel 0) with each method.
OPCA_METHODS = ("gram", "em")

FULL = {"frames": 2000, "shape": (512, 512), "cells": 150}
QUICK = {"frames": 400, "shape": (128, 128), "cells": 20}
#: Seconds after which one child process is stopped.
TIMEOUT = 3600


def _write_movie(folder: Path, size: dict) -> Path:
    import tifffile

    from napari_sima.core.synthetic import make_calcium_movie

    rows, cols = size["shape"]
    path = folder / f"calcium_{size['frames']}x{rows}x{cols}.tif"
    if path.exists():
        return path
    # four sequences of the same cells (shared footprints and background, own activity
    # and noise), written one after the other as one movie
    parts = 4 if size["frames"] % 4 == 0 else 1
    movie = make_calcium_movie(
        num_frames=size["frames"] // parts,
        frame_shape=(1, rows, cols, 1),
        num_sequences=parts,
        num_cells=size["cells"],
        seed=1,
    )
    tmp = path.with_suffix(".partial.tif")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for seq in movie.sequences:
            for frame in seq[:, 0, :, :, 0]:
                tw.write(frame, contiguous=True)
    del movie
    os.replace(tmp, path)
    return path


_CHILD = r"""
import importlib, json, os, sys, time, warnings
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024
def load(spec):
    module, name = spec.split(':')
    return getattr(importlib.import_module(module), name)
job = json.loads(sys.argv[2])
try:
    if job['kind'] == 'strategy':
        cls = load(job['strategy'])
        steps = [(load(s), kw) for s, kw in job['steps']]
    from napari_sima.core import ImagingDataset, Sequence
    from napari_sima.core.segment.opca import dataset_opca
    import sklearn.decomposition, skimage.measure  # imports are not part of the timing
except (ImportError, AttributeError) as err:
    print(json.dumps({'skipped': f'{type(err).__name__}: {err}'}))
    sys.exit(0)
ds = ImagingDataset([Sequence.create('TIFF', sys.argv[1])], None)
start = hwm()
t0 = time.perf_counter()
c0 = os.times()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    if job['kind'] == 'strategy':
        strategy = cls(**job['kwargs'])
        for step_cls, kw in steps:
            strategy.append(step_cls(**kw))
        rois = strategy.segment(ds)
        out = {'rois': len(rois)}
    else:
        res = dataset_opca(ds, 0, 75, method=job['method'], cache=False)
        out = {'components': int(res.variances.size)}
seconds = time.perf_counter() - t0
c1 = os.times()
cpu = (c1.user - c0.user) + (c1.system - c0.system)
out.update({'seconds': round(seconds, 2), 'cpu_seconds': round(cpu, 2),
            'rss_after_import_MB': round(start, 1),
            'peak_rss_MB': round(hwm(), 1),
            'warnings': sorted({str(w.message)[:120] for w in caught})})
print(json.dumps(out))
"""


def _run_child(path: Path, job: dict) -> dict:
    try:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path), json.dumps(job)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {TIMEOUT} s"}
    if out.returncode != 0:
        return {"failed": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "?"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False, names: list[str] | None = None) -> dict:
    """Run the benchmark and return the numbers."""
    size = QUICK if quick else FULL
    folder = Path(os.environ.get("NAPARI_SIMA_BENCH_DIR", tempfile.gettempdir())) / (
        "napari-sima-bench-segment"
    )
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    path = _write_movie(folder, size)
    results: dict = {
        "movie": {
            "frames": size["frames"],
            "shape": list(size["shape"]),
            "cells": size["cells"],
            "MB": round(path.stat().st_size / 2**20, 1),
            "write_seconds": round(time.perf_counter() - t0, 1),
        }
    }
    for method in OPCA_METHODS:
        key = f"opca_{method}"
        if names and key not in names:
            continue
        print(f"   {key} ...", flush=True)
        results[key] = _run_child(path, {"kind": "opca", "method": method})
        print(f"   {key}: {results[key]}", flush=True)
    for name, entry in STRATEGIES.items():
        if names and name not in names:
            continue
        print(f"   {name} ...", flush=True)
        job = {
            "kind": "strategy",
            "strategy": entry["strategy"],
            "kwargs": entry.get("kwargs", {}),
            "steps": [list(s) for s in entry.get("steps", [])],
        }
        res = _run_child(path, job)
        if "skipped" in res:
            print(f"   note: {name} skipped ({res['skipped']})", flush=True)
        else:
            print(f"   {name}: {res}", flush=True)
        results[name] = res
    return results


def main() -> None:
    quick = "--quick" in sys.argv
    names = [a for a in sys.argv[1:] if not a.startswith("-")]
    res = run(quick=quick, names=names or None)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
