"""``napari-sima segment``, ``extract`` and ``infer-spikes``: the analysis steps."""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from .common import (
    CommandError,
    Reporter,
    UsageError,
    add_command,
    channel_index,
    check_new_label,
    drive,
    load_dataset,
    parse_params,
    plural,
    positive_int,
    roi_set_labels,
    user_message,
)


def _timestamp() -> str:
    """SIMA's default label of a new set: the time as ``'%Y-%m-%d-%Hh%Mm%Ss'``."""
    return time.strftime("%Y-%m-%d-%Hh%Mm%Ss")


# ---------------------------------------------------------------------------------------
# segment
# ---------------------------------------------------------------------------------------
def _preset_lines() -> list[str]:
    from ..core.segment.defaults import DEFAULT_STRATEGY, STRATEGIES

    lines = []
    for name, factory in STRATEGIES.items():
        mark = " (default)" if name == DEFAULT_STRATEGY else ""
        lines.append(f"  {name + mark:<18} {_describe(factory)}")
    return lines


def _describe(factory: Any) -> str:
    """First line of a preset factory's docstring, as a description (no "Return ...")."""
    doc = (factory.__doc__ or "").strip().splitlines()
    text = doc[0].strip().rstrip(".").replace("``", "") if doc else ""
    if text.lower().startswith("return "):
        text = text[len("return ") :]
        text = text[:1].upper() + text[1:]
    return text


def _segment_epilog() -> str:
    return "\n".join(
        [
            "strategies:",
            *_preset_lines(),
            "",
            "--param KEY=VALUE sets a parameter of the strategy (values are converted to",
            "the parameter's type: 20, 0.5, true, [1, 2]); --list-strategies shows each",
            "strategy's parameters and post-processing steps.",
            "",
            "example:",
            "  napari-sima segment mouse1.sima --strategy stica --param components=20 "
            "--label cells",
        ]
    )


def _strategy_fields(strategy: Any) -> dict[str, Any]:
    """Return the settable parameters of a strategy (of its plane strategy if plane-wise)."""
    inner = getattr(strategy, "plane_strategy", None)
    if inner is not None and not isinstance(inner, list):
        strategy = inner
    if not dataclasses.is_dataclass(strategy):
        return {}
    params = strategy.parameters()
    return {f.name: params.get(f.name) for f in dataclasses.fields(strategy) if f.init}


def _list_strategies(reporter: Reporter) -> int:
    from ..core.segment.defaults import DEFAULT_STRATEGY, STRATEGIES, make_strategy

    listing: dict[str, Any] = {}
    lines = []
    for name, factory in STRATEGIES.items():
        strategy = make_strategy(name)
        fields = _strategy_fields(strategy)
        steps = [step.parameters()["step"] for step in strategy.steps]
        listing[name] = {
            "description": _describe(factory),
            "strategy": type(strategy).__name__,
            "parameters": fields,
            "post_processing": [step.parameters() for step in strategy.steps],
            "default": name == DEFAULT_STRATEGY,
        }
        mark = " (default)" if name == DEFAULT_STRATEGY else ""
        lines.append(f"{name}{mark}: {_describe(factory)}")
        lines.append(
            "  parameters: "
            + ", ".join(
                f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in fields.items()
            )
        )
        lines.append(f"  post-processing: {', '.join(steps) if steps else 'none'}")
    reporter.summary["strategies"] = listing
    reporter.count("strategies", len(listing))
    reporter.text("\n".join(lines))
    return 0


def cmd_segment(args: argparse.Namespace, reporter: Reporter) -> int:
    """Segment a dataset with a preset strategy and store the ROIs."""
    if args.list_strategies:
        return _list_strategies(reporter)
    if args.dataset is None:
        raise UsageError("the DATASET argument is required (unless --list-strategies)")
    from ..core.segment.defaults import DEFAULT_STRATEGY, configure_strategy, make_strategy

    params = parse_params(args.param)
    name = DEFAULT_STRATEGY if args.strategy is None else args.strategy
    ds = load_dataset(args.dataset, reporter)
    channel = channel_index(ds, args.channel)
    num_planes = ds.frame_shape[0] if args.planes is None else 1
    try:
        strategy = make_strategy(name, channel, num_planes=num_planes, seed=args.seed)
        strategy = configure_strategy(strategy, params, where=f"segment --strategy {name}")
    except (KeyError, ValueError, TypeError) as err:
        raise UsageError(user_message(err)) from err
    label = args.label if args.label is not None else _timestamp()
    check_new_label(roi_set_labels(ds), label, "ROI set", args.force)
    with reporter.timed("segment"), reporter.progress("segment", total=100, unit="%") as bar:
        rois = drive(
            ds.iter_segment(strategy, label=label, planes=args.planes),
            lambda item: bar.update(round(100 * float(item.fraction), 1), message=item.message),
        )
    reporter.output("rois", label)
    reporter.count("rois", len(rois))
    reporter.summary["strategy"] = strategy.parameters()
    reporter.result(
        f"segmented {ds.savedir} with {name!r}: {plural(len(rois), 'ROI')} stored "
        f"as the ROI set {label!r}"
    )
    return 0


