"""Provenance records: what made a stored result, from what, with which software.

Every stored ROI set, signal set and derived entry (ΔF/F, spikes) carries a JSON
record in its store's ``index.json`` next to the data::

    {"step": "extract",
     "parameters": {"signal_channel": 0, "remove_overlap": true, ...},
     "inputs": {"rois": {"label": "stica", "hash": "3f2a..."}},
     "versions": {"napari-sima": "0.3.1", "numpy": "2.4.0", ...},
     "timestamp": "2026-11-21T14:02:11+00:00",
     "hash": "a81c..."}

``hash`` identifies the result by what made it: a digest of the step, its
parameters and its inputs (each input's own ``hash``, a movie fingerprint, a file
digest).  A pipeline reruns a step only when that digest changes, and a result
edited by hand gets a new one (its record includes the time of the edit), so
everything computed from it is redone.

Examples
--------
>>> p = make_provenance("extract", {"remove_overlap": True}, {"rois": {"label": "a"}})
>>> sorted(p)
['hash', 'inputs', 'parameters', 'step', 'timestamp', 'versions']
>>> p["hash"] == step_hash("extract", {"remove_overlap": True}, {"rois": {"label": "a"}})
True
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PROVENANCE_PACKAGES",
    "edit_provenance",
    "file_digest",
    "format_provenance",
    "jsonable",
    "make_provenance",
    "movie_ref",
    "roi_set_ref",
    "signal_set_ref",
    "software_versions",
    "stable_hash",
    "step_hash",
]

#: Distributions whose versions each record lists (those installed).
PROVENANCE_PACKAGES = (
    "napari-sima",
    "numpy",
    "scipy",
    "scikit-image",
    "scikit-learn",
    "tifffile",
    "roifile",
    "h5py",
    "numba",
    "cvxpy",
    "dask",
    "distributed",
)

_versions_cache: dict[str, str] | None = None


def software_versions() -> dict[str, str]:
    """Return ``{distribution: version}`` of napari-sima and the libraries it computes with.

    Read once per process (installed versions do not change while it runs).
    """
    global _versions_cache
    if _versions_cache is None:
        from importlib.metadata import PackageNotFoundError, version

        out: dict[str, str] = {}
        for name in PROVENANCE_PACKAGES:
            with contextlib.suppress(PackageNotFoundError):
                out[name] = version(name)
        _versions_cache = out
    return dict(_versions_cache)


def jsonable(value: Any) -> Any:
    """Return ``value`` as plain JSON types (for a provenance record).

    NumPy scalars and arrays become numbers and lists, tuples and sets lists, paths
    strings, non-finite floats ``None``; dataclasses (segmentation strategies) their
    ``parameters()`` when they have it; anything else its ``repr`` — a provenance
    record never makes a save fail.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (os.PathLike, Path)):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((jsonable(v) for v in value), key=repr)
    params = getattr(value, "parameters", None)
    if callable(params):
        try:
            return jsonable(params())
        except Exception:  # noqa: BLE001 - a record falls back to repr
            pass
    return repr(value)


