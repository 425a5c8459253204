"""Faults: SIGKILL in the middle of saves, read-only file systems, full disks.

The kill campaign (:func:`run_kill_campaign`) is shared with
``benchmarks/bench_faults.py``, which runs it with hundreds of kills.  A "zygote"
process imports napari-sima once and forks each worker, so that a worker starts in
milliseconds; the worker is a real process, killed with SIGKILL by this one.

Run as a script (``python test_faults.py zygote`` / ``... check_disk_full DIR``) this
file is the zygote, or runs a check inside a private mount namespace
(``unshare --user --map-root-user --mount``) where mounting is not allowed otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from napari_sima.core import ROI, ImagingDataset, Sequence, locking, storage
from napari_sima.core.roi_store import delete_roi_set, load_roi_sets, save_roi_set
from napari_sima.core.signal_store import (
    delete_signal_set,
    load_signal_set,
    load_signal_sets,
    save_signal_set,
    store_dir,
    update_signal_set,
)

HERE = Path(__file__).resolve()
ROI_LABELS = ("r1", "r2", "r3")
DELETABLE = "r3"  # deleted and saved again in turn
SIG_LABELS = ("s1", "s2")
FRAMES = 8_000  # ~0.2 MB of raw signals per set: a save takes long enough to be hit anywhere
IM_SHAPE = (1, 16, 16)


# ---------------------------------------------------------------------------------------
# Known versions of every set: what a set may hold after a kill
# ---------------------------------------------------------------------------------------
def roi_version(label: str, v: int) -> list[ROI]:
    """ROI set ``label`` in version ``v`` (v1: 3 ROIs, v2: 4 ROIs, other corners)."""
    k = ROI_LABELS.index(label)
    return [
        ROI(
            polygons=[[1 + i, 1 + k, 0], [5 + i + v, 1 + k, 0], [5 + i + v, 6 + k + v, 0]],
            im_shape=IM_SHAPE,
            label=f"{label}-v{v}-{i}",
            id=str(i),
        )
        for i in range(2 + v)
    ]


def _raw(label: str, v: int) -> np.ndarray:
    k = SIG_LABELS.index(label)
    n = 4 + v
    return (np.arange(n * FRAMES, dtype=np.float32).reshape(n, FRAMES) % 97) + (100 * k + 10 * v)


def signal_version(label: str, v: int) -> dict[str, Any]:
    """Signal set ``label`` in version ``v`` (5 or 6 ROIs, distinct values)."""
    n = 4 + v
    rois = [
        ROI(polygons=[[1, 1 + i, 0], [6, 1 + i, 0], [6, 3 + i, 0]], im_shape=IM_SHAPE,
            label=f"{label}-v{v}-{i}").todict()
        for i in range(n)
    ]
    return {
        "raw": [_raw(label, v)],
        "rois": rois,
        "mean_frame": np.full(IM_SHAPE, float(v)),
        "signal_channel": 0,
        "timestamp": f"2024-01-0{v}-00h00m00s",
    }


def spikes_version(label: str, v: int, s: int) -> np.ndarray:
    """Spikes entry ``s`` of signal set ``label`` in version ``v``."""
    return _raw(label, v) * 0 + (1000 * s + 7 * SIG_LABELS.index(label))


def _roi_state(rois: Any, label: str) -> int:
    for v in (1, 2):
        want = roi_version(label, v)
        if len(rois) == len(want) and all(
            a.label == b.label
            and len(a.polygon_arrays) == 1
            and np.array_equal(a.polygon_arrays[0], b.polygon_arrays[0])
            for a, b in zip(rois, want, strict=True)
        ):
            return v
    raise AssertionError(f"ROI set {label!r} matches no saved version: {[r.label for r in rois]}")


def _signal_state(sig: dict[str, Any], label: str) -> list[Any]:
    base = next(
        (v for v in (1, 2) if sig["raw"][0].shape == _raw(label, v).shape
         and np.array_equal(sig["raw"][0], _raw(label, v))
         and [d["label"] for d in sig["rois"]] == [f"{label}-v{v}-{i}" for i in range(4 + v)]
         and np.array_equal(sig["mean_frame"], np.full(IM_SHAPE, float(v)))),
        None,
    )
    if base is None:
        raise AssertionError(f"signal set {label!r} matches no saved version")
    if "spikes" not in sig:
        if "spikes_params" in sig:
            raise AssertionError(f"signal set {label!r} has spikes_params but no spikes")
        return [base, None]
    spikes = sig["spikes"]
    for s in (1, 2):
        if len(spikes) == 1 and np.array_equal(spikes[0], spikes_version(label, base, s)):
            if sig.get("spikes_params") != [{"version": s}]:
                params = sig.get("spikes_params")
                raise AssertionError(f"signal set {label!r}: spikes {s} with {params}")
            return [base, s]
    raise AssertionError(f"the spikes of signal set {label!r} match no saved version")


def observe(folder: Path) -> dict[str, Any]:
    """Load a dataset with the public readers and say which version each set holds.

    Raises
    ------
    AssertionError
        If anything cannot be read or matches no saved version (a mix, a broken file).
    """
    ds = ImagingDataset.load(folder)
    state: dict[str, Any] = {"ds": ds.channel_names[0]}
    rois = load_roi_sets(folder)
    if set(rois) - set(ROI_LABELS):
        raise AssertionError(f"unknown ROI sets {sorted(rois)}")
    for label in ROI_LABELS:
        state[f"roi:{label}"] = _roi_state(rois[label], label) if label in rois else None
    sigs = load_signal_sets(store_dir(folder, 0))
    if sorted(sigs) != sorted(SIG_LABELS):
        raise AssertionError(f"signal sets {sorted(sigs)}, expected {list(SIG_LABELS)}")
    for label in SIG_LABELS:
        state[f"sig:{label}"] = _signal_state(sigs[label], label)
    return state


def make_dataset(folder: Path) -> dict[str, Any]:
    """A dataset with every set in version 1; returns its state."""
    movie = np.arange(4 * 16 * 16, dtype=np.uint16).reshape(4, 1, 16, 16, 1)
    ds = ImagingDataset([Sequence.create("ndarray", movie)], folder, channel_names=["a"])
    for label in ROI_LABELS:
        ds.add_ROIs(roi_version(label, 1), label)
    for label in SIG_LABELS:
        save_signal_set(store_dir(folder, 0), signal_version(label, 1), label)
    return observe(folder)


# ---------------------------------------------------------------------------------------
# The worker (a forked child of the zygote) and the zygote
# ---------------------------------------------------------------------------------------
def _next_op(rng: random.Random, state: dict[str, Any]) -> tuple[str, Any]:
    kind = rng.choice(["roi", "roi", "del", "sig", "spikes", "spikes", "ds"])
    if kind == "roi":
        label = rng.choice([x for x in ROI_LABELS if state[f"roi:{x}"] is not None])
        return f"roi:{label}", 2 if state[f"roi:{label}"] == 1 else 1
    if kind == "del":
        key = f"roi:{DELETABLE}"
        return key, None if state[key] is not None else rng.choice([1, 2])
    label = rng.choice(SIG_LABELS)
    base, spikes = state[f"sig:{label}"]
    if kind == "sig":
        return f"sig:{label}", [2 if base == 1 else 1, None]
    if kind == "spikes":
        return f"sig:{label}", [base, 2 if spikes == 1 else 1]
    return "ds", "b" if state["ds"] == "a" else "a"


def _apply(ds: ImagingDataset, key: str, target: Any, current: Any) -> None:
    folder = Path(ds.savedir)
    if key == "ds":
        ds.channel_names = [target]  # rewrites dataset.json
    elif key.startswith("roi:"):
        label = key[4:]
        if target is None:
            ds.delete_ROIs(label)
        else:
            ds.add_ROIs(roi_version(label, target), label)
    else:
        label = key[4:]
        base, spikes = target
        if spikes is None or current[0] != base:
            save_signal_set(store_dir(folder, 0), signal_version(label, base), label)
        else:  # a read-modify-write of the stored set, as infer_spikes does
            update_signal_set(
                store_dir(folder, 0),
                label,
                spikes=[spikes_version(label, base, spikes)],
                spikes_params=[{"version": spikes}],
            )


class _EventLog(logging.Handler):
    def __init__(self, emit_line: Any) -> None:
        super().__init__(logging.WARNING)
        self._emit_line = emit_line

    def emit(self, record: logging.LogRecord) -> None:
        self._emit_line("S " + record.getMessage().replace("\n", " "))


def _worker(log_path: str, cfg: dict[str, Any]) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def emit(line: str) -> None:
        os.write(fd, (line + "\n").encode())  # unbuffered: survives a kill

    log = logging.getLogger("napari_sima.core.locking")
    log.addHandler(_EventLog(emit))
    log.setLevel(logging.WARNING)
    log.propagate = False
    try:
        rng = random.Random(cfg["seed"])
        state = cfg["state"]
        ds = ImagingDataset.load(cfg["dataset"])
        emit(f"R {os.getpid()}")
        ops = cfg.get("ops")
        n = 0
        while ops is None or n < len(ops):
            key, target = ops[n] if ops is not None else _next_op(rng, state)
            emit("B " + json.dumps([key, target]))
            _apply(ds, key, target, state.get(key))
            emit("E")
            state[key] = target
            n += 1
    except BaseException:
        emit("X " + traceback.format_exc().replace("\n", " | "))
        raise


def zygote_loop() -> None:
    """Fork workers on request (``run <json>``), reap them (``reap <pid>``), ``quit``.

    ``run`` takes ``{"func": name of a function of this module, "args": [...],
    "env": {...}}``; the worker exits with 0, or 3 after writing its traceback to
    ``args[0]`` + ``.err``.
    """
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "run":
            job = json.loads(arg)
            pid = os.fork()
            if pid == 0:  # the worker
                code = 0
                try:
                    for key, value in job.get("env", {}).items():
                        if value is None:
                            os.environ.pop(key, None)
                        else:
                            os.environ[key] = value
                    globals()[job["func"]](*job["args"])
                except BaseException:
                    code = 3
                    with contextlib.suppress(BaseException):
                        Path(str(job["args"][0]) + ".err").write_text(traceback.format_exc())
                os._exit(code)
            print(pid, flush=True)
        elif cmd == "reap":
            _, status = os.waitpid(int(arg), 0)
            print(status, flush=True)
        else:
            return


class Zygote:
    """The zygote process, driven through its stdin/stdout."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), "zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def start(self, func: str, *args: Any, env: dict[str, str | None] | None = None) -> int:
        """Fork a worker running ``func(*args)``; return its pid."""
        return self.ask("run " + json.dumps({"func": func, "args": args, "env": env or {}}))

    def call(self, func: str, *args: Any) -> None:
        """Run ``func(*args)`` in a worker to its end; raise with its traceback if it fails."""
        status = self.ask(f"reap {self.start(func, *args)}")
        if status:
            err = Path(str(args[0]) + ".err")
            raise AssertionError(f"{func} failed ({status}):\n"
                                 + (err.read_text() if err.exists() else ""))

    def ask(self, line: str) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the zygote died (exit code {self.proc.wait()})")
        return int(answer)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def orphan_files(folder: Path) -> list[str]:
    """Temporary files and set files no index names, in a dataset folder's stores and root."""
    found = []
    for sub in (folder, folder / "rois", store_dir(folder, 0)):
        if not sub.is_dir():
            continue
        try:
            index = json.loads((sub / "index.json").read_text())
            named = {e["file"] for e in index["sets"].values()}
        except (OSError, ValueError):
            named = set()
        for name in os.listdir(sub):
            temp = storage.temp_target(name) is not None or name.startswith(
                locking.LOCK_FILE + ".stale-"
            )
            if temp or (sub != folder and name.startswith("set_") and name not in named):
                found.append(str((sub / name).relative_to(folder)))
    return sorted(found)


