"""Analysis pipelines: a YAML file of steps, run on one dataset or on many.

A pipeline file lists steps with their parameters::

    version: 1
    name: v1-analysis
    steps:
      - create: {channel_names: [GCaMP]}          # a movie -> NAME.sima next to it
      - segment: {strategy: stica, params: {components: 30}, label: auto}
      - extract: {label: signals}
      - dff: {window: 500, percentile: 8}
      - infer-spikes: {mode: correct}
      - export: {signals: "{name}_signals.csv", nwb: "{name}.nwb"}

Each step is a one-key mapping ``{step: {parameters}}`` (or ``{step: name, ...}``).
Unknown steps or parameters, and values of the wrong type, are refused when the file
is loaded (:class:`PipelineError` names the file, the step and the key) — before any
dataset is touched.  The file is read with YAML's safe loader: it can hold data only.

Steps (parameters and defaults: :data:`STEP_PARAMETERS`):

``create``
    Make ``NAME.sima`` from a movie (the pipeline's target is then the movie).
``import-rois``
    Read an ImageJ ROI file (``.roi``, RoiSet ``.zip``, TIFF overlay) into an ROI set.
``segment``
    Segment with a preset (``napari_sima.core.segment.STRATEGIES``) and parameters.
``transform-import``
    Map a reference session's ROI set onto this dataset
    (:meth:`ImagingDataset.import_transformed_ROIs`).
``extract``
    Extract the signals of an ROI set (default: the set of the last ROI step).
``dff``
    ΔF/F of a signal set, stored with it as ``dff``.
``infer-spikes``
    Spikes of a signal set, stored with it.
``export``
    Signals as CSV/TSV/NPZ, averages as TIFF/HDF5, and/or an NWB file.

Relative paths in a step resolve against the folder holding the dataset (or the
movie, for ``create``); templates ``{name}`` (dataset name without ``.sima``),
``{dataset}`` (the dataset folder), ``{folder}`` (its parent), ``{stem}`` (movie file
name without suffix; ``create`` only) are filled in per dataset.

Running is in :mod:`napari_sima.core.pipeline_run` (one dataset, with skipping of
unchanged steps) and :mod:`napari_sima.core.batch` (many datasets, on Dask); both are
re-exported here.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import brief as _short

__all__ = [
    "PIPELINE_VERSION",
    "STEP_NAMES",
    "STEP_PARAMETERS",
    "Pipeline",
    "PipelineError",
    "Step",
    "load_pipeline",
    "parse_pipeline",
]

#: Highest pipeline file version this code reads.
PIPELINE_VERSION = 1

_ANY = object()  # a parameter of any type (checked by the step itself)

#: Parameters of each step with their defaults; ``None`` means "not set".
STEP_PARAMETERS: dict[str, dict[str, Any]] = {
    "create": {
        "output": "{stem}.sima",
        "format": None,  # 'TIFF', 'TIFFs', 'HDF5' (default: from the suffix)
        "options": {},  # keyword arguments of Sequence.create (num_planes, key, ...)
        "channel_names": None,
    },
    "import-rois": {
        "file": None,  # required
        "label": "imported",
    },
    "segment": {
        "strategy": "stica",
        "params": {},
        "channel": 0,
        "planes": None,
        "seed": 0,
        "label": "segmented",
    },
    "transform-import": {
        "reference": None,  # required: the reference session's .sima folder
        "source_label": None,
        "label": None,  # default: the source label
        "method": "affine",
        "anchor_label": None,
        "source_channel": 0,
        "target_channel": 0,
    },
    "extract": {
        "rois": None,  # default: the ROI set of the pipeline's last ROI step, else the newest
        "label": "signals",
        "signal_channel": 0,
        "remove_overlap": True,
        "demix_channel": None,
        "save_summary": False,
        "split_frames": False,  # on a Dask cluster: frame blocks over the workers
    },
    "dff": {
        "signals": None,  # default: the pipeline's last signal set
        "channel": None,
        "baseline": "percentile",
        "window": 500,
        "percentile": 8.0,
        "sigma": 10.0,
    },
    "infer-spikes": {
        "signals": None,
        "channel": None,
        "gamma": None,
        "share_gamma": True,
        "mode": "correct",
        "solver": "oasis",
        "split_rois": False,  # on a Dask cluster: ROI blocks over the workers
    },
    "export": {
        "signals": None,  # output file (.csv, .tsv or .npz)
        "signals_label": None,
        "channel": None,
        "averages": None,  # output file (.tif: one per channel with {channel}; .h5)
        "projection": "average",
        "nwb": None,  # output .nwb file
    },
}

#: Step names in their usual order.
STEP_NAMES = tuple(STEP_PARAMETERS)

#: Parameters that must be given.
_REQUIRED = {"import-rois": ("file",), "transform-import": ("reference",)}

#: Parameters whose type is free (ints or names, lists, mappings checked by the step).
_FREE = {
    ("segment", "channel"),
    ("segment", "planes"),
    ("transform-import", "source_channel"),
    ("transform-import", "target_channel"),
    ("extract", "signal_channel"),
    ("extract", "demix_channel"),
    ("dff", "channel"),
    ("export", "channel"),
    ("infer-spikes", "gamma"),
    ("create", "channel_names"),
}

#: Parameters that only say how to compute, not what: they never change a result,
#: so they are left out of the step's hash.
EXECUTION_ONLY = {("extract", "split_frames"), ("infer-spikes", "split_rois")}


class PipelineError(ValueError):
    """A pipeline file that cannot be used (message names the file, step and key)."""


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of a pipeline.

    Attributes
    ----------
    name : str
        One of :data:`STEP_NAMES`.
    params : dict
        All parameters (defaults filled in).
    index : int
        Position in the pipeline (0-based).
    """

    name: str
    params: dict[str, Any]
    index: int

    @property
    def title(self) -> str:
        """``'3:extract'``-style name for messages and reports."""
        return f"{self.index + 1}:{self.name}"

    def hashed_params(self) -> dict[str, Any]:
        """Return the parameters that determine the result (execution-only ones dropped)."""
        return {k: v for k, v in self.params.items() if (self.name, k) not in EXECUTION_ONLY}


