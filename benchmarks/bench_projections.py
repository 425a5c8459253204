"""Throughput of the streaming projections (per-pixel mean, std, kurtosis) in memory.

Feeds an in-memory uint16 movie of 512 x 512 frames (2,000 frames = 1 GB; 256 frames
with ``--quick``) in blocks of 128 frames to :class:`MomentAccumulator` and reports GB/s
of uint16 input for the ``'numba'`` and ``'numpy'`` backends.  The numba kernel is
compiled (or loaded from numba's on-disk cache) on a tiny block first, and that time is
reported separately.  A plain ``ndarray.sum`` over the same bytes is measured as a
rough memory-bandwidth reference (shared VMs are noisy: the best of a few repeats is
reported).

Run ``python benchmarks/bench_projections.py [--quick]``.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from napari_sima.core.projections import MomentAccumulator

FRAME = (512, 512)
BLOCK_FRAMES = 128


def _make_movie(num_frames: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    movie = np.empty((num_frames, *FRAME), np.uint16)
    for start in range(0, num_frames, 256):
        stop = min(start + 256, num_frames)
        movie[start:stop] = rng.integers(100, 4000, size=(stop - start, *FRAME), dtype=np.uint16)
    return movie


def _best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _pass(movie: np.ndarray, backend: str, block_frames: int) -> None:
    acc = MomentAccumulator(FRAME, backend=backend)
    for start in range(0, movie.shape[0], block_frames):
        acc.update(movie[start : start + block_frames])
    acc.result()


def run(quick: bool = False) -> dict:
    """Measure the throughput of both backends.

    Parameters
    ----------
    quick : bool
        Use a small movie (256 frames) and fewer repeats.

    Returns
    -------
    dict
        Movie size, the first-call (compile or cache-load) time of the numba kernel,
        and seconds and GB/s (1e9 bytes of uint16 input per second) per backend, plus
        ``ndarray.sum`` GB/s as a memory-bandwidth reference.
    """
    num_frames = 256 if quick else 2000
    repeats = 2 if quick else 3
    movie = _make_movie(num_frames)
    nbytes = movie.nbytes

    t0 = time.perf_counter()
    MomentAccumulator(FRAME, backend="numba").update(movie[:2])
    compile_s = time.perf_counter() - t0

    results: dict = {
        "frames": num_frames,
        "frame_shape": list(FRAME),
        "dtype": "uint16",
        "block_frames": BLOCK_FRAMES,
        "gigabytes": round(nbytes / 1e9, 3),
        "numba_first_call_s": round(compile_s, 2),
    }
    sum_s = _best_seconds(lambda: movie.sum(dtype=np.uint64), repeats)
    results["ndarray_sum_GBps"] = round(nbytes / sum_s / 1e9, 2)
    for backend, reps in (("numba", repeats), ("numpy", max(1, repeats - 1))):
        secs = _best_seconds(lambda b=backend: _pass(movie, b, BLOCK_FRAMES), reps)
        results[f"{backend}_s"] = round(secs, 3)
        results[f"{backend}_GBps"] = round(nbytes / secs / 1e9, 2)
    return results


def main(argv: list[str]) -> int:
    res = run(quick="--quick" in argv)
    print(
        f"{res['frames']} frames of {res['frame_shape'][0]}x{res['frame_shape'][1]} "
        f"uint16 ({res['gigabytes']} GB) in blocks of {res['block_frames']} frames; "
        f"numba first call {res['numba_first_call_s']} s"
    )
    print(f"{'backend':<14}{'seconds':>10}{'GB/s':>8}")
    for backend in ("numba", "numpy"):
        print(f"{backend:<14}{res[backend + '_s']:>10.3f}{res[backend + '_GBps']:>8.2f}")
    print(f"{'ndarray.sum':<14}{'':>10}{res['ndarray_sum_GBps']:>8.2f}  (bandwidth reference)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
