"""Crash-safe writing of dataset files (temporary file + ``os.replace``).

Every file of a dataset folder is written next to its final name, flushed and
fsync'ed, then renamed over the old one, so a crash leaves either the old or the new
file, never a truncated one.  No pickles: JSON for metadata, ``.npy``/``.npz`` for
arrays (loaded with ``allow_pickle=False``).  A write that fails (full disk, read-only
file system) deletes its temporary file; one killed leaves it behind, ignored by every
reader and removed later by a writer holding the dataset's lock
(:func:`remove_orphan_temps`, :mod:`napari_sima.core.locking`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

#: Temporary files of :func:`atomic_open`: ``.<final name>.<12 hex digits>.tmp``.
#: Left by a killed writer, they are ignored by every reader and removed by a later
#: writer (:func:`remove_orphan_temps`) once older than :data:`ORPHAN_AGE` seconds.
TEMP_RE = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{12}\.tmp$")
#: Seconds after which a temporary file (or an unreferenced set file) is an orphan.
ORPHAN_AGE = 600.0


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (new, renamed, removed files) to disk; best effort."""
    with contextlib.suppress(OSError):
        fd = os.open(os.fspath(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_fsync_dir = fsync_dir


def temp_target(name: str) -> str | None:
    """Return the final file name a temporary file of :func:`atomic_open` was for.

    Returns None when ``name`` is not such a temporary file.
    """
    match = TEMP_RE.match(name)
    return match.group("target") if match else None


def remove_orphan_temps(folder: str | os.PathLike, min_age: float = ORPHAN_AGE) -> list[str]:
    """Delete temporary files left in a folder by writers that were killed.

    Call it while holding the folder's write lock (:mod:`napari_sima.core.locking`).
    Only files older than ``min_age`` go: a writer that does not take the lock (the
    projection caches, a process on a computer whose locks do not reach ours) may be
    writing a young one.

    Parameters
    ----------
    folder : path-like
        The folder (not recursive).
    min_age : float
        Seconds since the file's last change.

    Returns
    -------
    list of str
        The names removed.  Files that cannot be removed are left (best effort).
    """
    removed: list[str] = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if temp_target(entry.name) is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if now - entry.stat(follow_symlinks=False).st_mtime < min_age:
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(entry.name)
    return removed


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` only if the block succeeds.

    Parameters
    ----------
    path : path-like
        Final file name.
    mode : {'wb', 'w'}
        Binary or text mode.

    Yields
    ------
    file object
        Write to it; on normal exit it is flushed, fsync'ed and renamed to ``path``;
        on an exception it is deleted and ``path`` is left untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes only ('wb' or 'w'), got mode {mode!r}")
    path = Path(path)
    directory = path.parent
    # os.open with 0o666 lets the umask decide the permissions, as for any new file
    # (mkstemp would make every dataset file owner-only).
    tmp = directory / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON to ``path`` atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=True)
    with atomic_open(path, "w") as fh:
        fh.write(text)
        fh.write("\n")


#: Largest JSON file read (dataset descriptions and set indexes are kilobytes).
MAX_JSON_BYTES = 64 * 2**20


def open_regular(path: str | os.PathLike, what: str = "file") -> tuple[IO[bytes], int]:
    """Open a file for reading, refusing folders, devices, FIFOs and sockets.

    A FIFO or a device such as ``/dev/zero`` (e.g. a symbolic link in a downloaded
    dataset) would block or never end; it is opened without blocking and refused.

    Returns
    -------
    (binary file, size in bytes)

    Raises
    ------
    FileNotFoundError, IsADirectoryError
    napari_sima.core.errors.FileFormatError
        If ``path`` is not a regular file.
    """
    from .errors import FileFormatError

    fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(f"the {what} {os.fspath(path)!r} is a folder")
        if not stat.S_ISREG(info.st_mode):
            raise FileFormatError(
                f"the {what} {os.fspath(path)!r} is not a regular file (a device, FIFO or "
                f"socket); refusing to read it"
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), int(info.st_size)
    except BaseException:
        os.close(fd)
        raise


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON file with a clear error naming the file when it is broken.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not valid JSON, nested too deeply, larger than
        :data:`MAX_JSON_BYTES` (:class:`~napari_sima.core.errors.ResourceLimitError`)
        or not a regular file.
    """
    from .errors import FileFormatError, ResourceLimitError

    name = os.fspath(path)
    try:
        fh, size = open_regular(path, what)
    except FileNotFoundError:
        raise FileNotFoundError(f"the {what} {name!r} does not exist") from None
    with fh:
        if size > MAX_JSON_BYTES:
            raise ResourceLimitError(
                f"the {what} {name!r} is {size} bytes, more than the {MAX_JSON_BYTES} allowed"
            )
        data = fh.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise ResourceLimitError(f"the {what} {name!r} grew beyond {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise FileFormatError(f"the {what} {name!r} is nested too deeply to be ours") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise FileFormatError(f"the {what} {name!r} is not valid JSON: {err}") from None


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save one array as ``.npy`` atomically (no pickled objects allowed)."""
    with atomic_open(path, "wb") as fh:
        np.save(fh, np.asarray(array), allow_pickle=False)


def atomic_save_npz(path: str | os.PathLike, compress: bool = True, **arrays: np.ndarray) -> None:
    """Save arrays as ``.npz`` atomically (no pickled objects allowed).

    The archive is streamed into the temporary file (never built in memory), which
    replaces ``path`` only once complete.
    """
    for name, arr in arrays.items():
        if np.asarray(arr).dtype == object:
            raise TypeError(f"array {name!r} has dtype object; only plain arrays are stored")
    with atomic_open(path, "wb") as fh:
        (np.savez_compressed if compress else np.savez)(fh, **arrays)


#: How much more an ``.npz`` archive may hold uncompressed than its size on disk
#: (bytes); a "zip bomb" beyond it is refused before anything is decompressed.
MAX_NPZ_EXPANSION = 2**30


def _npz_member_header(fp: IO[bytes]) -> tuple[tuple[int, ...], np.dtype, int]:
    """Read a ``.npy`` header: ``(shape, dtype, header length in bytes)``."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return tuple(int(n) for n in shape), np.dtype(dtype), fp.tell()


def load_npz(path: str | os.PathLike, what: str = "array file") -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` file (never unpickling).

    Before anything is decompressed or allocated, every member's declared sizes are
    checked against the archive (a member may not claim more data than the file
    holds, nor expand beyond :data:`MAX_NPZ_EXPANSION`) and every array header against
    its member (shape x item size = the data stored; no object arrays).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is not a readable ``.npz`` archive
        (:class:`~napari_sima.core.errors.FileFormatError`), or claims too much
        memory (:class:`~napari_sima.core.errors.ResourceLimitError`).
    """
    import struct
    import zipfile
    import zlib

    from .errors import FileFormatError, ResourceLimitError

    name = os.fspath(path)
    try:
        fh, size = open_regular(path, what)
    except FileNotFoundError:
        raise FileNotFoundError(f"the {what} {name!r} does not exist") from None
    try:
        with fh, zipfile.ZipFile(fh) as zf:
            members = zf.infolist()
            expansion = sum(m.file_size for m in members) - size
            if expansion > MAX_NPZ_EXPANSION:
                raise ResourceLimitError(
                    f"the {what} {name!r} would expand by {expansion} bytes when read, more "
                    f"than the {MAX_NPZ_EXPANSION} allowed (a zip bomb?); refusing it"
                )
            out: dict[str, np.ndarray] = {}
            for m in members:
                key = m.filename[:-4] if m.filename.endswith(".npy") else m.filename
                if m.compress_size > size or (
                    m.compress_type == zipfile.ZIP_STORED and m.compress_size != m.file_size
                ):
                    raise FileFormatError(
                        f"the {what} {name!r}: array {key!r} claims more data than the file "
                        f"holds"
                    )
                with zf.open(m) as fp:
                    shape, dtype, header = _npz_member_header(fp)
                if dtype.hasobject:
                    raise FileFormatError(
                        f"the {what} {name!r}: array {key!r} holds Python objects, which are "
                        f"never loaded (they would need unpickling)"
                    )
                count = 1
                for n in shape:
                    count *= n
                if count * dtype.itemsize != m.file_size - header:
                    raise FileFormatError(
                        f"the {what} {name!r}: array {key!r} of shape {shape} and dtype "
                        f"{dtype} needs {count * dtype.itemsize} bytes but {m.file_size - header}"
                        f" are stored"
                    )
                with zf.open(m) as fp:
                    out[key] = np.lib.format.read_array(fp, allow_pickle=False)
            return out
    except (FileFormatError, FileNotFoundError):
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, struct.error,
            NotImplementedError, RuntimeError, OverflowError, KeyError) as err:
        raise FileFormatError(
            f"the {what} {name!r} cannot be read: {type(err).__name__}: {err}"
        ) from None