_STALE_PID = re.compile(r"of process (\d+) on host")


def run_kill_campaign(
    workdir: Path,
    kills: int,
    seed: int = 0,
    method: str | None = None,
    max_delay: float = 0.06,
    zygote: Zygote | None = None,
) -> dict[str, Any]:
    """SIGKILL a process saving ROI sets, signal sets and dataset.json ``kills`` times.

    After every kill the dataset is loaded with the public readers: every set must
    hold exactly its last saved version or the version being saved at the kill
    (never a mix, a broken file or a lost set); a lock left by the killed process
    must be detected and broken by the next writer.  A last worker then runs to the
    end, and no orphan file may remain.

    Returns
    -------
    dict
        Counts: kills, kills during a save, saves completed, stale locks left and
        broken, inconsistent states (with their descriptions), orphans cleaned.
    """
    t0 = time.perf_counter()
    folder = workdir / "kill.sima"
    state = make_dataset(folder)
    log = workdir / "events.log"
    log.touch()
    offset = 0
    env = {locking.METHOD_ENV: method}
    rng = random.Random(seed)
    stats: Counter[str] = Counter()
    problems: list[str] = []
    waiting_stale: dict[int, int] = {}  # pid of a killed lock holder -> kill number
    max_orphans = 0
    broken = False

    def read_events() -> list[str]:
        nonlocal offset
        with open(log, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        offset += end
        return data[:end].decode().splitlines()

    def wait_for_saves(n: int, timeout: float = 30.0) -> list[str]:
        events: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events += read_events()
            if sum(e.startswith("B ") for e in events) >= n or any(
                e.startswith("X ") for e in events
            ):
                break
            time.sleep(0.002)
        return events

    def play(events: list[str], k: int) -> tuple[str, Any] | None:
        pending = None
        for line in events:
            kind, _, rest = line.partition(" ")
            if kind == "S":
                match = _STALE_PID.search(rest)
                if match and int(match.group(1)) in waiting_stale:
                    waiting_stale.pop(int(match.group(1)))
                    stats["stale locks broken by the next writer"] += 1
            elif kind == "B":
                key, target = json.loads(rest)
                pending = (key, target)
            elif kind == "E":
                if waiting_stale:
                    problems.append(f"kill {k}: a save ended before the stale lock of "
                                    f"{sorted(waiting_stale)} was reported broken")
                    waiting_stale.clear()
                assert pending is not None
                state[pending[0]] = pending[1]
                stats["saves completed"] += 1
                pending = None
            elif kind == "X":
                problems.append(f"kill {k}: the worker failed: {rest}")
        return pending

    own = zygote is None
    if zygote is None:
        zygote = Zygote()
    try:
        for k in range(kills):
            cfg = {"dataset": str(folder), "seed": rng.randrange(2**31), "state": state}
            pid = zygote.start("_worker", str(log), cfg, env=env)
            # let it start a few saves (whatever the machine's load), then kill it at a
            # random moment
            events = wait_for_saves(rng.randint(1, 3))
            time.sleep(rng.uniform(0.0, max_delay))
            os.kill(pid, signal.SIGKILL)
            status = zygote.ask(f"reap {pid}")
            pending = play(events + read_events(), k)
            if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
                problems.append(f"kill {k}: the worker ended by itself (status {status})")
            stats["kills"] += 1
            if pending is not None:
                stats["kills during a save"] += 1
            holder = locking.read_lock_info(folder)
            if holder is not None and holder.pid == pid:
                waiting_stale[pid] = k
                stats["stale locks left by a kill"] += 1
            max_orphans = max(max_orphans, len(orphan_files(folder)))
            try:
                seen = observe(folder)
            except Exception as err:  # noqa: BLE001 - a broken dataset is what we count
                problems.append(f"kill {k}: unreadable dataset: {type(err).__name__}: {err}")
                stats["inconsistent states"] += 1
                broken = True
                break
            for key, value in seen.items():
                allowed = [state[key]] + ([pending[1]] if pending and pending[0] == key else [])
                if value not in allowed:
                    problems.append(f"kill {k}: {key} holds {value}, expected one of {allowed}")
                    stats["inconsistent states"] += 1
            state = seen
        # a last worker runs to the end, "ten minutes later" (the orphans' times are set
        # back): it must break any stale lock and remove the orphans
        orphans_before = orphan_files(folder)
        then = time.time() - storage.ORPHAN_AGE - 1
        for name in orphans_before:
            os.utime(folder / name, (then, then))
        if broken:
            return _summary(stats, problems, max_orphans, orphans_before, method, t0)
        final_ops = [
            ("ds", "b" if state["ds"] == "a" else "a"),
            ("roi:r1", 2 if state["roi:r1"] == 1 else 1),
            ("sig:s1", [2 if state["sig:s1"][0] == 1 else 1, None]),
            ("sig:s2", [state["sig:s2"][0], 2 if state["sig:s2"][1] == 1 else 1]),
        ]
        cfg = {"dataset": str(folder), "seed": 0, "state": state, "ops": final_ops}
        pid = zygote.start("_worker", str(log), cfg, env=env)
        status = zygote.ask(f"reap {pid}")
        play(read_events(), kills)
        if status != 0:
            problems.append(f"the last worker failed (status {status})")
        if waiting_stale:
            problems.append(f"stale locks never reported broken: {sorted(waiting_stale)}")
        try:
            final = observe(folder)
        except Exception as err:  # noqa: BLE001
            final = f"{type(err).__name__}: {err}"
        if final != state:
            problems.append(f"after the last worker: {final} != {state}")
        left = orphan_files(folder)
        if left:
            problems.append(f"orphan files left after the last worker: {left}")
        if (folder / locking.LOCK_FILE).exists():
            problems.append("the lock file is still there after the last worker")
    finally:
        if own:
            zygote.close()
    return _summary(stats, problems, max_orphans, orphans_before, method, t0)


def _summary(stats: Counter[str], problems: list[str], max_orphans: int,
             orphans_before: list[str], method: str | None, t0: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "method": method or "auto",
        **{k: stats[k] for k in (
            "kills", "kills during a save", "saves completed", "stale locks left by a kill",
            "stale locks broken by the next writer", "inconsistent states",
        )},
        "most orphan files seen after a kill": max_orphans,
        "orphan files removed by the last worker": len(orphans_before),
        "problems": problems,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return out


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


def test_sigkill_during_saves_leaves_old_or_new_version(tmp_path, zygote):
    result = run_kill_campaign(tmp_path / "flock", kills=20, seed=1, zygote=zygote)
    assert result["problems"] == [], result
    assert result["inconsistent states"] == 0
    assert result["kills"] == 20
    # the kills hit saves, and the campaign saw (and cleared) stale locks and orphans
    assert result["kills during a save"] >= 15, result
    assert result["saves completed"] >= 10, result
    assert result["stale locks left by a kill"] >= 3, result
    assert result["stale locks broken by the next writer"] == result["stale locks left by a kill"]


def test_sigkill_during_saves_with_o_excl_locks(tmp_path, zygote):
    # the fallback lock (O_EXCL + pid check, for file systems without flock)
    result = run_kill_campaign(tmp_path / "create", kills=8, seed=2, method="create",
                               zygote=zygote)
    assert result["problems"] == [], result
    assert result["stale locks broken by the next writer"] == result["stale locks left by a kill"]
    assert result["stale locks left by a kill"] >= 1, result


# ---------------------------------------------------------------------------------------
# Read-only file systems and full disks (a real tmpfs)
# ---------------------------------------------------------------------------------------
def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Any:
    """Mount a tmpfs of ``size`` on ``path`` for the block (needs root or a user namespace)."""
    path.mkdir(parents=True, exist_ok=True)
    _sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount_read_only(path: Path) -> None:
    _sh("mount", "-t", "tmpfs", "-o", "remount,ro", "tmpfs", str(path))


def snapshot(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relative path: sha256}`` of every file (hidden ones too) under ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            if rel not in skip:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _small_dataset(folder: Path, movie_bytes: int = 0) -> ImagingDataset:
    t = max(4, movie_bytes // (2 * 16 * 16))
    movie = (np.arange(t * 16 * 16) % 5000).astype(np.uint16).reshape(t, 1, 16, 16, 1)
    ds = ImagingDataset([Sequence.create("ndarray", movie)], folder)
    ds.add_ROIs(roi_version("r1", 1), "r1")
    save_signal_set(store_dir(folder, 0), signal_version("s1", 1), "s1")
    update_signal_set(store_dir(folder, 0), "s1", spikes=[spikes_version("s1", 1, 1)],
                      spikes_params=[{"version": 1}])
    return ds


def _big_rois() -> list[ROI]:
    """20 ROIs of 1000 random vertices: a set file of ~300 kB (random floats do not compress)."""
    rng = np.random.default_rng(0)
    return [
        ROI(polygons=[np.column_stack([rng.uniform(0, 15, 1000), rng.uniform(0, 15, 1000),
                                       np.zeros(1000)])], im_shape=IM_SHAPE, label=f"big-{i}")
        for i in range(20)
    ]


def check_read_only_fs(mnt: Path, scratch: Path) -> None:
    """Every write to a dataset on a read-only file system: a clear error, no change."""
    folder = mnt / "ro.sima"
    ds = _small_dataset(folder)
    ds.compute_projections(backend="numpy")
    before = snapshot(mnt)
    remount_read_only(mnt)
    sig = store_dir(folder, 0)

    # opened on the read-only file system: read-only, everything readable
    ro = ImagingDataset.load(folder)
    assert ro.read_only
    assert _roi_state(ro.ROIs["r1"], "r1") == 1
    assert _signal_state(ro.signals()["s1"], "s1") == [1, 1]
    np.testing.assert_array_equal(ro.time_averages, ds.time_averages)

    def refused(call: Any, what: str) -> None:
        with pytest.raises(PermissionError) as info:
            call()
        text = str(info.value)
        assert "read-only file system" in text, (what, text)
        assert str(folder) in text or str(mnt) in text, (what, text)
        assert "nothing was changed" in text, (what, text)

    refused(lambda: ro.add_ROIs(roi_version("r1", 2), "r1"), "add_ROIs")
    refused(lambda: ro.delete_ROIs("r1"), "delete_ROIs")
    refused(lambda: ro.delete_signals("s1"), "delete_signals")
    refused(lambda: ro.save(), "save")
    # the object opened before the remount thinks it can write: the write itself refuses
    refused(lambda: ds.add_ROIs(roi_version("r1", 2), "r1"), "add_ROIs (stale object)")
    refused(lambda: ds.save(), "save (stale object)")
    refused(lambda: setattr(ds, "channel_names", ["renamed"]), "channel_names")
    refused(lambda: ds.save(savedir=mnt / "copy.sima"), "save as (on the read-only fs)")
    assert ds.savedir == str(folder) and not (mnt / "copy.sima").exists()
    # the stores, used directly
    refused(lambda: save_roi_set(folder, roi_version("r2", 1), "r2"), "save_roi_set")
    refused(lambda: delete_roi_set(folder, "r1"), "delete_roi_set")
    refused(lambda: save_signal_set(sig, signal_version("s2", 1), "s2"), "save_signal_set")
    refused(lambda: update_signal_set(sig, "s1", spikes=[spikes_version("s1", 1, 2)]),
            "update_signal_set")
    refused(lambda: delete_signal_set(sig, "s1"), "delete_signal_set")
    # unknown labels: deleting nothing is no write (silently False, as SIMA)
    assert delete_roi_set(folder, "nope") is False
    assert snapshot(mnt) == before

    # saved elsewhere, it is writable again
    ro.save(savedir=scratch / "moved.sima")
    assert not ro.read_only
    ro.add_ROIs(roi_version("r2", 1), "r2")
    assert sorted(load_roi_sets(scratch / "moved.sima")) == ["r1", "r2"]
    # and so does the object opened before the remount (the old folder cannot be locked)
    ds.save(savedir=scratch / "moved2.sima")
    assert observe_small(scratch / "moved2.sima") == ([1], [1, 1])
    assert snapshot(mnt) == before


def _fill(path: Path, leave: int) -> None:
    """Fill the file system of ``path`` until ``leave`` bytes are free (0: completely)."""
    st = os.statvfs(path.parent)
    want = st.f_bavail * st.f_frsize - leave
    block = b"\0" * 65536
    with open(path, "ab") as fh:
        try:
            while want > 0:
                want -= fh.write(block[: min(len(block), want)] if leave else block)
                fh.flush()
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
    with contextlib.suppress(OSError):
        os.sync()


def check_disk_full(mnt: Path, scratch: Path) -> None:
    """Saves on a full disk: a clear error, the previous content intact, no temp file."""
    folder = mnt / "full.sima"
    ds = _small_dataset(folder, movie_bytes=300_000)
    sig = store_dir(folder, 0)
    before = snapshot(mnt)
    filler = mnt / "filler"

    def no_space(call: Any, what: str) -> None:
        with pytest.raises(OSError) as info:
            call()
        err = info.value
        assert err.errno == errno.ENOSPC, (what, err)
        text = str(err)
        assert "no space left on the device" in text, (what, text)
        assert str(folder) in text or str(mnt) in text, (what, text)
        assert "nothing was changed" in text, (what, text)
        assert snapshot(mnt, skip=("filler",)) == before, what

    _fill(filler, leave=96 * 1024)  # the lock can be taken; the set files do not fit
    no_space(lambda: save_signal_set(sig, signal_version("s1", 2), "s1"), "save_signal_set")
    no_space(lambda: update_signal_set(sig, "s1", spikes=[spikes_version("s1", 1, 2)] * 3),
             "update_signal_set")
    no_space(lambda: ds.add_ROIs(_big_rois(), "r1"), "add_ROIs")
    # a copy of the dataset that does not fit is removed again; the dataset stays
    no_space(lambda: ds.save(savedir=mnt / "copy.sima"), "save as")
    assert ds.savedir == str(folder) and not (mnt / "copy.sima").exists()

    _fill(filler, leave=0)  # not even the lock file's record fits
    no_space(lambda: ds.save(), "save")
    no_space(lambda: ds.delete_ROIs("r1"), "delete_ROIs")
    no_space(lambda: save_roi_set(folder, roi_version("r1", 2), "r1"), "save_roi_set")
    # a projection cache that does not fit only costs the cache
    fresh = ImagingDataset.load(folder)
    with pytest.warns(UserWarning, match="could not cache the projections"):
        fresh.compute_projections(backend="numpy")
    assert snapshot(mnt, skip=("filler",)) == before

    # space again: the dataset is as it was, and saves work
    filler.unlink()
    assert observe_small(folder) == ([1], [1, 1])
    save_signal_set(sig, signal_version("s1", 2), "s1")
    assert _signal_state(load_signal_set(sig, "s1"), "s1") == [2, None]


def observe_small(folder: Path) -> tuple[list[int], list[Any]]:
    ds = ImagingDataset.load(folder)
    return [_roi_state(ds.ROIs["r1"], "r1")], _signal_state(ds.signals()["s1"], "s1")


def _run_on_tmpfs(tmp_path: Path, check: str, size: str) -> None:
    """Run ``check(mount, scratch)`` on a fresh tmpfs: mounted here when we may (root),
    else inside ``unshare --user --map-root-user --mount``; fail when neither works."""
    mnt = tmp_path / "mnt"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    reasons = []
    if os.geteuid() == 0:
        try:
            with tmpfs(mnt, size):
                globals()[check](mnt, scratch)
            return
        except subprocess.CalledProcessError as err:
            reasons.append(f"mount as root: {err.stderr.strip()}")
    unshare = shutil.which("unshare")
    if unshare is None:
        reasons.append("no unshare command")
    else:
        proc = subprocess.run(
            [unshare, "--user", "--map-root-user", "--mount", sys.executable, str(HERE), check,
             str(mnt), str(scratch), size],
            capture_output=True, text=True, timeout=120,
        )
        if proc.returncode == 0:
            return
        if "CHECK FAILED" in proc.stderr:
            pytest.fail(f"{check} failed in a user namespace:\n{proc.stderr}")
        reasons.append(f"unshare: exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
    pytest.fail(f"cannot mount a tmpfs for {check} (neither as root nor in a user namespace): "
                f"{reasons}")


def test_read_only_file_system(tmp_path):
    _run_on_tmpfs(tmp_path, "check_read_only_fs", "8m")


def test_disk_full(tmp_path):
    _run_on_tmpfs(tmp_path, "check_disk_full", "2m")


def check_file_size_limit(folder: str | Path) -> None:
    """A write refused by RLIMIT_FSIZE (EFBIG): clear error, no change (no root needed)."""
    import resource

    folder = Path(folder)
    ds = _small_dataset(folder)
    sig = store_dir(folder, 0)
    before = snapshot(folder)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))
    for what, call in [
        ("save_signal_set", lambda: save_signal_set(sig, signal_version("s1", 2), "s1")),
        ("update_signal_set", lambda: update_signal_set(
            sig, "s1", spikes=[spikes_version("s1", 1, 2)])),
        ("add_ROIs", lambda: ds.add_ROIs(_big_rois(), "r1")),
    ]:
        try:
            call()
        except OSError as err:
            assert err.errno == errno.EFBIG, (what, err)
            assert "larger than the file system or this process allows" in str(err), str(err)
            assert str(folder) in str(err) and "nothing was changed" in str(err), str(err)
        else:
            raise AssertionError(f"{what} wrote past RLIMIT_FSIZE")
        assert snapshot(folder) == before, what
    assert observe_small(folder) == ([1], [1, 1])


def test_file_size_limit(tmp_path, zygote):
    zygote.call("check_file_size_limit", str(tmp_path / "fsize.sima"))


def check_no_write_permission(err_prefix: str, folder: str | Path) -> None:
    """Writes to a folder we may not write to: a clear PermissionError, no change."""
    folder = Path(folder)
    before = snapshot(folder)
    ds = ImagingDataset.load(folder)
    assert ds.read_only
    with pytest.raises(PermissionError, match="no write permission for this folder"):
        ds.add_ROIs(roi_version("r1", 2), "r1")
    sig = store_dir(folder, 0)
    for what, call in [
        ("save_roi_set", lambda: save_roi_set(folder, roi_version("r1", 2), "r1")),
        ("update_signal_set", lambda: update_signal_set(
            sig, "s1", spikes=[spikes_version("s1", 1, 2)])),
        ("delete_signal_set", lambda: delete_signal_set(sig, "s1")),
    ]:
        with pytest.raises(PermissionError) as info:
            call()
        text = str(info.value)
        assert "permission denied" in text and str(folder) in text, (what, text)
        assert "nothing was changed" in text, (what, text)
    assert snapshot(folder) == before
    assert observe_small(folder) == ([1], [1, 1])


def _as_nobody(err_prefix: str, folder: str) -> None:
    # 'nobody' cannot read root's home, where this Python lives: import what the check
    # imports lazily while we still can
    import email.feedparser  # noqa: F401 - importlib.metadata reads versions with it
    import email.parser  # noqa: F401

    from napari_sima.core.provenance import edit_provenance

    edit_provenance("warm-up")
    observe_small(Path(folder))
    os.setgid(65534)
    os.setuid(65534)
    check_no_write_permission(err_prefix, folder)


def test_folder_without_write_permission(zygote):
    # As root, permission bits do not stop writes: the check then runs in a worker that
    # has dropped its privileges (to 'nobody'), on a folder of root's.
    base = Path(tempfile.mkdtemp(prefix="napari-sima-perm-"))
    try:
        base.chmod(0o755)
        (base / "err").mkdir(mode=0o777)
        (base / "err").chmod(0o777)
        folder = base / "p.sima"
        _small_dataset(folder)
        if os.geteuid() == 0:
            zygote.call("_as_nobody", str(base / "err" / "perm"), str(folder))
        else:
            dirs = [folder, folder / "rois", folder / "signals", store_dir(folder, 0)]
            for d in dirs:
                d.chmod(0o555)
            try:
                check_no_write_permission("", folder)
            finally:
                for d in dirs:
                    d.chmod(0o755)
    finally:
        shutil.rmtree(base)


# ---------------------------------------------------------------------------------------
# Entry points of the subprocesses
# ---------------------------------------------------------------------------------------
def _main(argv: list[str]) -> int:
    what = argv[0]
    if what == "zygote":
        zygote_loop()
        return 0
    try:  # inside a user namespace: we may mount
        mnt, scratch, size = Path(argv[1]), Path(argv[2]), argv[3]
        with tmpfs(mnt, size):
            globals()[what](mnt, scratch)
    except subprocess.CalledProcessError as err:
        print(f"mount failed: {err.stderr}", file=sys.stderr)
        return 2
    except BaseException:
        print("CHECK FAILED\n" + traceback.format_exc(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    warnings.simplefilter("default")
    sys.exit(_main(sys.argv[1:]))
