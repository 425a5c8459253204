"""A folder of labelled, timestamped sets: ``index.json`` plus one ``set_<hex>.npz`` each.

Shared by the ROI store and the signal store.  Saving writes the new set file first
and then replaces ``index.json`` atomically, so a crash at any moment leaves either
the old or the new set, never a mix; the replaced file is removed afterwards.
Writers hold the dataset's lock (:mod:`napari_sima.core.locking`); readers do not
need it.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import storage
from .errors import FileFormatError
from .errors import brief as _brief
from .locking import locked_write

INDEX_FILE = "index.json"


_SET_FILE_RE = re.compile(r"^set_[0-9a-f]{32}\.npz$")


def _file_names(entry: dict[str, Any] | None) -> set[str]:
    """Return the set file an index entry names (empty for none)."""
    if not entry or not entry.get("file"):
        return set()
    return {os.path.basename(str(entry["file"]))}


def most_recent_label(timestamps: dict[str, str]) -> str | None:
    """Return the label with the latest timestamp (ties: the one saved last)."""
    best = None
    best_ts = ""
    for label, ts in timestamps.items():
        if best is None or (ts or "") >= best_ts:
            best, best_ts = label, ts or ""
    return best


class SetStore:
    """Labelled sets in one folder.

    Parameters
    ----------
    folder : path-like
        The store folder (created on the first save).
    format_name : str
        Value of the index's ``format`` field.
    version : int
        Highest format version this code reads and the one it writes.
    what : str
        What a set is, for messages (``'ROI set'``, ``'signal set'``).
    """

    def __init__(self, folder: str | os.PathLike, format_name: str, version: int, what: str) -> None:
        self.folder = Path(os.path.abspath(os.fspath(folder)))
        self.format_name = format_name
        self.version = version
        self.what = what

    @property
    def index_path(self) -> Path:
        """Path of ``index.json``."""
        return self.folder / INDEX_FILE

    def exists(self) -> bool:
        """Whether the store has an index (holds or held sets)."""
        return self.index_path.exists()

    def read_index(self) -> dict[str, Any]:
        """Return the index (an empty one when there is none).

        Raises
        ------
        ValueError
            If ``index.json`` is not valid JSON, of another format or a newer version.
        """
        path = self.index_path
        if not path.exists():
            return {"format": self.format_name, "format_version": self.version, "sets": {}}
        index = storage.read_json(path, f"{self.what} index")
        if not isinstance(index, dict) or index.get("format") != self.format_name:
            raise FileFormatError(f"{str(path)!r} is not a napari-sima {self.what} index")
        version = index.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or not (
            1 <= version <= self.version
        ):
            raise FileFormatError(
                f"{str(path)!r} has format version {_brief(version)}; this napari-sima reads "
                f"1 to {self.version}"
            )
        sets = index.get("sets")
        if not isinstance(sets, dict):
            raise FileFormatError(f"{str(path)!r} lacks its 'sets'")
        for label, entry in sets.items():
            where = f"{str(path)!r}: the {self.what} {_brief(label)}"
            if not isinstance(entry, dict):
                raise FileFormatError(f"{where} is described by {_brief(entry)}, not a mapping")
            name = entry.get("file")
            if not isinstance(name, str) or not _SET_FILE_RE.match(name):
                # only set files of this folder: no other file is ever read or deleted
                raise FileFormatError(
                    f"{where} names the file {_brief(name)}; expected 'set_<hex>.npz' in "
                    f"the same folder"
                )
            stamp = entry.get("timestamp")
            if stamp is not None and not isinstance(stamp, str):
                raise FileFormatError(f"{where} has the timestamp {_brief(stamp)}, not text")
            for key in ("provenance", "derived"):
                if entry.get(key) is not None and not isinstance(entry[key], dict):
                    raise FileFormatError(f"{where} has {key} {_brief(entry[key])}, not a "
                                          f"mapping")
        return index

    def timestamps(self) -> dict[str, str]:
        """``{label: timestamp}`` of the stored sets."""
        return {k: v.get("timestamp") or "" for k, v in self.read_index()["sets"].items()}

    def info(self, label: str | None = None) -> tuple[str, dict[str, Any]]:
        """Return ``(label, index entry)`` of a set (default: the most recent).

        Raises
        ------
        KeyError
            If there is no such set; the message lists the stored labels.
        """
        sets = self.read_index()["sets"]
        if label is None:
            label = most_recent_label({k: v.get("timestamp") or "" for k, v in sets.items()})
            if label is None:
                raise KeyError(f"no {self.what}s stored in {str(self.folder)!r}")
        if label not in sets:
            raise KeyError(
                f"no {self.what} {label!r} in {str(self.folder)!r}; stored sets: {sorted(sets)}"
            )
        return label, dict(sets[label])

    def set_path(self, entry: dict[str, Any]) -> Path:
        """Path of a set's file, refusing names that could leave the folder."""
        name = entry.get("file")
        if not isinstance(name, str) or not _SET_FILE_RE.match(name):
            raise FileFormatError(
                f"the {self.what} index in {str(self.folder)!r} names a bad file {_brief(name)}"
            )
        return self.folder / name

    def load_arrays(self, label: str | None = None) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
        """Return ``(label, index entry, arrays)`` of a set (default: the most recent)."""
        for attempt in range(5):
            found, entry = self.info(label)
            path = self.set_path(entry)
            try:
                return found, entry, storage.load_npz(path, f"{self.what} file")
            except FileNotFoundError:
                # A writer replaced the set between our reading the index and the file
                # (readers take no lock): read the new index and try again.
                if attempt == 4 or self.info(found)[1].get("file") == entry.get("file"):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def load_all(self, load: Callable[[str], Any]) -> dict[str, Any]:
        """Return ``{label: load(label)}`` for every stored set.

        Readers take no lock: a set that another process deletes after the index was
        read is left out instead of failing the whole read.
        """
        out: dict[str, Any] = {}
        for label in self.read_index()["sets"]:
            try:
                out[label] = load(label)
            except KeyError:
                if label in self.read_index()["sets"]:
                    raise  # not a deletion: a real error
        return out

    def lock(self, action: str, timeout: float | None = None) -> Any:
        """Hold the dataset's write lock for ``action`` (a context manager).

        Writers of the store (and read-modify-write updates such as
        :func:`~napari_sima.core.signal_store.update_signal_set`) run inside it; see
        :func:`napari_sima.core.locking.locked_write`.
        """
        return locked_write(self.folder, action, timeout=timeout)

    def write(
        self, arrays: dict[str, np.ndarray], label: str, entry: dict[str, Any], compress: bool = True
    ) -> None:
        """Store ``arrays`` as set ``label`` (replacing it), with index fields ``entry``.

        Under the dataset's write lock: the new set file is written (temporary file,
        fsync, rename), then ``index.json`` is replaced the same way, then the
        replaced set file is deleted -- a crash at any moment leaves the old or the
        new set.  Files left by writers that were killed are removed.

        Raises
        ------
        napari_sima.core.errors.DatasetInUseError
            If another process is writing to the dataset.
        PermissionError
            If the folder is read-only (nothing was changed).
        OSError
            If the disk is full (nothing was changed).
        ValueError
            If ``label`` is empty or the index is broken.
        """
        if not label:
            raise ValueError(f"a {self.what} label cannot be empty")
        with self.lock(f"saving the {self.what} {label!r}"):
            if not self.folder.is_dir():
                self.folder.mkdir(parents=True, exist_ok=True)
                storage.fsync_dir(self.folder.parent)
            index = self.read_index()  # a broken index stops us before anything is written
            name = f"set_{uuid.uuid4().hex}.npz"
            storage.atomic_save_npz(self.folder / name, compress=compress, **arrays)
            old = index["sets"].pop(label, None)
            index["sets"][label] = {**entry, "file": name}
            try:
                storage.atomic_write_json(self.index_path, index)
            except BaseException:
                if name not in self._referenced():
                    (self.folder / name).unlink(missing_ok=True)
                raise
            self._remove_unreferenced(index, _file_names(old))

    def delete(self, label: str) -> bool:
        """Remove a set; returns False (silently, as SIMA) when there is no such set.

        Under the dataset's write lock, as :meth:`write`.
        """
        if not self.exists() or label not in self.read_index()["sets"]:
            return False
        with self.lock(f"removing the {self.what} {label!r}"):
            index = self.read_index()
            old = index["sets"].pop(label, None)
            if old is None:
                return False
            storage.atomic_write_json(self.index_path, index)
            self._remove_unreferenced(index, _file_names(old))
        return True

    def _referenced(self) -> set[str]:
        try:
            sets = self.read_index()["sets"]
        except (OSError, ValueError):
            return set()
        return {os.path.basename(str(e.get("file", ""))) for e in sets.values()}

    def _remove_unreferenced(self, index: dict[str, Any], replaced: set[str]) -> None:
        """Delete the set files the index no longer names, and orphan temporary files.

        Called under the lock, after the index was written: the set file this write
        replaced goes at once; files left by writers killed before they replaced the
        index go once older than :data:`~napari_sima.core.storage.ORPHAN_AGE` (a
        writer on a computer whose locks do not reach ours could be writing them).
        Best effort: a file that cannot be deleted stays (it is never read).
        """
        keep = {os.path.basename(str(e.get("file", ""))) for e in index["sets"].values()}
        now = time.time()
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return
        for entry in entries:
            if not _SET_FILE_RE.match(entry.name) or entry.name in keep:
                continue
            with contextlib.suppress(OSError):
                if entry.name in replaced or now - entry.stat().st_mtime >= storage.ORPHAN_AGE:
                    os.unlink(entry.path)
        storage.remove_orphan_temps(self.folder)
