"""The dataset write lock: one writer at a time, clear "in use" errors, stale locks."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_sima.core import ROI, ImagingDataset, Sequence, locking
from napari_sima.core.errors import DatasetInUseError
from napari_sima.core.imagej import write_imagej_rois
from napari_sima.core.locking import (
    LOCK_FILE,
    DatasetLock,
    LockInfo,
    dataset_lock,
    lock_root,
    read_lock_info,
)
from napari_sima.core.roi_store import load_roi_sets, roi_set_timestamps, save_roi_set
from napari_sima.core.signal_store import (
    load_signal_set,
    load_signal_sets,
    save_signal_set,
    signal_set_info,
    store_dir,
    update_signal_set,
)

IM_SHAPE = (1, 12, 12)
LOG = "napari_sima.core.locking"


def _rois(n: int = 2, tag: str = "r") -> list[ROI]:
    return [
        ROI(polygons=[[1, 1 + i, 0], [6, 1 + i, 0], [6, 4 + i, 0]], im_shape=IM_SHAPE,
            label=f"{tag}{i}")
        for i in range(n)
    ]


def _signals(n: int = 2) -> dict:
    return {
        "raw": [np.arange(n * 30, dtype=np.float32).reshape(n, 30)],
        "rois": [r.todict() for r in _rois(n)],
        "signal_channel": 0,
        "timestamp": "2024-01-01-00h00m00s",
    }


@pytest.fixture
def dataset(tmp_path) -> Path:
    movie = np.zeros((3, *IM_SHAPE, 1), dtype=np.uint16)
    ImagingDataset([Sequence.create("ndarray", movie)], tmp_path / "d.sima")
    return tmp_path / "d.sima"


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _record(**changes) -> LockInfo:
    base = locking._own_record("saving the ROI set 'x'", "token")
    return dataclasses.replace(base, **changes)


def _write_lock(folder: Path, text: str, age: float = 0.0) -> Path:
    path = folder / LOCK_FILE
    path.write_text(text)
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


# ---------------------------------------------------------------------------------------
# Basics
# ---------------------------------------------------------------------------------------
def test_lock_root_of_stores(tmp_path):
    ds = tmp_path / "a.sima"
    assert lock_root(ds) == ds
    assert lock_root(ds / "rois") == ds
    assert lock_root(ds / "signals" / "channel_0") == ds
    bare = tmp_path / "my_rois"
    assert lock_root(bare) == bare  # an ROI store outside a dataset locks itself
    other = tmp_path / "oldstyle"  # a dataset folder not named *.sima
    other.mkdir()
    (other / "dataset.json").write_text("{}")
    assert lock_root(other / "rois") == other


def test_reentrant_lock_and_its_record(dataset):
    assert read_lock_info(dataset) is None
    lock = DatasetLock(dataset / "rois", timeout=0, purpose="testing")
    with lock:
        info = read_lock_info(dataset)
        assert info.pid == os.getpid() and info.host == socket.gethostname()
        assert info.purpose == "testing" and info.same_host and info.started
        assert info.thread == threading.current_thread().name
        with lock, dataset_lock(dataset, timeout=0):  # nested: just counts
            assert lock.held
        assert (dataset / LOCK_FILE).exists()
    assert not lock.held and not (dataset / LOCK_FILE).exists()
    with pytest.raises(RuntimeError, match="not held"):
        lock.release()


def test_bad_arguments(dataset, monkeypatch):
    with pytest.raises(ValueError, match="timeout"):
        DatasetLock(dataset, timeout=-1)
    with pytest.raises(ValueError, match="locking method"):
        DatasetLock(dataset, method="magic")
    monkeypatch.setenv(locking.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="NAPARI_SIMA_LOCK_TIMEOUT"), dataset_lock(dataset):
        pass


def test_other_thread_waits_or_gets_a_clear_error(dataset, monkeypatch):
    holding = threading.Event()
    release = threading.Event()

    def holder():
        with dataset_lock(dataset, purpose="saving the ROI set 'slow'"):
            holding.set()
            release.wait(5)

    thread = threading.Thread(target=holder, name="saver")
    thread.start()
    assert holding.wait(5)
    monkeypatch.setenv(locking.TIMEOUT_ENV, "0.1")
    with pytest.raises(DatasetInUseError) as info:
        save_roi_set(dataset, _rois(), "mine")
    text = str(info.value)
    assert "in use by another task of this program" in text
    assert "thread 'saver'" in text and "saving the ROI set 'slow'" in text
    assert str(dataset) in text and text.endswith("try again when it has finished")
    assert isinstance(info.value, OSError)
    assert roi_set_timestamps(dataset) == {}  # nothing was written
    # a writer with time to wait gets the lock when the other thread lets go
    monkeypatch.setenv(locking.TIMEOUT_ENV, "5")
    threading.Timer(0.2, release.set).start()
    t0 = time.perf_counter()
    save_roi_set(dataset, _rois(), "mine")
    assert time.perf_counter() - t0 >= 0.15
    assert list(roi_set_timestamps(dataset)) == ["mine"]
    thread.join()


def test_threads_updating_one_signal_set_lose_nothing(dataset):
    folder = store_dir(dataset, 0)
    save_signal_set(folder, _signals(), "s")
    errors = []

    def add(prefix):
        try:
            for i in range(5):
                update_signal_set(folder, "s", **{f"{prefix}{i}": np.full(3, i)})
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=add, args=(p,)) for p in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    entries = signal_set_info(folder, "s")["entries"]
    assert sorted(entries) == sorted(f"{p}{i}" for p in "abcd" for i in range(5))
    assert not (dataset / LOCK_FILE).exists()


# ---------------------------------------------------------------------------------------
# Stale locks
# ---------------------------------------------------------------------------------------
HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from napari_sima.core.errors import DatasetInUseError
    from napari_sima.core.locking import DatasetLock
    a = DatasetLock(sys.argv[1], timeout=0, purpose="extracting signals", method="flock")
    b = DatasetLock(sys.argv[2], timeout=0, purpose="extracting signals", method="create")
    a.acquire(); b.acquire()
    pid = os.fork()
    if pid == 0:  # a forked child holds none of its parent's locks
        try:
            DatasetLock(sys.argv[1], timeout=0).acquire()
            os._exit(0)
        except DatasetInUseError:
            os._exit(7)
    _, status = os.waitpid(pid, 0)
    print("held", os.waitstatus_to_exitcode(status), flush=True)
    time.sleep(60)
    """
)


