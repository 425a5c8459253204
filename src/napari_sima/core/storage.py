"""Crash-safe writing of dataset files (temporary file + ``os.replace``).

Every file of a dataset folder is written next to its final name, flushed and
fsync'ed, then renamed over the old one, so a crash leaves either the old or the new
file, never a truncated one.  No pickles: JSON for metadata, ``.npy``/``.npz`` for
arrays (loaded with ``allow_pickle=False``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


def _fsync_dir(path: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(os.fspath(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON file with a clear error naming the file when it is broken.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not valid JSON.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"the {what} {os.fspath(path)!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"the {what} {os.fspath(path)!r} is not valid JSON: {err}") from None


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save one array as ``.npy`` atomically (no pickled objects allowed)."""
    with atomic_open(path, "wb") as fh:
        np.save(fh, np.asarray(array), allow_pickle=False)


def atomic_save_npz(path: str | os.PathLike, compress: bool = True, **arrays: np.ndarray) -> None:
    """Save arrays as ``.npz`` atomically (no pickled objects allowed)."""
    buf = io.BytesIO()
    for name, arr in arrays.items():
        if np.asarray(arr).dtype == object:
            raise TypeError(f"array {name!r} has dtype object; only plain arrays are stored")
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_npz(path: str | os.PathLike, what: str = "array file") -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` file (never unpickling).

    Raises
    ------
    ValueError
        If the file is not a readable ``.npz`` archive.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"the {what} {os.fspath(path)!r} does not exist") from None
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"the {what} {os.fspath(path)!r} cannot be read: {err}") from None
