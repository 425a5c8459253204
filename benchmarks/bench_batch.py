"""Benchmark: a pipeline on many datasets, serially vs on a local Dask cluster (issue 8).

The pipeline ``create -> import-rois -> extract -> infer-spikes`` runs on 8 movies
(512 x 512 x 2,000 uint16 TIFFs, about 1 GB each, with 200 true cell ROIs as an
ImageJ RoiSet ``.zip`` per movie) with :func:`napari_sima.core.pipeline.run_batch`:

``serial``
    ``run_batch(pipeline, movies)``: one dataset after the other in one process.
``cluster``
    ``run_batch(pipeline, movies, n_workers=2)``: a ``LocalCluster`` of 2 worker
    processes (one thread each) started and closed inside the call.
``cluster_prestarted``
    The same cluster started beforehand, warmed up (each worker runs the pipeline on a
    tiny 64 x 64 x 100 movie: imports and numba cache loads) and given as
    ``client=``, so the cluster's start, warm-up and close times are measured apart
    from the batch.

Each mode writes its datasets to its own folder (``create``'s ``output:
MODE/{stem}.sima``) and runs in a fresh Python process (``--phase``), so each pays its
own imports and numba cache loads and its peak RSS is its own.  Reported per mode:
wall seconds, speed-up over serial, the per-step seconds summed over the datasets
(create / import-rois / extract / infer-spikes; on the cluster these are worker-busy
seconds, which overlap in wall time), each dataset's seconds and worker, peak RSS of
the main process and of the workers, the CPU seconds of all the run's processes during
the batch and the cores used (CPU seconds / wall seconds: how much of the machine the
run got, whatever else runs on it), BLAS threads and the load average before/after.
The stored raw signals and spikes of every dataset are compared across the modes with
``numpy.array_equal``.  How much of the movies was in the page cache before each mode
(``fincore``) is reported: the page cache is not dropped.

Only one movie is generated (:func:`napari_sima.core.synthetic.make_calcium_movie`);
the other datasets are byte copies under other names (each dataset is processed
independently, so this does not change the timings); ``--distinct-movies`` generates
one movie per dataset (seed = its index) instead.  The data lives in a temporary
folder under ``NAPARI_SIMA_BENCH_DIR`` (or the system temp dir), checked for free
space first and removed at the end.  The machine this was written on has 2 cores
shared with other work: see the load averages.

Run::

    .venv/bin/python benchmarks/bench_batch.py [--quick] [--datasets N] [--frames T]
        [--size PX] [--rois N] [--workers W] [--distinct-movies] [--repeats R]

``--quick``: 4 datasets of 256 x 256 x 500 with 50 ROIs.  ``--repeats R`` runs the
three modes R times in turn and reports the fastest run of each (shared machines).  Writes
``benchmarks/results/batch.json`` (``run_all.py`` writes the same file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _support import phase_main, run_phase

HERE = Path(__file__).resolve().parent
STEPS = ("create", "import-rois", "extract", "infer-spikes")
MODES = ("serial", "cluster", "cluster_prestarted")
FULL = {"datasets": 8, "frames": 2000, "size": 512, "rois": 200}
QUICK = {"datasets": 4, "frames": 500, "size": 256, "rois": 50}


# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------
def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _mb(kib: float) -> float:
    """``ru_maxrss`` (KiB on Linux) in MB."""
    return round(kib * 1024 / 1e6, 1)


def _pipeline_data(mode: str) -> dict[str, Any]:
    return {
        "version": 1,
        "name": f"bench-batch-{mode}",
        "steps": [
            {"create": {"output": f"{mode}/{{stem}}.sima"}},
            {"import-rois": {"file": "{stem}_RoiSet.zip", "label": "cells"}},
            {"extract": {"label": "signals"}},
            {"infer-spikes": {}},
        ],
    }


def _movies(workdir: Path) -> list[Path]:
    return sorted((workdir / "movies").glob("movie_*.tif"))


def _page_cache(paths: list[Path]) -> dict[str, Any]:
    """Bytes of the files resident in the page cache (util-linux ``fincore``)."""
    exe = shutil.which("fincore")
    if exe is None or not paths:
        return {"fraction": None, "note": "fincore not available"}
    try:
        out = subprocess.run(
            [exe, "--bytes", "--noheadings", "--raw", "--output", "RES,SIZE", *map(str, paths)],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        return {"fraction": None, "note": f"fincore failed: {err}"}
    res = size = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            res += int(parts[0])
            size += int(parts[1])
    return {"fraction": round(res / size, 3) if size else None, "GB": round(res / 1e9, 2)}


def _blas_threads() -> list[int]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return sorted({int(i["num_threads"]) for i in threadpool_info()})


def _usage() -> dict[str, Any]:
    """Peak RSS and CPU seconds of this process and of its reaped children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "peak_rss_mb": _mb(me.ru_maxrss),
        "cpu_s": round(me.ru_utime + me.ru_stime, 2),
        "children_peak_rss_mb": _mb(ch.ru_maxrss),
        "children_cpu_s": round(ch.ru_utime + ch.ru_stime, 2),
    }