def test_lock_of_a_killed_process_is_detected_and_broken(tmp_path, caplog):
    a, b = tmp_path / "a.sima", tmp_path / "b.sima"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(a), str(b)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().split() == ["held", "7"]
        for folder in (a, b):
            for method in ("flock", "create"):
                with pytest.raises(DatasetInUseError) as info, dataset_lock(
                    folder, timeout=0.1, method=method
                ):
                    pass
                text = str(info.value)
                assert f"in use by process {proc.pid} on host {socket.gethostname()}" in text
                assert "extracting signals, since" in text and str(folder) in text
                assert "delete the lock file" not in text  # same host: it is alive
                assert info.value.holder.pid == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert read_lock_info(a).pid == read_lock_info(b).pid == proc.pid  # left behind
    caplog.set_level(logging.WARNING, logger=LOG)
    with dataset_lock(a, timeout=0, method="flock"), dataset_lock(b, timeout=0, method="create"):
        assert read_lock_info(a).pid == read_lock_info(b).pid == os.getpid()
    stale = [r.getMessage() for r in caplog.records if "stale lock" in r.getMessage()]
    assert len(stale) == 2 and all(f"process {proc.pid}" in m for m in stale), stale
    assert not (a / LOCK_FILE).exists() and not (b / LOCK_FILE).exists()
    assert not list(b.glob(LOCK_FILE + "*"))  # the renamed stale lock is gone too


