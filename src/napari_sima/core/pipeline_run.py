"""Run a pipeline on one dataset, skipping the steps whose result is already stored.

Before a step runs, the provenance record it would store is built
(:mod:`napari_sima.core.records`): its ``hash`` covers the step, its parameters and
the hashes of its inputs (the ROI set it extracts, the signal set it infers spikes
from, the movie's fingerprint, an imported file's SHA-256).  When the stored result
already carries that hash the step is skipped; otherwise it runs and stores its
result with the record.  A change anywhere upstream changes every hash downstream, so
a rerun redoes exactly the steps that are out of date.

Every result is written atomically, so a process killed mid-step leaves the results
of the steps before it intact and no half-written one; the rerun redoes that step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
import traceback
from collections.abc import Callable, Generator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from .pipeline import Pipeline, Step

__all__ = [
    "DatasetReport",
    "PipelineProgress",
    "StepReport",
    "iter_run_pipeline",
    "run_pipeline",
]

#: Statuses of a step in a report.
STATUSES = ("done", "skipped", "failed", "not-run")

#: Suffix of the provenance file written next to each exported file.
EXPORT_PROVENANCE_SUFFIX = ".provenance.json"

SplitExecutor = Callable[[], contextlib.AbstractContextManager[Executor]]


@dataclasses.dataclass
class PipelineProgress:
    """Progress of a pipeline on one dataset.

    Attributes
    ----------
    step : str
        The step running (``'3:extract'``).
    fraction : float
        Of the whole pipeline, in ``[0, 1]``.
    message : str
    """

    step: str
    fraction: float
    message: str = ""


@dataclasses.dataclass
class StepReport:
    """What happened to one step: status ``'done'``, ``'skipped'``, ``'failed'``, ``'not-run'``."""

    name: str
    index: int
    status: str
    seconds: float = 0.0
    output: str | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain data."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class DatasetReport:
    """What a pipeline did to one target (a dataset folder, or a movie for ``create``)."""

    target: str
    dataset: str | None = None
    ok: bool = True
    error: str | None = None
    traceback: str | None = None
    steps: list[StepReport] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    worker: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain data (JSON-able)."""
        out = dataclasses.asdict(self)
        out["steps"] = [s.to_dict() for s in self.steps]
        return out

    def summary(self) -> str:
        """One line: target, status and the steps done/skipped."""
        counts = {s: sum(1 for r in self.steps if r.status == s) for s in STATUSES}
        text = (
            f"{'ok' if self.ok else 'FAILED'}  {self.dataset or self.target}  "
            f"({counts['done']} done, {counts['skipped']} skipped"
        )
        if counts["failed"] or counts["not-run"]:
            text += f", {counts['failed']} failed, {counts['not-run']} not run"
        text += f"; {self.seconds:.1f} s)"
        if self.error:
            text += f"\n    {self.error}"
        return text


@dataclasses.dataclass
class _Context:
    target: str
    base: Path
    stem: str
    dataset: Any = None
    roi_label: str | None = None
    signal_label: str | None = None
    signal_channel: int | None = None
    split_executor: SplitExecutor | None = None

    @property
    def name(self) -> str:
        if self.dataset is not None and self.dataset.savedir:
            return Path(self.dataset.savedir).stem
        return self.stem

    def path(self, value: str, **extra: str) -> Path:
        """Fill a path template and resolve it against the dataset's folder."""
        fields = {
            "name": self.name,
            "stem": self.stem,
            "folder": str(self.base),
            "dataset": str(self.dataset.savedir) if self.dataset is not None else "",
            **extra,
        }
        try:
            text = str(value).format(**fields)
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"bad path template {value!r}: {err}; fields are {sorted(fields)}"
            ) from None
        path = Path(os.path.expanduser(text))
        return path if path.is_absolute() else self.base / path


class _Skip(Exception):
    """Internal: the step's result is already stored."""

    def __init__(self, output: str) -> None:
        super().__init__(output)
        self.output = output


# ---------------------------------------------------------------------------------------
# Steps: each is a generator of (fraction of the step, message) returning the output
# ---------------------------------------------------------------------------------------
StepGen = Generator[tuple[float, str], None, str]


