"""Labelled, timestamped ROI sets on disk (our format), and legacy ``rois.pkl``.

An ROI store is a folder (``NAME.sima/rois/`` inside a dataset) holding

``index.json``
    ``{"format", "format_version", "sets": {label: {"timestamp", "file", "n_rois"}}}``
``set_<hex>.npz``
    one file per set: a JSON string with each ROI's properties (label, id, tags,
    im_shape, kind, mask dtype) and plain arrays with the polygon vertices and the
    mask pixels (COO: roi, z, y, x, value).

A set is saved by writing a new ``set_<hex>.npz`` and then replacing ``index.json``
atomically, so a crash at any point leaves either the old or the new set.  Saving and
deleting hold the dataset's write lock (:mod:`napari_sima.core.locking`): a second
writer waits, then gets a ``DatasetInUseError``.  Nothing is pickled; arrays are loaded
with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from ._setstore import SetStore, most_recent_label
from .roi import ROI, ROIList

STORE_FORMAT = "napari-sima roi sets"
STORE_VERSION = 1
ROIS_FOLDER = "rois"
LEGACY_FILE = "rois.pkl"


def now_timestamp() -> str:
    """The current local time as ``'%Y-%m-%d-%Hh%Mm%Ss'`` (SIMA's format)."""
    import time

    return time.strftime("%Y-%m-%d-%Hh%Mm%Ss")


def store_dir(path: str | os.PathLike) -> Path:
    """Return the ROI store folder for a dataset folder or a store folder.

    A folder named ``*.sima`` (or holding ``dataset.json`` / ``dataset.pkl``) is a
    dataset: its store is the ``rois`` sub-folder.  Any other path is the store itself.
    """
    p = Path(os.path.abspath(os.fspath(path)))
    if p.suffix == ".sima" or (p / "dataset.json").exists() or (p / "dataset.pkl").exists():
        return p / ROIS_FOLDER
    return p


def _store(path: str | os.PathLike) -> SetStore:
    return SetStore(store_dir(path), STORE_FORMAT, STORE_VERSION, "ROI set")


# ---------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------
def _encode(rois: ROIList, timestamp: str) -> dict[str, np.ndarray]:
    props = []
    verts: list[np.ndarray] = []
    lengths: list[int] = []
    m_roi: list[np.ndarray] = []
    m_z: list[np.ndarray] = []
    m_y: list[np.ndarray] = []
    m_x: list[np.ndarray] = []
    m_v: list[np.ndarray] = []
    for k, roi in enumerate(rois):
        if not isinstance(roi, ROI):
            raise TypeError(f"ROI set item {k} is a {type(roi).__name__}, not an ROI")
        entry: dict[str, Any] = {
            "label": roi.label,
            "id": roi.id,
            "tags": sorted(roi.tags),
            "im_shape": None if roi._im_shape is None else list(roi._im_shape),
            "kind": roi.kind,
        }
        if roi.kind == "polygons":
            polys = roi.polygon_arrays
            entry["n_polygons"] = len(polys)
            verts.extend(polys)
            lengths.extend(len(p) for p in polys)
        else:
            planes = roi._mask
            assert planes is not None
            entry["mask_dtype"] = str(planes[0].dtype)
            entry["mask_planes"] = [list(p.shape) for p in planes]
            for z, plane in enumerate(planes):
                coo = plane.tocoo()
                m_roi.append(np.full(coo.nnz, k, dtype=np.int64))
                m_z.append(np.full(coo.nnz, z, dtype=np.int64))
                m_y.append(coo.row.astype(np.int64))
                m_x.append(coo.col.astype(np.int64))
                m_v.append(coo.data.astype(np.float64))
        props.append(entry)

    def cat(parts: list[np.ndarray], dtype: Any, shape: tuple[int, ...] = (0,)) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype=dtype)

    meta = {"timestamp": timestamp, "rois": props}
    return {
        "properties": np.asarray(json.dumps(meta)),
        "poly_vertices": cat(verts, np.float64, (0, 3)),
        "poly_lengths": np.asarray(lengths, dtype=np.int64),
        "mask_roi": cat(m_roi, np.int64),
        "mask_z": cat(m_z, np.int64),
        "mask_y": cat(m_y, np.int64),
        "mask_x": cat(m_x, np.int64),
        "mask_value": cat(m_v, np.float64),
    }


