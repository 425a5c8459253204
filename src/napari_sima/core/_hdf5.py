"""HDF5 sequences (``Sequence.create('HDF5', path, dim_order, group=None, key=None)``)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ._dimorder import check_dim_order, read_mapped, shape_5d
from ._indexing import Region, TimeIndex
from .sequence import Sequence, _register, check_movie_file, path_to_dict, resolve_stored_path


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
            if self._group not in f:
                raise ValueError(f"HDF5 file {self._path!r} has no group {self._group!r}")
            grp = f[self._group]
            import h5py

            if not isinstance(grp, h5py.Group):
                raise ValueError(f"{self._group!r} in {self._path!r} is not an HDF5 group")
            datasets = [k for k, v in grp.items() if isinstance(v, h5py.Dataset)]
            if key is None:
                if len(datasets) != 1:
                    raise ValueError(
                        f"HDF5 group {self._group!r} of {self._path!r} holds "
                        f"{len(datasets)} datasets {sorted(datasets)}; give key= to choose one"
                    )
                key = datasets[0]
            if key not in grp:
                raise ValueError(
                    f"HDF5 file {self._path!r} has no dataset {key!r} in group "
                    f"{self._group!r}; it has {sorted(datasets)}"
                )
            ds = grp[key]
            if not isinstance(ds, h5py.Dataset):
                raise ValueError(f"{key!r} in {self._path!r} is a group, not a dataset")
            source = f"{self._path!r} (dataset {key!r}, shape {ds.shape})"
            if ds.dtype.kind not in "biuf":
                raise ValueError(f"{source} holds {ds.dtype} data, expected numbers")
            if ds.size == 0:
                raise ValueError(f"{source} is empty")
            if dim_order is None:
                dim_order = dimension_labels(ds)
                if dim_order is None:
                    raise ValueError(
                        f"{source} has no dimension labels; give dim_order, e.g. 'tyx' or 'tzyxc'"
                    )
            self._dim_order = check_dim_order(dim_order, ds.ndim, source)
            self._key = str(key)
            self._shape = shape_5d(ds.shape, self._dim_order)
            self._dtype = ds.dtype
        finally:
            f.close()

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
        with self._lock:
            ds = self._dataset()
            return read_mapped(ds.__getitem__, self._dim_order, times, region)

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
