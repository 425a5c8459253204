"""napari reader for two-photon movies (TIFF, HDF5) and napari-sima dataset folders.

The reader never loads a movie: every channel becomes an image layer whose data is a
lazy ``(t, z, y, x)`` view (:meth:`napari_sima.core.Sequence.lazy_channel`) that
reads only the frames napari displays.

HDF5 files without dimension labels
-----------------------------------
An HDF5 dataset that does not name its axes (``DIMENSION_LABELS``) is opened with
the axis order :data:`HDF5_DEFAULT_DIM_ORDERS` gives for its number of dimensions
(3 → ``'tyx'``, 4 → ``'tzyx'``, 5 → ``'tzyxc'``), and the user is told so through a
napari notification; the Dataset widget reopens the file with another order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._layers import LayerDataTuple, dataset_layer_data, source_name

#: Axis order assumed for an HDF5 dataset without dimension labels, by its ndim.
HDF5_DEFAULT_DIM_ORDERS: dict[int, str] = {3: "tyx", 4: "tzyx", 5: "tzyxc"}

#: File suffixes read as multi-page TIFF movies.
TIFF_SUFFIXES = (".tif", ".tiff")

#: File suffixes read as HDF5 movies.
HDF5_SUFFIXES = (".h5", ".hdf5")

#: Suffix of dataset folders.
DATASET_SUFFIX = ".sima"


@dataclass
class MovieOptions:
    """How to interpret a movie file.

    Parameters
    ----------
    num_planes, num_channels : int
        TIFF only: planes and channels interleaved in a plain multi-page TIFF
        (channel fastest, then plane, then time).  Ignored for files whose metadata
        (ImageJ, OME, ScanImage) gives the axes, unless they contradict it.
    dim_order : str, optional
        HDF5 only: axis order such as ``'tzyxc'`` or ``'yxt'``; None uses the
        dataset's dimension labels, or :data:`HDF5_DEFAULT_DIM_ORDERS`.
    key : str, optional
        HDF5 only: name of the dataset (default: the only one, or the first 3- to
        5-D numeric dataset).
    group : str, optional
        HDF5 only: group holding the dataset (default ``'/'``).
    """

    num_planes: int = 1
    num_channels: int = 1
    dim_order: str | None = None
    key: str | None = None
    group: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the options as a plain dictionary."""
        return asdict(self)


@dataclass
class OpenedSource:
    """A dataset opened from a movie file or a dataset folder.

    Parameters
    ----------
    dataset : ImagingDataset
        The dataset (in memory for a movie file).
    path : str
        Absolute path of the file or folder.
    name : str
        Layer-name stem (file or folder name without suffix).
    options : MovieOptions
        The options actually used (e.g. the chosen HDF5 key and dim order).
    notices : list of str
        Guesses made while opening that the user should know about.
    """

    dataset: Any
    path: str
    name: str
    options: MovieOptions = field(default_factory=MovieOptions)
    notices: list[str] = field(default_factory=list)

    def layer_data(self) -> list[LayerDataTuple]:
        """Return the lazy image layers of the dataset (see :func:`dataset_layer_data`)."""
        return dataset_layer_data(
            self.dataset, self.name, source=self.path, open_options=self.options.to_dict()
        )


def _hdf5_choose(
    path: str, options: MovieOptions
) -> tuple[MovieOptions, list[str], list[str] | None]:
    """Pick the HDF5 dataset and dim order; return (options, notices, channel names)."""
    import h5py
    import numpy as np

    from .core._hdf5 import _h5py_errors, _is_dataset, dimension_labels

    notices: list[str] = []
    opts = MovieOptions(**options.to_dict())
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise OSError(f"{path!r} is not a readable HDF5 file ({err})") from None
    with f, _h5py_errors(path, "choose the movie in"):
        group = f.get(opts.group or "/")
        if not isinstance(group, h5py.Group):
            raise ValueError(f"HDF5 file {path!r} has no group {opts.group or '/'!r}")
        if opts.key is None:
            datasets = sorted(k for k in group if _is_dataset(group, k))
            movies = [
                k for k in datasets if group[k].dtype.kind in "biuf" and 3 <= group[k].ndim <= 5
            ]
            if len(datasets) != 1:
                if not movies:
                    raise ValueError(
                        f"HDF5 file {path!r} holds no 3- to 5-D numeric dataset in group "
                        f"{opts.group or '/'!r} (datasets: {datasets})"
                    )
                opts.key = movies[0]
                notices.append(
                    f"{os.path.basename(path)}: opened the HDF5 dataset {opts.key!r} out of "
                    f"{datasets}; choose another key in the Dataset widget."
                )
        if opts.key is not None and not _is_dataset(group, opts.key):
            return opts, notices, None  # the core reports the missing key
        ds = (
            group[opts.key]
            if opts.key is not None
            else next(v for v in group.values() if isinstance(v, h5py.Dataset))
        )
        if opts.dim_order is None and dimension_labels(ds) is None:
            guess = HDF5_DEFAULT_DIM_ORDERS.get(ds.ndim)
            if guess is None:
                raise ValueError(
                    f"{path!r} (dataset {ds.name!r}, shape {ds.shape}) has no dimension "
                    f"labels and {ds.ndim} dimensions; give its dim order, e.g. 'tyx'"
                )
            opts.dim_order = guess
            notices.append(
                f"{os.path.basename(path)}: the HDF5 dataset {ds.name!r} of shape "
                f"{tuple(ds.shape)} has no dimension labels, so its axes were read as "
                f"{guess!r}. If that is wrong, change the dim order in the Dataset widget "
                f"and reopen."
            )
        names = None
        try:
            raw = ds.attrs.get("channel_names")
            if raw is not None:
                names = [
                    v.decode() if isinstance(v, bytes) else str(v)
                    for v in np.atleast_1d(raw).tolist()
                ]
        except Exception:  # noqa: BLE001 - an odd attribute only loses the names
            names = None
    return opts, notices, names