#: Most mask rows (summed over the planes of all ROIs of a set) a set may declare:
#: each costs an index entry in memory, so absurd plane shapes are refused up front.
MAX_MASK_ROWS = 2**27

#: Mask dtypes a stored set may use.
_MASK_KINDS = "biuf"


def _decode(arrays: dict[str, np.ndarray], source: str) -> ROIList:
    """Rebuild an ROI set from :func:`_encode` arrays, checking every field first.

    Raises
    ------
    napari_sima.core.errors.FileFormatError
        If arrays are missing, of the wrong kind or inconsistent (names ``source``).
    """
    from .errors import FileFormatError, ResourceLimitError
    from .errors import brief as _brief

    def broken(why: str) -> FileFormatError:
        return FileFormatError(f"the ROI set file {source!r} is incomplete or broken: {why}")

    names = ("properties", "poly_vertices", "poly_lengths", "mask_roi", "mask_z", "mask_y",
             "mask_x", "mask_value")
    missing = [k for k in names if k not in arrays]
    if missing:
        raise broken(f"it lacks the arrays {missing}")
    props_text = arrays["properties"]
    if props_text.ndim != 0 or props_text.dtype.kind != "U":
        raise broken(f"'properties' should be one text, got {props_text.dtype} {props_text.shape}")
    try:
        meta = json.loads(str(props_text))
    except RecursionError:
        raise broken("its properties are nested too deeply") from None
    except ValueError as err:
        raise broken(f"its properties are not JSON ({err})") from None
    props = meta.get("rois") if isinstance(meta, dict) else None
    if not isinstance(props, list) or not all(isinstance(p, dict) for p in props):
        raise broken("its properties hold no list of ROIs")
    stamp = meta.get("timestamp")
    if stamp is not None and not isinstance(stamp, str):
        raise broken(f"the timestamp {_brief(stamp)} is not text")
    verts, lengths = arrays["poly_vertices"], arrays["poly_lengths"]
    m_roi, m_z, m_y, m_x, m_v = (
        arrays[k] for k in ("mask_roi", "mask_z", "mask_y", "mask_x", "mask_value")
    )
    if verts.ndim != 2 or verts.shape[1] != 3 or verts.dtype.kind not in "iuf":
        raise broken(f"polygon vertices of dtype {verts.dtype} and shape {verts.shape}, "
                     f"expected (n, 3) numbers")
    if lengths.ndim != 1 or lengths.dtype.kind not in "iu" or (
        lengths.size and (lengths.min() < 0 or lengths.max() > len(verts))
    ) or int(lengths.sum(dtype=np.int64)) != len(verts):
        raise broken("inconsistent polygon arrays")
    ints = (m_roi, m_z, m_y, m_x)
    if any(a.ndim != 1 or a.dtype.kind not in "iu" for a in ints) or m_v.ndim != 1 or (
        m_v.dtype.kind not in "biuf"
    ) or len({a.size for a in (*ints, m_v)}) != 1:
        raise broken("inconsistent mask arrays (1-D integer coordinates and numeric "
                     "values of one length expected)")
    rows = 0
    for k, entry in enumerate(props):
        if entry.get("kind") == "polygons":
            continue
        planes = entry.get("mask_planes")
        if not isinstance(planes, list) or not all(
            isinstance(p, list) and len(p) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in p)
            for p in planes
        ):
            raise broken(f"ROI {k} has mask planes {_brief(planes)}, expected [rows, columns] "
                         f"pairs of positive integers")
        rows += sum(p[0] for p in planes)
        if rows > MAX_MASK_ROWS:
            raise ResourceLimitError(
                f"the ROI set file {source!r} declares masks of more than {MAX_MASK_ROWS} rows "
                f"in all; refusing it"
            )
        dtype = entry.get("mask_dtype")
        try:
            ok = np.dtype(dtype).kind in _MASK_KINDS and np.dtype(dtype).itemsize <= 16
        except (TypeError, ValueError):
            ok = False
        if not isinstance(dtype, str) or not ok:
            raise broken(f"ROI {k} has the mask dtype {_brief(dtype)}, expected a number type")
    order = np.argsort(m_roi, kind="stable")
    bounds = np.searchsorted(m_roi[order], np.arange(len(props) + 1))
    rois = []
    start = 0
    poly_index = 0
    for k, entry in enumerate(props):
        kwargs = {
            "label": entry.get("label"),
            "id": entry.get("id"),
            "tags": entry.get("tags") or (),
            "im_shape": entry.get("im_shape"),
        }
        try:
            for key in ("label", "id"):
                if kwargs[key] is not None and not isinstance(kwargs[key], str):
                    raise ValueError(f"its {key} {_brief(kwargs[key])} is not text")
            if not isinstance(kwargs["tags"], (list, tuple)) or not all(
                isinstance(t, str) for t in kwargs["tags"]
            ):
                raise ValueError(f"its tags {_brief(kwargs['tags'])} are not a list of text")
            if entry.get("kind") == "polygons":
                n = entry["n_polygons"]
                if not isinstance(n, int) or isinstance(n, bool) or not (
                    0 <= n <= len(lengths) - poly_index
                ):
                    raise ValueError(f"n_polygons {_brief(n)} does not fit the stored polygons")
                polys = []
                for length in lengths[poly_index : poly_index + n]:
                    polys.append(verts[start : start + int(length)])
                    start += int(length)
                poly_index += n
                rois.append(ROI._from_stored_polygons(polys, **kwargs))
            else:
                sel = order[bounds[k] : bounds[k + 1]]
                dtype = np.dtype(entry["mask_dtype"])
                planes = []
                for z, shape in enumerate(entry["mask_planes"]):
                    here = sel[m_z[sel] == z]
                    planes.append(
                        sparse.csr_matrix(
                            (m_v[here].astype(dtype), (m_y[here], m_x[here])),
                            shape=tuple(int(s) for s in shape),
                            dtype=dtype,
                        )
                    )
                rois.append(ROI(mask=planes, **kwargs))
        except (KeyError, ValueError, TypeError, IndexError, OverflowError) as err:
            raise FileFormatError(
                f"ROI {k} ({str(entry.get('label'))[:80]!r}) in {source!r} cannot be rebuilt: "
                f"{str(err)[:300]}"
            ) from None
    return ROIList(rois, timestamp=stamp)


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------
def roi_set_timestamps(path: str | os.PathLike) -> dict[str, str]:
    """Return ``{label: timestamp}`` of the sets in a store (empty when none)."""
    return _store(path).timestamps()