@dataclasses.dataclass
class Pipeline:
    """A validated pipeline.

    Attributes
    ----------
    steps : list of Step
    name : str
        From the file's ``name`` (default: the file name).
    source : str or None
        The file it was read from.
    """

    steps: list[Step]
    name: str = "pipeline"
    source: str | None = None

    @property
    def creates(self) -> bool:
        """Whether the first step is ``create`` (targets are then movies)."""
        return bool(self.steps) and self.steps[0].name == "create"

    def to_dict(self) -> dict[str, Any]:
        """Return the pipeline as plain data (what :func:`parse_pipeline` reads back)."""
        return {
            "version": PIPELINE_VERSION,
            "name": self.name,
            "steps": [{s.name: copy.deepcopy(s.params)} for s in self.steps],
        }


def _where(source: str | None, step: int | None = None, name: str | None = None) -> str:
    where = f"pipeline {source!r}" if source else "pipeline"
    if step is not None:
        where += f", step {step + 1}" + (f" ({name})" if name else "")
    return where


def _type_ok(default: Any, value: Any) -> bool:
    if value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, dict):
        return isinstance(value, Mapping)
    return True


def _type_name(default: Any) -> str:
    for kind, name in ((bool, "true/false"), (int, "an integer"), (float, "a number"),
                       (str, "a string"), (dict, "a mapping")):
        if isinstance(default, kind):
            return name
    return "a value"


