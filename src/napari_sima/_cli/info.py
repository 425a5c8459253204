"""``napari-sima info PATH``: what a dataset holds, and what made each stored result."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import Reporter, add_command, load_dataset, plural, roi_set_labels

if TYPE_CHECKING:
    from ..core.dataset import ImagingDataset


def _sequences(ds: ImagingDataset) -> tuple[list[dict[str, Any]], str | None]:
    """Describe the sequences (opening their files); ``(descriptions, error or None)``."""
    try:
        seqs = ds.sequences
    except (OSError, ValueError) as err:
        return [], str(err)
    out = []
    for i, s in enumerate(seqs):
        out.append(
            {
                "index": i,
                "kind": s.kind or type(s).__name__,
                "shape": list(s.shape),
                "dtype": str(s.dtype),
                "files": list(s.files),
            }
        )
    return out, None


def _signal_sets(ds: ImagingDataset, records: dict[str, Any]) -> dict[str, Any]:
    """``{channel_name: {label: index fields + provenance}}`` of the stored signal sets."""
    from ..core import signal_store
    from ..core._setstore import INDEX_FILE

    out: dict[str, Any] = {}
    for ch, name in enumerate(ds.channel_names):
        sets: dict[str, Any] = {}
        folder = signal_store.store_dir(ds.savedir, ch) if ds.savedir else None
        if folder is not None and (folder / INDEX_FILE).exists():
            for label in ds.signal_labels(ch):
                entry = signal_store.signal_set_info(folder, label)
                num_frames = entry.get("num_frames") or []
                sets[label] = {
                    "timestamp": entry.get("timestamp"),
                    "n_rois": entry.get("n_rois"),
                    "num_sequences": entry.get("num_sequences"),
                    "num_frames": num_frames,
                    "entries": ["raw", *entry.get("entries", [])],
                }
        else:  # a legacy SIMA folder (or none): the sets have to be loaded
            for label, sig in ds.signals(ch).items():
                raw = list(sig.get("raw") or [])
                sets[label] = {
                    "timestamp": sig.get("timestamp"),
                    "n_rois": len(sig.get("rois") or []),
                    "num_sequences": len(raw),
                    "num_frames": [int(r.shape[1]) for r in raw if hasattr(r, "shape")],
                    "entries": ["raw", *sorted(k for k in sig if k not in signal_store.CORE_KEYS)],
                }
        chan_records = records.get(name, {})
        for label, fields in sets.items():
            rec = chan_records.get(label) or {}
            fields["provenance"] = rec.get("provenance")
            fields["derived"] = rec.get("derived") or {}
        if sets:
            out[name] = sets
    return out


def dataset_info(ds: ImagingDataset) -> dict[str, Any]:
    """Everything ``info`` reports about a dataset, as JSON-able values.

    Returns
    -------
    dict
        ``path``, ``format``, ``read_only``, ``num_sequences``, ``num_frames``,
        ``frame_shape``, ``channels``, ``sequences`` (kind, shape, dtype, files),
        ``movies_error`` (why the movies could not be opened, or None),
        ``provenance`` (of the dataset), ``rois`` ``{label: {timestamp, n_rois,
        provenance}}`` and ``signals`` ``{channel: {label: {timestamp, n_rois,
        num_sequences, num_frames, entries, provenance, derived}}}``.
    """
    from ..core.dataset import DATASET_FILE

    records = ds.provenance()
    legacy = ds.savedir is not None and not (Path(ds.savedir) / DATASET_FILE).exists()
    sequences, movies_error = _sequences(ds)
    rois = {}
    for label, entry in roi_set_labels(ds).items():
        rois[label] = {
            "timestamp": entry.get("timestamp"),
            "n_rois": entry.get("n_rois"),
            "provenance": records["rois"].get(label, entry.get("provenance")),
        }
    return {
        "path": ds.savedir,
        "format": "legacy SIMA" if legacy else "napari-sima",
        "read_only": ds.read_only,
        "num_sequences": ds.num_sequences,
        "num_frames": ds.num_frames,
        "frame_shape": list(ds.frame_shape),
        "channels": ds.channel_names,
        "sequences": sequences,
        "movies_error": movies_error,
        "provenance": records["dataset"],
        "rois": rois,
        "signals": _signal_sets(ds, records["signals"]),
    }


def _format_record(record: dict[str, Any] | None, indent: str) -> str:
    from ..core.provenance import format_provenance

    return format_provenance(record, indent)


def format_info(info: dict[str, Any]) -> str:
    """Return the text ``info`` prints for :func:`dataset_info` output."""
    lines = []
    flags = "  [read-only]" if info["read_only"] else ""
    lines.append(f"Dataset {info['path']}  ({info['format']}){flags}")
    z, y, x, c = info["frame_shape"]
    lines.append(
        f"  {plural(info['num_sequences'], 'sequence')}, {info['num_frames']} frames; "
        f"frame shape (planes, rows, columns, channels) = ({z}, {y}, {x}, {c})"
    )
    lines.append("  channels: " + ", ".join(f"{i} {n!r}" for i, n in enumerate(info["channels"])))
    for s in info["sequences"]:
        files = s["files"]
        where = files[0] if len(files) == 1 else f"{files[0]} (+{len(files) - 1} files)"
        lines.append(
            f"  sequence {s['index']}: {s['kind']} {tuple(s['shape'])} {s['dtype']}  {where}"
        )
    if info["movies_error"]:
        lines.append(f"  movies: cannot be opened: {info['movies_error']}")
    lines.append("  created by:")
    lines.append(_format_record(info["provenance"], "    "))
    rois = info["rois"]
    lines.append(f"ROI sets: {len(rois) or 'none'}")
    for label, entry in rois.items():
        n = entry.get("n_rois")
        count = plural(n, "ROI") if isinstance(n, int) else "? ROIs"
        lines.append(f"  {label!r}: {count}, saved {entry.get('timestamp')}")
        lines.append(_format_record(entry.get("provenance"), "    "))
    signals = info["signals"]
    n_sets = sum(len(v) for v in signals.values())
    lines.append(f"Signal sets: {n_sets or 'none'}")
    for channel, sets in signals.items():
        lines.append(f"  channel {channel!r}:")
        for label, entry in sets.items():
            frames = entry.get("num_frames") or []
            n = entry.get("n_rois")
            lines.append(
                f"    {label!r}: {plural(n, 'ROI') if isinstance(n, int) else '? ROIs'}, "
                f"{plural(len(frames), 'sequence')} ({sum(frames)} frames), "
                f"saved {entry.get('timestamp')}; entries: {', '.join(entry['entries'])}"
            )
            lines.append(_format_record(entry.get("provenance"), "      "))
            # entries made by one step (spikes, spikes_fits, spikes_params) share a record
            groups: dict[str, tuple[list[str], Any]] = {}
            for name, record in sorted(entry.get("derived", {}).items()):
                key = str((record or {}).get("hash") or name)
                groups.setdefault(key, ([], record))[0].append(name)
            for names, record in groups.values():
                lines.append(f"      {', '.join(names)}:")
                lines.append(_format_record(record, "        "))
    return "\n".join(lines)


def _movie_info(path: str, reporter: Reporter) -> int:
    """``info`` of a movie file: its shape as a sequence."""
    from .create import open_movie

    seq, fmt = open_movie(path, None)
    try:
        info = {
            "path": os.path.abspath(path),
            "format": fmt,
            "shape": list(seq.shape),
            "dtype": str(seq.dtype),
            "files": list(seq.files),
        }
    finally:
        seq.close()
    reporter.summary["info"] = info
    reporter.count("frames", info["shape"][0])
    t, z, y, x, c = info["shape"]
    reporter.text(
        f"Movie {info['path']}  ({fmt})\n  {t} frames of (planes, rows, columns, channels) = "
        f"({z}, {y}, {x}, {c}), {info['dtype']}"
    )
    return 0


def cmd_info(args: argparse.Namespace, reporter: Reporter) -> int:
    """Print what a dataset (or a movie file) holds."""
    path = args.path
    if os.path.isfile(path):
        return _movie_info(path, reporter)
    ds = load_dataset(path, reporter)
    info = dataset_info(ds)
    reporter.summary["info"] = info
    reporter.count("sequences", info["num_sequences"])
    reporter.count("frames", info["num_frames"])
    reporter.count("channels", len(info["channels"]))
    reporter.count("roi_sets", len(info["rois"]))
    reporter.count("rois", {k: v.get("n_rois") for k, v in info["rois"].items()})
    reporter.count("signal_sets", sum(len(v) for v in info["signals"].values()))
    reporter.text(format_info(info))
    if info["movies_error"]:
        reporter.summary["warnings"].append(f"movies cannot be opened: {info['movies_error']}")
    return 0


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``info`` subcommand."""
    p = add_command(
        sub,
        "info",
        cmd_info,
        parents,
        help="show a dataset's sequences, channels, ROI sets and signal sets, with provenance",
        description=(
            "Show what a dataset folder holds: its sequences (kind, shape, files), "
            "channels, ROI sets (number of ROIs) and signal sets (entries such as raw, "
            "dff, spikes), with the provenance of each stored result (the step, its "
            "parameters and inputs, the software versions).  Indexes are read, not the "
            "arrays.  Given a movie file instead, show its shape as a sequence."
        ),
    )
    p.add_argument("path", metavar="PATH", help="dataset folder (NAME.sima) or a movie file")