def load_roi_set(path: str | os.PathLike, label: str | None = None) -> ROIList:
    """Read one ROI set from a dataset folder or store folder.

    Parameters
    ----------
    path : path-like
        Dataset folder (``*.sima``) or store folder.
    label : str, optional
        The set to read (default: the most recent).

    Returns
    -------
    ROIList

    Raises
    ------
    KeyError
        If there is no such set (the message lists the labels there are).
    ValueError
        If the files are broken.
    """
    store = _store(path)
    label, entry, arrays = store.load_arrays(label)
    rois = _decode(arrays, str(store.set_path(entry)))
    rois.timestamp = entry.get("timestamp", rois.timestamp)
    return rois


def load_roi_sets(path: str | os.PathLike) -> dict[str, ROIList]:
    """Read every ROI set of a dataset folder or store folder, ``{label: ROIList}``."""
    store = _store(path)
    if not store.exists():
        return {}
    return store.load_all(lambda label: load_roi_set(store.folder, label))


def save_roi_set(
    path: str | os.PathLike,
    rois: ROIList | list[ROI],
    label: str | None = None,
    provenance: dict[str, Any] | None = None,
) -> str:
    """Add (or replace) an ROI set in a store, atomically.

    Parameters
    ----------
    path : path-like
        Dataset folder or store folder (created when missing).
    rois : ROIList or list of ROI
        The ROIs.
    label : str, optional
        Name of the set (default: the current timestamp).
    provenance : dict, optional
        What made the set (:func:`napari_sima.core.provenance.make_provenance`),
        kept in the index next to it; default: a record of a set saved by hand
        (step ``'add_ROIs'``).

    Returns
    -------
    str
        The label used.
    """
    from .provenance import edit_provenance

    timestamp = now_timestamp()
    label = timestamp if label is None else str(label)
    arrays = _encode(ROIList(list(rois)), timestamp)
    record = dict(provenance) if provenance else edit_provenance("add_ROIs")
    _store(path).write(
        arrays, label, {"timestamp": timestamp, "n_rois": len(rois), "provenance": record}
    )
    return label