def _parse_step(item: Any, index: int, source: str | None) -> Step:
    if isinstance(item, str):
        name, given = item, {}
    elif isinstance(item, Mapping) and "step" in item:
        name = item["step"]
        given = {k: v for k, v in item.items() if k != "step"}
    elif isinstance(item, Mapping) and len(item) == 1:
        ((name, given),) = item.items()
        given = {} if given is None else given
    else:
        raise PipelineError(
            f"{_where(source, index)}: a step is written '- NAME: {{parameters}}' or "
            f"'- step: NAME' with parameters, got {_short(item)}"
        )
    if not isinstance(name, str) or name not in STEP_PARAMETERS:
        raise PipelineError(
            f"{_where(source, index)}: unknown step {_short(name)}; steps are {list(STEP_NAMES)}"
        )
    if not isinstance(given, Mapping):
        raise PipelineError(
            f"{_where(source, index, name)}: parameters must be a mapping, got {_short(given)}"
        )
    spec = STEP_PARAMETERS[name]
    params = copy.deepcopy(spec)
    for key, value in given.items():
        if key not in spec:
            raise PipelineError(
                f"{_where(source, index, name)}: unknown parameter {_short(key)}; "
                f"{name} takes {sorted(spec)}"
            )
        if (name, key) not in _FREE and not _type_ok(spec[key], value):
            raise PipelineError(
                f"{_where(source, index, name)}: {key} must be {_type_name(spec[key])}, "
                f"got {_short(value)}"
            )
        params[key] = copy.deepcopy(value)
    for key in _REQUIRED.get(name, ()):
        if params.get(key) in (None, ""):
            raise PipelineError(f"{_where(source, index, name)}: {key!r} is required")
    if name == "export" and not any(params.get(k) for k in ("signals", "averages", "nwb")):
        raise PipelineError(
            f"{_where(source, index, name)}: give at least one of 'signals', 'averages', 'nwb'"
        )
    if name == "segment" and params["strategy"] != "default":
        from .segment.defaults import STRATEGIES

        if params["strategy"] not in STRATEGIES:
            raise PipelineError(
                f"{_where(source, index, name)}: unknown strategy {_short(params['strategy'])}; "
                f"choose one of {sorted(STRATEGIES)}"
            )
    for key in ("label", "output"):
        value = params.get(key)
        if isinstance(value, str) and not value.strip():
            raise PipelineError(f"{_where(source, index, name)}: {key} cannot be empty")
    return Step(name=name, params=params, index=index)


#: Most values (counted through YAML aliases) and deepest nesting a pipeline may hold.
MAX_PIPELINE_NODES = 100_000
MAX_PIPELINE_DEPTH = 32


def _check_size(obj: Any, source: str | None) -> None:
    """Refuse alias bombs ("billion laughs") and absurd nesting before anything copies them."""
    count = 0
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_PIPELINE_NODES:
            raise PipelineError(
                f"{_where(source)}: more than {MAX_PIPELINE_NODES} values (YAML aliases "
                f"expanded); a pipeline is a short list of steps"
            )
        if depth > MAX_PIPELINE_DEPTH:
            raise PipelineError(
                f"{_where(source)}: nested more than {MAX_PIPELINE_DEPTH} levels deep"
            )
        if isinstance(value, Mapping):
            stack.extend((v, depth + 1) for v in value.values())
            stack.extend((k, depth + 1) for k in value)
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)