def stable_hash(obj: Any) -> str:
    """Hex SHA-256 of ``obj``'s canonical JSON (sorted keys, compact); same on every machine."""
    text = json.dumps(jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def step_hash(
    step: str, parameters: Mapping[str, Any] | None, inputs: Mapping[str, Any] | None
) -> str:
    """Digest identifying a result by the step, its parameters and its inputs.

    Parameters
    ----------
    step : str
        Name of the step (``'extract'``, ``'segment'``, ...).
    parameters : dict or None
        The step's parameters.
    inputs : dict or None
        What the step read: input labels with their own hashes, movie fingerprints,
        file digests.

    Returns
    -------
    str
        64 hex digits.
    """
    return stable_hash({"step": str(step), "parameters": parameters or {}, "inputs": inputs or {}})


def now_iso() -> str:
    """Return the current time, ISO 8601 with the UTC offset, to the second."""
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds")


def make_provenance(
    step: str,
    parameters: Mapping[str, Any] | None = None,
    inputs: Mapping[str, Any] | None = None,
    hash: str | None = None,  # noqa: A002 - the record's field name
) -> dict[str, Any]:
    """Build a provenance record.

    Parameters
    ----------
    step : str
        What made the result (``'create'``, ``'import-rois'``, ``'segment'``,
        ``'transform-import'``, ``'extract'``, ``'dff'``, ``'infer-spikes'``,
        ``'edit'`` for a set saved from the ROI editor, ...).
    parameters : dict, optional
        The step's parameters (converted with :func:`jsonable`).
    inputs : dict, optional
        The inputs: ``{'rois': {'label': ..., 'hash': ...}}``, ``{'movies': ...}``,
        ``{'file': {'path': ..., 'sha256': ...}}``.
    hash : str, optional
        The result's identity; default :func:`step_hash` of the other fields.

    Returns
    -------
    dict
        ``step``, ``parameters``, ``inputs``, ``versions``, ``timestamp``, ``hash``.

    Raises
    ------
    ValueError
        If ``step`` is empty.
    """
    if not step or not isinstance(step, str):
        raise ValueError(f"a provenance record needs a step name, got {step!r}")
    params = jsonable(dict(parameters or {}))
    ins = jsonable(dict(inputs or {}))
    return {
        "step": step,
        "parameters": params,
        "inputs": ins,
        "versions": software_versions(),
        "timestamp": now_iso(),
        "hash": hash or step_hash(step, params, ins),
    }


def edit_provenance(
    step: str = "edit", parameters: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Record for a result saved by hand (ROI editor, script): its hash includes the time.

    So a pipeline never mistakes an edited set for the one it computed.
    """
    ts = now_iso()
    params = jsonable(dict(parameters or {}))
    return {
        "step": step,
        "parameters": params,
        "inputs": {},
        "versions": software_versions(),
        "timestamp": ts,
        "hash": step_hash(step, params, {"saved": ts, "nonce": os.urandom(8).hex()}),
    }


def file_digest(path: str | os.PathLike, chunk: int = 2**20) -> str:
    """Hex SHA-256 of a file's bytes.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _shorten_digests(value: Any) -> Any:
    """Hex digests (64 characters) cut to 12, for display."""
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"
    if isinstance(value, Mapping):
        return {k: _shorten_digests(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten_digests(v) for v in value]
    return value


def format_provenance(record: Mapping[str, Any] | None, indent: str = "    ") -> str:
    """Human-readable lines of a record (for ``napari-sima info``)."""
    if not record:
        return f"{indent}(no provenance recorded)"
    lines = [f"{indent}step: {record.get('step')}   at {record.get('timestamp')}"]
    params = record.get("parameters") or {}
    if params:
        text = json.dumps(params, sort_keys=True)
        if len(text) > 200:
            text = text[:197] + "..."
        lines.append(f"{indent}parameters: {text}")
    inputs = record.get("inputs") or {}
    if inputs:
        shown: dict[str, Any] = {}
        for k, v in _shorten_digests(inputs).items():
            if isinstance(v, Mapping) and "label" in v:
                shown[k] = v["label"]
            elif isinstance(v, Mapping) and "path" in v:
                shown[k] = v["path"]
            else:
                shown[k] = v
        text = json.dumps(shown, sort_keys=True, ensure_ascii=False)
        if len(text) > 200:
            text = text[:197] + "..."
        lines.append(f"{indent}inputs: {text}")
    versions = record.get("versions") or {}
    if versions:
        lines.append(
            f"{indent}versions: napari-sima {versions.get('napari-sima', '?')}, "
            f"numpy {versions.get('numpy', '?')}"
        )
    if record.get("hash"):
        lines.append(f"{indent}hash: {str(record['hash'])[:16]}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# References to inputs (label + the input's own hash)
# ---------------------------------------------------------------------------------------
def roi_set_ref(dataset: Any, label: str | None) -> dict[str, Any]:
    """``{'label': label, 'hash': ...}`` of a stored ROI set, for a record's inputs.

    The hash is the set's own provenance hash (``None`` when it has none, e.g. sets
    stored before provenance was recorded or in a dataset without a folder).
    """
    ref: dict[str, Any] = {"label": label, "hash": None}
    savedir = getattr(dataset, "savedir", None)
    if label is None or savedir is None:
        return ref
    try:
        from .roi_store import roi_set_provenance

        record = roi_set_provenance(savedir).get(label)
    except (OSError, ValueError):
        record = None
    if record:
        ref["hash"] = record.get("hash")
    return ref


def signal_set_ref(dataset: Any, channel: int, label: str | None) -> dict[str, Any]:
    """``{'label': label, 'channel': channel, 'hash': ...}`` of a stored signal set."""
    ref: dict[str, Any] = {"label": label, "channel": int(channel), "hash": None}
    savedir = getattr(dataset, "savedir", None)
    if label is None or savedir is None:
        return ref
    try:
        from . import signal_store

        entry = signal_store.signal_set_provenance(
            signal_store.store_dir(savedir, int(channel))
        ).get(label)
    except (OSError, ValueError):
        entry = None
    if entry and entry.get("provenance"):
        ref["hash"] = entry["provenance"].get("hash")
    return ref


def movie_ref(dataset: Any) -> str | None:
    """Fingerprint of a dataset's movies (file names, sizes, shapes, dtypes), or None."""
    try:
        return str(dataset._fingerprint())
    except (OSError, ValueError, AttributeError):
        return None
