"""Qt dock widgets of napari-sima (loaded lazily by napari through ``napari.yaml``).

Each widget lives in its own module and takes ``viewer: napari.viewer.Viewer``; the
headless core (:mod:`napari_sima.core`) never imports this package.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DatasetWidget"]


def __getattr__(name: str) -> Any:
    # import widgets on first use, so importing one widget does not build the others
    if name == "DatasetWidget":
        from .dataset_widget import DatasetWidget

        return DatasetWidget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