def _need_dataset(ctx: _Context, step: Step) -> Any:
    if ctx.dataset is None:
        from .dataset import ImagingDataset, is_dataset_folder

        if not is_dataset_folder(ctx.target):
            raise ValueError(
                f"{ctx.target!r} is not a dataset folder (.sima); the pipeline needs a "
                f"'create' step first to make one from a movie"
            )
        ctx.dataset = ImagingDataset.load(ctx.target)
    if ctx.dataset.read_only:
        raise PermissionError(
            f"the dataset {ctx.dataset.savedir!r} is read-only (a legacy SIMA folder?); "
            f"save it as a new dataset first (napari-sima create or dataset.save)"
        )
    return ctx.dataset


def _movie_files(target: str) -> list[str]:
    import glob

    if any(ch in target for ch in "*?["):
        files = sorted(glob.glob(target))
        if not files:
            raise FileNotFoundError(f"no movie file matches {target!r}")
        return files
    if not os.path.exists(target):
        raise FileNotFoundError(f"no movie file at {target!r}")
    return [target]


def _movie_identity(path: str, sample: int = 1 << 20) -> dict[str, Any]:
    """Name, size and a digest of the first and last MiB of a movie file.

    Cheap for multi-GB movies, yet a movie rewritten in place is noticed (the file's
    modification time is not used: copying a folder changes it).
    """
    import hashlib

    size = os.path.getsize(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(sample))
        if size > 2 * sample:
            fh.seek(size - sample)
            h.update(fh.read(sample))
    return {"name": os.path.basename(path), "size": size, "sample_sha256": h.hexdigest()}


def _step_create(step: Step, ctx: _Context) -> StepGen:
    from .dataset import ImagingDataset, is_dataset_folder
    from .provenance import make_provenance
    from .sequence import Sequence

    p = step.params
    files = _movie_files(ctx.target)
    out = ctx.path(p["output"])
    if out.suffix != ".sima":
        out = out.with_name(out.name + ".sima")
    movies = [_movie_identity(f) for f in files]
    record = make_provenance("create", step.hashed_params(), {"movies": movies})
    if is_dataset_folder(out):
        ds = ImagingDataset.load(out)
        stored = ds.creation_provenance or {}
        if stored.get("hash") == record["hash"]:
            ctx.dataset = ds
            raise _Skip(str(out))
        raise FileExistsError(
            f"{str(out)!r} already holds a dataset that this create step did not make "
            f"(other movie or parameters); delete it or set another 'output'"
        )
    yield 0.1, f"reading {os.path.basename(files[0])}"
    fmt = p["format"]
    if fmt is None:
        suffix = Path(files[0]).suffix.lower()
        fmt = "HDF5" if suffix in (".h5", ".hdf5") else "TIFF"
    options = dict(p["options"] or {})
    if len(files) > 1 and fmt.upper() == "TIFF":
        fmt = "TIFFs"
    seq = (
        Sequence.create(fmt, files, **options)
        if fmt.upper() == "TIFFS"
        else Sequence.create(fmt, files[0], **options)
    )
    ds = ImagingDataset([seq], None, channel_names=p["channel_names"])
    ds.creation_provenance = record
    ds.savedir = out  # writes dataset.json (with the record) once
    ctx.dataset = ds
    return str(out)


def _existing_roi_hash(ds: Any, label: str) -> str | None:
    from .roi_store import roi_set_provenance

    record = roi_set_provenance(ds.savedir).get(label) if ds.savedir else None
    return (record or {}).get("hash")


def _signal_entry(ds: Any, ch: int, label: str) -> dict[str, Any]:
    from . import signal_store

    if not ds.savedir:
        return {}
    return signal_store.signal_set_provenance(signal_store.store_dir(ds.savedir, ch)).get(
        label
    ) or {}


