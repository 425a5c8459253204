"""I/O benchmarks: streaming passes, frame-change latency, peak memory, projections.

Writes a multi-GB uint16 movie (512 x 512 frames) as a contiguous TIFF, a TIFF with an
IFD between pages (as microscopes write them) and an HDF5 file, into a temporary
folder (``NAPARI_SIMA_BENCH_DIR`` or the system temp dir), and measures:

* frames/s and GB/s of a full pass through ``Sequence.iter_blocks`` against a plain
  ``numpy.fromfile`` of the same bytes (warm page cache);
* time to open a movie and per-frame-change latency of the lazy napari view;
* peak RSS of a fresh process streaming the whole 2 GB TIFF;
* end-to-end projection throughput (mean, std, kurtosis in one pass) from the file.

Run ``python benchmarks/bench_io.py [--quick]``; ``--quick`` uses a small movie.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FRAME = (512, 512)


def _write_movies(folder: Path, num_frames: int) -> dict[str, Path]:
    import h5py
    import tifffile

    rng = np.random.default_rng(0)
    block = 200
    paths = {
        "tiff": folder / "movie.tif",
        "tiff_ifds": folder / "movie_ifds.tif",
        "hdf5": folder / "movie.h5",
    }
    if all(p.exists() for p in paths.values()):
        return paths
    base = rng.integers(100, 4000, size=(block,) + FRAME, dtype=np.uint16)

    def frames():
        for k in range(0, num_frames, block):
            yield from np.roll(base, k, axis=0)[: min(block, num_frames - k)]

    with tifffile.TiffWriter(paths["tiff"], bigtiff=True) as tw:
        tw.write(frames(), shape=(num_frames,) + FRAME, dtype=np.uint16, contiguous=True)
    with tifffile.TiffWriter(paths["tiff_ifds"], bigtiff=True) as tw:
        for k in range(0, num_frames, block):
            chunk = np.roll(base, k, axis=0)[: min(block, num_frames - k)]
            for frame in chunk:
                tw.write(frame, contiguous=False, metadata=None)
    with h5py.File(paths["hdf5"], "w") as f:
        ds = f.create_dataset("imaging", shape=(num_frames,) + FRAME, dtype=np.uint16)
        for k in range(0, num_frames, block):
            n = min(block, num_frames - k)
            ds[k : k + n] = np.roll(base, k, axis=0)[:n]
    return paths


def _fromfile_rate(path: Path, offset: int, nbytes: int) -> float:
    t0 = time.perf_counter()
    chunk = 64 * 2**20
    with open(path, "rb") as fh:
        fh.seek(offset)
        done = 0
        while done < nbytes:
            n = min(chunk, nbytes - done)
            np.fromfile(fh, dtype=np.uint8, count=n)
            done += n
    return nbytes / (time.perf_counter() - t0)


def _data_offset(path: Path) -> int:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        off = tif.series[0].dataoffset
        return int(off if off is not None else tif.pages[0].dataoffsets[0])


def _stream(seq, block_frames: int = 64) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    for block in seq.iter_blocks(block_frames):
        n += block.shape[0]
    return time.perf_counter() - t0, n


def _latency(seq, samples: int = 200) -> dict[str, float]:
    rng = np.random.default_rng(1)
    lazy = seq.lazy_channel(0)
    times = []
    for t in rng.integers(0, len(seq), samples):
        t0 = time.perf_counter()
        np.asarray(lazy[int(t), 0])
        times.append(time.perf_counter() - t0)
    arr = np.asarray(times) * 1e3
    return {"median_ms": float(np.median(arr)), "p95_ms": float(np.percentile(arr, 95))}


# VmHWM (peak resident set of this address space), not ru_maxrss: on Linux ru_maxrss is
# inherited across fork+exec and would report the parent's peak.
_RSS_CHILD = r"""
import sys, time
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1])
from napari_sima.core import Sequence
fmt, path = sys.argv[1], sys.argv[2]
seq = Sequence.create(fmt, path) if fmt == 'TIFF' else Sequence.create('HDF5', path, 'tyx')
start = hwm()
t0 = time.perf_counter()
n = 0
for block in seq.iter_blocks(64):
    n += block.shape[0]
print(start, hwm(), n, time.perf_counter() - t0)
"""


def _peak_rss(fmt: str, path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, fmt, str(path)],
        capture_output=True, text=True, check=True,
    )
    before, peak, n, secs = out.stdout.split()
    return {
        "rss_after_import_MB": int(before) / 1024,
        "peak_rss_MB": int(peak) / 1024,
        "frames": int(n),
        "seconds": float(secs),
    }


def run(quick: bool = False) -> dict:
    """Run the I/O benchmarks and return the numbers."""
    from napari_sima.core import ImagingDataset, Sequence

    num_frames = 400 if quick else 4000  # 4000 x 512 x 512 x 2 B = 2.1 GB
    folder = Path(os.environ.get("NAPARI_SIMA_BENCH_DIR", tempfile.gettempdir())) / (
        f"napari-sima-bench-{num_frames}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = _write_movies(folder, num_frames)
    results: dict = {"frames": num_frames, "frame_shape": FRAME, "write_seconds": time.perf_counter() - t0}
    nbytes = num_frames * FRAME[0] * FRAME[1] * 2
    results["movie_GB"] = nbytes / 1e9

    # warm the page cache, then plain-numpy reference
    for p in paths.values():
        with open(p, "rb") as fh:
            while fh.read(64 * 2**20):
                pass
    ref = _fromfile_rate(paths["tiff"], _data_offset(paths["tiff"]), nbytes)
    results["numpy_fromfile_GBps"] = ref / 1e9

    for name, path in paths.items():
        t_open = time.perf_counter()
        seq = (
            Sequence.create("HDF5", path, "tyx") if name == "hdf5" else Sequence.create("TIFF", path)
        )
        open_s = time.perf_counter() - t_open
        secs, n = _stream(seq)
        assert n == num_frames
        rate = nbytes / secs
        results[name] = {
            "open_s": open_s,
            "frames_per_s": n / secs,
            "GBps": rate / 1e9,
            "ratio_to_fromfile": rate / ref,
            "frame_change": _latency(seq),
        }
        seq.close()

    results["peak_rss_tiff"] = _peak_rss("TIFF", paths["tiff"])
    results["peak_rss_hdf5"] = _peak_rss("HDF5", paths["hdf5"])

    seq = Sequence.create("TIFF", paths["tiff"])
    ds = ImagingDataset([seq], None)
    ds.compute_projections()  # compile the kernel on a first small run
    for backend in ("numba", "numpy"):
        ds = ImagingDataset([seq], None)
        t0 = time.perf_counter()
        ds.compute_projections(backend=backend)
        secs = time.perf_counter() - t0
        results[f"projections_{backend}_from_tiff_GBps"] = nbytes / secs / 1e9
    return results


def main() -> None:
    quick = "--quick" in sys.argv
    res = run(quick=quick)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
