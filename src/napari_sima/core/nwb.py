"""Export of a dataset's ROIs, traces and projections to an NWB file (optional ``nwb`` extra).

:func:`export_nwb` writes one `Neurodata Without Borders <https://nwb.org>`_ file with
pynwb (installed with ``pip install 'napari-sima[nwb]'``; imported only when an export
runs, so the rest of napari-sima works without it)::

    /general/devices/Microscope
    /general/optophysiology/ImagingPlane        one plane, or the whole volume
    /processing/ophys/
        ImageSegmentation/PlaneSegmentation     one row per ROI, in the traces' row order:
                                                image_mask (one plane) or voxel_mask
                                                (several planes), roi_id, roi_label,
                                                roi_tags, plane
        Fluorescence/raw                        RoiResponseSeries (time, ROIs)
        Fluorescence/demixed_raw                when the set was demixed
        Fluorescence/spikes, spikes_fit         when spikes were inferred
        DfOverF/dff                             stored ΔF/F, else computed at export
        SummaryImages/mean_plane<z>, std_plane<z>, kurtosis_plane<z>
    /intervals/epochs                           one epoch per sequence (tag 'sequence_<i>')
    /general/notes                              JSON: what was exported, and provenance

Conventions
-----------
* NWB images are ``(x, y)`` = (column, row): masks and projections are the transposes
  of napari-sima's ``(row, column)`` arrays (``voxel_mask`` entries are
  ``(x=column, y=row, z=plane, weight)``).
* The sequences are concatenated along time into one series per kind, sampled at the
  imaging rate from time 0 (sequence ``i`` starts where sequence ``i - 1`` ends); the
  ``epochs`` table gives each sequence's start and stop time.  ΔF/F (and spikes) are
  computed per sequence before concatenation, as everywhere in napari-sima.
* Unobserved values stay NaN (float32 traces, as stored).

Examples
--------
>>> from napari_sima.core import ImagingDataset                     # doctest: +SKIP
>>> ds = ImagingDataset.load('session.sima')                        # doctest: +SKIP
>>> ds.export_nwb('session.nwb', imaging_rate=30.0, indicator='GCaMP6f')  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from .dff import DFF_DEFAULTS

if TYPE_CHECKING:  # pragma: no cover
    from .dataset import ImagingDataset

__all__ = ["DFF_PARAMETERS", "MISSING_EXTRA", "PROJECTIONS", "export_nwb"]

#: Message of the ImportError raised when pynwb is not installed.
MISSING_EXTRA = "NWB export needs the optional 'nwb' extra: pip install 'napari-sima[nwb]'"

#: ΔF/F parameters used when a signal set has no stored ΔF/F (those of the GUI's raster).
DFF_PARAMETERS: dict[str, Any] = DFF_DEFAULTS

#: ``{image name prefix: (dataset attribute, description)}`` of the summary images.
PROJECTIONS = {
    "mean": ("time_averages", "per-pixel mean over all frames of all sequences (NaN ignored)"),
    "std": ("time_std", "per-pixel population standard deviation over all frames"),
    "kurtosis": ("time_kurtosis", "per-pixel excess (Fisher) kurtosis over all frames"),
}

_UNKNOWN = "unknown"


def _import_pynwb() -> Any:
    try:
        import pynwb
    except ImportError as err:
        raise ImportError(MISSING_EXTRA) from err
    return pynwb


# ---------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------
def _positive_rate(value: Any, what: str) -> float | None:
    if value is None:
        return None
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number of frames per second, got {value!r}") from None
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"{what} must be a finite rate > 0 Hz, got {value!r}")
    return rate


def _wavelength(value: Any, what: str) -> float:
    if value is None:
        return float("nan")
    try:
        lam = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a wavelength in nm, got {value!r}") from None
    if not (math.isnan(lam) or lam > 0):
        raise ValueError(f"{what} must be a positive wavelength in nm, got {value!r}")
    return lam


def _start_time(value: Any) -> _dt.datetime:
    if value is None:
        return _dt.datetime.now().astimezone()
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"session_start_time must be a datetime or an ISO 8601 string, got {value!r}"
            ) from None
    if isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):
        value = _dt.datetime(value.year, value.month, value.day)
    if not isinstance(value, _dt.datetime):
        raise ValueError(
            f"session_start_time must be a datetime or an ISO 8601 string, got "
            f"{type(value).__name__}"
        )
    # a naive time is taken as local time (NWB needs a time zone)
    return value if value.tzinfo is not None else value.astimezone()


def _text(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    return value


def _dataset_rate(dataset: Any) -> float | None:
    """Return the frame rate a dataset knows of (attribute ``frame_rate``/``imaging_rate``)."""
    for name in ("frame_rate", "imaging_rate"):
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            rate = float(getattr(dataset, name))
            if math.isfinite(rate) and rate > 0:
                return rate
    return None


def _dataset_name(dataset: Any) -> str:
    savedir = getattr(dataset, "savedir", None)
    return repr(savedir) if savedir else repr(dataset)


# ---------------------------------------------------------------------------------------
# What to export: a signal set (with its ROIs) or an ROI set
# ---------------------------------------------------------------------------------------
def _resolve_channel(dataset: Any, channel: Any) -> int:
    try:
        return int(dataset.resolve_channel(channel))
    except ValueError as err:
        raise KeyError(str(err)) from None


def _load_signals(dataset: Any, ch: int, label: str) -> dict[str, Any]:
    from . import signal_store

    if getattr(dataset, "savedir", None) is None:
        return dict(signal_store.memory_store(dataset, ch)[label])
    return signal_store.dataset_signal_set(dataset.savedir, ch, label)


def _select(
    dataset: Any, ch: int, signals_label: str | None, rois_label: str | None
) -> tuple[str, str, dict[str, Any] | None, list[Any]]:
    """Return ``(kind, label, signals or None, rois)`` with kind 'signals' or 'rois'."""
    if signals_label is not None and rois_label is not None:
        raise ValueError(
            "give signals_label or rois_label, not both: a signal set is exported with its "
            "own ROIs (the rows of its traces); rois_label exports an ROI set without traces"
        )
    if rois_label is None:
        labels = list(dataset.signal_labels(ch))
        if signals_label is not None and signals_label not in labels:
            raise KeyError(
                f"no signal set {signals_label!r} for channel {ch} of {_dataset_name(dataset)}; "
                f"stored sets: {labels}"
            )
        if labels:
            label = signals_label if signals_label is not None else labels[-1]
            signals = _load_signals(dataset, ch, label)
            return "signals", label, signals, list(signals.get("rois") or [])
    roi_sets = dataset.ROIs
    if rois_label is not None:
        if rois_label not in roi_sets:
            raise KeyError(
                f"no ROI set {rois_label!r} in {_dataset_name(dataset)}; stored sets: "
                f"{sorted(roi_sets)}"
            )
        return "rois", rois_label, None, list(roi_sets[rois_label])
    if roi_sets:
        from .roi_store import most_recent_label

        label = most_recent_label({k: v.timestamp or "" for k, v in roi_sets.items()})
        return "rois", label, None, list(roi_sets[label])
    raise ValueError(
        f"{_dataset_name(dataset)} has no signals for channel {ch} and no ROI sets: "
        f"nothing to export (segment or draw ROIs and extract their signals first)"
    )


def _roi_masks(rois: list[Any], im_shape: tuple[int, int, int], where: str) -> list[Any]:
    """Per-plane CSR masks of each ROI, fitted to ``im_shape`` (planes, rows, columns)."""
    from .roi import ROI

    out = []
    for k, item in enumerate(rois):
        roi = item if isinstance(item, ROI) else ROI(**item)
        own = roi.im_shape
        if own != im_shape:
            # an ROI without a shape, or drawn on fewer planes of the same frame, is
            # placed in the dataset's frame; any other size is another field of view
            if own is not None and (own[1:] != im_shape[1:] or own[0] > im_shape[0]):
                raise ValueError(
                    f"{where}: ROI {k} ({roi.label!r}) was made for images of shape {own} "
                    f"(planes, rows, columns), but the dataset's frames are {im_shape}"
                )
            roi = roi.copy()
            roi.im_shape = im_shape
        planes = [sparse.csr_matrix(p, dtype=np.float32) for p in roi.mask]
        out.append((roi, planes))
    return out


def _per_sequence(signals: dict[str, Any], key: str, shapes: list[tuple[int, int]], where: str):
    value = signals.get(key)
    if value is None:
        return None
    arrays = [np.asarray(v) for v in value] if isinstance(value, (list, tuple)) else None
    if arrays is None or [a.shape for a in arrays] != shapes:
        got = [a.shape for a in arrays] if arrays is not None else type(value).__name__
        raise ValueError(
            f"{where}: entry {key!r} does not match the raw signals: got {got}, expected one "
            f"(n_rois, n_frames) array per sequence {shapes}"
        )
    return arrays


def _concat_time(arrays: list[np.ndarray]) -> np.ndarray:
    """``(time, ROIs)`` float32 of per-sequence ``(ROIs, frames)`` arrays."""
    return np.ascontiguousarray(np.concatenate(arrays, axis=1).T, dtype=np.float32)


# ---------------------------------------------------------------------------------------
# The writer
# ---------------------------------------------------------------------------------------
def _mask_column(masks: list[Any], shape: tuple[int, int, int]) -> Any:
    """``image_mask`` column filled one ROI at a time (only one dense mask in memory)."""
    from hdmf.backends.hdf5 import H5DataIO
    from hdmf.common import VectorData
    from hdmf.data_utils import GenericDataChunkIterator

    _, rows, cols = shape

    class _Masks(GenericDataChunkIterator):
        def _get_data(self, selection: tuple[slice, ...]) -> np.ndarray:
            picked = masks[selection[0]]
            out = np.zeros((len(picked), cols, rows), dtype=np.float32)
            for i, planes in enumerate(picked):
                out[i] = planes[0].toarray().T
            return out[(slice(None), *selection[1:])]

        def _get_maxshape(self) -> tuple[int, int, int]:
            return (len(masks), cols, rows)

        def _get_dtype(self) -> np.dtype:
            return np.dtype(np.float32)

    block = (1, cols, rows)
    data = _Masks(chunk_shape=block, buffer_shape=block, display_progress=False)
    return VectorData(
        name="image_mask",
        description="ROI weights, (x, y) = (column, row); 0 outside the ROI",
        data=H5DataIO(data, compression="gzip", compression_opts=1),  # fast; zeros pack anyway
    )


def _roi_columns(rois: list[Any], masks: list[Any]) -> dict[str, list[Any]]:
    ids, labels, tags, planes = [], [], [], []
    for roi, per_plane in zip(rois, masks, strict=True):
        ids.append("" if roi.id is None else str(roi.id))
        labels.append("" if roi.label is None else str(roi.label))
        tags.append(",".join(sorted(str(t) for t in roi.tags)))
        filled = [z for z, p in enumerate(per_plane) if p.count_nonzero()]
        planes.append(filled[0] if filled else -1)
    return {"roi_id": ids, "roi_label": labels, "roi_tags": tags, "plane": planes}


_COLUMN_DOCS = {
    "roi_id": "napari-sima ROI id (identity across sessions; '' when unset)",
    "roi_label": "napari-sima ROI label ('' when unset)",
    "roi_tags": "napari-sima ROI tags, sorted and joined by ','",
    "plane": "first plane with pixels of the ROI (-1 for an ROI without pixels)",
}


def _plane_segmentation(
    imaging_plane: Any, masks: list[Any], shape: tuple[int, int, int], description: str
) -> Any:
    """``PlaneSegmentation`` of ``(roi, per-plane masks)`` pairs, in row order."""
    from pynwb.ophys import PlaneSegmentation

    planes = [m for _, m in masks]
    mask_columns = [_mask_column(planes, shape)] if shape[0] == 1 else list(_voxel_columns(planes))
    ps = PlaneSegmentation(
        name="PlaneSegmentation",
        description=description,
        imaging_plane=imaging_plane,
        id=list(range(len(masks))),
        columns=mask_columns,
    )
    for name, values in _roi_columns([r for r, _ in masks], planes).items():
        data = np.asarray(values, dtype=np.int64) if name == "plane" else values
        ps.add_column(name=name, description=_COLUMN_DOCS[name], data=data)
    return ps


def _voxel_columns(planes: list[Any]) -> tuple[Any, Any]:
    """``voxel_mask`` and its index, built at once (``add_roi`` refuses empty ROIs)."""
    from hdmf.common import VectorData, VectorIndex

    voxels: list[tuple[int, int, int, float]] = []
    ends = []
    for per_plane in planes:
        for z, p in enumerate(per_plane):
            coo = p.tocoo()
            order = np.lexsort((coo.col, coo.row))
            voxels.extend(
                (int(c), int(r), z, float(w))
                for r, c, w in zip(coo.row[order], coo.col[order], coo.data[order], strict=True)
                if w != 0
            )
        ends.append(len(voxels))
    mask = VectorData(
        name="voxel_mask",
        description="ROI voxels (x=column, y=row, z=plane, weight)",
        data=voxels,
    )
    index = VectorIndex(name="voxel_mask_index", data=np.asarray(ends, dtype=np.int64), target=mask)
    return mask, index


def _collect_traces(
    signals: dict[str, Any] | None, n_rois: int, where: str
) -> tuple[dict[str, list[np.ndarray]], str]:
    """Per-sequence traces of a signal set by kind, and where its ΔF/F comes from."""
    if signals is None:
        return {}, ""
    raw = [np.asarray(r) for r in signals["raw"]]
    shapes = [r.shape for r in raw]
    if any(s[0] != n_rois for s in shapes):
        raise ValueError(f"{where}: {n_rois} ROIs for signal rows {shapes}")
    traces = {"raw": raw}
    for key in ("demixed_raw", "spikes", "spikes_fits"):
        arrays = _per_sequence(signals, key, shapes, where)
        if arrays is not None:
            traces[key] = arrays
    stored_dff = _per_sequence(signals, "dff", shapes, where)
    if stored_dff is not None:
        traces["dff"] = stored_dff
        params = signals.get("dff_parameters")
        note = "stored with the signal set" + (
            f" (parameters {json.dumps(params, sort_keys=True)})" if params else ""
        )
        return traces, note
    from .dff import dff

    traces["dff"] = [dff(r, **DFF_PARAMETERS) for r in raw]
    note = (
        "computed at export by napari_sima.core.dff.dff with "
        f"{json.dumps(DFF_PARAMETERS, sort_keys=True)} (the signal set had none)"
    )
    return traces, note


_SERIES_DOCS = {
    "raw": "extracted signal: weighted mean over each ROI of F / time-average",
    "demixed_raw": "extracted signal after two-channel demixing",
    "spikes": "inferred spikes (deconvolution, napari_sima.core.spikes)",
    "spikes_fits": "fitted calcium trace of the spike inference",
}


def _add_traces(
    nwbfile: Any,
    ophys: Any,
    ps: Any,
    traces: dict[str, list[np.ndarray]],
    signals: dict[str, Any],
    rate: float,
    dff_note: str,
    time_note: str,
) -> None:
    """Add the RoiResponseSeries (sequences concatenated) and one epoch per sequence."""
    from pynwb.ophys import DfOverF, Fluorescence

    from .provenance import jsonable

    frames = [int(r.shape[1]) for r in traces["raw"]]
    offsets = np.concatenate([[0], np.cumsum(frames)]).astype(int).tolist()
    region = ps.create_roi_table_region(
        name="rois", description="all ROIs of the PlaneSegmentation", region=list(range(len(ps)))
    )
    concat = "; sequences concatenated along time (see the epochs table)" if len(frames) > 1 else ""
    common = f"{concat}; NaN where not observed.{time_note}"
    fluorescence = Fluorescence(name="Fluorescence")
    ophys.add(fluorescence)
    for key in ("raw", "demixed_raw", "spikes", "spikes_fits"):
        if key not in traces:
            continue
        comments = "no comments"
        if key == "spikes" and signals.get("spikes_params") is not None:
            comments = "spike inference parameters per sequence (JSON): " + json.dumps(
                jsonable(signals["spikes_params"])
            )
        fluorescence.create_roi_response_series(
            name="spikes_fit" if key == "spikes_fits" else key,
            data=_concat_time(traces[key]),
            rois=region,
            unit="a.u.",
            rate=rate,
            starting_time=0.0,
            description=_SERIES_DOCS[key] + common,
            comments=comments,
        )
    dfoverf = DfOverF(name="DfOverF")
    ophys.add(dfoverf)
    dfoverf.create_roi_response_series(
        name="dff",
        data=_concat_time(traces["dff"]),
        rois=region,
        unit="a.u.",
        rate=rate,
        starting_time=0.0,
        description=f"dF/F per sequence, {dff_note}{common}",
    )
    for i, n in enumerate(frames):
        nwbfile.add_epoch(
            start_time=offsets[i] / rate,
            stop_time=(offsets[i] + n) / rate,
            tags=[f"sequence_{i}"],
        )


def _provenance(dataset: Any, kind: str, label: str, channel_name: str) -> dict[str, Any] | None:
    if not hasattr(dataset, "provenance"):
        return None
    from .provenance import jsonable

    prov = dataset.provenance() or {}
    used: dict[str, Any] = {"dataset": prov.get("dataset")}
    if kind == "signals":
        record = (prov.get("signals") or {}).get(channel_name, {}).get(label)
        used["signals"] = {channel_name: {label: record}}
    else:
        used["rois"] = {label: (prov.get("rois") or {}).get(label)}
    return jsonable(used)


def _check_target(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a folder; give the NWB file's name")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder {str(path.parent)!r} of the NWB file does not exist")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} already exists; pass overwrite=True to replace it")


def export_nwb(
    dataset: ImagingDataset,
    path: str | os.PathLike,
    channel: int | str = 0,
    signals_label: str | None = None,
    rois_label: str | None = None,
    session_description: str | None = None,
    identifier: str | None = None,
    session_start_time: _dt.datetime | str | None = None,
    experimenter: str | list[str] | None = None,
    institution: str | None = None,
    lab: str | None = None,
    imaging_rate: float | None = None,
    indicator: str | None = None,
    location: str | None = None,
    excitation_lambda: float | None = None,
    emission_lambda: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a dataset's ROIs, traces and time projections to an NWB file.

    Parameters
    ----------
    dataset : ImagingDataset
        The dataset.
    path : path-like
        Output file (conventionally ``*.nwb``), written atomically: a temporary file
        in the same folder renamed into place once complete.
    channel : int or str
        Channel (index or name) whose signal set and projections are exported.
    signals_label : str, optional
        The signal set (default: the channel's most recent).  Its ROIs (the rows of
        its traces) make the ``PlaneSegmentation``.
    rois_label : str, optional
        Export this stored ROI set without traces instead of a signal set.  Without
        either label and without signals for the channel, the most recent ROI set is
        exported.
    session_description : str, optional
        Default: ``'napari-sima export of <dataset folder>'``.
    identifier : str, optional
        Unique file identifier (default: a random UUID4).
    session_start_time : datetime or ISO 8601 str, optional
        Default: now.  A time without a time zone is taken as local time.
    experimenter : str or list of str, optional
    institution, lab : str, optional
    imaging_rate : float, optional
        Frames per second of the traces.  Default: the dataset's ``frame_rate`` when
        it has one, else 1.0 (the series descriptions then say that times are frame
        numbers).
    indicator, location : str, optional
        Calcium indicator and brain area of the imaging plane (default ``'unknown'``).
    excitation_lambda, emission_lambda : float, optional
        Wavelengths in nm (default NaN: unknown).
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    ImportError
        When pynwb (the ``nwb`` extra) is not installed.
    FileExistsError
        If ``path`` exists and ``overwrite`` is False (nothing is written).
    KeyError
        For an unknown channel, signal set or ROI set (the message lists those that
        exist).
    ValueError
        If the dataset has neither signals for the channel nor ROI sets, if both
        labels are given, for bad metadata, or for a signal set whose entries do not
        fit together.

    Notes
    -----
    Layout: see the module documentation and ``docs/nwb.md``.  ΔF/F is the stored one
    when the set has ``dff``; otherwise it is computed at export with
    :func:`napari_sima.core.dff.dff` and :data:`DFF_PARAMETERS` (the description of
    the series says which).  The projections come from the dataset's (cached) time
    projections; when they cannot be computed (movies not reachable) they are left
    out with a warning.
    """
    pynwb = _import_pynwb()
    from pynwb.base import Images
    from pynwb.image import GrayscaleImage
    from pynwb.ophys import ImageSegmentation, OpticalChannel

    from .provenance import software_versions

    path = Path(os.path.abspath(os.fspath(path)))
    _check_target(path, bool(overwrite))
    rate = _positive_rate(imaging_rate, "imaging_rate")
    rate_source = "given"
    if rate is None:
        rate = _dataset_rate(dataset)
        rate_source = "dataset"
    if rate is None:
        rate, rate_source = 1.0, "unknown"
    ex_lambda = _wavelength(excitation_lambda, "excitation_lambda")
    em_lambda = _wavelength(emission_lambda, "emission_lambda")
    start = _start_time(session_start_time)
    for what, value in (
        ("session_description", session_description),
        ("identifier", identifier),
        ("institution", institution),
        ("lab", lab),
        ("indicator", indicator),
        ("location", location),
    ):
        _text(value, what)
    if experimenter is not None and not (
        isinstance(experimenter, str)
        or (
            isinstance(experimenter, (list, tuple))
            and all(isinstance(e, str) for e in experimenter)
        )
    ):
        raise ValueError(
            f"experimenter must be a string or a list of strings, got {experimenter!r}"
        )

    ch = _resolve_channel(dataset, channel)
    channel_name = str(dataset.channel_names[ch])
    kind, label, signals, roi_items = _select(dataset, ch, signals_label, rois_label)
    source = f"{kind} set {label!r}" + (f" (channel {channel_name!r})" if kind == "signals" else "")
    where = f"{source} of {_dataset_name(dataset)}"
    if not roi_items:
        raise ValueError(f"the {where} holds no ROIs: nothing to export")
    n_planes, rows, cols, _ = (int(v) for v in dataset.frame_shape)
    shape = (n_planes, rows, cols)
    masks = _roi_masks(roi_items, shape, where)

    traces, dff_note = _collect_traces(signals, len(roi_items), where)

    # -- the file -----------------------------------------------------------------------
    version = software_versions().get("napari-sima", "unknown")
    frames = [int(r.shape[1]) for r in traces.get("raw", [])]
    offsets = np.concatenate([[0], np.cumsum(frames)]).astype(int).tolist()
    notes = {
        "exported_by": f"napari-sima {version} (napari_sima.core.nwb.export_nwb)",
        "dataset": getattr(dataset, "savedir", None),
        "channel": {"index": ch, "name": channel_name},
        "source": {"kind": kind, "label": label},
        "sequences": [
            {"index": i, "first_frame": offsets[i], "num_frames": n} for i, n in enumerate(frames)
        ],
        "imaging_rate": {"value": rate, "source": rate_source},
        "provenance": _provenance(dataset, kind, label, channel_name),
    }
    nwbfile = pynwb.NWBFile(
        session_description=session_description
        or f"napari-sima export of {getattr(dataset, 'savedir', None) or 'an in-memory dataset'}",
        identifier=identifier or str(uuid.uuid4()),
        session_start_time=start,
        experimenter=experimenter,
        institution=institution,
        lab=lab,
        notes=json.dumps(notes, indent=1, sort_keys=True),
        was_generated_by=[["napari-sima", version]],
    )
    device = nwbfile.create_device(name="Microscope", description="imaging device (not recorded)")
    optical = OpticalChannel(
        name="OpticalChannel",
        description=f"channel {channel_name!r} (index {ch}) of the dataset",
        emission_lambda=em_lambda,
    )
    time_note = (
        ""
        if rate_source != "unknown"
        else " The imaging rate was not known: rate 1.0 Hz, so times are frame numbers."
    )
    plane_text = "one plane" if n_planes == 1 else f"a volume of {n_planes} planes"
    imaging_plane = nwbfile.create_imaging_plane(
        name="ImagingPlane",
        optical_channel=optical,
        description=f"{plane_text} of {rows} x {cols} pixels (rows x columns).{time_note}",
        device=device,
        excitation_lambda=ex_lambda,
        indicator=indicator or _UNKNOWN,
        location=location or _UNKNOWN,
        imaging_rate=rate,
    )
    ophys = nwbfile.create_processing_module(
        name="ophys", description="napari-sima ROIs, signals and time projections"
    )
    segmentation = ImageSegmentation(name="ImageSegmentation")
    ophys.add(segmentation)
    mask_kind = "image_mask" if n_planes == 1 else "voxel_mask (x=column, y=row, z=plane, weight)"
    ps = _plane_segmentation(
        imaging_plane,
        masks,
        shape,
        f"ROIs of the {source}, one row per ROI in the order of the traces' columns; "
        f"masks in {mask_kind}",
    )
    segmentation.add_plane_segmentation(ps)

    if traces:
        _add_traces(nwbfile, ophys, ps, traces, signals, rate, dff_note, time_note)

    images = _summary_images(dataset, ch, channel_name, GrayscaleImage)
    if images:
        ophys.add(
            Images(
                name="SummaryImages",
                images=images,
                description=f"time projections of channel {channel_name!r}; (x, y) = (column, row)",
            )
        )

    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        with pynwb.NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwbfile)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _summary_images(dataset: Any, ch: int, channel_name: str, image_cls: Any) -> list[Any]:
    arrays = {}
    try:
        for prefix, (attr, _) in PROJECTIONS.items():
            arrays[prefix] = np.asarray(getattr(dataset, attr))
    except (OSError, ValueError) as err:
        warnings.warn(
            f"NWB export: the time projections of {_dataset_name(dataset)} cannot be computed "
            f"({err}); the file has no summary images",
            UserWarning,
            stacklevel=3,
        )
        return []
    out = []
    for prefix, (_, doc) in PROJECTIONS.items():
        stack = arrays[prefix]
        for z in range(stack.shape[0]):
            out.append(
                image_cls(
                    name=f"{prefix}_plane{z}",
                    data=np.ascontiguousarray(stack[z, :, :, ch].T),
                    description=(
                        f"{doc}; channel {channel_name!r}, plane {z}; (x, y) = (column, row)"
                    ),
                )
            )
    return out
