"""``napari-sima export``: signals (CSV/TSV/NPZ), time projections (TIFF/HDF5) and NWB."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from .common import (
    Reporter,
    UsageError,
    add_command,
    channel_index,
    drive,
    load_dataset,
    parse_params,
)

#: Signal export format by the output's suffix.
SIGNAL_FORMATS = {".csv": "csv", ".tsv": "tsv", ".npz": "npz"}
#: Projection export format by the output's suffix (TIFF: 16 bits unless ``--bits 8``).
AVERAGE_FORMATS = {".tif": "TIFF", ".tiff": "TIFF", ".h5": "HDF5", ".hdf5": "HDF5"}


def _suffix_format(path: str, table: dict[str, str], option: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in table:
        raise UsageError(
            f"{option} {path!r}: unknown suffix {suffix or '(none)'!r}; expected one of "
            f"{', '.join(sorted(table))}"
        )
    return table[suffix]


def average_filenames(path: str, channel_names: list[str], fmt: str) -> list[str] | str:
    """Output names of a projection: one HDF5 file, or one TIFF per channel.

    With several channels, TIFF names get the channel's name before the suffix
    (``mean.tif`` -> ``mean_GCaMP.tif``, ``mean_tdTomato.tif``).
    """
    if fmt == "HDF5":
        return path
    if len(channel_names) == 1:
        return [path]
    p = Path(path)
    names = []
    for name in channel_names:
        safe = re.sub(r"[^\w.-]+", "_", name).strip("_") or "channel"
        names.append(str(p.with_name(f"{p.stem}_{safe}{p.suffix}")))
    return names


#: NWB metadata given as numbers (the others are text).
NWB_NUMERIC_METADATA = ("imaging_rate", "excitation_lambda", "emission_lambda")


def nwb_metadata(items: list[str] | None) -> dict[str, Any]:
    """``--nwb-meta KEY=VALUE`` items as keyword arguments of ``export_nwb``.

    Raises
    ------
    UsageError
        For an item without ``=`` or a numeric field that is not a number.
    """
    out: dict[str, Any] = {}
    params = parse_params(items, "--nwb-meta")
    if not params:
        return out
    import inspect

    from ..core.nwb import export_nwb

    fixed = {"dataset", "path", "channel", "signals_label", "rois_label", "overwrite"}
    known = [k for k in inspect.signature(export_nwb).parameters if k not in fixed]
    for key, value in params.items():
        if key not in known:
            raise UsageError(f"--nwb-meta: unknown field {key!r}; known fields: {', '.join(known)}")
        if key in NWB_NUMERIC_METADATA:
            try:
                out[key] = float(value)
            except ValueError:
                raise UsageError(f"--nwb-meta {key}={value!r}: expected a number") from None
        else:
            out[key] = value
    return out


def cmd_export(args: argparse.Namespace, reporter: Reporter) -> int:
    """Export signals, time projections and/or NWB from a dataset."""
    if not (args.signals or args.averages or args.nwb):
        raise UsageError(
            "nothing to export: give --signals FILE, --averages FILE and/or --nwb FILE"
        )
    signal_fmt = args.signals and _suffix_format(args.signals, SIGNAL_FORMATS, "--signals")
    average_fmt = args.averages and _suffix_format(args.averages, AVERAGE_FORMATS, "--averages")
    if args.nwb and Path(args.nwb).suffix.lower() != ".nwb":
        raise UsageError(f"--nwb {args.nwb!r}: the file name must end in .nwb")
    metadata = nwb_metadata(args.nwb_meta)
    ds = load_dataset(args.dataset, reporter)
    channel = channel_index(ds, args.channel)
    written = 0
    if args.signals:
        path = os.path.abspath(args.signals)
        with reporter.timed("signals"):
            ds.export_signals(
                path, fmt=signal_fmt, channel=channel, signals_label=args.signals_label
            )
        reporter.output("signals", path)
        reporter.result(f"wrote the signals of channel {ds.channel_names[channel]!r} to {path}")
        written += 1
    if args.averages:
        fmt = (
            "TIFF8"
            if average_fmt == "TIFF" and args.bits == 8
            else ("TIFF16" if average_fmt == "TIFF" else "HDF5")
        )
        names = average_filenames(os.path.abspath(args.averages), ds.channel_names, average_fmt)
        with reporter.timed("averages"):
            with reporter.progress("projections", unit="frame") as bar:
                drive(ds.iter_projections(), lambda item: bar.update(item[0], item[1]))
            ds.export_averages(
                names,
                fmt=fmt,
                scale_values=not args.no_scale,
                projection_type=args.projection,
            )
        files = [names] if isinstance(names, str) else list(names)
        reporter.output("averages", files)
        reporter.result(f"wrote the time {args.projection} to {', '.join(files)}")
        written += len(files)
    if args.nwb:
        path = os.path.abspath(args.nwb)
        with reporter.timed("nwb"):
            ds.export_nwb(
                path,
                channel=channel,
                signals_label=args.signals_label,
                overwrite=True,
                **metadata,
            )
        reporter.output("nwb", path)
        reporter.result(f"wrote {path}")
        written += 1
    reporter.count("files", written)
    return 0


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``export`` subcommand."""
    p = add_command(
        sub,
        "export",
        cmd_export,
        parents,
        help="export signals (CSV/TSV/NPZ), time projections (TIFF/HDF5) or NWB",
        description=(
            "Export from a dataset: a signal set as CSV (comma-separated), TSV (SIMA's "
            "tab-separated layout) or NPZ, chosen by the suffix; a time projection as "
            "TIFF (one file per channel, the channel's name added before the suffix when "
            "there are several) or HDF5; everything as Neurodata Without Borders (needs "
            "pynwb: pip install 'napari-sima[nwb]').  Give one or more outputs."
        ),
        epilog=(
            "example:\n  napari-sima export mouse1.sima --signals traces.csv --averages mean.tif"
        ),
    )
    p.add_argument("dataset", metavar="DATASET", help="dataset folder (NAME.sima)")
    out = p.add_argument_group("outputs (at least one)")
    out.add_argument("--signals", metavar="FILE", help="signal set to .csv, .tsv or .npz")
    out.add_argument("--averages", metavar="FILE", help="time projection to .tif or .h5")
    out.add_argument("--nwb", metavar="FILE", help="dataset, ROIs and signals to .nwb")
    p.add_argument("--channel", "-c", default="0", metavar="C", help="channel (index or name)")
    p.add_argument(
        "--signals-label",
        metavar="LABEL",
        help="signal set for --signals and --nwb (default: the most recent)",
    )
    p.add_argument(
        "--nwb-meta",
        action="append",
        metavar="KEY=VALUE",
        help="NWB session metadata (repeatable): imaging_rate, indicator, location, "
        "experimenter, institution, lab, session_description, identifier, "
        "session_start_time, excitation_lambda, emission_lambda",
    )
    p.add_argument(
        "--projection",
        choices=("average", "std", "kurtosis"),
        default="average",
        help="which time projection --averages writes",
    )
    p.add_argument("--bits", type=int, choices=(8, 16), default=16, help="TIFF bits per pixel")
    p.add_argument(
        "--no-scale",
        action="store_true",
        help="write projection values as they are instead of stretching them to the range",
    )
