"""Throughput of signal extraction on a 512 x 512 uint16 TIFF movie (warm page cache).

Writes an uncompressed multi-page TIFF (4,000 frames = 2.1 GB; 400 with ``--quick``) to
a temporary folder, makes a dataset of it and computes its time average first (cached,
so it is not part of the timings; it also warms the page cache).  For 100, 500 and
1,000 cell-sized polygon ROIs (16-gons of radius 5-7 px on a jittered grid, a few
overlapping) it times :func:`napari_sima.core.extract.extract_rois` (whole call: mask
rasterisation, weights, one pass over the movie) with ``n_processes=1``; with
``n_processes=2`` and no worker pool running (started only if it would pay off); and
with ``n_processes=2`` and the pool running (workers used from the start).  It reports
frames/s, GB/s of uint16 movie, and the ratio to a plain ``numpy.fromfile`` of the same
bytes (``> 1``: faster than just reading the file that way).  Shared 2-core VMs are
noisy: timings are the best of a few repeats.

Run ``python benchmarks/bench_extract.py [--quick]``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_sima.core import ROI, ImagingDataset, Sequence
from napari_sima.core import extract as _extract
from napari_sima.core.extract import extract_rois, shutdown_pool

FRAME = (512, 512)
ROI_COUNTS = (100, 500, 1000)


def _write_movie(path: Path, num_frames: int) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(200, 3000, size=FRAME, dtype=np.uint16)
    noise = rng.integers(0, 200, size=(64, *FRAME), dtype=np.uint16)

    def pages():
        for t in range(num_frames):
            yield base + noise[t % 64]

    tifffile.imwrite(path, pages(), shape=(num_frames, *FRAME), dtype=np.uint16)


def _make_rois(n: int, seed: int = 1) -> list[ROI]:
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    step = (FRAME[0] - 20) / side
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    rois = []
    for k in range(n):
        gy, gx = divmod(k, side)
        cy = 10 + (gy + 0.5) * step + rng.uniform(-2, 2)
        cx = 10 + (gx + 0.5) * step + rng.uniform(-2, 2)
        r = rng.uniform(5, 7)
        verts = np.column_stack([cx + r * np.cos(angles), cy + r * np.sin(angles)])
        rois.append(ROI(polygons=verts, im_shape=(1, *FRAME), label=str(k)))
    return rois


def _fromfile_seconds(path: Path, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        data = np.fromfile(path, dtype=np.uint8)
        best = min(best, time.perf_counter() - t0)
        del data
    return best


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _entry(times: list[float], num_frames: int, nbytes: int, fromfile_s: float) -> dict:
    best = min(times)
    return {
        "seconds": round(best, 3),
        "all_seconds": [round(t, 3) for t in times],
        "frames_per_s": round(num_frames / best, 1),
        "GBps": round(nbytes / best / 1e9, 2),
        "ratio_to_fromfile": round(fromfile_s / best, 2),
    }


def run(quick: bool = False) -> dict:
    """Measure extraction throughput.

    Parameters
    ----------
    quick : bool
        400 frames and fewer repeats instead of 4,000 frames.

    Returns
    -------
    dict
        Movie size, ``numpy.fromfile`` GB/s, and per ROI count and setting
        (``n_processes_1``, ``n_processes_2_cold``, ``n_processes_2_warm_pool``): best
        seconds, frames/s, GB/s, ratio to ``fromfile``, all repeats, and for two
        processes how many chunks of frames the workers computed.
    """
    num_frames = 400 if quick else 4000
    repeats = 2 if quick else 3
    results: dict = {"frames": num_frames, "frame_shape": list(FRAME), "dtype": "uint16"}
    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
        path = Path(tmp) / "movie.tif"
        _write_movie(path, num_frames)
        nbytes = num_frames * FRAME[0] * FRAME[1] * 2
        results["movie_GB"] = round(nbytes / 1e9, 3)
        ds = ImagingDataset([Sequence.create("TIFF", str(path))], Path(tmp) / "bench.sima")
        t0 = time.perf_counter()
        ds.time_averages  # noqa: B018 - projection pass (cached; also warms the page cache)
        results["projection_pass_s"] = round(time.perf_counter() - t0, 3)
        fromfile_s = _fromfile_seconds(path, repeats)
        results["fromfile_GBps"] = round(os.path.getsize(path) / fromfile_s / 1e9, 2)
        results["fromfile_frames_per_s"] = round(num_frames / fromfile_s, 1)
        # compile / cache-load the kernel, then one full pass (first-touch allocations)
        t0 = time.perf_counter()
        extract_rois(ds[:, :2], _make_rois(4))
        results["first_call_s"] = round(time.perf_counter() - t0, 3)
        extract_rois(ds, _make_rois(10))
        per: dict = {}
        for n_rois in ROI_COUNTS:
            rois = _make_rois(n_rois)
            entry: dict = {}
            times = _time(lambda r=rois: extract_rois(ds, r, n_processes=1), repeats)
            entry["n_processes_1"] = _entry(times, num_frames, nbytes, fromfile_s)
            # n_processes=2, pool not running: started only if it would pay off
            shutdown_pool()
            times = _time(lambda r=rois: extract_rois(ds, r, n_processes=2), 1)
            entry["n_processes_2_cold"] = {
                **_entry(times, num_frames, nbytes, fromfile_s),
                "chunks": dict(_extract.LAST_RUN),
            }
            # n_processes=2 with the worker pool running (used from the start)
            start = _extract.POOL_START_SECONDS
            _extract.POOL_START_SECONDS = 0.0
            try:
                extract_rois(ds, rois, n_processes=2)
            finally:
                _extract.POOL_START_SECONDS = start
            time.sleep(0.5)
            times = _time(lambda r=rois: extract_rois(ds, r, n_processes=2), repeats)
            entry["n_processes_2_warm_pool"] = {
                **_entry(times, num_frames, nbytes, fromfile_s),
                "chunks": dict(_extract.LAST_RUN),
            }
            per[str(n_rois)] = entry
        results["extract"] = per
        ds.close()
    shutdown_pool()
    return results


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
