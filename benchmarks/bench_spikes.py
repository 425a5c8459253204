"""Benchmark: spike inference (issue 5).

``per_trace``
    Seconds per trace of :func:`napari_sima.core.spikes.spike_inference` with given
    sigma and gamma (AR(1), ``'correct'``), for ``solver='oasis'`` (our active-set
    solver, numba) and ``solver='cvxpy'`` (CLARABEL), at T = 1,000, 10,000 and 100,000
    frames (cvxpy at 100,000 only in the full run).  The median of a few runs.
``accuracy``
    Correlation of inferred and true spikes, both binned to 100 ms, on synthetic traces
    (Poisson spikes at 1 Hz, 30 Hz frames, gamma 0.95, unit spike amplitude, noise
    sigma = 1/SNR, baseline 1, 3,000 frames; the median over 10 traces) for each mode,
    parameters estimated from the trace.
``dataset``
    1,000 ROIs x 10,000 frames end to end through ``ImagingDataset.infer_spikes`` on a
    real dataset folder in a temporary directory: a small movie and an ROI set saved
    with the dataset, and a signal set of realistic traces (Poisson spikes, per-ROI
    decay 0.90-0.98, SNR 2-10, baselines 0.5-2, float32 like an extraction) stored with
    :mod:`napari_sima.core.signal_store`.  The dataset is reloaded from its folder;
    the time covers reading the set, parameter estimation (shared gamma, 'correct'),
    the solver, and the atomic write of spikes, fits and parameters (target < 10 s),
    split into phases with the progress callback.  cvxpy runs the same path on the
    first ROIs of the set (stored as a second set), extrapolated to 1,000 ROIs for the
    ratio.

Run::

    .venv/bin/python benchmarks/bench_spikes.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import lfilter

TARGET_DATASET_S = 10.0


def _trace(n: int, seed: int = 0, gamma: float = 0.95, noise: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = rng.poisson(0.05, n).astype(float)
    return lfilter([1], [1, -gamma], s) + 1.0 + noise * rng.normal(size=n)


def _time(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def realistic_traces(n_rois: int, n_frames: int, seed: int = 1) -> np.ndarray:
    """``(n_rois, n_frames)`` float32 traces: Poisson spikes through AR(1) plus noise.

    Per ROI: rate 0.1-2 Hz at 30 Hz frames, decay gamma 0.90-0.98, spike amplitude 1,
    white noise of sigma 1/SNR with SNR 2-10, baseline 0.5-2.
    """
    rng = np.random.default_rng(seed)
    rate = rng.uniform(0.1, 2.0, n_rois) / 30.0
    gamma = rng.uniform(0.90, 0.98, n_rois)
    snr = rng.uniform(2.0, 10.0, n_rois)
    base = rng.uniform(0.5, 2.0, n_rois)
    out = np.empty((n_rois, n_frames), dtype=np.float32)
    for i in range(n_rois):
        s = rng.poisson(rate[i], n_frames).astype(float)
        c = lfilter([1.0], [1.0, -gamma[i]], s)
        out[i] = base[i] + c + rng.normal(scale=1.0 / snr[i], size=n_frames)
    return out


def make_dataset(folder: Path, raw: np.ndarray, labels: dict[str, int]) -> Path:
    """Save a dataset folder whose channel 0 holds signal sets of the first rows of ``raw``.

    The movie (``n_frames`` frames of 32 x 32 pixels) and the ROI set (one pixel per
    ROI) make it a complete dataset; the signals are stored as an extraction stores
    them.  ``labels`` maps set labels to their number of ROIs.
    """
    from napari_sima.core import ROI, ImagingDataset, ROIList, Sequence, signal_store

    n_rois, n_frames = raw.shape
    side = 32
    if n_rois > side * side:
        raise ValueError(f"at most {side * side} ROIs")
    movie = np.zeros((n_frames, 1, side, side, 1), dtype=np.uint16)
    savedir = folder / "bench.sima"
    ds = ImagingDataset([Sequence.create("ndarray", movie, "tzyxc")], savedir)
    rois = []
    for k in range(n_rois):
        mask = np.zeros((1, side, side), dtype=bool)
        mask[0, k // side, k % side] = True
        rois.append(ROI(mask=mask, label=f"roi-{k}", im_shape=(1, side, side)))
    ds.add_ROIs(ROIList(rois), "bench")
    store = signal_store.store_dir(savedir, 0)
    for label, n in labels.items():
        signals = {
            "raw": [raw[:n]],
            "rois": rois[:n],
            "signal_channel": 0,
            "timestamp": time.strftime("%Y-%m-%d-%Hh%Mm%Ss"),
        }
        signal_store.save_signal_set(store, signals, label)
    return savedir


def timed_infer(savedir: Path, label: str, solver: str) -> dict[str, float]:
    """Reload the dataset and time ``infer_spikes`` on one set, split into phases.

    ``first_trace_s``: reading the set, parameter estimation and the first trace;
    ``solve_per_roi_s``: the mean time per further trace; ``store_s``: writing the
    results.  ``cpu_seconds`` is this process's CPU time over the whole call (close to
    the wall time on an idle machine: the work is single-threaded), for runs on a
    loaded machine.
    """
    from napari_sima.core import ImagingDataset

    marks: list[float] = []
    t0, c0 = time.perf_counter(), time.process_time()
    ds = ImagingDataset.load(savedir)
    spikes, _, _ = ds.infer_spikes(
        label=label, solver=solver, progress=lambda d, t: marks.append(time.perf_counter())
    )
    t_end, c_end = time.perf_counter(), time.process_time()
    assert np.isfinite(spikes[0]).all()
    n = int(spikes[0].shape[0])
    return {
        "seconds": t_end - t0,
        "cpu_seconds": c_end - c0,
        "first_trace_s": marks[0] - t0,
        "solve_per_roi_s": (marks[-1] - marks[0]) / max(1, n - 1),
        "store_s": t_end - marks[-1],
        "n_rois": n,
    }


def dataset_benchmark(n_rois: int, n_frames: int, n_cvxpy: int) -> dict[str, Any]:
    """End-to-end ``ImagingDataset.infer_spikes`` on a dataset folder (see the module doc)."""
    import warnings

    raw = realistic_traces(n_rois, n_frames)
    with tempfile.TemporaryDirectory(prefix="napari-sima-bench-spikes-") as tmp:
        savedir = make_dataset(Path(tmp), raw, {"bench": n_rois, "subset": n_cvxpy})
        size_mb = sum(f.stat().st_size for f in savedir.rglob("*") if f.is_file()) / 1e6
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            oasis = timed_infer(savedir, "bench", "oasis")
            sub_oasis = timed_infer(savedir, "subset", "oasis")
            sub_cvxpy = timed_infer(savedir, "subset", "cvxpy")
    # the subset's first trace includes loading cvxpy; the other phases scale with ROIs
    cvxpy_extrapolated = (
        sub_cvxpy["first_trace_s"]
        + sub_cvxpy["solve_per_roi_s"] * (n_rois - 1)
        + oasis["store_s"]
    )
    return {
        "n_rois": n_rois,
        "n_frames": n_frames,
        "dataset_folder_mb": round(size_mb, 1),
        "oasis": oasis,
        "target_s": TARGET_DATASET_S,
        "within_target": oasis["seconds"] < TARGET_DATASET_S,
        "subset": {"n_rois": n_cvxpy, "oasis": sub_oasis, "cvxpy": sub_cvxpy},
        "cvxpy_extrapolated_s": cvxpy_extrapolated,
        "cvxpy_over_oasis": cvxpy_extrapolated / oasis["seconds"],
        "cvxpy_over_oasis_per_roi": sub_cvxpy["solve_per_roi_s"] / oasis["solve_per_roi_s"],
        # CPU time (robust to other work on the machine): cvxpy scaled by ROIs
        "cvxpy_cpu_extrapolated_s": sub_cvxpy["cpu_seconds"] * n_rois / n_cvxpy,
        "cvxpy_over_oasis_cpu": sub_cvxpy["cpu_seconds"] * n_rois / n_cvxpy
        / oasis["cpu_seconds"],
    }


def accuracy(n_traces: int = 10, n_frames: int = 3000) -> dict[str, dict[str, float]]:
    """Median correlation (100 ms bins) of inferred and true spikes per mode and SNR."""
    from napari_sima.core.spikes import get_poisson_spikes, spike_inference

    table: dict[str, dict[str, float]] = {}
    for snr in (2, 4, 6, 8, 10):
        row = {}
        for mode in ("correct", "robust", "psd"):
            cors = []
            for k in range(n_traces):
                s = get_poisson_spikes(seed=1000 + k, rate=1, steps=n_frames, deltat=1 / 30)
                rng = np.random.default_rng(k)
                f = lfilter([1], [1, -0.95], s) + 1 + rng.normal(size=n_frames) / snr
                est = spike_inference(f, mode=mode)[0]
                nb = n_frames // 3
                a = est[: 3 * nb].reshape(nb, 3).sum(1)
                b = s[: 3 * nb].reshape(nb, 3).sum(1)
                cors.append(np.corrcoef(a, b)[0, 1])
            row[mode] = round(float(np.median(cors)), 3)
        table[f"snr_{snr}"] = row
    return table


def run(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark; returns the numbers (seconds)."""
    from napari_sima.core.spikes import spike_inference

    spike_inference(_trace(200), 0.3, 0.95)  # compile / load the numba kernel
    out: dict[str, Any] = {"per_trace_s": {}}
    sizes = [1_000, 10_000] if quick else [1_000, 10_000, 100_000]
    for n in sizes:
        f = _trace(n, seed=n)
        row = {}
        reps = 20 if n <= 10_000 else 3
        row["oasis"] = _time(lambda f=f: spike_inference(f, 0.3, 0.95, solver="oasis"), reps)
        if n < 100_000 or not quick:
            row["cvxpy"] = _time(
                lambda f=f: spike_inference(f, 0.3, 0.95, solver="cvxpy"),
                3 if n <= 10_000 else 1,
            )
            row["cvxpy_over_oasis"] = row["cvxpy"] / row["oasis"]
        out["per_trace_s"][str(n)] = row

    n_rois, n_cvxpy = (200, 5) if quick else (1_000, 20)
    out["dataset"] = dataset_benchmark(n_rois, 10_000, n_cvxpy)
    out["accuracy_corr_100ms"] = accuracy(n_traces=3 if quick else 10)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))