# ---------------------------------------------------------------------------------------
# extract
# ---------------------------------------------------------------------------------------
def cmd_extract(args: argparse.Namespace, reporter: Reporter) -> int:
    """Extract the signal of every ROI of a stored set and store it."""
    from ..core._setstore import most_recent_label

    ds = load_dataset(args.dataset, reporter)
    channel = channel_index(ds, args.channel)
    demix = None if args.demix_channel is None else channel_index(ds, args.demix_channel)
    rois = roi_set_labels(ds)
    if not rois:
        raise CommandError(
            f"the dataset {ds.savedir!r} has no ROI sets; run segment or import-rois first"
        )
    rois_label = args.rois
    if rois_label is None:
        rois_label = most_recent_label({k: v.get("timestamp") or "" for k, v in rois.items()})
    elif rois_label not in rois:
        raise CommandError(
            f"no ROI set {rois_label!r} in {ds.savedir!r}; stored sets: {sorted(rois)}"
        )
    check_new_label(ds.signal_labels(channel), args.label, "signal set", args.force)
    with reporter.timed("extract"), reporter.progress("extract", unit="frame") as bar:
        result = drive(
            ds.iter_extract(
                rois=rois_label,
                signal_channel=channel,
                label=args.label,
                remove_overlap=not args.keep_overlap,
                n_processes=args.n_processes,
                demix_channel=demix,
                save_summary=not args.no_summary,
            ),
            lambda item: bar.update(item[0], item[1]),
        )
    label = args.label if args.label is not None else str(result["timestamp"])
    n_rois = len(result["rois"])
    frames = sum(int(r.shape[1]) for r in result["raw"])
    reporter.output("signals", label)
    reporter.output("channel", ds.channel_names[channel])
    reporter.output("rois", rois_label)
    reporter.count("rois", n_rois)
    reporter.count("frames", frames)
    reporter.result(
        f"extracted {plural(n_rois, 'ROI')} of {rois_label!r} x {frames} frames from channel "
        f"{ds.channel_names[channel]!r}, stored as the signal set {label!r}"
    )
    return 0


# ---------------------------------------------------------------------------------------
# infer-spikes
# ---------------------------------------------------------------------------------------
def cmd_infer_spikes(args: argparse.Namespace, reporter: Reporter) -> int:
    """Infer spikes of a stored signal set and store them with it."""
    import numpy as np

    ds = load_dataset(args.dataset, reporter)
    channel = channel_index(ds, args.channel)
    labels = ds.signal_labels(channel)
    if not labels:
        raise CommandError(
            f"no signal sets for channel {ds.channel_names[channel]!r} in {ds.savedir!r}; "
            f"run extract first"
        )
    label = labels[-1] if args.signals is None else args.signals
    if label not in labels:
        raise CommandError(
            f"no signal set {label!r} for channel {ds.channel_names[channel]!r} in "
            f"{ds.savedir!r}; stored sets: {labels}"
        )
    with reporter.timed("infer_spikes"), reporter.progress("infer-spikes", unit="trace") as bar:
        spikes, _fits, _params = ds.infer_spikes(
            channel=channel,
            label=label,
            gamma=args.gamma,
            share_gamma=not args.no_share_gamma,
            mode=args.mode,
            solver=args.solver,
            progress=lambda done, total: bar.update(done, total),
            n_processes=args.n_processes,
        )
    n_rois = int(spikes[0].shape[0]) if spikes else 0
    events = int(sum(np.count_nonzero(np.nan_to_num(s) > 0) for s in spikes))
    reporter.output("signals", label)
    reporter.output("channel", ds.channel_names[channel])
    reporter.count("rois", n_rois)
    reporter.count("sequences", len(spikes))
    reporter.count("spike_frames", events)
    reporter.result(
        f"inferred spikes of {plural(n_rois, 'ROI')} of the signal set {label!r}: "
        f"{events} frames with spikes; stored with the set"
    )
    return 0


