"""Plane-by-plane segmentation, and segmenting a dataset into a stored ROI set.

:class:`PlaneWiseSegmentation` runs a strategy (or one strategy per plane) on each
plane of a volume separately and places the ROIs found in their plane of the full
volume.  :func:`iter_segment_dataset` is what ``ImagingDataset.segment`` /
``ImagingDataset.iter_segment`` run: segment the dataset (or only some planes),
store the ROIs as a labelled set, return them.

Differences from SIMA (section 7.1 of the behaviour notes)
---------------------------------------------------------
* ROIs found in plane ``p`` get ``im_shape = (planes, rows, columns)`` of the whole
  volume (SIMA kept a one-plane ``im_shape`` on masks moved to plane ``p``, which
  then cut them back to the first, empty plane).  Polygon ROIs get ``z = p``.
* A list of strategies of the wrong length raises ``ValueError`` naming both numbers.
* Segmenting only some planes (``planes=[...]``) is new.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from ..records import segment_record
from ..roi import ROI, ROIList
from .base import SegmentationStrategy, SegmentGenerator, SegmentProgress, drive, scaled

if TYPE_CHECKING:
    from ..dataset import ImagingDataset

__all__ = [
    "PlaneWiseSegmentation",
    "iter_segment_dataset",
    "normalize_planes",
    "place_in_plane",
    "plane_dataset",
    "segment_dataset",
]


@dataclasses.dataclass
class PlaneWiseSegmentation(SegmentationStrategy):
    """Segment each plane of a volume on its own.

    Parameters
    ----------
    plane_strategy : SegmentationStrategy or list of SegmentationStrategy
        One strategy applied to every plane, or exactly one per plane (in order).

    Raises
    ------
    TypeError
        If ``plane_strategy`` is not a strategy or a non-empty list of them.

    Notes
    -----
    Plane ``p`` is segmented as the in-memory sub-dataset ``dataset[:, :, p]``
    (its strategy's own post-processing steps included); its ROIs are moved to plane
    ``p`` of the full volume.  Steps appended to the ``PlaneWiseSegmentation``
    itself then run on the ROIs of all planes together.

    Examples
    --------
    >>> from napari_sima.core.segment.stica import STICA
    >>> PlaneWiseSegmentation(STICA(components=10)).parameters()["strategy"]
    'PlaneWiseSegmentation'
    """

    plane_strategy: SegmentationStrategy | list[SegmentationStrategy]

    def __post_init__(self) -> None:
        value = self.plane_strategy
        if isinstance(value, (list, tuple)):
            if not value:
                raise TypeError("PlaneWiseSegmentation: the list of plane strategies is empty")
            for i, s in enumerate(value):
                if not isinstance(s, SegmentationStrategy):
                    raise TypeError(
                        f"PlaneWiseSegmentation: plane_strategy[{i}] is a {type(s).__name__}, "
                        f"not a SegmentationStrategy"
                    )
            self.plane_strategy = list(value)
        elif not isinstance(value, SegmentationStrategy):
            raise TypeError(
                f"PlaneWiseSegmentation: plane_strategy must be a SegmentationStrategy or a "
                f"list of them (one per plane), got {type(value).__name__}"
            )

    def strategy_for(self, plane: int, num_planes: int) -> SegmentationStrategy:
        """Return the strategy of ``plane`` in a volume of ``num_planes`` planes.

        Raises
        ------
        ValueError
            If a list of strategies does not hold exactly one per plane.
        """
        if isinstance(self.plane_strategy, list):
            if len(self.plane_strategy) != num_planes:
                raise ValueError(
                    f"PlaneWiseSegmentation has {len(self.plane_strategy)} plane strategies "
                    f"for a volume of {num_planes} planes; give one strategy or exactly one "
                    f"per plane"
                )
            return self.plane_strategy[plane]
        return self.plane_strategy

    def check_dataset(self, dataset: ImagingDataset) -> None:
        """Raise ``ValueError`` if a list of plane strategies does not fit the planes."""
        n = dataset.frame_shape[0]
        self.strategy_for(0, n)

    def _iter_segment(self, dataset: ImagingDataset) -> SegmentGenerator:
        planes = list(range(dataset.frame_shape[0]))
        return (yield from self._iter_planes(dataset, planes))

    def _iter_planes(self, dataset: ImagingDataset, planes: list[int]) -> SegmentGenerator:
        num_planes = dataset.frame_shape[0]
        strategies = [self.strategy_for(p, num_planes) for p in planes]
        out: list[ROI] = []
        for i, (plane, strategy) in enumerate(zip(planes, strategies, strict=True)):
            # a one-plane dataset is segmented itself (its offset PCA cache is used)
            sub = dataset if num_planes == 1 else plane_dataset(dataset, plane)
            start, stop = i / len(planes), (i + 1) / len(planes)
            yield SegmentProgress(start, f"plane {plane}")
            work = _with_plane_message(strategy.iter_segment(sub), plane)
            found = yield from scaled(work, start, stop)
            out.extend(place_in_plane(roi, plane, dataset.frame_shape[:3]) for roi in found)
        return ROIList(out)

    def iter_segment_planes(self, dataset: ImagingDataset, planes: Any) -> SegmentGenerator:
        """Segment only some planes (then run this strategy's own steps), as a generator.

        Parameters
        ----------
        dataset : ImagingDataset
        planes : int or list of int
            Plane indices (negative ones count from the end).

        Returns
        -------
        ROIList
            As the generator's return value; ROIs live in their plane of the volume.
        """
        chosen = normalize_planes(planes, dataset.frame_shape[0])
        return (yield from self._iter_with_steps(self._iter_planes(dataset, chosen), dataset))


def _with_plane_message(gen: SegmentGenerator, plane: int) -> SegmentGenerator:
    try:
        item = next(gen)
        while True:
            yield SegmentProgress(item.fraction, f"plane {plane}: {item.message}")
            item = next(gen)
    except StopIteration as stop:
        return stop.value
    finally:
        gen.close()


def normalize_planes(planes: Any, num_planes: int) -> list[int]:
    """Return plane indices as a list of distinct non-negative ints.

    Parameters
    ----------
    planes : int or iterable of int
        Plane indices; negative ones count from the end, as in Python.
    num_planes : int
        Number of planes of the dataset.

    Raises
    ------
    IndexError
        If an index is outside the dataset's planes (the message names it and the
        number of planes).
    TypeError
        If an index is not an integer.
    ValueError
        If the list is empty or repeats a plane.
    """
    if isinstance(planes, (numbers.Integral, np.integer)) and not isinstance(planes, bool):
        items = [planes]
    else:
        try:
            items = list(planes)
        except TypeError:
            raise TypeError(f"planes must be an int or a list of ints, got {planes!r}") from None
    if not items:
        raise ValueError("planes is empty; give at least one plane index (or planes=None)")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (numbers.Integral, np.integer)):
            raise TypeError(f"plane indices must be integers, got {item!r}")
        p = int(item)
        if not -num_planes <= p < num_planes:
            raise IndexError(
                f"plane {p} does not exist: the dataset has {num_planes} plane(s) "
                f"(valid: 0..{num_planes - 1})"
            )
        p %= num_planes
        if p in out:
            raise ValueError(f"plane {p} is given twice in planes={items!r}")
        out.append(p)
    return out


def plane_dataset(dataset: ImagingDataset, plane: int) -> ImagingDataset:
    """Return plane ``plane`` of ``dataset`` as an in-memory one-plane dataset.

    The parent's time projections, when already computed or cached, are passed on,
    so the plane does not need its own pass over the movie.
    """
    sub = dataset[:, :, plane]
    moments = getattr(dataset, "_moments", None)
    if moments is None and dataset.savedir is not None:
        moments = dataset._load_cached_moments()
    if moments is not None:
        sub._moments = type(moments)(*(np.asarray(a)[plane : plane + 1] for a in moments))
    return sub


def place_in_plane(roi: ROI, plane: int, volume_shape: tuple[int, int, int]) -> ROI:
    """Return a copy of a one-plane ROI moved to ``plane`` of a ``(z, y, x)`` volume.

    Label, id and tags are kept; ``im_shape`` becomes the volume's shape.

    Raises
    ------
    ValueError
        If the ROI has pixels or vertices outside plane 0 of its own image, or does
        not fit the volume's rows and columns.
    """
    num_planes, rows, cols = (int(v) for v in volume_shape)
    props = {"label": roi.label, "id": roi.id, "tags": set(roi.tags)}
    if roi.kind == "polygons":
        polys = roi.polygon_arrays
        for verts in polys:
            if np.any(verts[:, 2] != 0):
                raise ValueError(
                    f"{roi!r} found in a one-plane dataset has vertices off plane 0"
                )
            verts[:, 2] = plane
        return ROI(polygons=polys, im_shape=(num_planes, rows, cols), **props)
    masks = roi.mask
    for z, m in enumerate(masks[1:], start=1):
        if m.nnz:
            raise ValueError(f"{roi!r} found in a one-plane dataset has pixels on plane {z}")
    first = masks[0]
    if first.shape != (rows, cols):
        coo = first.tocoo()
        if coo.nnz and (coo.row.max() >= rows or coo.col.max() >= cols):
            raise ValueError(f"{roi!r} does not fit a {rows} x {cols} plane")
        first = sparse.csr_matrix(
            (coo.data, (coo.row, coo.col)), shape=(rows, cols), dtype=first.dtype
        )
    empty = sparse.csr_matrix((rows, cols), dtype=first.dtype)
    planes = [empty.copy() for _ in range(num_planes)]
    planes[plane] = first.tocsr()
    return ROI(mask=planes, im_shape=(num_planes, rows, cols), **props)


def iter_segment_dataset(
    dataset: ImagingDataset,
    strategy: SegmentationStrategy,
    label: str | None = None,
    planes: Any = None,
) -> SegmentGenerator:
    """Segment a dataset and store the ROIs as a labelled set, as a generator.

    Parameters
    ----------
    dataset : ImagingDataset
    strategy : SegmentationStrategy
        With its post-processing steps.
    label : str, optional
        Name of the stored ROI set (default: the current timestamp, as SIMA).
    planes : int or list of int, optional
        Segment only these planes, each as ``dataset[:, :, p]`` with ``strategy``
        (a :class:`PlaneWiseSegmentation` uses its strategy for each plane); the
        ROIs are placed in their plane of the full volume.

    Yields
    ------
    SegmentProgress
        ``(fraction, message)``; closing the generator cancels: nothing is stored.

    Returns
    -------
    ROIList
        The ROIs, also stored with ``dataset.add_ROIs(rois, label)``.

    Raises
    ------
    TypeError
        If ``strategy`` is not a :class:`SegmentationStrategy`.
    IndexError, ValueError
        For plane indices that do not exist, or a strategy that cannot segment the
        dataset.
    PermissionError
        If the dataset is read-only (checked before any work).
    """
    if not isinstance(strategy, SegmentationStrategy):
        raise TypeError(
            f"strategy must be a SegmentationStrategy (e.g. STICA(...)), got "
            f"{type(strategy).__name__}"
        )
    if label is not None and not isinstance(label, str):
        raise TypeError(f"label must be a string or None, got {label!r}")
    if dataset.read_only:
        raise PermissionError(
            f"the dataset {dataset.savedir!r} is read-only; the ROIs could not be stored "
            f"(save it elsewhere first with dataset.save(savedir='new.sima'))"
        )
    if planes is None:
        found = strategy.iter_segment(dataset)
    else:
        chosen = normalize_planes(planes, dataset.frame_shape[0])
        if isinstance(strategy, PlaneWiseSegmentation):
            wrapper = strategy
        else:
            wrapper = PlaneWiseSegmentation(strategy)
        wrapper.check_dataset(dataset)
        found = wrapper.iter_segment_planes(dataset, chosen)
    rois = yield from scaled(found, 0.0, 0.99)
    rois = ROIList(list(rois))
    yield SegmentProgress(0.99, f"storing {len(rois)} ROIs")
    record = segment_record(dataset, strategy, None if planes is None else chosen)
    stored = dataset.add_ROIs(rois, label, provenance=record)
    yield SegmentProgress(1.0, f"{len(rois)} ROIs stored as {stored!r}")
    return rois


def segment_dataset(
    dataset: ImagingDataset,
    strategy: SegmentationStrategy,
    label: str | None = None,
    planes: Any = None,
    progress: Callable[[float, str], Any] | None = None,
) -> ROIList:
    """Segment a dataset, store the ROIs as a labelled set and return them.

    Same parameters as :func:`iter_segment_dataset`, plus ``progress`` called as
    ``progress(fraction, message)``.
    """
    return drive(iter_segment_dataset(dataset, strategy, label, planes), progress)
