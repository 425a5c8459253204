"""Soak benchmark: extract and infer spikes on a movie larger than the page cache (issue 9).

A 512 x 512 x 50,000 uint16 movie (26 GB: more than this machine's RAM, so every pass
reads from the disk) is generated on disk, then a fresh Python process (so that its
peak resident set is only the work) runs the dataset workflow on it:

``open``
    ``ImagingDataset([Sequence.create('TIFF', path)], savedir)``.
``add_rois``
    The true cell masks (a few hundred) stored as an ROI set with ``add_ROIs``.
``time_average``
    The time-average pass (``compute_projections``; :meth:`ImagingDataset.extract`
    would run it first anyway; it is timed apart here).
``extract``
    ``ds.extract('cells', label='soak')``: one pass over the movie, the signal set
    written atomically, and the extraction summary figure (PNG + PDF).
``infer_spikes``
    ``ds.infer_spikes(label='soak')`` (OASIS, shared gamma): reading the set,
    estimating the parameters, solving every trace and the atomic update of the set.
``read_back``
    ``ds.signals()['soak']`` (what the traces viewer and an export do).

For every phase: wall seconds, the peak RSS *during* the phase (the process's
``VmHWM`` is reset at the start of each phase by writing ``5`` to
``/proc/self/clear_refs``), and the RSS at its end.  The peak RSS of the process is
the largest of these (target: below 2 GB).  The frames are read with ``read()``, not
memory-mapped, so the page cache is not part of the RSS.

Movie generation (in its own process, not measured for memory): a template of
``--template`` frames (default 2,000) from
:func:`napari_sima.core.synthetic.make_calcium_movie` (``--cells`` cells, masks
disjoint), repeated in time: tile ``k`` is the template started at a random frame
(circularly; tile 0 is the template itself) plus one of 61 frames of uniform integer
noise (0-23 counts), so that no two tiles are the same bytes.  Written page by page
as one contiguous BigTIFF series, then ``os.sync()``.  The extracted traces of the
first tile are compared with the true calcium (median Pearson correlation over the
cells) as a check that the numbers are right, not only fast.

The data go to ``NAPARI_SIMA_BENCH_DIR`` (default ``/var/tmp``), which must have the
movie's size + 4 GB free (30 GB for the full run); the folder is deleted at the end,
also after a failure or Ctrl-C.

Run::

    .venv/bin/python benchmarks/bench_soak.py [--quick] [--frames T] [--cells N]
        [--template T] [--processes P]

``--quick``: 2,000 frames (1 GB).  The full run writes
``benchmarks/results/soak.json`` (``run_all.py`` writes the same file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _support import phase_main, run_phase

HERE = Path(__file__).resolve().parent
SIZE = 512
FULL = {"frames": 50_000, "cells": 400, "template": 2_000, "processes": 1}
QUICK = {"frames": 2_000, "cells": 400, "template": 2_000, "processes": 1}
TARGET_PEAK_MB = 2000.0
MARGIN_BYTES = 4e9
NOISE_FRAMES = 61
NOISE_MAX = 24
PHASES = ("open", "add_rois", "time_average", "extract", "infer_spikes", "read_back")


# ---------------------------------------------------------------------------------------
# Memory of this process
# ---------------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def _reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _mb(kb: int) -> float:
    return round(kb / 1024, 1)


def _page_cache_fraction(path: Path) -> float | None:
    exe = shutil.which("fincore")
    if exe is None or not path.exists():
        return None
    try:
        out = subprocess.run([exe, "--bytes", "--noheadings", "--raw", "--output",
                              "RES,SIZE", str(path)], capture_output=True, text=True,
                             check=True, timeout=120).stdout.split()
        return round(int(out[0]) / int(out[1]), 3)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------------------------------
# Phase "generate" (own process)
# ---------------------------------------------------------------------------------------
def _phase_generate(workdir: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import tifffile

    from napari_sima.core.synthetic import make_calcium_movie

    frames, cells = cfg["frames"], cfg["cells"]
    template_frames = min(cfg["template"], frames)
    t0 = time.perf_counter()
    movie = make_calcium_movie(num_frames=template_frames, frame_shape=(1, SIZE, SIZE, 1),
                               num_sequences=1, num_cells=cells, seed=0,
                               allow_overlap=False)
    out: dict[str, Any] = {"template_frames": template_frames,
                           "template_s": round(time.perf_counter() - t0, 2)}
    template = np.ascontiguousarray(movie.sequences[0][:, 0, :, :, 0])
    np.minimum(template, np.iinfo(np.uint16).max - NOISE_MAX, out=template)
    labels = np.zeros((SIZE, SIZE), np.int32)
    for i, mask in enumerate(movie.true_masks(plane=0)):
        labels[mask] = i + 1
    np.savez(workdir / "truth.npz", labels=labels,
             calcium=movie.true_calcium(0, plane=0).astype(np.float32))
    del movie
    rng = np.random.default_rng(1)
    noise = rng.integers(0, NOISE_MAX, size=(NOISE_FRAMES, SIZE, SIZE), dtype=np.uint16)
    n_tiles = -(-frames // template_frames)
    offsets = [0, *rng.integers(0, template_frames, n_tiles - 1).tolist()]

    def pages():
        buf = np.empty((SIZE, SIZE), np.uint16)
        for t in range(frames):
            k, i = divmod(t, template_frames)
            np.add(template[(i + offsets[k]) % template_frames], noise[(7 * t + k) % NOISE_FRAMES],
                   out=buf)
            yield buf

    path = workdir / "movie.tif"
    t0 = time.perf_counter()
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(pages(), shape=(frames, SIZE, SIZE), dtype=np.uint16, contiguous=True)
    out["write_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    os.sync()  # no dirty pages left to be written back during the measured work
    out["sync_s"] = round(time.perf_counter() - t0, 2)
    out["movie_GB"] = round(os.path.getsize(path) / 1e9, 3)
    out["write_GBps"] = round(out["movie_GB"] / (out["write_s"] + out["sync_s"]), 3)
    out["tiles"] = n_tiles
    out["peak_rss_MB"] = _mb(_status_kb("VmHWM"))
    return out


# ---------------------------------------------------------------------------------------
# Phase "work" (fresh process: its peak RSS is the work's)
# ---------------------------------------------------------------------------------------
def _phase_work(workdir: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    t_start = time.perf_counter()
    import numpy as np

    from napari_sima.core import ROI, ImagingDataset, Sequence
    from napari_sima.core.roi import ROIList

    out: dict[str, Any] = {
        "import_s": round(time.perf_counter() - t_start, 2),
        "rss_after_import_MB": _mb(_status_kb("VmRSS")),
        "peak_after_import_MB": _mb(_status_kb("VmHWM")),
    }
    resettable = _reset_peak()
    out["peak_reset_per_phase"] = resettable
    phases: dict[str, dict[str, float]] = {}
    state: dict[str, Any] = {}

    def phase(name: str, fn: Any) -> Any:
        _reset_peak()
        t0 = time.perf_counter()
        result = fn()
        secs = time.perf_counter() - t0
        phases[name] = {"seconds": round(secs, 2), "peak_rss_MB": _mb(_status_kb("VmHWM")),
                        "rss_end_MB": _mb(_status_kb("VmRSS"))}
        print(f"   {name}: {secs:.1f} s, peak {phases[name]['peak_rss_MB']:.0f} MB",
              file=sys.stderr, flush=True)
        return result

    movie = workdir / "movie.tif"

    def do_open() -> Any:
        return ImagingDataset([Sequence.create("TIFF", str(movie))], workdir / "soak.sima")

    ds = phase("open", do_open)

    def do_rois() -> int:
        with np.load(workdir / "truth.npz") as npz:
            labels = npz["labels"]
        rois = ROIList(
            ROI(mask=(labels == k)[None], label=f"cell{k:03d}", im_shape=(1, SIZE, SIZE))
            for k in range(1, int(labels.max()) + 1)
        )
        ds.add_ROIs(rois, label="cells")
        return len(rois)

    out["rois"] = phase("add_rois", do_rois)
    phase("time_average", ds.compute_projections)
    phase("extract", lambda: ds.extract("cells", label="soak",
                                        n_processes=cfg["processes"]))
    phase("infer_spikes", lambda: ds.infer_spikes(label="soak", n_processes=cfg["processes"]))

    def do_read() -> None:
        state["signals"] = ds.signals()["soak"]

    phase("read_back", do_read)
    out["phases"] = phases
    out["peak_rss_MB"] = max(p["peak_rss_MB"] for p in phases.values())
    if not resettable:  # VmHWM was never reset: it is the peak of the whole process
        out["peak_rss_MB"] = _mb(_status_kb("VmHWM"))
    out["work_s"] = round(sum(p["seconds"] for p in phases.values()), 2)

    # -- checks (after the measurements) --------------------------------------------------
    signals = state.pop("signals")
    raw = np.asarray(signals["raw"][0])
    spikes = np.asarray(signals["spikes"][0])
    out["raw_shape"] = list(raw.shape)
    out["raw_dtype"] = str(raw.dtype)
    out["raw_finite_fraction"] = round(float(np.isfinite(raw).mean()), 4)
    out["spikes_shape"] = list(spikes.shape)
    out["spikes_dtype"] = str(spikes.dtype)
    with np.load(workdir / "truth.npz") as npz:
        calcium = npz["calcium"]
    n_t = calcium.shape[1]
    cors = [np.corrcoef(raw[i, :n_t], calcium[i])[0, 1] for i in range(raw.shape[0])]
    out["tile0_median_corr_raw_vs_true_calcium"] = round(float(np.nanmedian(cors)), 3)
    out["savedir_MB"] = round(sum(f.stat().st_size for f in (workdir / "soak.sima").rglob("*")
                                  if f.is_file()) / 1e6, 1)
    ds.close()
    return out


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------


def _table(res: dict[str, Any]) -> str:
    work = res["work"]
    gen = res["generate"]
    lines = [
        f"Movie: {res['config']['frames']:,} x {SIZE} x {SIZE} uint16, {gen['movie_GB']:.1f} GB "
        f"(RAM {res.get('ram_GB')} GB; in page cache before the work: "
        f"{res.get('page_cache_before')}); {work['rois']} ROIs; "
        f"n_processes={res['config']['processes']}",
        "",
        "| phase | seconds | peak RSS MB | RSS at end MB |",
        "|---|---|---|---|",
        f"| import | {work['import_s']:.1f} | {work['peak_after_import_MB']:.0f} | "
        f"{work['rss_after_import_MB']:.0f} |",
    ]
    for name in PHASES:
        p = work["phases"][name]
        lines.append(f"| {name} | {p['seconds']:.1f} | {p['peak_rss_MB']:.0f} | "
                     f"{p['rss_end_MB']:.0f} |")
    lines.append(f"| **whole work process** | {work['work_s']:.1f} | "
                 f"**{work['peak_rss_MB']:.0f}** | |")
    lines.append("")
    ok = work["peak_rss_MB"] < TARGET_PEAK_MB
    lines.append(f"Peak RSS {work['peak_rss_MB']:.0f} MB: "
                 f"{'below' if ok else 'ABOVE'} the {TARGET_PEAK_MB:.0f} MB target.")
    lines.append(f"Generation: template {gen['template_frames']} frames "
                 f"{gen['template_s']:.0f} s, write {gen['write_s']:.0f} s + sync "
                 f"{gen['sync_s']:.0f} s ({gen['write_GBps']:.2f} GB/s).  "
                 f"Signals {work['raw_shape']} {work['raw_dtype']}, finite "
                 f"{work['raw_finite_fraction']}; spikes {work['spikes_shape']}; median "
                 f"corr(raw, true calcium) on tile 0: "
                 f"{work['tile0_median_corr_raw_vs_true_calcium']}; dataset folder "
                 f"{work['savedir_MB']:.0f} MB.")
    return "\n".join(lines)


def run(quick: bool = False, *, frames: int | None = None, cells: int | None = None,
        template: int | None = None, processes: int | None = None) -> dict[str, Any]:
    """Run the soak benchmark; returns the numbers (seconds, MB).

    Parameters
    ----------
    quick : bool
        2,000 frames instead of 50,000.
    frames, cells, template, processes : int, optional
        Frames of the movie, cells (= ROIs), frames of the synthetic template and
        ``n_processes`` of ``extract``/``infer_spikes``.

    Returns
    -------
    dict
        ``config``, ``generate``, ``work`` (per phase seconds and peak RSS, checks) and
        ``table`` (markdown).

    Raises
    ------
    RuntimeError
        If the folder has too little free space or a phase fails.
    """
    cfg = dict(QUICK if quick else FULL)
    for key, value in (("frames", frames), ("cells", cells), ("template", template),
                       ("processes", processes)):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
            cfg[key] = value
    parent = Path(os.environ.get("NAPARI_SIMA_BENCH_DIR") or "/var/tmp")
    if not parent.is_dir():
        parent = Path(tempfile.gettempdir())
    movie_bytes = cfg["frames"] * SIZE * SIZE * 2
    need = movie_bytes + MARGIN_BYTES
    free = shutil.disk_usage(parent).free
    if free < need:
        raise RuntimeError(
            f"{parent} has {free / 1e9:.1f} GB free; the {cfg['frames']:,}-frame movie needs "
            f"{movie_bytes / 1e9:.1f} GB + {MARGIN_BYTES / 1e9:.0f} GB margin = {need / 1e9:.1f} "
            f"GB: set NAPARI_SIMA_BENCH_DIR to a folder on a disk with more room, or use "
            f"--frames")
    res: dict[str, Any] = {"config": cfg, "folder": str(parent),
                           "free_GB_before": round(free / 1e9, 1),
                           "load_before": [round(x, 2) for x in os.getloadavg()]}
    try:
        with open("/proc/meminfo") as fh:
            res["ram_GB"] = round(int(fh.readline().split()[1]) / 1e6, 1)
    except (OSError, ValueError, IndexError):
        res["ram_GB"] = None
    workdir = Path(tempfile.mkdtemp(prefix="napari-sima-soak-", dir=parent))
    try:
        res["generate"] = run_phase(__file__, workdir, "generate", cfg)
        res["page_cache_before"] = _page_cache_fraction(workdir / "movie.tif")
        res["work"] = run_phase(__file__, workdir, "work", cfg)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    res["removed"] = not workdir.exists()
    res["load_after"] = [round(x, 2) for x in os.getloadavg()]
    res["peak_rss_MB"] = res["work"]["peak_rss_MB"]
    res["meets_target"] = res["peak_rss_MB"] < TARGET_PEAK_MB
    res["table"] = _table(res)
    return res


def _phase_main(args: argparse.Namespace) -> int:
    phases = {"generate": _phase_generate, "work": _phase_work}
    return phase_main(args.phase, args.workdir, args.config, phases)


def main(argv: list[str]) -> int:
    """Command line: run, print the table, write ``benchmarks/results/soak.json``."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 frames")
    parser.add_argument("--frames", type=int, help="frames of the movie (default 50,000)")
    parser.add_argument("--cells", type=int, help="cells = ROIs (default 400)")
    parser.add_argument("--template", type=int, help="frames of the synthetic template")
    parser.add_argument("--processes", type=int, help="n_processes (default 1)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        return _phase_main(args)
    t0 = time.perf_counter()
    try:
        res = run(args.quick, frames=args.frames, cells=args.cells, template=args.template,
                  processes=args.processes)
    except RuntimeError as err:
        print(f"bench_soak: {err}", file=sys.stderr)
        return 2
    print(res["table"])
    record = {
        "benchmark": "soak",
        "quick": args.quick,
        "seconds": round(time.perf_counter() - t0, 2),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "results": res,
    }
    custom = any(v is not None for v in (args.frames, args.cells, args.template, args.processes))
    if not custom and not args.quick:
        (HERE / "results").mkdir(exist_ok=True)
        path = HERE / "results" / "soak.json"
        path.write_text(json.dumps(record, indent=2, default=str))
        print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
