"""Import ROIs from another session of the same field of view.

This is SIMA's ``ImagingDataset.import_transformed_ROIs``.

The transform from the source dataset to the target dataset is found per plane,
either

* automatically, by registering the two datasets' time averages (or their CA1PC
  processed images) with :class:`~napari_sima.core.transform.ImageRegistration`
  (every method, not only SIMA's 'affine'); or
* from *anchor* ROIs: one polygon per plane, stored under the same label in both
  datasets, marking the same landmarks (SIMA's section 3.6; planes without anchors
  take the transform of the nearest plane before, else after, with a warning).

The source ROIs are mapped through it (:meth:`~napari_sima.core.ROIList.transform`;
weighted masks, which have no outline, are resampled instead), clipped to the target
frame, and given the target's image shape; ROIs left entirely outside are dropped
with a warning naming them.

Three entry points:

* :func:`iter_transformed_ROIs` / :func:`transformed_ROIs` — estimate and transform
  **without storing** (a GUI previews the result), returning a
  :class:`TransformedROIs`;
* :func:`store_transformed_ROIs` — store such a result in the target dataset;
* :func:`iter_import_transformed_ROIs` / :func:`import_transformed_ROIs` — both in
  one go (what :meth:`ImagingDataset.import_transformed_ROIs` calls); they return the
  stored :class:`~napari_sima.core.ROIList` (SIMA returned ``None``).

The generators yield ``(done, total)``: first, if a dataset's time average is not
cached yet, the frames of its projection pass; then the estimation steps of the
planes.  Closing a generator cancels the work, and nothing is stored.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np

from .roi import ROI, ROIList
from .transform import (
    ImageRegistration,
    TransformError,
    TransformEstimate,
    anchor_transform,
    check_method,
    fit_transform,
)

if TYPE_CHECKING:
    from .dataset import ImagingDataset

__all__ = [
    "PRE_PROCESSING_METHODS",
    "TransformedROIs",
    "default_target_label",
    "import_transformed_ROIs",
    "iter_import_transformed_ROIs",
    "iter_transformed_ROIs",
    "registration_images",
    "store_transformed_ROIs",
    "transformed_ROIs",
]

#: Accepted ``pre_processing_method`` values.
PRE_PROCESSING_METHODS = (None, "ca1pc")

_REGISTRATION_FIELDS = frozenset(f.name for f in dataclasses.fields(ImageRegistration))


@dataclasses.dataclass
class TransformedROIs:
    """Source ROIs mapped into a target dataset (not stored yet).

    Attributes
    ----------
    rois : ROIList
        The transformed ROIs, clipped to the target frame, with the target's
        ``im_shape``.
    estimates : list of TransformEstimate or None
        One per target plane: the transform and how it was found (``None`` for
        planes without source ROIs in automatic mode, which are not estimated).
    source_label : str
        The source ROI set.
    method : str
        Transform method.
    anchor_label : str or None
        Anchor ROI set (anchor mode).
    dropped : list of str
        ROIs left entirely outside the target frame (not in :attr:`rois`).
    clipped : list of str
        ROIs cut by the target frame's edge.
    """

    rois: ROIList
    estimates: list[TransformEstimate | None]
    source_label: str
    method: str
    anchor_label: str | None = None
    dropped: list[str] = dataclasses.field(default_factory=list)
    clipped: list[str] = dataclasses.field(default_factory=list)

    @property
    def transforms(self) -> list[Any]:
        """Per-plane transforms (scikit-image objects, source to target; or None)."""
        return [None if e is None else e.transform for e in self.estimates]

    def summary(self) -> str:
        """One line per plane plus the dropped / clipped ROIs, for a status panel."""
        lines = [e.note for e in self.estimates if e is not None]
        lines.append(f"{len(self.rois)} ROIs transformed from set {self.source_label!r}")
        if self.clipped:
            lines.append(f"clipped at the frame edge: {', '.join(self.clipped)}")
        if self.dropped:
            lines.append(f"dropped (outside the target frame): {', '.join(self.dropped)}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------
def _roi_set(dataset: ImagingDataset, label: str | None, what: str) -> tuple[str, ROIList]:
    from .roi_store import most_recent_label

    sets = dataset.ROIs
    if not sets:
        raise KeyError(f"the {what} dataset {_name(dataset)} has no ROI sets")
    if label is None:
        label = most_recent_label({k: v.timestamp or "" for k, v in sets.items()})
        assert label is not None
    if label not in sets:
        raise KeyError(
            f"no ROI set {label!r} in the {what} dataset {_name(dataset)}; its sets: {sorted(sets)}"
        )
    return label, sets[label]


def _name(dataset: ImagingDataset) -> str:
    return repr(dataset.savedir) if dataset.savedir else "(in memory)"


def _roi_name(roi: ROI, k: int) -> str:
    if roi.label is not None:
        return repr(roi.label)
    if roi.id is not None:
        return f"id {roi.id!r}"
    return f"#{k}"


def _split_kwargs(
    method: str, anchor: bool, kwargs: dict[str, Any]
) -> tuple[dict[str, Any], ImageRegistration]:
    """Split ``method_kwargs`` into estimator keywords and registration settings."""
    method_kw: dict[str, Any] = {}
    reg_kw: dict[str, Any] = {}
    registration = kwargs.pop("registration", None)
    for key, value in kwargs.items():
        if key == "order" and method == "polynomial":
            method_kw[key] = value
        elif key in _REGISTRATION_FIELDS and not anchor:
            reg_kw[key] = value
        else:
            valid = ["order (polynomial)"] if method == "polynomial" else []
            if not anchor:
                valid += ["registration", *sorted(_REGISTRATION_FIELDS)]
            raise TypeError(
                f"unexpected keyword {key!r} for method {method!r} in "
                f"{'anchor' if anchor else 'automatic'} mode; accepted: "
                f"{', '.join(valid) or 'none'}"
            )
    if registration is not None:
        if not isinstance(registration, ImageRegistration):
            raise TypeError(
                f"registration must be an ImageRegistration, got {type(registration).__name__}"
            )
        if anchor:
            raise TypeError("registration settings do not apply in anchor mode")
        registration = dataclasses.replace(registration, **reg_kw)
    else:
        registration = ImageRegistration(**reg_kw)
    return method_kw, registration


def _check_pre_processing(method: Any, kwargs: Any) -> dict[str, Any]:
    if method is not None and (not isinstance(method, str) or method.lower() != "ca1pc"):
        raise ValueError(f"pre_processing_method must be None or 'ca1pc', got {method!r}")
    kw = dict(kwargs or {})
    if method is None:
        if kw:
            raise ValueError("pre_processing_kwargs given without a pre_processing_method")
        return kw
    unknown = set(kw) - {"x_diameter", "y_diameter"}
    if unknown:
        raise TypeError(
            f"unexpected pre_processing_kwargs {sorted(unknown)}; 'ca1pc' accepts "
            f"x_diameter and y_diameter"
        )
    for key in ("x_diameter", "y_diameter"):
        v = kw.get(key, 10)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(
                f"pre_processing_kwargs[{key!r}] must be a positive integer, got {v!r}"
            )
        kw[key] = int(v)
    return kw


# ---------------------------------------------------------------------------------------
# Registration images
# ---------------------------------------------------------------------------------------
def _iter_time_average(dataset: ImagingDataset) -> Generator[tuple[int, int], None, np.ndarray]:
    moments = yield from dataset.iter_projections()
    return moments.mean


def _ca1pc_images(average: np.ndarray, kw: dict[str, Any]) -> np.ndarray:
    """CA1PC processed planes (float; NaN where the average is unobserved)."""
    from .segment.ca1pc import ca1pc_processed_plane

    out = np.stack(
        [ca1pc_processed_plane(p, kw["x_diameter"], kw["y_diameter"]) for p in average]
    ).astype(float)
    out[~np.isfinite(average)] = np.nan
    return out


def registration_images(
    dataset: ImagingDataset,
    channel: int | str = 0,
    pre_processing_method: str | None = None,
    pre_processing_kwargs: dict[str, Any] | None = None,
) -> np.ndarray:
    """Return the images used to register a dataset: ``(planes, rows, columns)`` float.

    Parameters
    ----------
    dataset : ImagingDataset
    channel : int or str
        Channel by index or name.
    pre_processing_method : {None, 'ca1pc'}
        ``None``: the channel's time average; ``'ca1pc'``: its CA1PC processed
        image (:func:`napari_sima.core.segment.ca1pc.ca1pc_processed_plane`: CLAHE
        with tiles about one cell wide, then an unsharp mask), NaN where the average
        is unobserved.
    pre_processing_kwargs : dict, optional
        ``x_diameter``, ``y_diameter`` for 'ca1pc' (default 10).

    Returns
    -------
    ndarray
    """
    kw = _check_pre_processing(pre_processing_method, pre_processing_kwargs)
    ch = dataset.resolve_channel(channel)
    average = np.asarray(dataset.time_averages[..., ch], dtype=float)
    return average if pre_processing_method is None else _ca1pc_images(average, kw)


# ---------------------------------------------------------------------------------------
# Applying transforms
# ---------------------------------------------------------------------------------------
def _is_weighted(roi: ROI) -> bool:
    if roi.kind != "mask":
        return False
    return any(m.nnz and not np.all((m.data == 0) | (m.data == 1)) for m in roi.mask)


def _inverse(estimate: TransformEstimate, source_shape: tuple[int, int]) -> Any:
    """Target -> source map of an estimate (fitted on a grid for polynomials)."""
    tf = estimate.transform
    try:
        return tf.inverse
    except NotImplementedError:
        from skimage.transform import PolynomialTransform

        rows, cols = source_shape
        gx, gy = np.meshgrid(np.linspace(0, cols, 24), np.linspace(0, rows, 24))
        src = np.column_stack([gx.ravel(), gy.ravel()])
        inv, why = fit_transform(PolynomialTransform, tf(src), src, order=_poly_order(tf))
        if inv is None:
            raise TransformError(f"cannot invert the polynomial transform: {why}") from None
        return inv


def _poly_order(tf: Any) -> int:
    n = tf.params.shape[1]
    order = 0
    while (order + 1) * (order + 2) // 2 < n:
        order += 1
    return order


def _warp_weighted(
    roi: ROI,
    estimates: list[TransformEstimate | None],
    source_shape: tuple[int, int, int],
    target_shape: tuple[int, int, int],
) -> list[Any]:
    """Resample a weighted mask into the target frame (bilinear; weights kept)."""
    from scipy import sparse
    from skimage.transform import warp

    n_planes, rows, cols = target_shape
    planes = roi.mask
    out = []
    for z in range(n_planes):
        plane = planes[z] if z < len(planes) else None
        if plane is None or plane.nnz == 0:
            out.append(sparse.csr_matrix((rows, cols), dtype=float))
            continue
        est = estimates[z] if z < len(estimates) else None
        if est is None:
            raise ValueError(f"ROI {roi.label!r} lies on plane {z}, which has no transform")
        inv = _inverse(est, source_shape[1:])

        def inverse_map(colrow: np.ndarray, inv: Any = inv) -> np.ndarray:
            return np.asarray(inv(colrow + 0.5), dtype=float) - 0.5

        dense = np.asarray(plane.toarray(), dtype=float)
        warped = warp(
            dense, inverse_map, output_shape=(rows, cols), order=1, cval=0.0, preserve_range=True
        )
        peak = float(np.max(np.abs(dense)))
        warped[np.abs(warped) < 1e-6 * peak] = 0.0
        out.append(sparse.csr_matrix(warped))
    return out


def _clip_polygons(polys: list[np.ndarray], frame: Any) -> tuple[list[np.ndarray], bool]:
    """Intersect ``(N, 3)`` polygons with the frame; return the parts and whether cut."""
    import shapely

    parts: list[np.ndarray] = []
    cut = False
    for verts in polys:
        z = float(verts[0, 2])
        poly = shapely.Polygon(verts[:, :2])
        if not poly.is_valid:
            poly = shapely.make_valid(poly)
        if shapely.covers(frame, poly):  # nothing to clip: keep the vertices as they are
            parts.append(verts)
            continue
        cut = True
        inside = shapely.intersection(poly, frame)
        for geom in getattr(inside, "geoms", [inside]):
            if geom.geom_type == "Polygon" and not geom.is_empty and geom.area > 0:
                xy = np.asarray(geom.exterior.coords, dtype=float)[:-1]
                parts.append(np.column_stack([xy, np.full(len(xy), z)]))
            elif geom.geom_type in ("MultiPolygon", "GeometryCollection"):
                for g in geom.geoms:
                    if g.geom_type == "Polygon" and g.area > 0:
                        xy = np.asarray(g.exterior.coords, dtype=float)[:-1]
                        parts.append(np.column_stack([xy, np.full(len(xy), z)]))
    return parts, cut


def apply_transforms(
    rois: ROIList,
    estimates: list[TransformEstimate | None],
    source_shape: tuple[int, int, int],
    target_shape: tuple[int, int, int],
    copy_properties: bool = True,
) -> tuple[ROIList, list[str], list[str]]:
    """Map ROIs through per-plane transforms, clip them to the target frame.

    Parameters
    ----------
    rois : ROIList
        Source ROIs.
    estimates : list of TransformEstimate or None
        Per plane.
    source_shape, target_shape : (planes, rows, columns)
        Frame shapes.
    copy_properties : bool
        Keep label, id and tags.

    Returns
    -------
    rois : ROIList
        Transformed ROIs with ``im_shape=target_shape``.
    dropped : list of str
        Names of ROIs entirely outside the target frame.
    clipped : list of str
        Names of ROIs cut by the frame edge.
    """
    import shapely

    n_planes, rows, cols = target_shape
    frame = shapely.box(0.0, 0.0, float(cols), float(rows))
    out: list[ROI] = []
    dropped: list[str] = []
    clipped: list[str] = []
    for k, roi in enumerate(rois):
        name = _roi_name(roi, k)
        props: dict[str, Any] = (
            {"label": roi.label, "id": roi.id, "tags": set(roi.tags)} if copy_properties else {}
        )
        if _is_weighted(roi):
            planes = _warp_weighted(roi, estimates, source_shape, target_shape)
            if not any(p.nnz for p in planes):
                dropped.append(name)
                continue
            out.append(ROI(mask=planes, im_shape=target_shape, **props))
            continue
        moved = ROIList([roi]).transform(estimates, im_shape=None, copy_properties=False)[0]
        parts, cut = _clip_polygons(moved.polygon_arrays, frame)
        if not parts:
            dropped.append(name)
            continue
        if cut:
            clipped.append(name)
        out.append(ROI(polygons=parts, im_shape=target_shape, **props))
    return ROIList(out), dropped, clipped


# ---------------------------------------------------------------------------------------
# Estimation
# ---------------------------------------------------------------------------------------
def _roi_planes(rois: ROIList) -> set[int]:
    planes: set[int] = set()
    for roi in rois:
        if _is_weighted(roi):
            planes.update(z for z, m in enumerate(roi.mask) if m.nnz)
        else:
            planes.update(int(p[0, 2]) for p in roi.polygon_arrays)
    return planes


def _anchor_vertices(anchors: ROIList, plane: int) -> np.ndarray | None:
    """Vertices ``(x, y)`` of the first anchor polygon on ``plane`` (SIMA's rule)."""
    for roi in anchors:
        polys = roi.polygon_arrays
        if polys and int(polys[0][0, 2]) == plane:
            return polys[0][:, :2]
    return None


def _anchor_estimates(
    target: ImagingDataset,
    source: ImagingDataset,
    anchor_label: str,
    method: str,
    method_kw: dict[str, Any],
) -> Generator[tuple[int, int], None, list[TransformEstimate | None]]:
    n_planes = target.frame_shape[0]
    src_shape = source.frame_shape[1:3]
    _, trg_anchors = _roi_set(target, anchor_label, "target")
    _, src_anchors = _roi_set(source, anchor_label, "source")
    estimates: list[TransformEstimate | None] = []
    for z in range(n_planes):
        trg = _anchor_vertices(trg_anchors, z)
        src = _anchor_vertices(src_anchors, z)
        if trg is None or src is None:
            estimates.append(None)
        else:
            estimates.append(
                anchor_transform(src, trg, method, source_shape=src_shape, plane=z, **method_kw)
            )
        yield z + 1, n_planes
    missing = [z for z, e in enumerate(estimates) if e is None]
    if len(missing) == n_planes:
        raise TransformError(
            f"no plane has an anchor ROI {anchor_label!r} in both datasets (an anchor is a "
            f"polygon whose vertices lie on its plane, at most one per plane)"
        )
    if missing:
        origin = {z: z for z, e in enumerate(estimates) if e is not None}
        for z in range(1, n_planes):  # forward: from the previous plane
            if estimates[z] is None and estimates[z - 1] is not None:
                origin[z] = origin[z - 1]
                estimates[z] = _filled(estimates[z - 1], z, origin[z])
        for z in range(n_planes - 2, -1, -1):  # backward: from the next plane
            if estimates[z] is None and estimates[z + 1] is not None:
                origin[z] = origin[z + 1]
                estimates[z] = _filled(estimates[z + 1], z, origin[z])
        warnings.warn(
            f"anchor ROI {anchor_label!r} is missing on plane(s) {missing} of one of the "
            f"datasets; they use the transform of plane(s) "
            f"{', '.join(f'{z} <- {origin[z]}' for z in missing)}",
            UserWarning,
            stacklevel=3,
        )
    return estimates


def _filled(estimate: TransformEstimate | None, plane: int, origin: int) -> TransformEstimate:
    assert estimate is not None
    return estimate.with_plane(
        plane, "filled", f"plane {plane}: no anchor; transform of plane {origin} used"
    )


def iter_transformed_ROIs(
    target: ImagingDataset,
    source_dataset: ImagingDataset,
    method: str = "affine",
    source_channel: int | str = 0,
    target_channel: int | str = 0,
    source_label: str | None = None,
    anchor_label: str | None = None,
    copy_properties: bool = True,
    pre_processing_method: str | None = None,
    pre_processing_kwargs: dict[str, Any] | None = None,
    **method_kwargs: Any,
) -> Generator[tuple[int, int], None, TransformedROIs]:
    """Estimate the transform and map the source ROIs, without storing anything.

    A generator yielding ``(done, total)`` (see the module notes); its return value
    is a :class:`TransformedROIs`.  Parameters as :func:`import_transformed_ROIs`
    (without ``target_label``).
    """
    from .dataset import ImagingDataset

    for name, ds in (("target", target), ("source_dataset", source_dataset)):
        if not isinstance(ds, ImagingDataset):
            raise TypeError(f"{name} must be an ImagingDataset, got {type(ds).__name__}")
    method = check_method(method)
    anchor = anchor_label is not None
    method_kw, registration = _split_kwargs(method, anchor, dict(method_kwargs))
    pre_kw = _check_pre_processing(pre_processing_method, pre_processing_kwargs)
    src_ch = source_dataset.resolve_channel(source_channel)
    trg_ch = target.resolve_channel(target_channel)
    label, rois = _roi_set(source_dataset, source_label, "source")
    source_shape = tuple(source_dataset.frame_shape[:3])
    target_shape = tuple(target.frame_shape[:3])
    if not rois:
        raise ValueError(f"the source ROI set {label!r} is empty")
    needed = sorted(_roi_planes(rois))
    bad = [z for z in needed if z >= target_shape[0]]
    if bad:
        raise ValueError(
            f"source ROIs lie on plane(s) {bad} but the target has {target_shape[0]} plane(s)"
        )

    if anchor:
        estimates = yield from _anchor_estimates(
            target, source_dataset, str(anchor_label), method, method_kw
        )
    else:
        if source_shape[0] != target_shape[0]:
            raise ValueError(
                f"automatic registration pairs planes: the source has {source_shape[0]} and "
                f"the target {target_shape[0]} plane(s); use anchor ROIs instead"
            )
        averages = []
        for ds, ch in ((source_dataset, src_ch), (target, trg_ch)):
            mean = yield from _iter_time_average(ds)
            img = np.asarray(mean[..., ch], dtype=float)
            averages.append(img if pre_processing_method is None else _ca1pc_images(img, pre_kw))
        src_img, trg_img = averages
        steps = registration.n_steps(method)
        total = steps * len(needed)
        estimates = [None] * target_shape[0]
        yield 0, total
        for n, z in enumerate(needed):
            gen = registration.iter_estimate(src_img[z], trg_img[z], method, plane=z, **method_kw)
            try:
                while True:
                    try:
                        done, _ = next(gen)
                    except StopIteration as stop:
                        estimates[z] = stop.value
                        break
                    yield n * steps + done, total
            finally:
                gen.close()  # also when the caller closes us: cancel the estimate
    transformed, dropped, clipped = apply_transforms(
        rois, estimates, source_shape, target_shape, copy_properties=copy_properties
    )
    if dropped:
        warnings.warn(
            f"{len(dropped)} ROI(s) of set {label!r} fall entirely outside the target frame "
            f"and were dropped: {', '.join(dropped)}",
            UserWarning,
            stacklevel=2,
        )
    return TransformedROIs(
        rois=transformed,
        estimates=estimates,
        source_label=label,
        method=method,
        anchor_label=None if anchor_label is None else str(anchor_label),
        dropped=dropped,
        clipped=clipped,
    )


def _drive(gen: Generator[Any, None, Any]) -> Any:
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def transformed_ROIs(  # noqa: N802 - SIMA's capitalisation
    target: ImagingDataset,
    source_dataset: ImagingDataset,
    method: str = "affine",
    source_channel: int | str = 0,
    target_channel: int | str = 0,
    source_label: str | None = None,
    anchor_label: str | None = None,
    copy_properties: bool = True,
    pre_processing_method: str | None = None,
    pre_processing_kwargs: dict[str, Any] | None = None,
    **method_kwargs: Any,
) -> TransformedROIs:
    """Preview: estimate the transform and map the source ROIs, storing nothing.

    Same parameters as :func:`import_transformed_ROIs` (without ``target_label``);
    store the result later with :func:`store_transformed_ROIs`.
    """
    return _drive(
        iter_transformed_ROIs(
            target,
            source_dataset,
            method=method,
            source_channel=source_channel,
            target_channel=target_channel,
            source_label=source_label,
            anchor_label=anchor_label,
            copy_properties=copy_properties,
            pre_processing_method=pre_processing_method,
            pre_processing_kwargs=pre_processing_kwargs,
            **method_kwargs,
        )
    )


def default_target_label(target: ImagingDataset, source_label: str) -> str:
    """Label under which imported ROIs are stored when none is given.

    The source set's label, so that the same cells carry the same set name in every
    session; if the target already has a set of that name, ``'<label>_<timestamp>'``
    (an existing set is only replaced when its label is given explicitly).
    """
    from .dataset import timestamp

    if source_label not in target.ROIs:
        return source_label
    return f"{source_label}_{timestamp()}"


def store_transformed_ROIs(  # noqa: N802
    target: ImagingDataset,
    result: TransformedROIs,
    target_label: str | None = None,
    provenance: dict[str, Any] | None = None,
) -> str:
    """Store previewed ROIs in the target dataset; return the label used.

    Parameters
    ----------
    target : ImagingDataset
    result : TransformedROIs
        From :func:`transformed_ROIs`.
    target_label : str, optional
        Default: :func:`default_target_label`.
    provenance : dict, optional
        Record kept with the stored set; default: step ``'transform-import'`` with the
        method, the anchor and source labels and the estimated transforms.

    Raises
    ------
    ValueError
        If no ROI is left to store.
    PermissionError
        If the target is read-only.
    """
    if not isinstance(result, TransformedROIs):
        raise TypeError(f"result must be a TransformedROIs, got {type(result).__name__}")
    if not result.rois:
        raise ValueError(
            f"none of the ROIs of set {result.source_label!r} falls inside the target frame; "
            f"nothing to import"
        )
    label = (
        default_target_label(target, result.source_label)
        if target_label is None
        else str(target_label)
    )
    if provenance is None:
        from .provenance import make_provenance

        provenance = make_provenance(
            "transform-import",
            {
                "method": result.method,
                "transforms": [
                    None if t is None else getattr(t, "params", repr(t))
                    for t in result.transforms
                ],
            },
            {
                "source_rois": {"label": result.source_label},
                "anchor_rois": {"label": result.anchor_label},
                "dropped": list(result.dropped),
            },
        )
    return target.add_ROIs(result.rois, label=label, provenance=provenance)


def iter_import_transformed_ROIs(  # noqa: N802
    target: ImagingDataset,
    source_dataset: ImagingDataset,
    method: str = "affine",
    source_channel: int | str = 0,
    target_channel: int | str = 0,
    source_label: str | None = None,
    target_label: str | None = None,
    anchor_label: str | None = None,
    copy_properties: bool = True,
    pre_processing_method: str | None = None,
    pre_processing_kwargs: dict[str, Any] | None = None,
    **method_kwargs: Any,
) -> Generator[tuple[int, int], None, ROIList]:
    """:func:`import_transformed_ROIs` as a generator yielding ``(done, total)``.

    Closing it before the end cancels the import (nothing is stored).
    """
    target._check_writable()
    result = yield from iter_transformed_ROIs(
        target,
        source_dataset,
        method=method,
        source_channel=source_channel,
        target_channel=target_channel,
        source_label=source_label,
        anchor_label=anchor_label,
        copy_properties=copy_properties,
        pre_processing_method=pre_processing_method,
        pre_processing_kwargs=pre_processing_kwargs,
        **method_kwargs,
    )
    label = store_transformed_ROIs(target, result, target_label)
    return target.ROIs[label]


def import_transformed_ROIs(  # noqa: N802
    target: ImagingDataset,
    source_dataset: ImagingDataset,
    method: str = "affine",
    source_channel: int | str = 0,
    target_channel: int | str = 0,
    source_label: str | None = None,
    target_label: str | None = None,
    anchor_label: str | None = None,
    copy_properties: bool = True,
    pre_processing_method: str | None = None,
    pre_processing_kwargs: dict[str, Any] | None = None,
    **method_kwargs: Any,
) -> ROIList:
    """Map another session's ROIs onto ``target`` and store them there.

    Parameters
    ----------
    target : ImagingDataset
        The dataset receiving the ROIs.
    source_dataset : ImagingDataset
        The dataset holding them (same field of view, roughly).
    method : str
        One of :data:`~napari_sima.core.transform.METHODS`: 'euclidean',
        'similarity', 'affine', 'projective', 'polynomial' (``order`` keyword,
        default 2) or 'piecewise-affine'.
    source_channel, target_channel : int or str
        Channels (index or name) whose time averages are registered.
    source_label : str, optional
        Source ROI set (default: the most recent).
    target_label : str, optional
        Label of the stored set (default: :func:`default_target_label` — the source
        label, or ``'<label>_<timestamp>'`` if the target already has it).
    anchor_label : str, optional
        Use the anchor ROIs of this label (in both datasets) instead of registering
        images.
    copy_properties : bool
        Keep each ROI's label, id and tags.
    pre_processing_method : {None, 'ca1pc'}
        Register CA1PC processed images instead of plain time averages.
    pre_processing_kwargs : dict, optional
        ``x_diameter``, ``y_diameter`` for 'ca1pc'.
    **method_kwargs
        ``order`` for 'polynomial'; in automatic mode also ``registration`` (an
        :class:`~napari_sima.core.transform.ImageRegistration`) or any of its
        settings (e.g. ``detector='sift'``, ``min_significance=6``).

    Returns
    -------
    ROIList
        The stored ROIs (SIMA returned None).

    Raises
    ------
    TransformError
        If a transform cannot be estimated (nothing is imported).
    KeyError
        For a missing ROI set.
    ValueError, TypeError
        For bad arguments.
    """
    return _drive(
        iter_import_transformed_ROIs(
            target,
            source_dataset,
            method=method,
            source_channel=source_channel,
            target_channel=target_channel,
            source_label=source_label,
            target_label=target_label,
            anchor_label=anchor_label,
            copy_properties=copy_properties,
            pre_processing_method=pre_processing_method,
            pre_processing_kwargs=pre_processing_kwargs,
            **method_kwargs,
        )
    )