def parse_pipeline(obj: Any, source: str | None = None) -> Pipeline:
    """Validate pipeline data (as read from YAML) and return a :class:`Pipeline`.

    Parameters
    ----------
    obj : dict or list
        ``{'version': 1, 'name': ..., 'steps': [...]}``, or just the list of steps.
    source : str, optional
        Where it came from (for messages).

    Raises
    ------
    PipelineError
        For anything that is not a valid pipeline; the message names the source, the
        step and the key.
    """
    _check_size(obj, source)
    if isinstance(obj, list):
        obj = {"steps": obj}
    if not isinstance(obj, Mapping):
        raise PipelineError(
            f"{_where(source)}: expected a mapping with 'steps' (or a list of steps), "
            f"got {type(obj).__name__}"
        )
    unknown = set(obj) - {"version", "name", "steps", "description"}
    if unknown:
        raise PipelineError(
            f"{_where(source)}: unknown top-level key(s) {sorted(map(str, unknown))}; "
            f"expected version, name, description, steps"
        )
    version = obj.get("version", PIPELINE_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PipelineError(
            f"{_where(source)}: version must be a positive integer, got {_short(version)}"
        )
    if version > PIPELINE_VERSION:
        raise PipelineError(
            f"{_where(source)}: version {version} is newer than this napari-sima reads "
            f"({PIPELINE_VERSION}); upgrade napari-sima"
        )
    steps = obj.get("steps")
    if not isinstance(steps, list) or not steps:
        raise PipelineError(f"{_where(source)}: 'steps' must be a non-empty list")
    parsed = [_parse_step(item, i, source) for i, item in enumerate(steps)]
    for step in parsed[1:]:
        if step.name == "create":
            raise PipelineError(
                f"{_where(source, step.index, 'create')}: create can only be the first step"
            )
    name = obj.get("name")
    if name is None:
        name = Path(source).stem if source else "pipeline"
    return Pipeline(steps=parsed, name=str(name), source=source)


#: Largest pipeline file read (a pipeline is a few hundred bytes).
MAX_PIPELINE_BYTES = 1 << 20


def load_pipeline(path: str | os.PathLike) -> Pipeline:
    """Read and validate a pipeline file (YAML, safe loader only; JSON is YAML too).

    Parameters
    ----------
    path : path-like
        The ``.yaml`` / ``.yml`` / ``.json`` file.

    Returns
    -------
    Pipeline

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    PipelineError
        If it is not valid YAML or not a valid pipeline.
    """
    import yaml

    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"no pipeline file at {str(path)!r}")
    size = path.stat().st_size
    if size > MAX_PIPELINE_BYTES:
        raise PipelineError(
            f"{_where(str(path))}: {size} bytes is too large for a pipeline file "
            f"(limit {MAX_PIPELINE_BYTES})"
        )
    try:
        text = path.read_text(encoding="utf-8")
        _check_yaml_shape(text, str(path))
        obj = yaml.safe_load(text)
    except UnicodeDecodeError as err:
        raise PipelineError(f"{_where(str(path))}: not UTF-8 text ({err})") from None
    except yaml.YAMLError as err:
        raise PipelineError(f"{_where(str(path))}: not valid YAML: {err}") from None
    except RecursionError:
        raise PipelineError(
            f"{_where(str(path))}: nested more than {MAX_PIPELINE_DEPTH} levels deep"
        ) from None
    except (ValueError, OverflowError) as err:  # a value YAML cannot build (huge int, date)
        if isinstance(err, PipelineError):
            raise
        raise PipelineError(f"{_where(str(path))}: a value cannot be read: {err}") from None
    return parse_pipeline(obj, str(path))


def _check_yaml_shape(text: str, source: str) -> None:
    """Refuse absurd nesting and sizes from the YAML event stream, before building anything.

    PyYAML's composer is recursive and its scanner slow on deeply nested flow
    collections: the events are read one by one (the parser itself is iterative) and
    reading stops as soon as the nesting exceeds :data:`MAX_PIPELINE_DEPTH`.
    """
    import yaml

    depth = 0
    for events, event in enumerate(yaml.parse(text, Loader=yaml.SafeLoader), 1):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_PIPELINE_DEPTH:
                raise PipelineError(
                    f"{_where(source)}: nested more than {MAX_PIPELINE_DEPTH} levels deep"
                )
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1
        if events > MAX_PIPELINE_NODES:
            raise PipelineError(
                f"{_where(source)}: more than {MAX_PIPELINE_NODES} values; a pipeline is a "
                f"short list of steps"
            )


def __getattr__(name: str) -> Any:
    # Running lives in its own modules; re-exported here lazily (no import cycle).
    if name in ("iter_run_pipeline", "run_pipeline", "DatasetReport", "StepReport",
                "PipelineProgress"):
        from . import pipeline_run

        return getattr(pipeline_run, name)
    if name in ("run_batch", "BatchReport"):
        from . import batch

        return getattr(batch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