class _ChildRSS:
    """Samples the RSS of this process's descendants (the cluster's workers)."""

    def __init__(self, interval: float = 0.25) -> None:
        import psutil

        self._me = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak: dict[int, int] = {}
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                children = self._me.children(recursive=True)
            except psutil.Error:
                children = []
            for proc in children:
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                self.peak[proc.pid] = max(self.peak.get(proc.pid, 0), rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> _ChildRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def workers_mb(self) -> list[float]:
        """Peak RSS (MB) of the sampled processes above 100 MB (the workers), largest first."""
        return sorted((round(v / 1e6, 1) for v in self.peak.values() if v > 100e6), reverse=True)


# ---------------------------------------------------------------------------------------
# Phases (each runs in a fresh process: ``--phase NAME --workdir DIR``)
# ---------------------------------------------------------------------------------------
def _write_movie(folder: Path, name: str, frames: int, size: int, cells: int,
                 seed: int) -> None:
    """``NAME.tif`` (t, y, x uint16) and ``NAME_RoiSet.zip`` (the true cell masks)."""
    import numpy as np
    import tifffile

    from napari_sima.core import ROI
    from napari_sima.core.imagej import write_imagej_rois
    from napari_sima.core.synthetic import make_calcium_movie

    movie = make_calcium_movie(num_frames=frames, frame_shape=(1, size, size, 1),
                               num_sequences=1, num_cells=cells, seed=seed)
    tifffile.imwrite(folder / f"{name}.tif",
                     np.ascontiguousarray(movie.sequences[0][:, 0, :, :, 0]))
    rois = [ROI(mask=m[None], label=f"cell{i:03d}", im_shape=(1, size, size))
            for i, m in enumerate(movie.true_masks(plane=0))]
    write_imagej_rois(folder / f"{name}_RoiSet.zip", rois)


def _warm_worker(workdir: str) -> float:
    """Run the pipeline on the tiny warm-up movie (imports, numba cache loads); seconds."""
    from napari_sima.core.pipeline import parse_pipeline, run_pipeline

    t0 = time.perf_counter()
    data = _pipeline_data(f"warm-{os.getpid()}")
    report = run_pipeline(parse_pipeline(data), Path(workdir) / "warmup" / "tiny.tif")
    if not report.ok:
        raise RuntimeError(f"warm-up failed: {report.error}")
    return time.perf_counter() - t0


def _phase_generate(workdir: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    (workdir / "warmup").mkdir(parents=True)
    _write_movie(workdir / "warmup", "tiny", 100, 64, 5, seed=1)
    folder = workdir / "movies"
    folder.mkdir(parents=True)
    n = cfg["datasets"]
    t0 = time.perf_counter()
    for k in range(n if cfg["distinct"] else 1):
        _write_movie(folder, f"movie_{k:02d}", cfg["frames"], cfg["size"], cfg["rois"], seed=k)
    out: dict[str, Any] = {"generate_and_write_s": round(time.perf_counter() - t0, 2)}
    t0 = time.perf_counter()
    if not cfg["distinct"]:
        for k in range(1, n):
            shutil.copyfile(folder / "movie_00.tif", folder / f"movie_{k:02d}.tif")
            shutil.copyfile(folder / "movie_00_RoiSet.zip", folder / f"movie_{k:02d}_RoiSet.zip")
    os.sync()  # no dirty pages left to be written back during the timed runs
    out["copy_and_sync_s"] = round(time.perf_counter() - t0, 2)
    out["movie_GB"] = round(os.path.getsize(folder / "movie_00.tif") / 1e9, 3)
    out["movies"] = "one per dataset" if cfg["distinct"] else "one, copied"
    out["usage"] = _usage()
    return out


def _reports(report: Any) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "mode": report.mode,
        "batch_seconds": round(report.seconds, 3),
        "summary": report.summary(),
        "datasets": [
            {
                "name": Path(d.dataset or d.target).name,
                "dataset": d.dataset,
                "ok": d.ok,
                "error": d.error,
                "seconds": round(d.seconds, 3),
                "worker": d.worker,
                "steps": {s.name: round(s.seconds, 3) for s in d.steps},
                "status": {s.name: s.status for s in d.steps},
            }
            for d in report.datasets
        ],
    }


def _phase_run(workdir: Path, mode: str, cfg: dict[str, Any]) -> dict[str, Any]:
    from napari_sima.core.pipeline import parse_pipeline, run_batch

    movies = _movies(workdir)
    shutil.rmtree(workdir / "movies" / mode, ignore_errors=True)  # a repeat starts afresh
    pipeline = parse_pipeline(_pipeline_data(mode), source=f"bench_batch:{mode}")

    def progress(event: dict[str, Any]) -> None:
        if event["kind"] == "dataset":
            r = event["report"]
            print(f"   [{mode}] {event['index'] + 1}/{event['total']} "
                  f"{Path(event['target']).name}: {'ok' if r.ok else 'FAILED'} "
                  f"{r.seconds:.1f} s", file=sys.stderr, flush=True)

    out: dict[str, Any] = {"load_before": _load(), "blas_threads_main": _blas_threads()}
    out["page_cache_before"] = _page_cache(movies)
    workers = cfg["workers"]
    with _ChildRSS() as sampler:
        if mode == "serial":
            u0, t0 = _usage(), time.perf_counter()
            report = run_batch(pipeline, movies, progress=progress)
            out["seconds"] = time.perf_counter() - t0
            u1 = _usage()
            cpu = u1["cpu_s"] - u0["cpu_s"]
        elif mode == "cluster":
            u0, t0 = _usage(), time.perf_counter()
            report = run_batch(pipeline, movies, n_workers=workers, progress=progress)
            out["seconds"] = time.perf_counter() - t0
            u1 = _usage()  # the workers have been reaped: their CPU is in children_cpu_s
            cpu = (u1["cpu_s"] - u0["cpu_s"]) + (u1["children_cpu_s"] - u0["children_cpu_s"])
        else:
            from distributed import Client, LocalCluster

            t0 = time.perf_counter()
            # the same cluster run_batch(n_workers=...) starts
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address=None)
            client = Client(cluster)
            out["cluster_start_s"] = round(time.perf_counter() - t0, 3)
            out["blas_threads_workers"] = sorted(set(sum(client.run(_blas_threads).values(), [])))
            # first use on each worker: imports, numba cache loads (a tiny pipeline)
            t0 = time.perf_counter()
            warm = client.run(_warm_worker, str(workdir))
            out["cluster_warmup_s"] = round(time.perf_counter() - t0, 3)
            out["cluster_warmup_per_worker_s"] = [round(v, 3) for v in warm.values()]
            before = client.run(_usage)
            u0, t0 = _usage(), time.perf_counter()
            report = run_batch(pipeline, movies, client=client, progress=progress)
            out["seconds"] = time.perf_counter() - t0
            u1 = _usage()
            usage = client.run(_usage)  # ru_maxrss / CPU of each worker process itself
            out["workers_usage"] = {addr: u for addr, u in usage.items()}
            cpu = (u1["cpu_s"] - u0["cpu_s"]) + sum(
                usage[a]["cpu_s"] - before[a]["cpu_s"] for a in usage if a in before)
            t0 = time.perf_counter()
            client.close()
            cluster.close()
            out["cluster_close_s"] = round(time.perf_counter() - t0, 3)
    out["seconds"] = round(out["seconds"], 3)
    # CPU seconds of every process of the run during the batch (robust to other load)
    out["batch_cpu_s"] = round(cpu, 2)
    out["cores_used"] = round(cpu / out["seconds"], 2)
    out["workers_peak_rss_sampled_mb"] = sampler.workers_mb()
    out.update(_reports(report))
    out["usage"] = _usage()
    out["load_after"] = _load()
    return out