def roi_set_provenance(path: str | os.PathLike) -> dict[str, dict[str, Any] | None]:
    """Return ``{label: provenance record or None}`` of the sets in a store (empty when none)."""
    store = _store(path)
    if not store.exists():
        return {}
    return {k: v.get("provenance") for k, v in store.read_index()["sets"].items()}


def delete_roi_set(path: str | os.PathLike, label: str) -> bool:
    """Remove an ROI set; returns False (silently, as SIMA) when there is no such set."""
    return _store(path).delete(label)


# ---------------------------------------------------------------------------------------
# Legacy SIMA rois.pkl
# ---------------------------------------------------------------------------------------
def _legacy_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def load_legacy_roi_sets(path: str | os.PathLike) -> dict[str, ROIList]:
    """Read SIMA's ``rois.pkl`` (a file or a legacy dataset folder) safely.

    Returns
    -------
    dict
        ``{label: ROIList}``; empty when the file does not exist.

    Raises
    ------
    napari_sima.core.legacy.UnsafePickleError
        If the pickle names anything outside the allow-list.
    ValueError
        If the content is not SIMA's ROI layout.
    """
    from .errors import FileFormatError
    from .legacy import read_legacy_pickle

    p = Path(os.fspath(path))
    if p.is_dir():
        p = p / LEGACY_FILE
    if not p.exists():
        return {}
    data = read_legacy_pickle(p)
    if not isinstance(data, dict):
        raise ValueError(f"{str(p)!r} does not hold SIMA's {{label: ROI set}} mapping")
    out = {}
    for raw_label, entry in data.items():
        label = _legacy_text(raw_label) or ""
        if not isinstance(entry, dict) or not isinstance(entry.get("rois"), (list, tuple)):
            raise FileFormatError(f"ROI set {label!r} in {str(p)!r} has no list of 'rois'")
        rois = []
        for k, d in enumerate(entry["rois"]):
            try:
                mask = d.get("mask")
                if mask is not None:
                    mask = [m.tocsr() if hasattr(m, "tocsr") else np.asarray(m) for m in mask]
                polys = d.get("polygons")
                rois.append(
                    ROI(
                        mask=mask if polys is None else None,
                        polygons=polys,
                        label=_legacy_text(d.get("label")),
                        id=_legacy_text(d.get("id")),
                        tags={_legacy_text(t) for t in (d.get("tags") or ())},
                        im_shape=d.get("im_shape"),
                    )
                )
            except (AttributeError, TypeError, ValueError, IndexError, KeyError,
                    OverflowError) as err:
                raise FileFormatError(f"ROI {k} of set {label!r} in {str(p)!r}: {err}") from None
        out[label] = ROIList(rois, timestamp=_legacy_text(entry.get("timestamp")))
    return out


def load_legacy_roi_set(path: str | os.PathLike, label: str | None = None) -> ROIList:
    """Read one set of a legacy ``rois.pkl`` (default: the most recent)."""
    sets = load_legacy_roi_sets(path)
    if not sets:
        raise KeyError(f"no legacy ROI sets at {os.fspath(path)!r}")
    if label is None:
        label = most_recent_label({k: v.timestamp or "" for k, v in sets.items()})
    if label not in sets:
        raise KeyError(f"no ROI set {label!r} in {os.fspath(path)!r}; stored sets: {sorted(sets)}")
    return sets[label]