def _step_import_rois(step: Step, ctx: _Context) -> StepGen:
    from .imagej import read_imagej_rois
    from .records import import_rois_record

    ds = _need_dataset(ctx, step)
    p = step.params
    path = ctx.path(p["file"])
    if not path.is_file():
        raise FileNotFoundError(f"no ROI file at {str(path)!r}")
    label = str(p["label"])
    record = import_rois_record(path, label)
    ctx.roi_label = label
    if _existing_roi_hash(ds, label) == record["hash"]:
        raise _Skip(label)
    yield 0.2, f"reading {path.name}"
    rois = read_imagej_rois(path, im_shape=ds.frame_shape[:3])
    if not rois:
        raise ValueError(f"{str(path)!r} holds no area ROI to import")
    ds.add_ROIs(rois, label, provenance=record)
    return f"{label} ({len(rois)} ROIs)"


def _step_segment(step: Step, ctx: _Context) -> StepGen:
    from .records import segment_record
    from .segment import configure_strategy, default_strategy, make_strategy
    from .segment.planewise import normalize_planes

    ds = _need_dataset(ctx, step)
    p = step.params
    planes = None if p["planes"] is None else normalize_planes(p["planes"], ds.frame_shape[0])
    num_planes = ds.frame_shape[0] if planes is None else 1
    if p["strategy"] == "default":
        base = default_strategy(p["channel"], num_planes=num_planes, seed=p["seed"])
    else:
        base = make_strategy(p["strategy"], p["channel"], num_planes=num_planes, seed=p["seed"])
    strategy = configure_strategy(base, dict(p["params"] or {}), where=f"step {step.title}")
    label = str(p["label"])
    ctx.roi_label = label
    if _existing_roi_hash(ds, label) == segment_record(ds, strategy, planes)["hash"]:
        raise _Skip(label)
    gen = ds.iter_segment(strategy, label=label, planes=planes)
    try:
        while True:
            prog = next(gen)
            yield float(getattr(prog, "fraction", 0.0)), str(getattr(prog, "message", ""))
    except StopIteration as stop:
        rois = stop.value
    finally:
        gen.close()
    return f"{label} ({len(rois)} ROIs)"


def _step_transform_import(step: Step, ctx: _Context) -> StepGen:
    from .dataset import ImagingDataset
    from .import_rois import store_transformed_ROIs, transformed_ROIs
    from .provenance import make_provenance, movie_ref, roi_set_ref
    from .roi_store import most_recent_label, roi_set_timestamps

    ds = _need_dataset(ctx, step)
    p = step.params
    ref_path = ctx.path(p["reference"])
    ref = ImagingDataset.load(ref_path)
    source_label = p["source_label"] or most_recent_label(roi_set_timestamps(ref.savedir))
    if source_label is None:
        raise ValueError(f"the reference dataset {str(ref_path)!r} has no ROI set")
    label = str(p["label"] or source_label)
    inputs = {
        "reference_rois": roi_set_ref(ref, source_label),
        "reference_movies": movie_ref(ref),
        "movies": movie_ref(ds),
    }
    if p["anchor_label"]:
        inputs["anchor_rois"] = roi_set_ref(ref, p["anchor_label"])
    params = {k: v for k, v in step.hashed_params().items() if k not in ("reference", "label")}
    record = make_provenance("transform-import", {**params, "label": label}, inputs)
    ctx.roi_label = label
    if _existing_roi_hash(ds, label) == record["hash"]:
        raise _Skip(label)
    yield 0.1, f"estimating the {p['method']} transform from {ref_path.name}"
    result = transformed_ROIs(
        ds,
        ref,
        method=p["method"],
        source_channel=p["source_channel"],
        target_channel=p["target_channel"],
        source_label=source_label,
        anchor_label=p["anchor_label"],
    )
    record["parameters"]["transforms"] = [
        None if t is None else getattr(t, "params", repr(t)) for t in result.transforms
    ]
    from .provenance import jsonable

    record["parameters"] = jsonable(record["parameters"])
    store_transformed_ROIs(ds, result, label, provenance=record)
    return f"{label} ({len(result.rois)} ROIs)"


@contextlib.contextmanager
def _maybe_split(ctx: _Context, wanted: bool) -> Generator[Executor | None, None, None]:
    if wanted and ctx.split_executor is not None:
        with ctx.split_executor() as executor:
            yield executor
    else:
        yield None


