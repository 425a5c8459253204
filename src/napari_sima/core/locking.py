"""The write lock of a dataset folder: one writer at a time, a clear error for the others.

Every write into a dataset folder (``dataset.json``, ROI sets, signal sets, a copy of
the dataset to a new folder) holds the folder's lock; reading never needs it, since
every file is replaced atomically (:mod:`napari_sima.core.storage`).

The lock is the file ``NAME.sima/.napari-sima.lock``, holding a JSON record of who
holds it: process id, host, start time, command line and what it is doing.  A second
writer waits for it (``timeout`` seconds, default :data:`DEFAULT_TIMEOUT` or the
environment variable ``NAPARI_SIMA_LOCK_TIMEOUT``) and then gets a
:class:`~napari_sima.core.errors.DatasetInUseError` saying who is writing::

    the dataset '/data/a.sima' is in use by process 1234 on host lab-pc (napari-sima
    extract: saving the signal set 'GCaMP', since 14:02); try again when it has finished

How the lock is taken (``method``):

``'flock'`` (default on Linux and macOS)
    The file is created if missing and locked with ``flock(LOCK_EX)``; the kernel
    drops that lock when its process dies, however it dies (``kill -9`` included).
    A lock file whose ``flock`` is free but which still holds a record was left by a
    process that died while writing: the next writer takes it over and logs a warning
    naming the dead process.  Released by deleting the file, then closing it.
``'create'`` (where ``flock`` is missing or refused, e.g. Windows; or on request)
    The file is created with ``O_CREAT | O_EXCL``.  A lock is stale when its process
    no longer runs on this host (or the host restarted, or the process id now belongs
    to a newer process), or when the file stays empty/unreadable for
    :data:`UNREADABLE_LOCK_MAX_AGE` seconds; it is renamed to a unique name (only one
    of several waiting processes wins that rename; a fresh lock moved by mistake is
    put back) and the waiting process tries again.  Where ``flock`` works the file is
    flock'ed too, so that both methods can meet on one dataset.

A lock written by **another host** (a dataset on a network share) is respected —
whether that host's ``flock`` reaches ours depends on the file system — until it is
older than :data:`FOREIGN_LOCK_MAX_AGE` (24 hours: writes hold the lock for seconds
to minutes, so a day-old lock from another computer is left by a crash there); the
error message names the lock file so that a user can delete it sooner.

The lock is re-entrant within a process: a thread that holds it may take it again
(nested saves just count); other threads of the same process wait as other
processes do.  A forked child does not inherit the parent's locks.

Examples
--------
>>> import tempfile
>>> from napari_sima.core.locking import dataset_lock, read_lock_info
>>> folder = tempfile.mkdtemp(suffix='.sima')
>>> with dataset_lock(folder, purpose='an example') as lock:
...     read_lock_info(folder).purpose
'an example'
>>> read_lock_info(folder) is None
True
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import DatasetInUseError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_TIMEOUT",
    "FOREIGN_LOCK_MAX_AGE",
    "LOCK_FILE",
    "DatasetLock",
    "LockInfo",
    "dataset_lock",
    "explain_write_error",
    "lock_root",
    "locked_write",
    "read_lock_info",
]

#: Name of the lock file inside the dataset folder.
LOCK_FILE = ".napari-sima.lock"
#: Seconds a writer waits for a busy dataset before giving up.
DEFAULT_TIMEOUT = 10.0
#: Environment variable overriding :data:`DEFAULT_TIMEOUT` (seconds).
TIMEOUT_ENV = "NAPARI_SIMA_LOCK_TIMEOUT"
#: Environment variable choosing the locking method: ``auto``, ``flock`` or ``create``.
METHOD_ENV = "NAPARI_SIMA_LOCK_METHOD"
#: A lock written by another host is respected until it is this old (seconds).
FOREIGN_LOCK_MAX_AGE = 24 * 3600.0
#: An empty or unreadable lock file nobody holds is stale after this many seconds.
UNREADABLE_LOCK_MAX_AGE = 10.0
_POLL_FIRST = 0.02
_POLL_MAX = 0.2
_METHODS = ("auto", "flock", "create")
#: ``flock`` errors meaning "not supported here": fall back to ``'create'``.
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF}
_DATASET_FILES = ("dataset.json", "dataset.pkl")
#: Infix of a stale lock file being removed (``.napari-sima.lock.stale-<hex>``).
_ASIDE = ".stale-"
#: A set-aside lock file older than this (seconds) was left by a killed process.
_ASIDE_MAX_AGE = 60.0

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# Where the lock lives, who holds it
# ---------------------------------------------------------------------------------------
def lock_root(path: str | os.PathLike) -> Path:
    """Return the folder whose lock guards writes to ``path``.

    ``path`` or one of its two parents that is a dataset folder (named ``*.sima`` or
    holding ``dataset.json`` / ``dataset.pkl``) -- so that ``NAME.sima/rois`` and
    ``NAME.sima/signals/channel_0`` share the lock of ``NAME.sima``; any other folder
    (an ROI store outside a dataset) is locked itself.

    Parameters
    ----------
    path : path-like
        A dataset folder or a store folder inside one (need not exist yet).

    Returns
    -------
    pathlib.Path
        An absolute path.
    """
    p = Path(os.path.abspath(os.fspath(path)))
    for candidate in (p, p.parent, p.parent.parent):
        if candidate.suffix == ".sima" or any((candidate / f).is_file() for f in _DATASET_FILES):
            return candidate
    return p


@dataclass(frozen=True)
class LockInfo:
    """Who holds (or held) a dataset lock, as written in its lock file.

    Attributes
    ----------
    pid : int
        Process id of the holder.
    host : str
        Host name of the holder's computer.
    started : str
        When the lock was taken (ISO 8601, local time with offset).
    program : str
        Short name of the holder (``'napari-sima extract'``, ``'napari'``).
    command : str
        The holder's whole command line.
    purpose : str
        What the holder is doing (``"saving the ROI set 'auto'"``).
    thread : str
        Name of the holder's thread.
    boot_id : str
        Linux boot id of the holder's computer ('' elsewhere).
    proc_start : int or None
        Linux start time of the holder's process (clock ticks since boot).
    token : str
        Unique id of this acquisition.
    """

    pid: int
    host: str
    started: str = ""
    program: str = ""
    command: str = ""
    purpose: str = ""
    thread: str = ""
    boot_id: str = ""
    proc_start: int | None = None
    token: str = ""

    @classmethod
    def from_json(cls, text: str) -> LockInfo | None:
        """Parse a lock file's text; None when it is empty or not a lock record."""
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        pid = data.get("pid")
        host = data.get("host")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return None
        if not isinstance(host, str):
            return None
        proc_start = data.get("proc_start")
        return cls(
            pid=pid,
            host=host,
            started=str(data.get("started") or ""),
            program=str(data.get("program") or ""),
            command=str(data.get("command") or ""),
            purpose=str(data.get("purpose") or ""),
            thread=str(data.get("thread") or ""),
            boot_id=str(data.get("boot_id") or ""),
            proc_start=proc_start if isinstance(proc_start, int) else None,
            token=str(data.get("token") or ""),
        )

    def to_json(self) -> str:
        """Return the lock file's text."""
        return json.dumps(self.__dict__, indent=1)

    @property
    def same_host(self) -> bool:
        """Whether the holder runs on this computer."""
        return self.host == _HOST

    def describe(self) -> str:
        """``'process 1234 on host h (napari-sima extract: saving ..., since 14:02)'``."""
        details = self.program or "unknown program"
        if self.purpose:
            details += f": {self.purpose}"
        since = _since(self.started)
        if since:
            details += f", since {since}"
        return f"process {self.pid} on host {self.host} ({details})"


