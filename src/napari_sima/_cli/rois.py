"""``napari-sima import-rois`` and ``export-rois``: ImageJ ROI sets in and out of a dataset."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import (
    CommandError,
    Reporter,
    UsageError,
    add_command,
    check_new_label,
    load_dataset,
    plural,
    roi_set_labels,
)

if TYPE_CHECKING:
    from ..core.dataset import ImagingDataset
    from ..core.roi import ROIList


def load_roi_set(ds: ImagingDataset, label: str | None) -> tuple[str, ROIList]:
    """Return ``(label, ROIs)`` of a stored set (default: the most recent).

    Raises
    ------
    CommandError
        If the dataset has no ROI set, or none of that label (the message lists them).
    """
    from ..core import roi_store
    from ..core._setstore import most_recent_label

    entries = roi_set_labels(ds)
    if not entries:
        raise CommandError(f"the dataset {ds.savedir!r} has no ROI sets")
    if label is None:
        label = most_recent_label({k: v.get("timestamp") or "" for k, v in entries.items()})
    if label not in entries:
        raise CommandError(
            f"no ROI set {label!r} in {ds.savedir!r}; stored sets: {sorted(entries)}"
        )
    assert label is not None
    if ds.savedir is not None and (roi_store.store_dir(ds.savedir) / "index.json").exists():
        return label, roi_store.load_roi_set(ds.savedir, label)
    return label, ds.ROIs[label]


def cmd_import_rois(args: argparse.Namespace, reporter: Reporter) -> int:
    """Store the ROIs of an ImageJ file as an ROI set of the dataset."""
    from ..core.imagej import read_imagej_rois
    from ..core.records import import_rois_record

    ds = load_dataset(args.dataset, reporter)
    path = os.path.abspath(args.rois)
    label = args.label if args.label is not None else Path(path).stem
    if ds.read_only:
        raise CommandError(f"the dataset {ds.savedir!r} is read-only; the ROIs cannot be stored")
    check_new_label(roi_set_labels(ds), label, "ROI set", args.force)
    with reporter.timed("read"):
        rois = read_imagej_rois(path, im_shape=ds.frame_shape[:3])
    if not rois:
        raise CommandError(f"{path!r} holds no ROI with an area; nothing was imported")
    record = import_rois_record(path, label)
    with reporter.timed("store"):
        label = ds.add_ROIs(rois, label, provenance=record)
    reporter.output("rois", label)
    reporter.count("rois", len(rois))
    reporter.result(f"imported {plural(len(rois), 'ROI')} from {path} as the ROI set {label!r}")
    return 0


def cmd_export_rois(args: argparse.Namespace, reporter: Reporter) -> int:
    """Write a stored ROI set as an ImageJ RoiSet zip (or one .roi file)."""
    from ..core.imagej import write_imagej_rois

    out = os.path.abspath(args.output)
    if Path(out).suffix.lower() not in (".zip", ".roi"):
        raise UsageError(f"-o must end in .zip (an ImageJ RoiSet) or .roi, got {args.output!r}")
    ds = load_dataset(args.dataset, reporter)
    label, rois = load_roi_set(ds, args.label)
    if not len(rois):
        raise CommandError(f"the ROI set {label!r} is empty; nothing to export")
    with reporter.timed("write"):
        write_imagej_rois(out, rois)
    reporter.output("file", out)
    reporter.output("rois", label)
    reporter.count("rois", len(rois))
    reporter.result(f"exported {plural(len(rois), 'ROI')} of the ROI set {label!r} to {out}")
    return 0


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``import-rois`` and ``export-rois`` subcommands."""
    p = add_command(
        sub,
        "import-rois",
        cmd_import_rois,
        parents,
        help="store ImageJ ROIs (RoiSet .zip, .roi, TIFF overlay) as an ROI set of a dataset",
    )
    p.add_argument("dataset", metavar="DATASET", help="dataset folder (NAME.sima)")
    p.add_argument(
        "rois", metavar="ROIS", help="ImageJ RoiSet .zip, .roi file or TIFF with overlay"
    )
    p.add_argument(
        "--label", "-l", metavar="L", help="name of the stored ROI set (default: the file's stem)"
    )
    p.add_argument("--force", action="store_true", help="replace an ROI set of the same label")

    p = add_command(
        sub,
        "export-rois",
        cmd_export_rois,
        parents,
        help="write a stored ROI set as an ImageJ RoiSet .zip",
    )
    p.add_argument("dataset", metavar="DATASET", help="dataset folder (NAME.sima)")
    p.add_argument("--label", "-l", metavar="L", help="the ROI set (default: the most recent)")
    p.add_argument(
        "-o", "--output", required=True, metavar="RoiSet.zip", help="output file (.zip or .roi)"
    )