def _step_extract(step: Step, ctx: _Context) -> StepGen:
    from .records import extract_record
    from .roi_store import most_recent_label, roi_set_timestamps

    ds = _need_dataset(ctx, step)
    p = step.params
    rois_label = p["rois"] or ctx.roi_label or most_recent_label(roi_set_timestamps(ds.savedir))
    if rois_label is None:
        raise ValueError(f"the dataset {ds.savedir!r} has no ROI set to extract")
    ch = ds.resolve_channel(p["signal_channel"])
    demix = None if p["demix_channel"] is None else ds.resolve_channel(p["demix_channel"])
    label = str(p["label"])
    ctx.signal_label, ctx.signal_channel = label, ch
    expected = extract_record(ds, rois_label, 0, ch, p["remove_overlap"], demix)["hash"]
    stored = (_signal_entry(ds, ch, label).get("provenance") or {}).get("hash")
    if stored == expected:
        raise _Skip(label)
    with _maybe_split(ctx, p["split_frames"]) as executor:
        kwargs: dict[str, Any] = {} if executor is None else {"executor": executor}
        gen = ds.iter_extract(
            rois=rois_label,
            signal_channel=ch,
            label=label,
            remove_overlap=p["remove_overlap"],
            demix_channel=demix,
            save_summary=p["save_summary"],
            **kwargs,
        )
        try:
            while True:
                done, total = next(gen)
                yield (done / total if total else 0.0), f"{done}/{total} frames"
        except StopIteration as stop:
            result = stop.value
        finally:
            gen.close()
    return f"{label} ({len(result['rois'])} ROIs)"


def _signals_target(ds: Any, p: dict[str, Any], ctx: _Context) -> tuple[int, str]:
    if p["channel"] is not None:
        ch = ds.resolve_channel(p["channel"])
    elif ctx.signal_channel is not None:
        ch = ctx.signal_channel
    else:
        ch = 0
    label = p["signals"] or (ctx.signal_label if ch == ctx.signal_channel else None)
    labels = ds.signal_labels(ch)
    if label is None:
        if not labels:
            raise KeyError(f"no signals stored for channel {ch} of {ds.savedir!r}")
        label = labels[-1]
    if label not in labels:
        raise KeyError(f"no signal set {label!r} for channel {ch}; stored sets: {sorted(labels)}")
    return ch, label


def _step_dff(step: Step, ctx: _Context) -> StepGen:
    from .dff import dff_parameters, store_dff
    from .records import dff_record

    ds = _need_dataset(ctx, step)
    p = step.params
    ch, label = _signals_target(ds, p, ctx)
    params = dff_parameters(p["baseline"], p["window"], p["percentile"], p["sigma"])
    expected = dff_record(ds, ch, label, params)["hash"]
    stored = (_signal_entry(ds, ch, label).get("derived", {}).get("dff") or {}).get("hash")
    if stored == expected:
        raise _Skip(f"{label}: dff")
    yield 0.1, f"ΔF/F of {label}"
    store_dff(ds, ch, label, p["baseline"], p["window"], p["percentile"], p["sigma"])
    return f"{label}: dff"


def _step_infer_spikes(step: Step, ctx: _Context) -> StepGen:
    from .records import spikes_record

    ds = _need_dataset(ctx, step)
    p = step.params
    ch, label = _signals_target(ds, p, ctx)
    expected = spikes_record(ds, ch, label, p["gamma"], p["share_gamma"], p["mode"],
                             p["solver"])["hash"]
    stored = (_signal_entry(ds, ch, label).get("derived", {}).get("spikes") or {}).get("hash")
    if stored == expected:
        raise _Skip(f"{label}: spikes")
    yield 0.05, f"inferring spikes of {label}"
    with _maybe_split(ctx, p["split_rois"]) as executor:
        kwargs: dict[str, Any] = {} if executor is None else {"executor": executor}
        ds.infer_spikes(
            channel=ch,
            label=label,
            gamma=p["gamma"],
            share_gamma=p["share_gamma"],
            mode=p["mode"],
            solver=p["solver"],
            **kwargs,
        )
    return f"{label}: spikes"


