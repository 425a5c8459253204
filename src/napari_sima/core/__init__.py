"""Headless core of napari-sima: SIMA's analysis API on modern Python.

This package never imports napari, Qt, magicgui or pyqtgraph (a test enforces it),
so it runs in scripts, on clusters and in notebooks.

Main entry points
-----------------
Sequence
    Lazy 5-D ``(t, z, y, x, c)`` movies from TIFF, HDF5 or arrays.
ImagingDataset
    Sequences of one field of view with their dataset folder, projections and exports.
resolve_channel
    Channel selection by index or name.
"""

from .channels import resolve_channel
from .dataset import ImagingDataset
from .sequence import Sequence

__all__ = ["ImagingDataset", "Sequence", "resolve_channel"]
