"""HDF5 sequences (``Sequence.create('HDF5', path, dim_order, group=None, key=None)``).

Untrusted files
---------------
Opening reads only metadata, and what it declares is checked before anything is
allocated: one frame may not exceed :data:`MAX_FRAME_BYTES` (an HDF5 dataset may
declare 10^12 elements and hold no data: unwritten chunks read as the fill value)
nor span more than :data:`MAX_CHUNKS_PER_FRAME` chunks (reading visits each one).
Datasets whose pixels live in other files (external raw storage) are refused: HDF5
would read whatever file they name.  What h5py raises for odd files (``KeyError``
for broken links, ``TypeError``, ``RuntimeError``...) becomes
:class:`~napari_sima.core.errors.FileFormatError` naming the file; read errors stay
``OSError``.  (libhdf5 itself can crash or loop on files corrupted byte by byte;
no Python code can guard against that.)
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import _indexing as ix
from ._dimorder import check_dim_order, read_mapped, shape_5d
from ._indexing import Region, TimeIndex
from .errors import FileFormatError, ResourceLimitError
from .sequence import Sequence, _register, check_movie_file, path_to_dict, resolve_stored_path

#: Largest size of one frame (all planes, rows, columns and channels), in bytes.
MAX_FRAME_BYTES = 2**30
#: Largest number of chunks one frame may span.
MAX_CHUNKS_PER_FRAME = 2**16


@contextlib.contextmanager
def _h5py_errors(path: str, doing: str) -> Iterator[None]:
    """Turn h5py's odd exception types into :class:`FileFormatError` naming the file."""
    try:
        yield
    except (OSError, ValueError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - KeyError (broken link), TypeError, RuntimeError
        raise FileFormatError(
            f"cannot {doing} {path!r}: the file is damaged or uses HDF5 features that "
            f"cannot be read ({type(err).__name__}: {err})"
        ) from err


def _check_frame(ds: Any, dim_order: str, source: str) -> None:
    """Refuse a dataset whose frames would be too large or span too many chunks."""
    sizes = [int(n) for a, n in zip(dim_order, ds.shape, strict=True) if a != "t"]
    frame_bytes = math.prod(sizes) * ds.dtype.itemsize
    if frame_bytes > MAX_FRAME_BYTES:
        raise ResourceLimitError(
            f"{source}: one frame would need {frame_bytes} bytes, more than the "
            f"{MAX_FRAME_BYTES} accepted; refusing to read it"
        )
    if ds.chunks is not None:
        per_frame = math.prod(
            -(-int(n) // max(int(c), 1))
            for a, n, c in zip(dim_order, ds.shape, ds.chunks, strict=True)
            if a != "t"
        )
        if per_frame > MAX_CHUNKS_PER_FRAME:
            raise ResourceLimitError(
                f"{source}: one frame spans {per_frame} chunks of {ds.chunks}, more than "
                f"the {MAX_CHUNKS_PER_FRAME} accepted; refusing to read it"
            )
    if ds.external:
        raise FileFormatError(
            f"{source} stores its pixels in other files (HDF5 external storage "
            f"{[str(e[0]) for e in ds.external][:3]}), which napari-sima does not read"
        )


def _is_dataset(group: Any, name: str) -> bool:
    """Whether ``group[name]`` is a dataset (False for broken or looping links)."""
    import h5py

    try:
        return isinstance(group.get(name), h5py.Dataset)
    except Exception:  # noqa: BLE001 - KeyError, RuntimeError ("too many links"), ...
        return False


def _open_h5(path: str):
    import h5py

    check_movie_file(path, "HDF5")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise OSError(f"{path!r} is not a readable HDF5 file ({err})") from None


def dimension_labels(dataset: Any) -> str | None:
    """Return the dim order stored as HDF5 dimension labels, or None when incomplete."""
    try:
        labels = [str(d.label).lower() for d in dataset.dims]
    except Exception:  # noqa: BLE001 - h5py raises various errors for odd files
        return None
    if all(len(lbl) == 1 and lbl in "tzyxc" for lbl in labels) and len(set(labels)) == len(labels):
        return "".join(labels)
    return None


@_register
class _HDF5Sequence(Sequence):
    """A sequence stored as one dataset of an HDF5 file."""

    kind = "HDF5"

    def __init__(
        self,
        path: str | os.PathLike,
        dim_order: str | None = None,
        group: str | None = None,
        key: str | None = None,
    ) -> None:
        self._path = os.path.abspath(os.fspath(path))
        self._group = "/" if group is None else str(group)
        self._lock = threading.Lock()
        self._file = None
        self._pid = -1
        f = _open_h5(self._path)
        try:
            with _h5py_errors(self._path, "open the dataset in"):
                self._open(f, dim_order, key)
        finally:
            f.close()

    def _open(self, f: Any, dim_order: str | None, key: str | None) -> None:
        import h5py

        if self._group not in f:
            raise FileFormatError(f"HDF5 file {self._path!r} has no group {self._group!r}")
        grp = f[self._group]
        if not isinstance(grp, h5py.Group):
            raise FileFormatError(f"{self._group!r} in {self._path!r} is not an HDF5 group")
        datasets = [k for k in grp if _is_dataset(grp, k)]
        if key is None:
            if len(datasets) != 1:
                raise FileFormatError(
                    f"HDF5 group {self._group!r} of {self._path!r} holds "
                    f"{len(datasets)} datasets {sorted(datasets)[:20]}; give key= to choose one"
                )
            key = datasets[0]
        key = str(key)
        if not _is_dataset(grp, key):
            try:
                what = "is not a dataset (a group or a broken link)" if key in grp else "is missing"
            except Exception:  # noqa: BLE001 - h5py on odd names and links
                what = "cannot be opened"
            raise FileFormatError(
                f"HDF5 file {self._path!r} has no dataset {key!r} in group {self._group!r} "
                f"(it {what}); its datasets are {sorted(datasets)[:20]}"
            )
        ds = grp[key]
        source = f"{self._path!r} (dataset {key!r}, shape {ds.shape})"
        if ds.shape is None or ds.size == 0:
            raise FileFormatError(f"{source} is empty")
        if ds.dtype.kind not in "biuf" or ds.dtype.shape:
            raise FileFormatError(f"{source} holds {ds.dtype} data, expected numbers")
        if dim_order is None:
            dim_order = dimension_labels(ds)
            if dim_order is None:
                raise FileFormatError(
                    f"{source} has no dimension labels; give dim_order, e.g. 'tyx' or 'tzyxc'"
                )
        self._dim_order = check_dim_order(dim_order, ds.ndim, source)
        _check_frame(ds, self._dim_order, source)
        self._key = key
        self._shape = shape_5d(ds.shape, self._dim_order)
        self._dtype = ds.dtype

    @property
    def path(self) -> str:
        """Absolute path of the HDF5 file."""
        return self._path

    @property
    def dim_order(self) -> str:
        """The stored axis order."""
        return self._dim_order

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._dtype)

    @property
    def files(self) -> list[str]:
        return [self._path]

    def _dataset(self):
        if self._file is None or self._pid != os.getpid():
            self._file = _open_h5(self._path)
            self._pid = os.getpid()
        return self._file[self._group][self._key]

    def close(self) -> None:
        with self._lock:
            if self._file is not None and self._pid == os.getpid():
                self._file.close()
            self._file = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = -1
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _read(self, times: TimeIndex, region: Region) -> np.ndarray:
        with self._lock, _h5py_errors(self._path, "read frames from"):
            ds = self._dataset()
            if isinstance(times, range) or len(times) == 0:
                return read_mapped(ds.__getitem__, self._dim_order, times, region)
            # one slice per run of consecutive frames: h5py's point selection along a
            # long time axis costs seconds (e.g. napari's frames spread over the movie)
            t = np.asarray(times, dtype=np.int64)
            out = np.empty((t.size, *(len(r) for r in region)), dtype=self._dtype)
            for pos, first, length in ix.runs(t):
                out[pos : pos + length] = read_mapped(
                    ds.__getitem__, self._dim_order, range(first, first + length), region
                )
            return out

    def to_dict(self, savedir: str | os.PathLike | None = None) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dim_order": self._dim_order,
            "group": self._group,
            "key": self._key,
            **path_to_dict(self._path, savedir),
        }

    @classmethod
    def _from_dict(cls, data: dict[str, Any], savedir: Path | None) -> Sequence:
        path = resolve_stored_path(data, savedir, "HDF5 movie")
        return cls(path, data["dim_order"], group=data.get("group"), key=data.get("key"))
