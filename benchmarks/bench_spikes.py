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
    1,000 ROIs x 10,000 frames through :func:`napari_sima.core.spikes.infer_spikes` on an
    in-memory dataset (parameter estimation included; one sequence), target < 10 s.

Run::

    .venv/bin/python benchmarks/bench_spikes.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
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


class _MemoryDataset:
    """The minimal dataset interface infer_spikes needs (no movie required)."""

    savedir = None
    read_only = False

    def __init__(self, raw: list[np.ndarray]) -> None:
        from napari_sima.core import signal_store

        signal_store.memory_store(self, 0)["bench"] = {"raw": raw, "timestamp": "t"}

    def resolve_channel(self, channel: Any) -> int:
        return 0

    def signals(self, channel: Any = 0) -> dict[str, Any]:
        from napari_sima.core import signal_store

        return dict(signal_store.memory_store(self, 0))

    def signal_labels(self, channel: Any = 0) -> list[str]:
        return ["bench"]


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
    from napari_sima.core.spikes import infer_spikes, spike_inference

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

    n_rois, n_frames = (200, 10_000) if quick else (1_000, 10_000)
    rng = np.random.default_rng(1)
    s = rng.poisson(0.03, (n_rois, n_frames)).astype(float)
    raw = lfilter([1], [1, -0.95], s, axis=1) + 1.0 + 0.3 * rng.normal(size=s.shape)
    ds = _MemoryDataset([raw.astype(np.float32)])
    t0 = time.perf_counter()
    infer_spikes(ds)
    el = time.perf_counter() - t0
    out["dataset"] = {
        "n_rois": n_rois,
        "n_frames": n_frames,
        "seconds": el,
        "target_s_for_1000_rois": TARGET_DATASET_S,
        "extrapolated_1000_rois_s": el * 1000 / n_rois,
    }
    out["accuracy_corr_100ms"] = accuracy(n_traces=3 if quick else 10)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))