def open_source(path: str | os.PathLike, options: MovieOptions | None = None) -> OpenedSource:
    """Open a movie file or a dataset folder as an :class:`ImagingDataset`.

    Parameters
    ----------
    path : path-like
        A ``.tif``/``.tiff``/``.h5``/``.hdf5`` movie or a dataset folder.
    options : MovieOptions, optional
        How to read a movie file (ignored for dataset folders).

    Returns
    -------
    OpenedSource

    Raises
    ------
    ValueError
        If the file is not a movie we can read, or the options do not fit it.
    OSError
        If the file or folder cannot be read (e.g. :class:`FileNotFoundError`).
    """
    from .core import ImagingDataset, Sequence
    from .core.dataset import is_dataset_folder

    p = os.path.abspath(os.fspath(path))
    name = source_name(p)
    options = MovieOptions() if options is None else options
    if os.path.isdir(p):
        if not is_dataset_folder(p):
            raise ValueError(f"{p!r} is a folder but not a dataset folder (it has no dataset.json)")
        ds = ImagingDataset.load(p)
        ds.sequences  # noqa: B018 - open the movies now so errors show here
        return OpenedSource(ds, p, name, MovieOptions())
    if not os.path.exists(p):
        raise FileNotFoundError(f"no such file or folder: {p!r}")
    suffix = Path(p).suffix.lower()
    notices: list[str] = []
    names: list[str] | None = None
    if suffix in TIFF_SUFFIXES:
        seq = Sequence.create(
            "TIFF", p, num_planes=options.num_planes, num_channels=options.num_channels
        )
        used = MovieOptions(num_planes=options.num_planes, num_channels=options.num_channels)
    elif suffix in HDF5_SUFFIXES:
        used, notices, names = _hdf5_choose(p, options)
        seq = Sequence.create("HDF5", p, used.dim_order, group=used.group, key=used.key)
        if used.dim_order is None:
            used.dim_order = getattr(seq, "dim_order", None)
        if used.key is None:
            used.key = seq.to_dict().get("key")
    else:
        raise ValueError(
            f"{p!r}: unsupported file type {suffix!r}; open a .tif, .tiff, .h5 or .hdf5 "
            f"movie or a .sima dataset folder"
        )
    num_channels = seq.shape[4]
    if names is not None and (len(names) != num_channels or len(set(names)) != len(names)):
        names = None
    ds = ImagingDataset([seq], None, channel_names=names)
    return OpenedSource(ds, p, name, used, notices)


def read_path(path: str | os.PathLike, options: MovieOptions | None = None) -> list[LayerDataTuple]:
    """Open ``path`` and return its lazy image layers, notifying about guesses.

    Parameters
    ----------
    path : path-like
        Movie file or dataset folder.
    options : MovieOptions, optional
        How to read a movie file.

    Returns
    -------
    list of (data, kwargs, 'image')
    """
    return _layers_and_notify(open_source(path, options))


def _layers_and_notify(opened: OpenedSource) -> list[LayerDataTuple]:
    layers = opened.layer_data()
    if opened.notices:
        from napari.utils.notifications import show_info

        for notice in opened.notices:
            show_info(notice)
    return layers


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerDataTuple]] | None:
    """Return a reader function for ``path``, or None if we cannot read it.

    Parameters
    ----------
    path : str or list of str
        A movie file (``.tif``, ``.tiff``, ``.h5``, ``.hdf5``), a dataset folder, or
        a list of them.

    Returns
    -------
    callable or None
        A function returning ``(data, kwargs, 'image')`` layer tuples.  None for a
        folder that is not a dataset folder, a file of another type, or a file
        that is not a readable movie (e.g. a text file named ``.tif``).

    Notes
    -----
    Movie files are opened here (only their headers are read) so that napari can
    fall back to another reader for files we cannot read; dataset folders are
    opened by the returned function so that a broken dataset reports why.
    """
    from .core.dataset import is_dataset_folder

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        return None
    prepared: list[OpenedSource | str] = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            if not is_dataset_folder(p):
                return None
            prepared.append(p)
            continue
        if Path(p).suffix.lower() not in TIFF_SUFFIXES + HDF5_SUFFIXES:
            return None
        try:
            prepared.append(open_source(p))
        except (ValueError, OSError, KeyError):
            return None

    def reader(_path: Any) -> list[LayerDataTuple]:
        layers: list[LayerDataTuple] = []
        for item in prepared:
            opened = open_source(item) if isinstance(item, str) else item
            layers.extend(_layers_and_notify(opened))
        return layers

    return reader
