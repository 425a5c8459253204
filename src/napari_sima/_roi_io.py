"""napari reader and writer for ImageJ ROI files (``.roi`` and RoiSet ``.zip``).

The files are read and written by :mod:`napari_sima.core.imagej` (through
``roifile``); this module only converts between ROIs and Shapes layers
(:mod:`napari_sima._roi_convert`) and turns the core's warnings (skipped ROIs) into
napari notifications.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ._layers import METADATA_KEY, LayerDataTuple, source_name
from ._roi_convert import rois_to_shapes, shapes_to_rois

#: Suffixes of ImageJ ROI files this reader opens.
ROI_SUFFIXES = (".roi", ".zip")

#: First bytes of an ImageJ ``.roi`` file.
ROI_MAGIC = b"Iout"


def _is_imagej_roi_file(path: str) -> bool:
    """Whether ``path`` is a ``.roi`` file or a zip holding at least one ``.roi``."""
    suffix = Path(path).suffix.lower()
    if not os.path.isfile(path):
        return False
    try:
        if suffix == ".roi":
            with open(path, "rb") as fh:
                return fh.read(4) == ROI_MAGIC
        if suffix == ".zip":
            if not zipfile.is_zipfile(path):
                return False
            from .core import imagej

            claimed = imagej._zip_directory(Path(path))  # before zipfile parses it all
            if claimed is not None and (
                claimed[0] > imagej.MAX_MEMBERS or claimed[1] > imagej.MAX_DIRECTORY_BYTES
            ):
                return False
            with zipfile.ZipFile(path) as zf:
                return any(n.lower().endswith(".roi") for n in zf.namelist())
    except Exception:  # noqa: BLE001 - BadZipFile, NotImplementedError, UnicodeDecodeError...
        return False  # not a RoiSet we can read: let other readers try
    return False


@contextmanager
def _notify_warnings(prefix: str) -> Iterator[None]:
    """Show the user warnings raised inside the block as napari warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    from napari.utils.notifications import show_warning

    for w in caught:
        if issubclass(w.category, UserWarning):
            show_warning(f"{prefix}: {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def read_roi_file(path: str | os.PathLike) -> LayerDataTuple:
    """Read an ImageJ ROI file as a Shapes layer data tuple.

    Parameters
    ----------
    path : path-like
        A ``.roi`` file or a RoiSet ``.zip``.

    Returns
    -------
    (data, kwargs, 'shapes')
        ``kwargs`` as :func:`~napari_sima._roi_convert.rois_to_shapes` builds them,
        plus ``name`` (the file stem); ``metadata['napari_sima']['source']`` is the
        absolute path.  ROIs the core skips (points, lines) are reported as napari
        warnings.
    """
    from .core.imagej import read_imagej_rois

    p = os.path.abspath(os.fspath(path))
    with _notify_warnings(os.path.basename(p)):
        rois = read_imagej_rois(p)
        kwargs = rois_to_shapes(rois)
        if not kwargs["data"]:
            warnings.warn("the file holds no ROI with an area", UserWarning, stacklevel=2)
    data = kwargs.pop("data")
    kwargs["name"] = source_name(p)
    kwargs["metadata"][METADATA_KEY]["source"] = p
    return data, kwargs, "shapes"


def get_roi_reader(path: str | list[str]) -> Callable[[Any], list[LayerDataTuple]] | None:
    """Return a reader for ImageJ ROI files, or None if ``path`` is not one.

    Parameters
    ----------
    path : str or list of str
        ``.roi`` files and/or RoiSet ``.zip`` files.

    Returns
    -------
    callable or None
        A function returning one ``(data, kwargs, 'shapes')`` tuple per file.  None
        when a path is not a ``.roi`` file (by its magic bytes) or a zip holding
        ``.roi`` members, so that other readers can try it.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        return None
    paths = [os.fspath(p) for p in paths]
    if not all(_is_imagej_roi_file(p) for p in paths):
        return None

    def reader(_path: Any) -> list[LayerDataTuple]:
        return [read_roi_file(p) for p in paths]

    return reader


def write_shapes_roiset(path: str, data: Any, attributes: dict) -> list[str]:
    """Write a Shapes layer as an ImageJ RoiSet ``.zip`` (npe2 single-layer writer).

    Parameters
    ----------
    path : str
        Destination; ``.zip`` is appended when missing.
    data : list of arrays
        The layer's vertices.
    attributes : dict
        The layer's state (``shape_type``, ``features``, ``metadata``, ``ndim``, ...).

    Returns
    -------
    list of str
        The written path.

    Raises
    ------
    ValueError
        If no shape has an area (lines and paths are skipped with a warning).

    Notes
    -----
    Shapes become ROIs with :func:`~napari_sima._roi_convert.shapes_to_rois` (shapes
    sharing a ``roi`` feature form one composite ROI; ROI names come from the
    ``label`` feature) and are written by
    :func:`~napari_sima.core.imagej.write_imagej_rois`.  Mask ROIs with weights
    (segmentation output) are saved as their > 0 region, the outline the layer shows;
    ImageJ ROIs cannot hold weights.
    """
    from .core.imagej import write_imagej_rois

    p = os.fspath(path)
    if not p.lower().endswith(".zip"):
        p += ".zip"
    kwargs = {
        "data": data,
        "shape_type": attributes.get("shape_type", "polygon"),
        "features": attributes.get("features"),
        "metadata": attributes.get("metadata"),
        "ndim": attributes.get("ndim"),
    }
    name = attributes.get("name") or os.path.basename(p)
    with _notify_warnings(str(name)):
        rois = shapes_to_rois(kwargs)
    if not rois:
        raise ValueError(
            f"layer {name!r} has no shape with an area to save as ImageJ ROIs "
            f"(lines and paths cannot be saved)"
        )
    for roi in rois:
        if roi.kind == "mask":
            planes = roi.todict()["mask"] or []
            if any(m.nnz and not np.all(m.data == 1) for m in planes):
                roi.mask = [m > 0 for m in planes]  # what the layer shows
    with _notify_warnings(os.path.basename(p)):
        write_imagej_rois(p, rois)
    return [p]