@pytest.mark.parametrize("method", ["flock", "create"])
def test_lock_of_a_dead_pid_is_broken(dataset, caplog, method):
    caplog.set_level(logging.WARNING, logger=LOG)
    dead = _dead_pid()
    _write_lock(dataset, _record(pid=dead).to_json())
    save_roi_set(dataset, _rois(), "x")  # the default timeout is not needed
    assert list(load_roi_sets(dataset)) == ["x"]
    assert any(f"process {dead}" in r.getMessage() for r in caplog.records)
    # the process id now names another process (started later): stale (O_EXCL method)
    _write_lock(dataset, _record(pid=os.getppid(), proc_start=1).to_json())
    with dataset_lock(dataset, timeout=0, method="create"):
        pass
    # a lock from before the computer restarted is stale too (O_EXCL method)
    _write_lock(dataset, _record(pid=os.getppid(), boot_id="another-boot").to_json())
    with dataset_lock(dataset, timeout=0, method="create"):
        pass


def test_live_pid_without_flock(dataset):
    # A record naming a live process of this host: 'create' respects it; 'flock' knows
    # from the kernel that nobody holds the file (every holder here flocks it).
    ppid = os.getppid()
    _write_lock(dataset, _record(pid=ppid, proc_start=locking._proc_start(ppid)).to_json())
    with pytest.raises(DatasetInUseError, match=f"process {ppid}"), dataset_lock(
        dataset, timeout=0.1, method="create"
    ):
        pass
    with dataset_lock(dataset, timeout=0, method="flock"):
        pass


