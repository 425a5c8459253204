"""Qt-free helpers of the Sessions dock: session records, the align view's shapes.

The Sessions dock (:mod:`napari_sima._widgets.sessions_widget`) shows the ROI sets of
several imaging sessions of one field of view in the space of a *reference* session.
This module holds what does not need Qt: the :class:`Session` record, the mapping of a
session's ROIs into the reference space (one displayed ROI per stored ROI, so ids and
tags found in the view can be written back to the stored set), and the keyword
arguments of the napari Shapes layer showing all sessions at once.

Notes
-----
**Align layer features** (one row per shape; the ROI-level columns of
:func:`~napari_sima._roi_convert.rois_to_shapes` plus):

================  ========  ==============================================================
column            dtype     meaning
================  ========  ==============================================================
``session``       Int64     index of the session (row of the Sessions table at build time)
``session_name``  object    its name
``index``         Int64     index of the ROI in the session's ROI set
``roi``           Int64     a number unique over all sessions (shapes of one ROI share it)
``id_text``       object    ``id`` or ``''`` (shown as the shapes' text)
================  ========  ==============================================================
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._layers import METADATA_KEY
from .._roi_convert import ROI_PALETTE, rois_to_shapes

if TYPE_CHECKING:
    import pandas as pd

    from ..core import ImagingDataset, ROIList
    from ..core.import_rois import TransformedROIs

#: Outline colours of the sessions (RGB, 0-1), cycled; bright on a gray image.
SESSION_COLORS = np.array(
    [
        (0.20, 0.90, 1.00),  # cyan
        (1.00, 0.30, 0.80),  # magenta
        (1.00, 0.85, 0.10),  # yellow
        (0.40, 1.00, 0.30),  # green
        (1.00, 0.55, 0.10),  # orange
        (0.65, 0.55, 1.00),  # violet
        (1.00, 0.25, 0.25),  # red
        (0.95, 0.95, 0.95),  # white
    ]
)

#: Outline colour of previewed (transformed, not yet imported) ROIs.
PREVIEW_COLOR = (1.0, 0.85, 0.1)

#: ``metadata['napari_sima']['kind']`` of the align layer.
ALIGN_KIND = "session_rois"

#: Name of the align layer.
ALIGN_LAYER_NAME = "Sessions: aligned"

#: Prefix of the preview layer's name.
PREVIEW_PREFIX = "Preview: "

#: Colour modes of the align layer.
COLOR_MODES = ("session", "id")

#: Feature columns added to those of :func:`rois_to_shapes` in the align layer.
ALIGN_COLUMNS = ("session", "session_name", "index", "id_text")


@dataclasses.dataclass
class Session:
    """One row of the Sessions table: a dataset and the ROI set chosen in it.

    Attributes
    ----------
    name : str
        Display name (layer base name or folder name).
    dataset : ImagingDataset
        The dataset.
    roi_set : str or None
        Label of the chosen ROI set (None: the dataset has none).
    """

    name: str
    dataset: Any
    roi_set: str | None = None


@dataclasses.dataclass
class Alignment:
    """A transform found by the Sessions dock from one dataset onto another.

    Attributes
    ----------
    source, target : ImagingDataset
        The datasets (coordinates of ``source`` map onto ``target``).
    estimates : list of TransformEstimate or None
        Per target plane (None for planes that were not estimated).
    method : str
        Transform method.
    anchor_label : str or None
        Anchor ROI set, for an anchor-based transform.
    """

    source: Any
    target: Any
    estimates: list[Any]
    method: str
    anchor_label: str | None = None

    def describe(self) -> str:
        """Short text for the Sessions table, e.g. ``'affine (NCC 0.93)'``."""
        if self.anchor_label is not None:
            return f"{self.method}, anchors {self.anchor_label!r}"
        nccs = [e.ncc for e in self.estimates if e is not None and e.ncc is not None]
        if nccs:
            return f"{self.method} (NCC {min(nccs):.2f})"
        return self.method


@dataclasses.dataclass
class AlignState:
    """What the align layer shows, and the edits not saved yet.

    Attributes
    ----------
    sessions : list of Session
        Snapshot of the sessions shown (dataset and ROI set of each).
    reference : int
        Index of the reference among them.
    originals : list of ROIList
        Each session's ROIs in its own space; ids, tags and deletions are applied
        here and written by "Save all".
    display : list of ROIList
        The same ROIs mapped into the reference space (one per original, same
        order); what is shown and registered.
    dirty : bool
        Unsaved changes.
    """

    sessions: list[Session]
    reference: int
    originals: list[ROIList]
    display: list[ROIList]
    dirty: bool = False

    def take_properties(self, lists: Sequence[Sequence[Any]], tags: bool = True) -> None:
        """Copy ids (and tags) from ROI lists shaped like :attr:`originals`.

        Parameters
        ----------
        lists : sequence of ROIList
            E.g. the output of :func:`~napari_sima.core.registration.merge_ids`.
        tags : bool
            Copy the tags too.

        Raises
        ------
        ValueError
            If the lists do not have the sessions' ROI counts.
        """
        counts = [len(r) for r in lists]
        if counts != [len(r) for r in self.originals]:
            raise ValueError(
                f"ROI counts {counts} do not match the sessions' {[len(r) for r in self.originals]}"
            )
        for s, rois in enumerate(lists):
            for k, roi in enumerate(rois):
                for target in (self.originals[s][k], self.display[s][k]):
                    target.id = roi.id
                    if tags:
                        target.tags = set(roi.tags)
        self.dirty = True

    def delete(self, refs: Sequence[tuple[int, int]]) -> Any:
        """Delete ROIs given as ``(session, index)``; return the index renumbering.

        Returns
        -------
        callable
            ``renumber(session, old_index) -> new_index`` for the ROIs kept.
        """
        from ..core import ROIList

        doomed: dict[int, set[int]] = {}
        for s, k in refs:
            doomed.setdefault(int(s), set()).add(int(k))
        for s, ks in doomed.items():
            for lists in (self.originals, self.display):
                old = lists[s]
                lists[s] = ROIList(
                    [r for i, r in enumerate(old) if i not in ks], timestamp=old.timestamp
                )
        self.dirty = True

        def renumber(s: int, k: int) -> int:
            return k - sum(1 for d in doomed.get(s, ()) if d < k)

        return renumber


def session_color(session: int) -> np.ndarray:
    """RGB colour (0-1) of a session index."""
    return SESSION_COLORS[int(session) % len(SESSION_COLORS)]


def id_color(ident: Any) -> np.ndarray:
    """RGB colour (0-1) of an ROI id, the same for every session (gray without id)."""
    if ident is None or (isinstance(ident, float) and np.isnan(ident)):
        return np.array([0.6, 0.6, 0.6])
    text = str(ident)
    key = int(text) if text.isdigit() else zlib.crc32(text.encode())
    return ROI_PALETTE[key % len(ROI_PALETTE)]


def roi_set_labels(dataset: ImagingDataset) -> list[str]:
    """Labels of a dataset's ROI sets, newest first (equal times: the later saved first).

    Parameters
    ----------
    dataset : ImagingDataset
        The dataset.

    Returns
    -------
    list of str
    """
    sets = dataset.ROIs
    stamps = [
        (str(getattr(rois, "timestamp", "") or ""), k, label)
        for k, (label, rois) in enumerate(sets.items())
    ]
    return [label for _, _, label in sorted(stamps, reverse=True)]


def frame_shape3(dataset: ImagingDataset) -> tuple[int, int, int]:
    """``(planes, rows, columns)`` of a dataset."""
    return tuple(int(v) for v in dataset.frame_shape[:3])  # type: ignore[return-value]


def map_rois(
    rois: ROIList,
    alignment: Alignment | None,
    source_shape: tuple[int, int, int],
    target_shape: tuple[int, int, int],
) -> ROIList:
    """Map ROIs into a reference space, one output ROI per input ROI, properties kept.

    Parameters
    ----------
    rois : ROIList
        A session's ROIs (in its own dataset's space).
    alignment : Alignment or None
        Its transform onto the reference; None when the session is shown as is.
    source_shape, target_shape : (planes, rows, columns)
        Frame shapes of the session's dataset and of the reference.

    Returns
    -------
    ROIList
        Copies with ``im_shape=target_shape`` (ids, labels and tags kept).  An ROI
        that lands entirely outside the reference frame is kept (unclipped), so it
        has no pixel there and matches nothing.

    Raises
    ------
    ValueError
        Without an alignment, when the frame shapes differ; with one, when an ROI
        lies on a plane that has no transform.
    """
    from ..core import ROI, ROIList
    from ..core.import_rois import apply_transforms

    if alignment is None:
        if tuple(source_shape) != tuple(target_shape):
            raise ValueError(
                f"frame {tuple(source_shape)} differs from the reference's "
                f"{tuple(target_shape)}: estimate its transform onto the reference first"
            )
        out = []
        for roi in rois:
            copy = roi.copy()
            copy.im_shape = tuple(target_shape)
            out.append(copy)
        return ROIList(out, timestamp=rois.timestamp)
    estimates = list(alignment.estimates)
    out = []
    for k, roi in enumerate(rois):
        planes = (
            sorted({int(p[0, 2]) for p in roi.polygon_arrays})
            if roi.kind != "mask"
            else [z for z in range(len(estimates)) if _mask_plane_used(roi, z)]
        )
        missing = [z for z in planes if z >= len(estimates) or estimates[z] is None]
        if missing:
            raise ValueError(
                f"ROI {k} ({roi.label!r}) lies on plane(s) {missing}, which have no transform "
                f"(estimate again with this ROI set as the source)"
            )
        moved, _dropped, _clipped = apply_transforms(
            ROIList([roi]), estimates, tuple(source_shape), tuple(target_shape)
        )
        if len(moved):
            out.append(moved[0])
        elif roi.kind == "mask" and not _is_boolean_mask(roi):
            out.append(
                ROI(
                    mask=np.zeros(tuple(target_shape), dtype=bool),
                    im_shape=tuple(target_shape),
                    label=roi.label,
                    id=roi.id,
                    tags=set(roi.tags),
                )
            )
        else:  # entirely outside: keep it unclipped (no pixel in the frame)
            far = ROIList([roi]).transform(estimates, im_shape=tuple(target_shape))[0]
            out.append(far)
    return ROIList(out, timestamp=rois.timestamp)


def _mask_plane_used(roi: Any, z: int) -> bool:
    try:
        planes = roi.mask
    except Exception:  # pragma: no cover - defensive
        return False
    if z >= len(planes):
        return False
    return bool(planes[z].nnz)


def _is_boolean_mask(roi: Any) -> bool:
    try:
        return all(np.all(np.isin(p.data, (0, 1))) for p in roi.mask)
    except Exception:  # pragma: no cover - defensive
        return False


def align_shapes(
    display: Sequence[ROIList],
    names: Sequence[str],
    color_by: str = "session",
) -> tuple[dict[str, Any], list[str]]:
    """Keyword arguments of one Shapes layer showing every session's ROIs.

    Parameters
    ----------
    display : sequence of ROIList
        Each session's ROIs, already in the reference space.
    names : sequence of str
        Session names.
    color_by : {'session', 'id'}
        Outline colour per session, or per id (the same cell in the same colour).

    Returns
    -------
    kwargs : dict
        ``data``, ``shape_type``, ``features`` (see the module notes), colours,
        ``ndim=3``, ``text`` (the ids, hidden) and ``metadata``
        (``{'napari_sima': {'kind': 'session_rois', ...}}``).
    warnings : list of str
        Messages about ROIs that could not be shown (empty ROIs).
    """
    import warnings

    import pandas as pd

    data: list[np.ndarray] = []
    frames: list[pd.DataFrame] = []
    messages: list[str] = []
    offset = 0
    for s, (rois, name) in enumerate(zip(display, names, strict=True)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            kw = rois_to_shapes(rois, ndim=3)
        messages.extend(f"{name}: {w.message}" for w in caught)
        df = kw["features"].copy()
        df["index"] = df["roi"].astype("Int64")
        df["roi"] = (df["roi"] + offset).astype("Int64")
        df["session"] = pd.array([s] * len(df), dtype="Int64")
        df["session_name"] = pd.Series([name] * len(df), dtype=object)
        df["id_text"] = pd.Series(["" if v is None else str(v) for v in df["id"]], dtype=object)
        data.extend(kw["data"])
        frames.append(df)
        offset += len(rois)
    columns = [*frames[0].columns] if frames else []
    features = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    edge = align_colors(features, color_by)
    face = edge.copy()
    if len(face):
        face[:, 3] = 0.0
    kwargs: dict[str, Any] = {
        "data": data,
        "shape_type": ["polygon"] * len(data),
        "features": features,
        "ndim": 3,
        "text": {
            "string": "{id_text}",
            "size": 9,
            "color": "white",
            "anchor": "center",
            "visible": False,
        },
        "metadata": {METADATA_KEY: {"kind": ALIGN_KIND, "sessions": list(names)}},
    }
    if len(edge):
        kwargs["edge_color"] = edge
        kwargs["face_color"] = face
    return kwargs, messages


def align_colors(features: pd.DataFrame, color_by: str = "session") -> np.ndarray:
    """``(n, 4)`` RGBA edge colours of the align layer's shapes.

    Parameters
    ----------
    features : pandas.DataFrame
        The align layer's features (``session`` and ``id`` columns).
    color_by : {'session', 'id'}
        Colour mode.

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    ValueError
        For an unknown mode.
    """
    if color_by not in COLOR_MODES:
        raise ValueError(f"color_by must be one of {COLOR_MODES}, got {color_by!r}")
    n = len(features)
    out = np.ones((n, 4))
    if not n:
        return out
    if color_by == "session":
        sessions = features["session"].fillna(-1).to_numpy(dtype=int)
        for i, s in enumerate(sessions):
            out[i, :3] = session_color(s) if s >= 0 else (0.6, 0.6, 0.6)
    else:
        for i, ident in enumerate(features["id"].tolist()):
            out[i, :3] = id_color(ident)
    return out


def refs_of_rows(features: pd.DataFrame, rows: Any) -> list[tuple[int, int]]:
    """``(session, ROI index)`` of the given align-layer rows (no duplicates, in order).

    Rows of shapes without a session (drawn by the user) are left out.
    """
    out: list[tuple[int, int]] = []
    for i in sorted(int(r) for r in rows):
        if i >= len(features):
            continue
        s, k = features["session"].iloc[i], features["index"].iloc[i]
        if _missing(s) or _missing(k):
            continue
        ref = (int(s), int(k))
        if ref not in out:
            out.append(ref)
    return out


def _missing(value: Any) -> bool:
    import pandas as pd

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def all_tags(lists: Sequence[ROIList]) -> list[str]:
    """Every tag found in the ROI lists, sorted."""
    found: set[str] = set()
    for rois in lists:
        for roi in rois:
            found |= set(roi.tags)
    return sorted(found)


def estimate_report(result: TransformedROIs) -> str:
    """Quality of a transform estimate, for the dock (one line per plane, then counts).

    Parameters
    ----------
    result : TransformedROIs
        From :func:`napari_sima.core.import_rois.iter_transformed_ROIs`.

    Returns
    -------
    str
    """
    lines = []
    for e in result.estimates:
        if e is None:
            continue
        where = f"plane {e.plane}: " if e.plane is not None and len(result.estimates) > 1 else ""
        if e.mode == "image":
            parts = [f"{e.method} from images"]
            if e.ncc is not None:
                text = f"correlation {e.ncc:.2f}"
                if e.initial_ncc is not None:
                    text += f" (unaligned {e.initial_ncc:.2f})"
                parts.append(text)
            if e.significance is not None:
                parts.append(f"significance {e.significance:.1f}")
            if e.overlap is not None:
                parts.append(f"overlap {100 * e.overlap:.0f}%")
            if e.n_matches:
                parts.append(f"{e.n_inliers}/{e.n_matches} feature matches kept")
            lines.append(where + ", ".join(parts))
        elif e.mode == "anchor":
            text = f"{e.method} from anchors"
            if e.rms_residual is not None:
                text += f", RMS residual {e.rms_residual:.2f} px"
            lines.append(where + text)
        else:
            lines.append(where + (e.note or f"{e.method} ({e.mode})"))
    lines.append(f"{len(result.rois)} ROIs of set {result.source_label!r} transformed")
    if result.clipped:
        lines.append(f"clipped at the frame edge: {_short(result.clipped)}")
    if result.dropped:
        lines.append(f"dropped (outside the frame): {_short(result.dropped)}")
    return "\n".join(lines)


def _short(names: Sequence[str], limit: int = 8) -> str:
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


__all__ = [
    "ALIGN_KIND",
    "ALIGN_LAYER_NAME",
    "COLOR_MODES",
    "PREVIEW_COLOR",
    "PREVIEW_PREFIX",
    "SESSION_COLORS",
    "AlignState",
    "Alignment",
    "Session",
    "align_colors",
    "align_shapes",
    "all_tags",
    "estimate_report",
    "frame_shape3",
    "id_color",
    "map_rois",
    "refs_of_rows",
    "roi_set_labels",
    "session_color",
]