def _export_inputs(ds: Any, ch: int, label: str) -> dict[str, Any]:
    from .provenance import movie_ref, signal_set_ref

    entry = _signal_entry(ds, ch, label)
    return {
        "signals": signal_set_ref(ds, ch, label),
        "derived": {k: (v or {}).get("hash") for k, v in (entry.get("derived") or {}).items()},
        "movies": movie_ref(ds),
    }


def _sidecar_hash(path: Path) -> str | None:
    import json

    side = path.with_name(path.name + EXPORT_PROVENANCE_SUFFIX)
    try:
        return json.loads(side.read_text(encoding="utf-8")).get("hash")
    except (OSError, ValueError, AttributeError):
        return None


def _step_export(step: Step, ctx: _Context) -> StepGen:
    from . import storage
    from .provenance import make_provenance

    ds = _need_dataset(ctx, step)
    p = step.params
    ch, label = _signals_target(ds, {**p, "signals": p["signals_label"]}, ctx)
    params = {k: v for k, v in step.hashed_params().items()}
    record = make_provenance("export", params, _export_inputs(ds, ch, label))
    outputs: list[tuple[str, Path]] = []
    if p["signals"]:
        outputs.append(("signals", ctx.path(p["signals"])))
    if p["averages"]:
        outputs.append(("averages", ctx.path(p["averages"], channel="{channel}")))
    if p["nwb"]:
        outputs.append(("nwb", ctx.path(p["nwb"])))

    def marker(kind: str, path: Path) -> Path:
        # the file whose sidecar records the export (averages may be one file per channel)
        if kind == "averages" and "{channel}" in str(path):
            safe = re.sub(r"[^\w.-]+", "_", ds.channel_names[0]).lstrip(".") or "channel"
            return Path(str(path).replace("{channel}", safe))
        return path

    if all(
        marker(k, path).exists() and _sidecar_hash(marker(k, path)) == record["hash"]
        for k, path in outputs
    ):
        raise _Skip(", ".join(str(path) for _, path in outputs))
    written = []
    for i, (kind, path) in enumerate(outputs):
        yield i / len(outputs), f"writing {path.name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "signals":
            fmt = path.suffix.lower().lstrip(".") or "csv"
            if fmt not in ("csv", "tsv", "npz"):
                raise ValueError(f"signals export {str(path)!r}: use a .csv, .tsv or .npz name")
            ds.export_signals(path, fmt=fmt, channel=ch, signals_label=label)
        elif kind == "averages":
            suffix = path.suffix.lower()
            if suffix in (".h5", ".hdf5"):
                ds.export_averages(str(path), fmt="HDF5", projection_type=p["projection"])
            else:
                # channel names come from the dataset file: never let them name a folder
                names = [
                    re.sub(r"[^\w.-]+", "_", n).lstrip(".") or "channel"
                    for n in ds.channel_names
                ]
                if "{channel}" in str(path):
                    files = [str(path).replace("{channel}", n) for n in names]
                elif len(names) > 1:
                    files = [str(path.with_name(f"{path.stem}_{n}{path.suffix}")) for n in names]
                else:
                    files = [str(path)]
                ds.export_averages(files, fmt="TIFF16", projection_type=p["projection"])
        else:
            ds.export_nwb(path, channel=ch, signals_label=label, overwrite=True)
        side = marker(kind, path)
        storage.atomic_write_json(side.with_name(side.name + EXPORT_PROVENANCE_SUFFIX), record)
        written.append(str(path))
    return ", ".join(written)


_STEPS: dict[str, Callable[[Step, _Context], StepGen]] = {
    "create": _step_create,
    "import-rois": _step_import_rois,
    "segment": _step_segment,
    "transform-import": _step_transform_import,
    "extract": _step_extract,
    "dff": _step_dff,
    "infer-spikes": _step_infer_spikes,
    "export": _step_export,
}


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------
def _error_text(err: BaseException) -> str:
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        return err.args[0]
    return str(err) or type(err).__name__


