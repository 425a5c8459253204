"""Headless core of napari-sima: SIMA's analysis API on modern Python.

This package never imports napari, Qt, magicgui or pyqtgraph (a test enforces it),
so it runs in scripts, on clusters and in notebooks.

Main entry points
-----------------
Sequence
    Lazy 5-D ``(t, z, y, x, c)`` movies from TIFF, HDF5 or arrays.
ImagingDataset
    Sequences of one field of view with their dataset folder, projections, ROI sets
    and exports.
ROI, ROIList
    Regions of interest (polygons or masks) and labelled sets of them; ImageJ
    import/export through ``ROIList.load(path, fmt='ImageJ')`` / ``save``.
poly2mask, mask2poly
    SIMA's rasterisation rule and outline tracing.
resolve_channel
    Channel selection by index or name.
dff
    ΔF/F of traces with a sliding percentile or maximin baseline.
"""

from .channels import resolve_channel
from .dataset import ImagingDataset
from .dff import dff
from .roi import ROI, NonBooleanMask, ROIList, mask2poly, poly2mask
from .sequence import Sequence

__all__ = [
    "ImagingDataset",
    "NonBooleanMask",
    "ROI",
    "ROIList",
    "Sequence",
    "dff",
    "mask2poly",
    "poly2mask",
    "resolve_channel",
]