# ---------------------------------------------------------------------------------------
# Comparison and summary
# ---------------------------------------------------------------------------------------
def _stored(dataset: str) -> tuple[Any, Any]:
    from napari_sima.core import ImagingDataset

    ds = ImagingDataset.load(dataset)
    try:
        s = ds.signals(0)["signals"]
        return s["raw"], s["spikes"]
    finally:
        ds.close()


def _compare(phases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``numpy.array_equal`` of each dataset's raw signals and spikes, serial vs others."""
    import numpy as np

    out: dict[str, Any] = {}
    ref = {d["name"]: d["dataset"] for d in phases["serial"]["datasets"]}
    for mode in MODES[1:]:
        raw_eq = spk_eq = True
        n = 0
        for d in phases[mode]["datasets"]:
            if not (d["ok"] and d["name"] in ref):
                raw_eq = spk_eq = False
                continue
            raw_a, spk_a = _stored(ref[d["name"]])
            raw_b, spk_b = _stored(d["dataset"])
            raw_eq &= len(raw_a) == len(raw_b) and all(
                np.array_equal(a, b) for a, b in zip(raw_a, raw_b, strict=True))
            spk_eq &= len(spk_a) == len(spk_b) and all(
                np.array_equal(a, b) for a, b in zip(spk_a, spk_b, strict=True))
            n += 1
        out[mode] = {"datasets_compared": n, "raw_equal": bool(raw_eq),
                     "spikes_equal": bool(spk_eq)}
    shape = _stored(next(iter(ref.values())))[0][0].shape
    out["raw_shape"] = list(shape)
    return out


def _step_totals(phase: dict[str, Any]) -> dict[str, float]:
    return {
        s: round(sum(d["steps"].get(s, 0.0) for d in phase["datasets"]), 2) for s in STEPS
    }


def _table(results: dict[str, Any]) -> str:
    phases = results["modes"]
    serial_s = phases["serial"]["seconds"]
    head = ("| mode | wall s | speed-up | " + " | ".join(f"{s} s" for s in STEPS)
            + " | batch CPU s | cores used | main RSS MB | worker RSS MB | load before → after |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for mode in MODES:
        p = phases[mode]
        totals = _step_totals(p)
        if mode == "serial":
            wrss = "-"
        elif "workers_usage" in p:
            wrss = ", ".join(f"{x['peak_rss_mb']:.0f}" for x in p["workers_usage"].values())
        else:
            wrss = ", ".join(f"{x:.0f}" for x in p["workers_peak_rss_sampled_mb"]) or "?"
        label = mode if mode != "cluster_prestarted" else (
            f"cluster, pre-started + warmed up (start {p['cluster_start_s']:.1f} s, "
            f"warm-up {p['cluster_warmup_s']:.1f} s, close {p['cluster_close_s']:.1f} s: "
            f"not in wall)")
        lines.append(
            f"| {label} | {p['seconds']:.1f} | {serial_s / p['seconds']:.2f} | "
            + " | ".join(f"{totals[s]:.1f}" for s in STEPS)
            + f" | {p['batch_cpu_s']:.1f} | {p['cores_used']:.2f}"
            + f" | {p['usage']['peak_rss_mb']:.0f} | {wrss}"
            + f" | {p['load_before'][0]:.2f} → {p['load_after'][0]:.2f} |"
        )
    lines.append("")
    lines.append("Step columns: seconds summed over the datasets (on a cluster: worker-busy "
                 "time, overlapping in wall time).  Batch CPU s: CPU time of all the run's "
                 "processes during the batch; cores used = batch CPU s / wall s.")
    cmp = results["identical"]
    for mode in MODES[1:]:
        c = cmp[mode]
        lines.append(f"{mode} vs serial: raw signals equal: {c['raw_equal']}, spikes equal: "
                     f"{c['spikes_equal']} ({c['datasets_compared']} datasets)")
    lines.append("Wall seconds of every run: " + "; ".join(
        f"{m}: {phases[m]['all_seconds']}" for m in MODES))
    lines.append("Per dataset (s): " + "; ".join(
        f"{mode}: " + ", ".join(f"{d['seconds']:.1f}" for d in phases[mode]["datasets"])
        for mode in MODES))
    lines.append("Page cache before each mode (fraction of movie bytes): " + ", ".join(
        f"{m} {phases[m]['page_cache_before'].get('fraction')}" for m in MODES))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------
def run(
    quick: bool = False,
    *,
    datasets: int | None = None,
    frames: int | None = None,
    size: int | None = None,
    rois: int | None = None,
    workers: int = 2,
    distinct_movies: bool = False,
    repeats: int = 1,
) -> dict[str, Any]:
    """Run the benchmark; returns the numbers (seconds, MB).

    Parameters
    ----------
    quick : bool
        4 datasets of 256 x 256 x 500 with 50 ROIs instead of 8 of 512 x 512 x 2,000
        with 200 ROIs.
    datasets, frames, size, rois : int, optional
        Override the number of datasets, frames per movie, frame side in pixels and
        cells (ROIs) per movie.
    workers : int
        Worker processes of the local cluster.
    distinct_movies : bool
        Generate one movie per dataset instead of copying one.
    repeats : int
        Run the modes this many times (serial, cluster, pre-started, serial, ...);
        the fastest run of each is reported, with every run's seconds.

    Returns
    -------
    dict
        ``config``, ``generate``, ``modes`` (per mode: seconds, dataset reports, RSS,
        CPU, load), ``speedup``, ``step_totals``, ``identical`` and ``table`` (markdown).

    Raises
    ------
    RuntimeError
        If the temporary folder's disk has too little free space, or a phase fails.
    """
    cfg = dict(QUICK if quick else FULL)
    for key, value in (("datasets", datasets), ("frames", frames), ("size", size),
                       ("rois", rois)):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
            cfg[key] = value
    for key, value in (("workers", workers), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    cfg["workers"] = workers
    cfg["repeats"] = repeats
    cfg["distinct"] = bool(distinct_movies)
    parent = Path(os.environ.get("NAPARI_SIMA_BENCH_DIR") or tempfile.gettempdir())
    need = cfg["datasets"] * cfg["frames"] * cfg["size"] ** 2 * 2
    free = shutil.disk_usage(parent).free
    if free < need * 1.1 + 2e9:
        raise RuntimeError(
            f"{parent} has {free / 1e9:.1f} GB free; the movies need {need / 1e9:.1f} GB "
            f"(+ 2 GB margin): set NAPARI_SIMA_BENCH_DIR to a folder on a larger disk"
        )
    results: dict[str, Any] = {"config": cfg, "tmp_parent": str(parent),
                               "tmp_free_GB_before": round(free / 1e9, 1),
                               "load_start": _load(), "ram_GB": None}
    try:
        import psutil

        results["ram_GB"] = round(psutil.virtual_memory().total / 1e9, 1)
    except ImportError:
        pass
    workdir = Path(tempfile.mkdtemp(prefix="napari-sima-bench-batch-", dir=parent))
    try:
        results["generate"] = run_phase(__file__, workdir, "generate", cfg)
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for _ in range(repeats):
            for mode in MODES:
                phase = run_phase(__file__, workdir, mode, cfg)
                if not phase["ok"]:
                    raise RuntimeError(f"the pipeline failed in {mode}:\n{phase['summary']}")
                runs[mode].append(phase)
        # the fastest run of each mode (shared machine); every run's seconds are kept
        phases = {mode: min(r, key=lambda p: p["seconds"]) for mode, r in runs.items()}
        for mode in MODES:
            phases[mode]["all_seconds"] = [p["seconds"] for p in runs[mode]]
        results["modes"] = phases
        # the last run of each mode left its datasets in place
        results["identical"] = _compare({m: r[-1] for m, r in runs.items()})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    serial_s = phases["serial"]["seconds"]
    results["speedup"] = {m: round(serial_s / phases[m]["seconds"], 3) for m in MODES[1:]}
    results["step_totals"] = {m: _step_totals(phases[m]) for m in MODES}
    results["load_end"] = _load()
    results["table"] = _table(results)
    return results


def _phase_main(args: argparse.Namespace) -> int:
    phases = {"generate": _phase_generate,
              **{mode: (lambda w, c, m=mode: _phase_run(w, m, c)) for mode in MODES}}
    return phase_main(args.phase, args.workdir, args.config, phases)


def main(argv: list[str]) -> int:
    """Command line: run, print the table, write ``benchmarks/results/batch.json``."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--datasets", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--rois", type=int)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--distinct-movies", action="store_true")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        return _phase_main(args)
    t0 = time.perf_counter()
    res = run(args.quick, datasets=args.datasets, frames=args.frames, size=args.size,
              rois=args.rois, workers=args.workers, distinct_movies=args.distinct_movies,
              repeats=args.repeats)
    print(res["table"])
    record = {
        "benchmark": "batch",
        "quick": args.quick,
        "seconds": round(time.perf_counter() - t0, 2),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "results": res,
    }
    custom = any(v is not None for v in (args.datasets, args.frames, args.size, args.rois))
    if not custom and args.workers == 2 and not args.distinct_movies:
        (HERE / "results").mkdir(exist_ok=True)
        path = HERE / "results" / "batch.json"
        path.write_text(json.dumps(record, indent=2, default=str))
        print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
