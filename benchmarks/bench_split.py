"""Extraction and spike inference split over a dask.distributed cluster (issue 8).

One synthetic calcium movie (:func:`napari_sima.core.synthetic.make_calcium_movie`:
2,000 frames of 512 x 512 uint16, 200 cells, 30 Hz; 400 frames with ``--quick``) is
written as an uncompressed TIFF in a temporary dataset folder with its 200 true ROIs;
the time average is computed first (cached, so it is not part of the timings; it also
warms the page cache).  Then, on a ``LocalCluster(n_workers=2, threads_per_worker=1,
processes=True)``:

``extract``
    :meth:`ImagingDataset.extract` of the 200 ROIs in this process
    (``n_processes=1``) and with ``executor=client.get_executor()`` (default chunks of
    four 16 MB reading blocks).  ``first_call_s`` is the first executor run (workers
    import the package and load the compiled kernel), then the best of a few runs.
``infer_spikes``
    :meth:`ImagingDataset.infer_spikes` of the extracted signals (AR(1), ``'correct'``,
    ``'oasis'``) in this process and with the executor (blocks of
    :data:`~napari_sima.core.spikes.SPIKES_CHUNK_ROWS` traces).

Both report whether the split results are identical to the serial ones.  On a shared
2-core machine two workers cannot beat one process by much (and the cluster's own
processes compete for the same cores); the point is that the split costs little and
gives the same numbers.

Run ``python benchmarks/bench_split.py [--quick]``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import tifffile

from napari_sima.core import ROI, ImagingDataset, ROIList, Sequence
from napari_sima.core.synthetic import make_calcium_movie

FRAME = (512, 512)
N_CELLS = 200


def _best(fn, repeats: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), [round(t, 3) for t in times], out


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and np.array_equal(x, y, equal_nan=True)
        for x, y in zip(a, b, strict=True)
    )


def run(quick: bool = False) -> dict:
    """Time serial and executor-split extraction and spike inference.

    Parameters
    ----------
    quick : bool
        400 frames and fewer repeats instead of 2,000 frames.

    Returns
    -------
    dict
        Movie size, cluster start-up seconds, and for ``extract`` / ``infer_spikes``:
        serial and executor seconds (best and all runs), the executor's first run,
        the speed-up and whether the results are identical.
    """
    from distributed import Client, LocalCluster

    num_frames = 400 if quick else 2000
    repeats = 2 if quick else 3
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    results: dict = {
        "frames": num_frames,
        "frame_shape": list(FRAME),
        "dtype": "uint16",
        "rois": N_CELLS,
        "cores": cores,
        "workers": "LocalCluster(n_workers=2, threads_per_worker=1, processes=True)",
    }
    with tempfile.TemporaryDirectory(prefix="bench_split_") as tmp:
        t0 = time.perf_counter()
        movie = make_calcium_movie(
            num_frames=num_frames,
            frame_shape=(1, *FRAME, 1),
            num_sequences=1,
            num_cells=N_CELLS,
            frame_rate=30.0,
            spike_rate=1.0,
            seed=0,
        )
        path = Path(tmp) / "movie.tif"
        tifffile.imwrite(path, movie.sequences[0][:, 0, :, :, 0])
        rois = ROIList(
            [ROI(mask=c.mask[None], label=f"cell{k}") for k, c in enumerate(movie.cells)]
        )
        del movie
        results["movie_GB"] = round(os.path.getsize(path) / 1e9, 3)
        results["make_movie_s"] = round(time.perf_counter() - t0, 2)
        ds = ImagingDataset([Sequence.create("TIFF", str(path))], Path(tmp) / "bench.sima")
        ds.add_ROIs(rois, "true")
        t0 = time.perf_counter()
        ds.time_averages  # noqa: B018 - projection pass (cached; warms the page cache)
        results["projection_pass_s"] = round(time.perf_counter() - t0, 2)
        ds.extract("true", label="warm", save_summary=False)  # kernel compiled / loaded

        t0 = time.perf_counter()
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
        results["cluster_start_s"] = round(time.perf_counter() - t0, 2)
        try:
            ex = client.get_executor()
            # -- extraction
            serial_s, serial_all, one = _best(
                lambda: ds.extract("true", label="serial", save_summary=False), repeats
            )
            t0 = time.perf_counter()
            ds.extract("true", label="split", save_summary=False, executor=ex)
            first_s = time.perf_counter() - t0
            split_s, split_all, split = _best(
                lambda: ds.extract("true", label="split", save_summary=False, executor=ex),
                repeats,
            )
            results["extract"] = {
                "serial_s": round(serial_s, 3),
                "serial_all_s": serial_all,
                "executor_first_call_s": round(first_s, 3),
                "executor_s": round(split_s, 3),
                "executor_all_s": split_all,
                "speedup": round(serial_s / split_s, 2),
                "serial_frames_per_s": round(num_frames / serial_s, 1),
                "executor_frames_per_s": round(num_frames / split_s, 1),
                "identical": _same(one["raw"], split["raw"]),
            }
            # -- spike inference
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                serial_s, serial_all, s1 = _best(lambda: ds.infer_spikes(label="serial"), repeats)
                t0 = time.perf_counter()
                ds.infer_spikes(label="serial", executor=ex)
                first_s = time.perf_counter() - t0
                split_s, split_all, s2 = _best(
                    lambda: ds.infer_spikes(label="serial", executor=ex), repeats
                )
            results["infer_spikes"] = {
                "serial_s": round(serial_s, 3),
                "serial_all_s": serial_all,
                "executor_first_call_s": round(first_s, 3),
                "executor_s": round(split_s, 3),
                "executor_all_s": split_all,
                "speedup": round(serial_s / split_s, 2),
                "identical": _same(s1[0], s2[0]) and _same(s1[1], s2[1]),
            }
        finally:
            client.close()
            cluster.close()
            ds.close()
    return results


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