def iter_run_pipeline(
    pipeline: Pipeline,
    target: str | os.PathLike,
    *,
    split_executor: SplitExecutor | None = None,
) -> Generator[PipelineProgress, None, DatasetReport]:
    """Run a pipeline on one target, as a generator of :class:`PipelineProgress`.

    Parameters
    ----------
    pipeline : Pipeline
        From :func:`~napari_sima.core.pipeline.load_pipeline`.
    target : path-like
        A dataset folder; or a movie file (a glob for one file per frame) when the
        pipeline starts with ``create``.
    split_executor : callable, optional
        Returns a context manager giving a :class:`concurrent.futures.Executor`;
        steps with ``split_frames`` / ``split_rois`` then spread their work over it
        (the batch runner passes the Dask cluster's).

    Returns
    -------
    DatasetReport
        The generator's return value.  A step that fails stops the dataset (the steps
        after it depend on it): the report says which and why; nothing is raised.
        Closing the generator cancels the step running (nothing half-written is left).
    """
    if not isinstance(pipeline, Pipeline):
        raise TypeError(
            f"pipeline must be a Pipeline (load_pipeline), got {type(pipeline).__name__}"
        )
    target = os.path.abspath(os.fspath(target))
    base = Path(target).parent
    stem = Path(target).stem
    if any(ch in Path(target).name for ch in "*?["):
        stem = Path(target).parent.name
    ctx = _Context(target=target, base=base, stem=stem, split_executor=split_executor)
    report = DatasetReport(target=target)
    t_start = time.perf_counter()
    if not pipeline.creates and not os.path.isdir(target):
        report.ok = False
        report.error = (
            f"{target!r} is not a dataset folder (.sima)"
            + ("" if os.path.exists(target) else ": no such file or folder")
            + "; a pipeline without a 'create' step runs on existing datasets"
        )
        report.steps = [StepReport(s.name, s.index, "not-run") for s in pipeline.steps]
        return report
    try:
        yield from _run_steps(pipeline, ctx, report)
    finally:  # also when the generator is closed (cancelled) mid-step
        if ctx.dataset is not None:
            ctx.dataset.close()
    report.seconds = time.perf_counter() - t_start
    yield PipelineProgress(pipeline.steps[-1].title, 1.0, "finished")
    return report


def _run_steps(
    pipeline: Pipeline, ctx: _Context, report: DatasetReport
) -> Generator[PipelineProgress, None, None]:
    """Run the steps in order, filling ``report``; stop at the first failure."""
    n = len(pipeline.steps)
    for step in pipeline.steps:
        t0 = time.perf_counter()
        yield PipelineProgress(step.title, step.index / n, f"{step.name}")
        try:
            gen = _STEPS[step.name](step, ctx)
            try:
                while True:
                    frac, message = next(gen)
                    yield PipelineProgress(step.title, (step.index + min(1.0, frac)) / n, message)
            except StopIteration as stop:
                output = stop.value
            finally:
                gen.close()
            status = "done"
        except _Skip as skip:
            output, status = skip.output, "skipped"
        except Exception as err:  # noqa: BLE001 - one dataset's failure is reported
            report.steps.append(
                StepReport(step.name, step.index, "failed", time.perf_counter() - t0,
                           None, _error_text(err))
            )
            report.ok = False
            report.error = f"step {step.title}: {_error_text(err)}"
            report.traceback = traceback.format_exc()
            report.steps.extend(
                StepReport(s.name, s.index, "not-run") for s in pipeline.steps[step.index + 1:]
            )
            return
        finally:
            if ctx.dataset is not None and ctx.dataset.savedir:
                report.dataset = str(ctx.dataset.savedir)
        report.steps.append(
            StepReport(step.name, step.index, status, time.perf_counter() - t0, output)
        )


def run_pipeline(
    pipeline: Pipeline,
    target: str | os.PathLike,
    *,
    progress: Callable[[PipelineProgress], Any] | None = None,
    split_executor: SplitExecutor | None = None,
) -> DatasetReport:
    """Run a pipeline on one target (see :func:`iter_run_pipeline`); returns its report."""
    gen = iter_run_pipeline(pipeline, target, split_executor=split_executor)
    try:
        while True:
            event = next(gen)
            if progress is not None:
                progress(event)
    except StopIteration as stop:
        return stop.value
