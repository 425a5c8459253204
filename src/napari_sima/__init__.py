"""napari-sima: SIMA's calcium-imaging analysis in napari, with a headless core.

The headless API lives in :mod:`napari_sima.core` and never imports napari or Qt;
the napari side (reader, sample data, widgets) lives in the private modules of this
package and is loaded lazily by napari through the npe2 manifest ``napari.yaml``.
"""

try:
    from ._version import version as __version__
except ImportError:  # pragma: no cover - only without setuptools-scm metadata
    __version__ = "0.1.0.dev0"

__all__ = ["__version__"]