def _since(started: str) -> str:
    try:
        when = _dt.datetime.fromisoformat(started)
    except (TypeError, ValueError):
        return ""
    now = _dt.datetime.now(when.tzinfo)
    return when.strftime("%H:%M" if when.date() == now.date() else "%Y-%m-%d %H:%M")


def read_lock_info(folder: str | os.PathLike) -> LockInfo | None:
    """Return who holds the lock of a dataset folder, or None when nobody does.

    Parameters
    ----------
    folder : path-like
        The dataset folder (or a store folder inside it).

    Returns
    -------
    LockInfo or None
        The record of the lock file; None when there is no lock file or it has no
        record.  (A record left by a process that died is returned too: the next
        writer removes it.)
    """
    try:
        text = (lock_root(folder) / LOCK_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return LockInfo.from_json(text)


# ---------------------------------------------------------------------------------------
# This process
# ---------------------------------------------------------------------------------------
def _read_first_line(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.readline().strip()
    except OSError:
        return ""


_HOST = socket.gethostname()
_BOOT_ID = _read_first_line("/proc/sys/kernel/random/boot_id")


def _proc_start(pid: int) -> int | None:
    """Linux start time of a process (clock ticks since boot), None if unknown."""
    line = _read_first_line(f"/proc/{pid}/stat")
    if not line:
        return None
    try:
        return int(line.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _program(argv: list[str]) -> str:
    """Return a short name of a command line (``napari-sima extract``, ``napari``)."""
    args = [a for a in argv if a]
    if not args:
        return "python"
    name = os.path.basename(args[0])
    rest = args[1:]
    if name.startswith("python"):
        if rest[:1] == ["-m"] and len(rest) > 1:
            name, rest = rest[1], rest[2:]
        elif rest and not rest[0].startswith("-"):
            name, rest = os.path.basename(rest[0]), rest[1:]
    if name in ("napari-sima", "napari_sima", "napari_sima.cli", "__main__.py"):
        name = "napari-sima"
        sub = next((a for a in rest if not a.startswith("-")), None)
        if sub:
            name += f" {sub}"
    return name


def _own_record(purpose: str, token: str) -> LockInfo:
    argv = list(getattr(sys, "orig_argv", None) or sys.argv)
    return LockInfo(
        pid=os.getpid(),
        host=_HOST,
        started=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        program=_program(argv),
        command=" ".join(argv)[:500],
        purpose=purpose[:300],
        thread=threading.current_thread().name,
        boot_id=_BOOT_ID,
        proc_start=_proc_start(os.getpid()),
        token=token,
    )


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this computer (zombies count as dead)."""
    if os.name == "nt":  # pragma: no cover - Windows
        return _pid_alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    except OSError:
        return True
    line = _read_first_line(f"/proc/{pid}/stat")
    if line:
        try:
            state = line.rsplit(")", 1)[1].split()[0]
        except IndexError:
            return True
        return state not in ("Z", "X")
    return True


def _pid_alive_windows(pid: int) -> bool:  # pragma: no cover - Windows
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return kernel32.GetLastError() == 5  # access denied: it exists
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


# ---------------------------------------------------------------------------------------
# In-process state: one entry per locked folder
# ---------------------------------------------------------------------------------------
class _Held:
    """The lock of one folder inside this process (shared by all DatasetLock objects)."""

    def __init__(self) -> None:
        self.mutex = threading.RLock()
        self.count = 0
        self.fd: int | None = None
        self.method = ""
        self.record: LockInfo | None = None


_registry: dict[str, _Held] = {}
_registry_guard = threading.Lock()


def _after_fork_in_child() -> None:
    # A forked child holds none of its parent's locks: forget them (the parent's file
    # descriptors are closed here so that the child never keeps a flock alive).
    global _registry, _registry_guard
    for held in _registry.values():
        if held.fd is not None:
            with contextlib.suppress(OSError):
                os.close(held.fd)
    _registry = {}
    _registry_guard = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _held_for(root: Path) -> _Held:
    key = os.path.realpath(root)
    with _registry_guard:
        held = _registry.get(key)
        if held is None:
            held = _registry[key] = _Held()
        return held


def _default_timeout() -> float:
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"the environment variable {TIMEOUT_ENV} must be a number of seconds, got {text!r}"
        ) from None
    if not value >= 0:
        raise ValueError(f"{TIMEOUT_ENV} must be >= 0 seconds, got {text!r}")
    return value


def _choose_method(method: str | None) -> str:
    chosen = method or os.environ.get(METHOD_ENV) or "auto"
    if chosen not in _METHODS:
        raise ValueError(f"unknown locking method {chosen!r}; expected one of {list(_METHODS)}")
    if chosen == "auto":
        chosen = "flock" if fcntl is not None else "create"
    if chosen == "flock" and fcntl is None:  # pragma: no cover - Windows
        chosen = "create"
    return chosen


# ---------------------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------------------
class DatasetLock:
    """Exclusive write lock of a dataset folder (re-entrant within a process).

    Parameters
    ----------
    folder : path-like
        The dataset folder, or a store folder inside it (see :func:`lock_root`); it is
        created when missing.
    timeout : float, optional
        Seconds to wait for a busy dataset; 0 tries once.  Default:
        ``NAPARI_SIMA_LOCK_TIMEOUT`` from the environment, else :data:`DEFAULT_TIMEOUT`.
    purpose : str
        What the holder does, shown to whoever waits (``"saving the ROI set 'x'"``).
    method : {'auto', 'flock', 'create'}, optional
        How the lock is taken (module docs); default ``NAPARI_SIMA_LOCK_METHOD`` from
        the environment, else ``'auto'`` (``flock`` where it exists).

    Raises
    ------
    ValueError
        For an unknown ``method`` or a bad ``NAPARI_SIMA_LOCK_TIMEOUT``.

    Examples
    --------
    >>> import tempfile
    >>> lock = DatasetLock(tempfile.mkdtemp(suffix='.sima'), timeout=1)
    >>> with lock:
    ...     with lock:  # nested: just counts
    ...         lock.held
    True
    >>> lock.held
    False
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        timeout: float | None = None,
        purpose: str = "",
        method: str | None = None,
    ) -> None:
        self.root = lock_root(folder)
        self.path = self.root / LOCK_FILE
        if timeout is not None and not float(timeout) >= 0:
            raise ValueError(f"the lock timeout must be >= 0 seconds, got {timeout!r}")
        self.timeout = None if timeout is None else float(timeout)
        self.purpose = str(purpose)
        self.method = _choose_method(method)
        self._depth = 0

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._depth > 0

    def __repr__(self) -> str:
        return f"<DatasetLock {str(self.root)!r} held={self.held}>"

    def __enter__(self) -> DatasetLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- acquire / release -----------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lock, waiting up to ``timeout`` seconds.

        Raises
        ------
        napari_sima.core.errors.DatasetInUseError
            If another process (or another thread of this one) still holds it.
        PermissionError
            If the folder cannot be written (read-only file system, no permission).
        OSError
            If the lock file cannot be written (e.g. the disk is full).
        """
        timeout = _default_timeout() if self.timeout is None else self.timeout
        deadline = time.monotonic() + timeout
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise explain_write_error(err, self._action(), self.root) from err
        held = _held_for(self.root)
        if not held.mutex.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise self._in_use(held.record, same_process=True)
        try:
            if held.count == 0:
                token = uuid.uuid4().hex
                record = _own_record(self.purpose, token)
                if self.method == "flock":
                    held.fd, held.method = self._acquire_flock(record, deadline)
                else:
                    held.fd, held.method = self._acquire_create(record, deadline), "create"
                held.record = record
                _remove_old_asides(self.root)
            held.count += 1
        except BaseException:
            held.mutex.release()
            raise
        self._depth += 1

    def release(self) -> None:
        """Give the lock back (the lock file is deleted when the outermost hold ends).

        Raises
        ------
        RuntimeError
            If this object does not hold the lock.
        """
        if self._depth == 0:
            raise RuntimeError(f"the lock of {str(self.root)!r} is not held by this object")
        held = _held_for(self.root)
        self._depth -= 1
        try:
            held.count -= 1
            if held.count == 0:
                fd, method, record = held.fd, held.method, held.record
                held.fd, held.record = None, None
                self._release_file(fd, method, record)
        finally:
            held.mutex.release()

    # -- flock ---------------------------------------------------------------------------------
    def _acquire_flock(self, record: LockInfo, deadline: float) -> tuple[int | None, str]:
        delay = _POLL_FIRST
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise explain_write_error(err, self._action(), self.root) from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = LockInfo.from_json(_read_fd(fd))
                os.close(fd)
                delay = self._wait(holder, deadline, delay)
                continue
            except OSError as err:
                os.close(fd)
                if err.errno in _NO_FLOCK:  # this file system has no flock: use O_EXCL
                    logger.debug("flock refused on %s (%s): using O_EXCL", self.path, err)
                    return self._acquire_create(record, deadline), "create"
                raise explain_write_error(err, self._action(), self.root) from err
            respect = False  # a record we must not take over although its flock is free
            previous: LockInfo | None = None
            try:
                # We hold the flock of the file we opened; it must still be the lock file
                # (its holder deletes it before letting go: then we retry on a new one).
                st_fd = os.fstat(fd)
                try:
                    st_path = os.stat(self.path)
                except FileNotFoundError:
                    st_path = None
                if st_path is None or (st_fd.st_ino, st_fd.st_dev) != (
                    st_path.st_ino,
                    st_path.st_dev,
                ):
                    os.close(fd)
                    continue
                text = _read_fd(fd)
                if text.strip():
                    previous = LockInfo.from_json(text)
                    reason = self._flock_stale_reason(previous, time.time() - st_fd.st_mtime)
                    if reason is None:
                        respect = True
                    else:
                        _warn_stale(self.path, previous, reason)
                if not respect:
                    _write_record(fd, record)
            except OSError as err:
                self._release_file(fd, "flock", record)
                raise explain_write_error(err, self._action(), self.root) from err
            except BaseException:
                self._release_file(fd, "flock", record)
                raise
            if respect:
                os.close(fd)
                delay = self._wait(previous, deadline, delay)
                continue
            return fd, "flock"

    @staticmethod
    def _flock_stale_reason(previous: LockInfo | None, age: float) -> str | None:
        """Why a lock record whose flock is free was abandoned (None: respect it)."""
        if previous is None:
            if age < UNREADABLE_LOCK_MAX_AGE:
                return None  # a holder on a host sharing no flock may be writing it
            return "its lock file was left unreadable"
        if previous.same_host:  # our kernel says nobody holds it
            return "its process ended without releasing it"
        if age < FOREIGN_LOCK_MAX_AGE:
            return None
        return f"it was taken on another host more than {FOREIGN_LOCK_MAX_AGE / 3600:g} hours ago"

    # -- O_EXCL ----------------------------------------------------------------------------------
    def _acquire_create(self, record: LockInfo, deadline: float) -> int:
        delay = _POLL_FIRST
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    st = os.stat(self.path)
                    text = self.path.read_text(encoding="utf-8", errors="replace")
                except FileNotFoundError:
                    continue  # released meanwhile
                except OSError as err:
                    raise explain_write_error(err, self._action(), self.root) from err
                holder = LockInfo.from_json(text)
                reason = self._create_stale_reason(holder, time.time() - st.st_mtime)
                if reason is None:
                    delay = self._wait(holder, deadline, delay)
                    continue
                self._break(st, holder, reason)
                continue
            except OSError as err:
                raise explain_write_error(err, self._action(), self.root) from err
            try:
                _write_record(fd, record)
            except OSError as err:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                raise explain_write_error(err, self._action(), self.root) from err
            if fcntl is not None:
                # Also flock it where possible: processes of this host using 'flock' then
                # see it held (the kernel's word is final for them).
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd

    @staticmethod
    def _create_stale_reason(holder: LockInfo | None, age: float) -> str | None:
        if holder is None:
            if age < UNREADABLE_LOCK_MAX_AGE:
                return None  # its holder is writing it right now
            return "its lock file was left empty or unreadable"
        if holder.same_host:
            if holder.boot_id and _BOOT_ID and holder.boot_id != _BOOT_ID:
                return "this computer has restarted since"
            if not _pid_alive(holder.pid):
                return "its process is no longer running"
            start = _proc_start(holder.pid)
            if holder.proc_start is not None and start is not None and start != holder.proc_start:
                return "its process is no longer running (the id now names another process)"
            return None
        if age < FOREIGN_LOCK_MAX_AGE:
            return None
        return f"it was taken on another host more than {FOREIGN_LOCK_MAX_AGE / 3600:g} hours ago"

    def _break(self, st: os.stat_result, holder: LockInfo | None, reason: str) -> None:
        """Remove a stale lock file: only the process whose rename moves it wins."""
        # Said first: if we are killed below, the next writer finds it (and says it) again.
        _warn_stale(self.path, holder, reason)
        aside = self.root / f"{LOCK_FILE}{_ASIDE}{uuid.uuid4().hex[:12]}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process broke it first
        except OSError as err:
            raise explain_write_error(err, self._action(), self.root) from err
        moved = os.stat(aside)
        if (moved.st_ino, moved.st_dev) != (st.st_ino, st.st_dev):
            # Between our look and our rename another process broke the stale lock and
            # took the dataset: put its fresh lock back.
            try:
                os.link(aside, self.path)
            except FileExistsError:
                logger.warning("lost a race while restoring the lock of %s", self.root)
            except OSError:
                with contextlib.suppress(OSError):
                    os.rename(aside, self.path)
            with contextlib.suppress(OSError):
                os.unlink(aside)
            return
        with contextlib.suppress(OSError):
            os.unlink(aside)

    # -- shared ----------------------------------------------------------------------------------
    def _release_file(self, fd: int | None, method: str, record: LockInfo | None) -> None:
        if method == "flock" and fd is not None:
            try:
                st_fd = os.fstat(fd)
                st_path = os.stat(self.path)
                if (st_fd.st_ino, st_fd.st_dev) == (st_path.st_ino, st_path.st_dev):
                    os.unlink(self.path)  # before letting go: waiters then retry on a new file
            except OSError:
                pass
            finally:
                os.close(fd)
            return
        # 'create': delete the file if it is still ours
        if fd is not None and os.name == "nt":  # pragma: no cover - no unlink of open files
            os.close(fd)
            fd = None
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        current = LockInfo.from_json(text)
        if record is not None and current is not None and current.token == record.token:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        else:
            logger.warning("the lock of %s was taken over while held by this process", self.root)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _wait(self, holder: LockInfo | None, deadline: float, delay: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._in_use(holder)
        time.sleep(min(delay, remaining))
        return min(delay * 1.5, _POLL_MAX)

    def _action(self) -> str:
        return self.purpose or "taking its write lock"

    def _in_use(self, holder: LockInfo | None, same_process: bool = False) -> DatasetInUseError:
        where = repr(str(self.root))
        if same_process:
            what = "another task of this program"
            if holder is not None:
                details = holder.purpose or "writing"
                since = _since(holder.started)
                what += f" (thread {holder.thread!r}: {details}" + (
                    f", since {since})" if since else ")"
                )
            message = f"the dataset {where} is in use by {what}; try again when it has finished"
        elif holder is None:
            message = (
                f"the dataset {where} is in use by another process (its lock file "
                f"{str(self.path)!r} is being written); try again when it has finished"
            )
        else:
            message = (
                f"the dataset {where} is in use by {holder.describe()}; try again when it "
                f"has finished"
            )
            if not holder.same_host:
                message += (
                    f" (if that process is no longer running, delete the lock file "
                    f"{str(self.path)!r})"
                )
        err = DatasetInUseError(message)
        err.errno = errno.EBUSY
        err.holder = holder  # type: ignore[attr-defined]
        err.lock_file = str(self.path)  # type: ignore[attr-defined]
        return err


def _read_fd(fd: int) -> str:
    try:
        return os.pread(fd, 65536, 0).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _write_record(fd: int, record: LockInfo) -> None:
    data = record.to_json().encode("utf-8")
    os.ftruncate(fd, 0)
    if hasattr(os, "pwrite"):
        written = os.pwrite(fd, data, 0)
    else:  # pragma: no cover - Windows
        os.lseek(fd, 0, os.SEEK_SET)
        written = os.write(fd, data)
    if written != len(data):
        raise OSError(errno.ENOSPC, "short write of the lock file")
    os.fsync(fd)


def _remove_old_asides(root: Path) -> None:
    """Delete stale lock files set aside by a process killed while breaking them."""
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith(LOCK_FILE + _ASIDE):
                with contextlib.suppress(OSError):
                    if now - entry.stat(follow_symlinks=False).st_mtime > _ASIDE_MAX_AGE:
                        os.unlink(entry.path)


def _warn_stale(path: Path, holder: LockInfo | None, reason: str) -> None:
    who = holder.describe() if holder is not None else "an unknown process"
    logger.warning("removed the stale lock %r of %s: %s", str(path), who, reason)


@contextlib.contextmanager
def dataset_lock(
    folder: str | os.PathLike,
    timeout: float | None = None,
    purpose: str = "",
    method: str | None = None,
) -> Iterator[DatasetLock]:
    """Hold the write lock of a dataset folder for the ``with`` block.

    Parameters
    ----------
    folder : path-like
        The dataset folder or a store folder inside it.
    timeout : float, optional
        Seconds to wait for a busy dataset (default :data:`DEFAULT_TIMEOUT`, or the
        environment variable ``NAPARI_SIMA_LOCK_TIMEOUT``).
    purpose : str
        What the block does, shown to processes that wait for it.
    method : {'auto', 'flock', 'create'}, optional
        See :class:`DatasetLock`.

    Yields
    ------
    DatasetLock

    Raises
    ------
    napari_sima.core.errors.DatasetInUseError
        If another process still holds the lock after ``timeout`` seconds.
    PermissionError
        If the folder cannot be written.
    """
    lock = DatasetLock(folder, timeout=timeout, purpose=purpose, method=method)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------
# Clear errors for failed writes
# ---------------------------------------------------------------------------------------
_EXPLAINED = "_napari_sima_explained"


def explain_write_error(err: OSError, action: str, folder: str | os.PathLike) -> OSError:
    """Return an error saying in plain words why writing to a dataset failed.

    Parameters
    ----------
    err : OSError
        The error raised by the write.
    action : str
        What was being done (``"saving the signal set 'x'"``).
    folder : path-like
        The dataset folder, named in the message.

    Returns
    -------
    OSError
        A new ``OSError`` (``PermissionError`` for read-only file systems and missing
        permissions) with the same ``errno`` for a full disk (``ENOSPC``,
        ``EDQUOT``), a file size limit (``EFBIG``), a read-only file system
        (``EROFS``) or a refused permission (``EACCES``, ``EPERM``) on a file of
        ``folder``; ``err`` itself for anything else (and for a
        :class:`DatasetInUseError` or an error explained already).
    """
    if isinstance(err, DatasetInUseError) or getattr(err, _EXPLAINED, False):
        return err
    where = repr(str(folder))
    code = err.errno
    new: OSError
    if code in (errno.ENOSPC, errno.EDQUOT):
        new = OSError(
            f"no space left on the device while {action} in {where}; nothing was changed "
            f"(free some space and try again)"
        )
    elif code == errno.EFBIG:
        new = OSError(
            f"a file became larger than the file system or this process allows while "
            f"{action} in {where}; nothing was changed"
        )
    elif code == errno.EROFS:
        new = PermissionError(
            f"cannot write to {where} while {action}: it is on a read-only file system; "
            f"nothing was changed (save the dataset elsewhere)"
        )
    elif code in (errno.EACCES, errno.EPERM) and _inside(err.filename, folder):
        name = f" ({err.filename})" if err.filename else ""
        new = PermissionError(
            f"cannot write to {where} while {action}: permission denied{name}; nothing was "
            f"changed (save the dataset elsewhere)"
        )
    else:
        return err
    new.errno = code
    setattr(new, _EXPLAINED, True)
    return new


def _inside(filename: object, folder: str | os.PathLike) -> bool:
    """Whether an error's file is in ``folder`` (or unknown).

    A movie we may not read, outside the dataset, is no refused write.
    """
    if not isinstance(filename, (str, bytes, os.PathLike)):
        return True
    root = os.path.abspath(os.fspath(folder))
    try:
        return os.path.commonpath([os.path.abspath(os.fsdecode(filename)), root]) == root
    except ValueError:
        return False


@contextlib.contextmanager
def locked_write(
    folder: str | os.PathLike, action: str, timeout: float | None = None
) -> Iterator[DatasetLock]:
    """Hold a dataset's lock while writing, and explain full disks and read-only folders.

    Every write path of napari-sima runs inside this block: the lock keeps other
    writers out; an ``OSError`` leaving the block becomes the plain-words error of
    :func:`explain_write_error` (the code inside must leave nothing half-written,
    which atomic replacement guarantees).

    Parameters
    ----------
    folder : path-like
        The dataset folder or a store folder inside it.
    action : str
        What the block does (``"saving the ROI set 'x'"``), for waiting processes
        and messages.
    timeout : float, optional
        See :func:`dataset_lock`.

    Yields
    ------
    DatasetLock
    """
    with dataset_lock(folder, timeout=timeout, purpose=action) as lock:
        try:
            yield lock
        except OSError as err:
            new = explain_write_error(err, action, lock.root)
            if new is err:
                raise
            raise new from err
