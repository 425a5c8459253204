"""A folder of labelled, timestamped sets: ``index.json`` plus one ``set_<hex>.npz`` each.

Shared by the ROI store and the signal store.  Saving writes the new set file first
and then replaces ``index.json`` atomically, so a crash at any moment leaves either
the old or the new set, never a mix; the replaced file is removed afterwards.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from . import storage

INDEX_FILE = "index.json"


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
            raise ValueError(f"{str(path)!r} is not a napari-sima {self.what} index")
        version = index.get("format_version")
        if not isinstance(version, int) or version > self.version:
            raise ValueError(
                f"{str(path)!r} has format version {version!r}; this napari-sima reads "
                f"up to {self.version}"
            )
        if not isinstance(index.get("sets"), dict):
            raise ValueError(f"{str(path)!r} lacks its 'sets'")
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
        name = os.path.basename(str(entry.get("file", "")))
        if not name.startswith("set_") or not name.endswith(".npz"):
            raise ValueError(f"the {self.what} index in {str(self.folder)!r} names a bad file {name!r}")
        return self.folder / name

    def load_arrays(self, label: str | None = None) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
        """Return ``(label, index entry, arrays)`` of a set (default: the most recent)."""
        label, entry = self.info(label)
        path = self.set_path(entry)
        return label, entry, storage.load_npz(path, f"{self.what} file")

    def write(
        self, arrays: dict[str, np.ndarray], label: str, entry: dict[str, Any], compress: bool = True
    ) -> None:
        """Store ``arrays`` as set ``label`` (replacing it), with index fields ``entry``."""
        if not label:
            raise ValueError(f"a {self.what} label cannot be empty")
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"set_{uuid.uuid4().hex}.npz"
        storage.atomic_save_npz(self.folder / name, compress=compress, **arrays)
        index = self.read_index()
        old = index["sets"].pop(label, None)
        index["sets"][label] = {**entry, "file": name}
        try:
            storage.atomic_write_json(self.index_path, index)
        except BaseException:
            (self.folder / name).unlink(missing_ok=True)
            raise
        if old and old.get("file") and os.path.basename(old["file"]) != name:
            (self.folder / os.path.basename(old["file"])).unlink(missing_ok=True)

    def delete(self, label: str) -> bool:
        """Remove a set; returns False (silently, as SIMA) when there is no such set."""
        if not self.exists():
            return False
        index = self.read_index()
        entry = index["sets"].pop(label, None)
        if entry is None:
            return False
        storage.atomic_write_json(self.index_path, index)
        if entry.get("file"):
            (self.folder / os.path.basename(entry["file"])).unlink(missing_ok=True)
        return True
