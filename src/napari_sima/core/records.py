"""The provenance record of each analysis step, built in one place.

The core functions (``extract``, ``infer_spikes``, ``segment``, ΔF/F) store these
records with their results, and a pipeline builds the same records *before* running a
step to see whether the stored result already is what the step would make (same
``hash``): so a result made from the GUI, the command line or a script is not redone
by a pipeline with the same parameters, and vice versa.

Only what changes the result goes into a record's parameters: how the work is run
(``n_processes``, an executor, progress callbacks) does not.
"""

from __future__ import annotations

import os
from typing import Any

from .provenance import file_digest, make_provenance, movie_ref, roi_set_ref, signal_set_ref

__all__ = [
    "dff_record",
    "extract_record",
    "import_rois_record",
    "segment_record",
    "spikes_record",
]


def extract_record(
    dataset: Any,
    rois_label: str | None,
    n_rois: int,
    signal_channel: int,
    remove_overlap: bool,
    demix_channel: int | None,
) -> dict[str, Any]:
    """Record of an extraction of ROI set ``rois_label`` (None: ROIs passed directly)."""
    names = dataset.channel_names
    return make_provenance(
        "extract",
        {
            "signal_channel": names[int(signal_channel)],
            "remove_overlap": bool(remove_overlap),
            "demix_channel": None if demix_channel is None else names[int(demix_channel)],
        },
        {
            "rois": (
                roi_set_ref(dataset, rois_label)
                if rois_label is not None
                else {"label": None, "n_rois": int(n_rois)}
            ),
            "movies": movie_ref(dataset),
        },
    )


def spikes_record(
    dataset: Any,
    channel: int,
    label: str,
    gamma: Any,
    share_gamma: bool,
    mode: str,
    solver: str,
) -> dict[str, Any]:
    """Record of spike inference on signal set ``label`` of ``channel``."""
    return make_provenance(
        "infer-spikes",
        {"gamma": gamma, "share_gamma": bool(share_gamma), "mode": mode, "solver": solver},
        {"signals": signal_set_ref(dataset, channel, label)},
    )


def segment_record(dataset: Any, strategy: Any, planes: list[int] | None) -> dict[str, Any]:
    """Record of a segmentation with ``strategy`` (its full ``parameters()``)."""
    return make_provenance(
        "segment",
        {
            "strategy": type(strategy).__name__,
            "strategy_parameters": strategy.parameters(),
            "planes": None if planes is None else [int(p) for p in planes],
        },
        {"movies": movie_ref(dataset)},
    )


def dff_record(
    dataset: Any, channel: int, label: str, parameters: dict[str, Any]
) -> dict[str, Any]:
    """Record of ΔF/F of signal set ``label`` with ``parameters`` (baseline, window, ...)."""
    return make_provenance(
        "dff", dict(parameters), {"signals": signal_set_ref(dataset, channel, label)}
    )


def import_rois_record(path: str | os.PathLike, label: str) -> dict[str, Any]:
    """Record of ROIs imported from an ImageJ file (its name and SHA-256) as set ``label``."""
    return make_provenance(
        "import-rois",
        {"label": str(label)},
        {"file": {"name": os.path.basename(os.fspath(path)), "sha256": file_digest(path)}},
    )