@pytest.mark.parametrize("method", ["flock", "create"])
def test_lock_of_another_host(dataset, caplog, method):
    path = _write_lock(dataset, _record(pid=4242, host="microscope-pc").to_json())
    with pytest.raises(DatasetInUseError) as info, dataset_lock(
        dataset, timeout=0.1, method=method
    ):
        pass
    text = str(info.value)
    assert "in use by process 4242 on host microscope-pc" in text
    assert f"delete the lock file {str(path)!r}" in text
    # a day old: a crash over there; taken over with a warning
    os.utime(path, (time.time() - locking.FOREIGN_LOCK_MAX_AGE - 60,) * 2)
    caplog.set_level(logging.WARNING, logger=LOG)
    with dataset_lock(dataset, timeout=0, method=method):
        pass
    assert any("microscope-pc" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("method", ["flock", "create"])
def test_unreadable_lock_file(dataset, caplog, method):
    path = _write_lock(dataset, '{"pid": 12')  # being written, or broken
    with pytest.raises(DatasetInUseError, match="is being written"), dataset_lock(
        dataset, timeout=0.1, method=method
    ):
        pass
    os.utime(path, (time.time() - locking.UNREADABLE_LOCK_MAX_AGE - 1,) * 2)
    caplog.set_level(logging.WARNING, logger=LOG)
    with dataset_lock(dataset, timeout=0, method=method):
        pass
    assert any("unknown process" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------
# Two processes at once; the CLI against a busy dataset
# ---------------------------------------------------------------------------------------
WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    import numpy as np
    from napari_sima.core import ROI
    from napari_sima.core.errors import DatasetInUseError
    from napari_sima.core.roi_store import save_roi_set
    from napari_sima.core.signal_store import store_dir, update_signal_set
    folder, prefix, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    rois = [ROI(polygons=[[1, 1, 0], [5, 1, 0], [5, 5, 0]], im_shape=(1, 12, 12))]
    open(go + "." + prefix, "w").close()
    while not os.path.exists(go):
        time.sleep(0.001)
    done, refused = [], []
    for i in range(n):
        for kind, call in (
            ("roi", lambda: save_roi_set(folder, rois, f"{prefix}{i}")),
            ("entry", lambda: update_signal_set(
                store_dir(folder, 0), "shared", **{f"{prefix}{i}": np.full(4, i)})),
        ):
            try:
                call()
                done.append([kind, f"{prefix}{i}"])
            except DatasetInUseError as err:
                refused.append(str(err))
    print(json.dumps({"done": done, "refused": refused}))
    """
)


def test_two_processes_writing_one_dataset_lose_nothing(dataset, tmp_path):
    save_signal_set(store_dir(dataset, 0), _signals(), "shared")
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(dataset), prefix, "8", str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for prefix in ("a", "b")
    ]
    deadline = time.time() + 60
    while not all(Path(f"{go}.{p}").exists() for p in "ab") and time.time() < deadline:
        time.sleep(0.01)
    go.touch()  # both start writing at once
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    done = [tuple(x) for r in results for x in r["done"]]
    refused = [m for r in results for m in r["refused"]]
    assert all("is in use by process" in m for m in refused), refused
    assert len(done) + len(refused) == 32
    assert len(done) >= 28, refused  # a 10 s timeout: refusals would be a surprise
    # every write that returned is there: no lost index entries, no lost signal entries
    rois = set(load_roi_sets(dataset))
    entries = set(load_signal_set(store_dir(dataset, 0), "shared"))
    for kind, name in done:
        assert name in (rois if kind == "roi" else entries), (kind, name)
    assert not (dataset / LOCK_FILE).exists()


def test_cli_refuses_a_dataset_in_use(dataset, tmp_path):
    zip_path = tmp_path / "RoiSet.zip"
    write_imagej_rois(zip_path, _rois(3))
    env = {**os.environ, locking.TIMEOUT_ENV: "0.3"}
    cmd = [sys.executable, "-m", "napari_sima.cli", "import-rois", str(dataset), str(zip_path),
           "--label", "cells"]
    with dataset_lock(dataset, purpose="saving the ROI set 'gui'"):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("napari-sima: error: the dataset"), proc.stderr
    assert f"is in use by process {os.getpid()} on host {socket.gethostname()}" in line
    assert "saving the ROI set 'gui'" in line and "try again when it has finished" in line
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr
    assert roi_set_timestamps(dataset) == {}


CHURN = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from napari_sima.core import ROI
    from napari_sima.core.roi_store import delete_roi_set, save_roi_set
    from napari_sima.core.signal_store import delete_signal_set, save_signal_set, store_dir
    folder, stop = sys.argv[1], sys.argv[2]
    rois = [ROI(polygons=[[1, 1, 0], [5, 1, 0], [5, 5, 0]], im_shape=(1, 12, 12))]
    signals = {"raw": [np.zeros((1, 30), np.float32)], "rois": [r.todict() for r in rois],
               "signal_channel": 0}
    n = 0
    print("ready", flush=True)
    while not os.path.exists(stop):
        save_roi_set(folder, rois, "churn")
        save_signal_set(store_dir(folder, 0), signals, "churn")
        delete_roi_set(folder, "churn")
        delete_signal_set(store_dir(folder, 0), "churn")
        n += 1
    print(n)
    """
)


def test_reading_every_set_while_another_process_deletes_sets(dataset, tmp_path):
    """Readers take no lock: a set deleted while they read is simply not returned."""
    save_roi_set(dataset, _rois(), "kept")
    save_signal_set(store_dir(dataset, 0), _signals(), "kept")
    stop = tmp_path / "stop"
    proc = subprocess.Popen([sys.executable, "-c", CHURN, str(dataset), str(stop)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    reads, met = 0, 0
    deadline = time.time() + 120
    try:  # read while the other process churns, until the reader met its sets a few times
        while (reads < 50 or met < 5) and time.time() < deadline and proc.poll() is None:
            rois, signals = load_roi_sets(dataset), load_signal_sets(store_dir(dataset, 0))
            assert "kept" in rois and "kept" in signals
            met += "churn" in rois or "churn" in signals
            reads += 1
    finally:
        stop.touch()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert int(out.split()[-1]) > 0 and reads >= 50 and met >= 5, (out, reads, met)
