"""Segmentation of CA1 pyramidal cells (SIMA's ``PlaneCA1PC``).

In hippocampal CA1 the pyramidal cells are packed side by side; the indicator fills
their cytoplasm and leaves the **nucleus dark**.  ``PlaneCA1PC`` therefore

1. cuts the plane by normalized cuts on an affinity that is lowered across bright
   cytoplasm (:class:`~napari_sima.core.segment.affinity.AffinityMatrixCA1PC`),
2. drops cuts smaller than ``min_cut_size`` pixels,
3. keeps the dark core of each cut (:class:`CA1PCNucleus`),
4. drops nuclei smaller than ``min_roi_size`` and those not round enough
   (:class:`~napari_sima.core.segment.postprocess.CircularityFilter`).

The processed image (:func:`processed_image_ca1pc`) equalises the time average locally
(CLAHE with tiles about one cell wide) and sharpens it (unsharp mask).

Departures from SIMA (no OpenCV)
--------------------------------
* CLAHE is :func:`skimage.exposure.equalize_adapthist` with a kernel of
  ``ceil(rows / (rows // y_diameter))`` x ``ceil(columns / (columns // x_diameter))``
  pixels, i.e. the tiles of OpenCV's ``tileGridSize = (columns // x_diameter,
  rows // y_diameter)``.  OpenCV's ``clipLimit = 20`` is a multiple of the mean count
  of a 256-bin tile histogram (``20 * tile_area / 256`` pixels per bin); scikit-image's
  ``clip_limit`` is a fraction of the tile area per bin, so the same limit is
  ``20 / 256 = 0.078125`` (:data:`CLAHE_CLIP_LIMIT`).  scikit-image also stretches the
  input to its full range and interpolates between tiles slightly differently, so the
  image is close to OpenCV's, not identical.
* The unsharp mask follows OpenCV's arithmetic: a Gaussian blur with sigma
  ``(y_diameter, x_diameter)``, truncated at 3 sigma with mirrored borders, rounded to
  8 bits, then ``1.5 * image - 0.5 * blur`` rounded and saturated to ``0..255``.
* ``to8bit`` treats NaN and negative values of the time average as 0 (SIMA's cast was
  undefined for them) and returns zeros for an all-zero image.
* The nucleus step uses the processed image of each ROI's own plane (SIMA: always
  plane 0, which is the same for the single-plane datasets it accepted) and skips
  ROIs whose pixels all have the same value (SIMA: Otsu failed).
* Output masks are **boolean** (SIMA: float 0/1; see :mod:`.normcut`).

This module is written from a behaviour description; it contains no SIMA code.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage, sparse

from ..roi import ROI, ROIList
from .affinity import AffinityMatrixCA1PC
from .base import (
    PostProcessingStep,
    SegmentationStrategy,
    SegmentGenerator,
    SegmentProgress,
    scaled,
)
from .normcut import PlaneNormalizedCuts
from .postprocess import CircularityFilter, SizeFilter

if TYPE_CHECKING:
    from ..dataset import ImagingDataset

__all__ = [
    "CA1PCNucleus",
    "CLAHE_CLIP_LIMIT",
    "PlaneCA1PC",
    "ca1pc_processed_plane",
    "processed_image_ca1pc",
    "to8bit",
]

#: scikit-image clip limit equal to OpenCV's ``clipLimit=20`` with 256 bins.
CLAHE_CLIP_LIMIT = 20.0 / 256.0
#: Weights of the unsharp mask: ``1.5 * image - 0.5 * blurred``.
UNSHARP_WEIGHTS = (1.5, -0.5)


# ---------------------------------------------------------------------------------------
# the processed image
# ---------------------------------------------------------------------------------------
def to8bit(image: NDArray[Any]) -> NDArray[np.uint8]:
    """Scale an image so that its maximum is 255 and truncate to ``uint8``.

    NaN and negative values count as 0; an image without a positive value gives zeros.

    Examples
    --------
    >>> to8bit(np.array([0.0, 1.0, 2.0])).tolist()
    [0, 127, 255]
    """
    a = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    a = np.maximum(a, 0.0)
    peak = float(a.max()) if a.size else 0.0
    if not peak > 0:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.minimum(255.0 * a / peak, 255.0).astype(np.uint8)


def _check_diameter(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1 (pixels), got {value!r}")
    return int(value)


def ca1pc_processed_plane(
    image: NDArray[Any], x_diameter: int = 10, y_diameter: int = 10
) -> NDArray[np.uint8]:
    """Return SIMA's CA1PC processed image of one plane: CLAHE, then an unsharp mask.

    Parameters
    ----------
    image : array, shape (rows, columns)
        Typically the plane's time average.
    x_diameter, y_diameter : int
        Expected cell diameter in pixels (CLAHE tile size and blur sigma).

    Returns
    -------
    numpy.ndarray of uint8, shape (rows, columns)
    """
    from skimage.exposure import equalize_adapthist

    image = np.asarray(image)
    if image.ndim != 2 or min(image.shape) < 1:
        raise ValueError(
            f"image must be a non-empty 2-D (rows, columns) array, got shape {image.shape}"
        )
    x_diameter = _check_diameter("x_diameter", x_diameter)
    y_diameter = _check_diameter("y_diameter", y_diameter)
    rows, cols = image.shape
    img8 = to8bit(image)
    if img8.min() == img8.max():
        equalised = img8
    else:
        tiles_y = max(1, rows // y_diameter)
        tiles_x = max(1, cols // x_diameter)
        kernel = (math.ceil(rows / tiles_y), math.ceil(cols / tiles_x))
        equalised = to8bit(
            equalize_adapthist(img8, kernel_size=kernel, clip_limit=CLAHE_CLIP_LIMIT, nbins=256)
        )
    blurred = ndimage.gaussian_filter(
        equalised.astype(np.float64), sigma=(y_diameter, x_diameter), mode="mirror", truncate=3.0
    )
    blurred = np.clip(np.rint(blurred), 0, 255)
    a, b = UNSHARP_WEIGHTS
    sharp = a * equalised.astype(np.float64) + b * blurred
    return np.clip(np.rint(sharp), 0, 255).astype(np.uint8)


def processed_image_ca1pc(
    dataset: ImagingDataset, channel: int | str = 0, x_diameter: int = 10, y_diameter: int = 10
) -> NDArray[np.uint8]:
    """Return the CA1PC processed image of every plane of a dataset channel.

    Parameters
    ----------
    dataset : ImagingDataset
    channel : int or str
        Channel by index or name (SIMA's helper defaulted to the last channel; every
        caller passed the strategy's channel, default 0).
    x_diameter, y_diameter : int
        Expected cell diameter in pixels.

    Returns
    -------
    numpy.ndarray of uint8, shape (planes, rows, columns)
        :func:`ca1pc_processed_plane` of each plane's time average.
    """
    ch = dataset.resolve_channel(channel)
    average = np.asarray(dataset.time_averages)[..., ch]
    return np.stack([ca1pc_processed_plane(p, x_diameter, y_diameter) for p in average])


# ---------------------------------------------------------------------------------------
# the nucleus step
# ---------------------------------------------------------------------------------------
def _plane_pixels(plane: sparse.spmatrix, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    coo = sparse.coo_matrix(plane)
    keep = (coo.data != 0) & (coo.row < shape[0]) & (coo.col < shape[1])
    return coo.row[keep].astype(np.intp), coo.col[keep].astype(np.intp)


def nucleus_masks(
    rows: NDArray[np.intp], cols: NDArray[np.intp], image: NDArray[Any]
) -> list[NDArray[np.bool_]]:
    """Return the dark cores of a region of ``image`` (SIMA's CA1PC nucleus rule).

    Pixels of the region below the Otsu threshold of the region's values, cleaned by a
    binary opening then closing (3x3 cross, zero outside the image), split into
    4-connected pieces.

    Parameters
    ----------
    rows, cols : arrays of int
        The region's pixels.
    image : array, shape (rows, columns)

    Returns
    -------
    list of numpy.ndarray of bool, each of the image's shape
        Empty when the region's values are all equal or nothing remains.
    """
    from skimage.filters import threshold_otsu

    if rows.size == 0:
        return []
    values = image[rows, cols]
    if values.min() == values.max():
        return []
    threshold = threshold_otsu(values)
    dark = values < threshold
    if not dark.any():
        return []
    pad = 2
    r0, c0 = rows.min() - pad, cols.min() - pad
    box = (rows.max() - r0 + 1 + pad, cols.max() - c0 + 1 + pad)
    canvas = np.zeros(box, dtype=bool)
    canvas[rows[dark] - r0, cols[dark] - c0] = True
    canvas = ndimage.binary_closing(ndimage.binary_opening(canvas))
    labels, count = ndimage.label(canvas)
    out = []
    for k in range(1, count + 1):
        rr, cc = np.nonzero(labels == k)
        rr, cc = rr + r0, cc + c0
        inside = (rr >= 0) & (rr < image.shape[0]) & (cc >= 0) & (cc < image.shape[1])
        if not inside.any():
            continue
        mask = np.zeros(image.shape, dtype=bool)
        mask[rr[inside], cc[inside]] = True
        out.append(mask)
    return out


@dataclasses.dataclass
class CA1PCNucleus(PostProcessingStep):
    """Replace each ROI by its dark core(s) in the CA1PC processed image.

    Parameters
    ----------
    channel : int or str
        Channel of the processed image.
    x_diameter : int
        Expected cell diameter in pixels along x (default 8, SIMA's).
    y_diameter : int, optional
        Along y; ``None`` means ``x_diameter``.

    Notes
    -----
    For each ROI and each of its planes with pixels: keep the pixels darker than the
    Otsu threshold of the ROI's values, open then close them (3x3 cross), and make one
    boolean-mask ROI per 4-connected piece.  ROIs whose pixels all have one value give
    nothing.  Labels, ids and tags are not carried over (new ROIs, as SIMA).
    """

    channel: int | str = 0
    x_diameter: int = 8
    y_diameter: int | None = None

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        if isinstance(self.channel, bool) or not isinstance(self.channel, (int, np.integer, str)):
            raise ValueError(
                f"CA1PCNucleus: channel must be an index or a name, got {self.channel!r}"
            )
        self.x_diameter = _check_diameter("CA1PCNucleus: x_diameter", self.x_diameter)
        if self.y_diameter is not None:
            self.y_diameter = _check_diameter("CA1PCNucleus: y_diameter", self.y_diameter)

    def apply(self, rois: ROIList, dataset: ImagingDataset | None = None) -> ROIList:
        """Return the nuclei of ``rois`` (new ROIs, boolean masks).

        Parameters
        ----------
        rois : ROIList
        dataset : ImagingDataset
            Required: the processed image is computed from its time average.

        Raises
        ------
        ValueError
            Without a dataset, or for ROIs of another image size.
        """
        self._validate()
        if dataset is None:
            raise ValueError("CA1PCNucleus needs the dataset (its time average) to find nuclei")
        y_diameter = self.x_diameter if self.y_diameter is None else self.y_diameter
        images = processed_image_ca1pc(dataset, self.channel, self.x_diameter, y_diameter)
        planes, height, width = images.shape
        out: list[ROI] = []
        for k, roi in enumerate(rois):
            if not isinstance(roi, ROI):
                raise TypeError(f"CA1PCNucleus: item {k} is a {type(roi).__name__}, not an ROI")
            for z, plane in enumerate(roi.mask):
                if z >= planes:
                    break
                if plane.shape[0] > height or plane.shape[1] > width:
                    raise ValueError(
                        f"CA1PCNucleus: ROI {k} has a {plane.shape} mask, larger than the "
                        f"dataset's {height}x{width} planes"
                    )
                rows, cols = _plane_pixels(plane, (height, width))
                for nucleus in nucleus_masks(rows, cols, images[z]):
                    volume = [sparse.csr_matrix((height, width), dtype=bool) for _ in range(planes)]
                    volume[z] = sparse.csr_matrix(nucleus)
                    out.append(ROI(mask=volume))
        return ROIList(out)


# ---------------------------------------------------------------------------------------
# the strategy
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class PlaneCA1PC(SegmentationStrategy):
    """Segment CA1 pyramidal cells of one plane (normalized cuts, then dark nuclei).

    Parameters
    ----------
    channel : int or str
        Channel used.
    num_pcs : int
        Offset principal components for the affinity.
    max_dist, spatial_decay : (int, int), (float, float), optional
        Neighbourhood and distance fall-off of the affinity (default ``(2, 2)`` each).
    cut_max_pen, cut_min_size, cut_max_size
        Normalized-cut parameters (see :class:`PlaneNormalizedCuts`).
    x_diameter, y_diameter : int
        Expected cell diameter in pixels (default 10 each; SIMA's docstring said 8).
    circularity_threshold : float
        Nuclei with circularity at or below this are dropped (default 0.5).
    min_roi_size : int
        Smallest nucleus kept, in pixels (default 20).
    min_cut_size : int
        Smallest cut searched for a nucleus, in pixels (default 30).
    verbose : bool
        Accepted for SIMA compatibility; progress is reported through the generator.
    seed : int
        Seed of the eigen-solver and offset-PCA start vectors.
    circularity_threhold : float, optional
        SIMA's misspelt keyword, accepted as an alias (keyword only).

    Notes
    -----
    The built-in pipeline is ``PlaneNormalizedCuts(AffinityMatrixCA1PC(...))`` followed
    by ``SizeFilter(min_cut_size)``, ``CA1PCNucleus``, ``SizeFilter(min_roi_size)`` and
    ``CircularityFilter``; steps added with :meth:`append` run after it.
    """

    channel: int | str = 0
    num_pcs: int = 75
    max_dist: tuple[int, int] | None = None
    spatial_decay: tuple[float, float] | None = None
    cut_max_pen: float = 0.01
    cut_min_size: int = 40
    cut_max_size: int = 200
    x_diameter: int = 10
    y_diameter: int = 10
    circularity_threshold: float = 0.5
    min_roi_size: int = 20
    min_cut_size: int = 30
    verbose: bool = False
    seed: int = 0
    _: dataclasses.KW_ONLY
    circularity_threhold: dataclasses.InitVar[float | None] = None

    single_plane = True

    def __post_init__(self, circularity_threhold: float | None) -> None:
        if circularity_threhold is not None:
            if self.circularity_threshold != 0.5:
                raise ValueError(
                    "PlaneCA1PC: give circularity_threshold or SIMA's spelling "
                    "circularity_threhold, not both"
                )
            self.circularity_threshold = circularity_threhold
        # building the pieces validates every parameter with a clear message
        self.normalized_cuts()
        self.pipeline()

    def normalized_cuts(self) -> PlaneNormalizedCuts:
        """Return the normalized-cuts strategy of the first stage."""
        affinity = AffinityMatrixCA1PC(
            channel=self.channel,
            max_dist=self.max_dist,
            spatial_decay=self.spatial_decay,
            num_pcs=self.num_pcs,
            verbose=self.verbose,
            seed=self.seed,
            x_diameter=self.x_diameter,
            y_diameter=self.y_diameter,
        )
        return PlaneNormalizedCuts(
            affinity, self.cut_max_pen, self.cut_min_size, self.cut_max_size, seed=self.seed
        )

    def pipeline(self) -> list[PostProcessingStep]:
        """Return the built-in steps applied to the cuts, in order."""
        return [
            SizeFilter(min_size=self.min_cut_size),
            CA1PCNucleus(self.channel, self.x_diameter, self.y_diameter),
            SizeFilter(min_size=self.min_roi_size),
            CircularityFilter(self.circularity_threshold),
        ]

    def _iter_segment(self, dataset: ImagingDataset) -> SegmentGenerator:
        self.check_dataset(dataset)
        rois = yield from scaled(self.normalized_cuts()._iter_segment(dataset), 0.0, 0.9)
        steps = self.pipeline()
        for k, step in enumerate(steps):
            yield SegmentProgress(0.9 + 0.1 * k / len(steps), f"CA1PC: {type(step).__name__}")
            rois = step.apply(ROIList(list(rois)), dataset)
        return ROIList(list(rois))