# ---------------------------------------------------------------------------------------
# parsers
# ---------------------------------------------------------------------------------------
def add_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``segment``, ``extract`` and ``infer-spikes`` subcommands."""
    p = add_command(
        sub,
        "segment",
        cmd_segment,
        parents,
        help="find ROIs automatically and store them as an ROI set",
        description=(
            "Segment a dataset with a preset strategy and store the ROIs as a labelled "
            "ROI set.  Datasets with several planes are segmented plane by plane."
        ),
        epilog_factory=_segment_epilog,
    )
    p.add_argument("dataset", nargs="?", metavar="DATASET", help="dataset folder (NAME.sima)")
    p.add_argument(
        "--strategy",
        "-s",
        metavar="NAME",
        help="preset strategy (see the list below; default: the one marked so)",
    )
    p.add_argument(
        "--param",
        "-p",
        action="append",
        metavar="KEY=VALUE",
        help="set a strategy parameter (repeatable), e.g. --param components=20",
    )
    p.add_argument("--label", "-l", metavar="L", help="name of the ROI set (default: the time)")
    p.add_argument("--channel", "-c", default="0", metavar="C", help="channel (index or name)")
    p.add_argument(
        "--planes",
        nargs="+",
        type=int,
        metavar="P",
        help="segment only these planes, each on its own (default: all)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (results are repeatable)")
    p.add_argument(
        "--list-strategies", action="store_true", help="list the strategies and their parameters"
    )
    p.add_argument("--force", action="store_true", help="replace an ROI set of the same label")

    p = add_command(
        sub,
        "extract",
        cmd_extract,
        parents,
        help="extract ROI signals from the movies and store them as a signal set",
        description=(
            "Extract the signal of every ROI of a stored ROI set in every frame (the "
            "weighted mean of F / time average), store it as a signal set of the channel "
            "and write an extraction summary figure into the dataset folder."
        ),
    )
    p.add_argument("dataset", metavar="DATASET", help="dataset folder (NAME.sima)")
    p.add_argument("--rois", "-r", metavar="LABEL", help="ROI set (default: the most recent)")
    p.add_argument("--label", "-l", metavar="L", help="name of the signal set (default: the time)")
    p.add_argument("--channel", "-c", default="0", metavar="C", help="channel (index or name)")
    p.add_argument(
        "--keep-overlap",
        action="store_true",
        help="share pixels of overlapping ROIs by least squares instead of dropping them",
    )
    p.add_argument(
        "--n-processes", "-j", type=positive_int, default=1, metavar="N", help="processes"
    )
    p.add_argument(
        "--demix-channel", metavar="C", help="experimental two-channel demixing with this channel"
    )
    p.add_argument("--no-summary", action="store_true", help="do not write the summary figure")
    p.add_argument("--force", action="store_true", help="replace a signal set of the same label")

    p = add_command(
        sub,
        "infer-spikes",
        cmd_infer_spikes,
        parents,
        help="infer spikes of a stored signal set and store them with it",
        description=(
            "Infer the spikes of every ROI of a stored signal set (noise-constrained AR "
            "deconvolution) and store spikes, fits and parameters with the set."
        ),
    )
    p.add_argument("dataset", metavar="DATASET", help="dataset folder (NAME.sima)")
    p.add_argument(
        "--signals", metavar="LABEL", help="signal set (default: the most recent of the channel)"
    )
    p.add_argument("--channel", "-c", default="0", metavar="C", help="channel (index or name)")
    p.add_argument(
        "--mode",
        choices=("correct", "robust", "psd"),
        default="correct",
        help="parameter estimation ('psd' fits AR(2))",
    )
    p.add_argument("--solver", choices=("oasis", "cvxpy"), default="oasis", help="solver")
    p.add_argument("--gamma", type=float, metavar="G", help="calcium decay (default: estimated)")
    p.add_argument(
        "--no-share-gamma",
        action="store_true",
        help="estimate gamma per ROI instead of the median over ROIs",
    )
    p.add_argument(
        "--n-processes", "-j", type=positive_int, default=1, metavar="N", help="processes"
    )
