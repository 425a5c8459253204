"""ΔF/F of fluorescence traces with a sliding baseline (SIMA had none).

.. math::

    \\Delta F / F(t) = \\frac{F(t) - F_0(t)}{F_0(t)}

where the baseline :math:`F_0` follows slow drifts of the trace:

``'percentile'``
    :math:`F_0(t)` is the ``percentile``-th percentile of :math:`F` in a window of
    ``window`` frames centred on :math:`t` (:func:`scipy.ndimage.percentile_filter`;
    8 % over a few hundred frames is the usual choice, as in CaImAn).
``'maximin'``
    :math:`F` is smoothed with a Gaussian of standard deviation ``sigma`` frames, then
    a running minimum and a running maximum over ``window`` frames are applied
    (the baseline of suite2p's ``'maximin'``).

Both use ``mode='nearest'`` at the ends of the trace.  NaN values (frames where an
ROI was not imaged) are linearly interpolated for the baseline only, and stay NaN in
the output; a trace without any finite value gives all NaN.  Where :math:`F_0` is 0
the result is NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["DFF_DEFAULTS", "baseline", "dff", "dff_parameters", "store_dff"]

#: Baseline parameters used when none are given (the traces dock uses the same).
DFF_DEFAULTS: dict[str, Any] = {"baseline": "percentile", "window": 500, "percentile": 8.0}

_METHODS = ("percentile", "maximin")


def _check_window(window: Any, n_frames: int) -> int:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)):
        raise ValueError(f"window must be a whole number of frames, got {window!r}")
    window = int(window)
    if window < 1:
        raise ValueError(f"window must be at least 1 frame, got {window}")
    return max(1, min(window, n_frames))


def _fill_nans(x: np.ndarray) -> np.ndarray:
    """Linearly interpolate NaNs along the last axis (ends: nearest finite value)."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return x
    x = x.copy()
    t = np.arange(x.shape[-1])
    for i in np.flatnonzero(bad.any(axis=-1)):
        ok = ~bad[i]
        if ok.any():
            x[i, bad[i]] = np.interp(t[bad[i]], t[ok], x[i, ok])
    return x


def baseline(
    traces: Any,
    method: str = "percentile",
    window: int = 500,
    percentile: float = 8.0,
    sigma: float = 10.0,
    axis: int = -1,
) -> np.ndarray:
    """Sliding baseline :math:`F_0` of traces (see the module notes).

    Parameters
    ----------
    traces : array_like
        Traces with time along ``axis`` (e.g. ``(n_rois, n_frames)``).
    method : {'percentile', 'maximin'}
        Baseline estimator.
    window : int
        Window length in frames (clipped to the trace length).
    percentile : float
        Percentile in ``[0, 100]`` (``'percentile'`` only).
    sigma : float
        Gaussian smoothing in frames, ``>= 0`` (``'maximin'`` only; 0 skips it).
    axis : int
        Time axis.

    Returns
    -------
    numpy.ndarray
        Baseline of the same shape (float64, or float32 for float32 input); NaN for
        traces without any finite value.

    Raises
    ------
    ValueError
        For an unknown method, a bad window, percentile or sigma, or an empty time axis.
    """
    x = np.asarray(traces)
    if x.dtype.kind not in "biuf":
        raise ValueError(f"traces must be numbers, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError("traces must have a time axis, got a scalar")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise ValueError(f"axis must be an integer, got {axis!r}")
    if not -x.ndim <= int(axis) < x.ndim:
        raise ValueError(f"axis {axis} is out of range for traces of shape {x.shape}")
    axis = int(axis) % x.ndim
    n = x.shape[axis]
    if n == 0:
        raise ValueError("traces have no frames along the time axis")
    if method not in _METHODS:
        raise ValueError(f"unknown baseline method {method!r}; expected one of {_METHODS}")
    window = _check_window(window, n)
    out_dtype = np.float32 if x.dtype == np.float32 else np.float64
    moved = np.moveaxis(x.astype(np.float64), axis, -1)
    shape = moved.shape
    flat = moved.reshape(-1, n)
    all_bad = ~np.isfinite(flat).any(axis=1)
    filled = _fill_nans(flat)
    filled[all_bad] = 0.0
    if method == "percentile":
        p = float(percentile)
        if not np.isfinite(p) or not 0.0 <= p <= 100.0:
            raise ValueError(f"percentile must be between 0 and 100, got {percentile!r}")
        base = np.empty_like(filled)
        for i in range(filled.shape[0]):  # the 1-D filter is far faster than a 2-D footprint
            base[i] = ndimage.percentile_filter(filled[i], p, size=window, mode="nearest")
    else:
        s = float(sigma)
        if not np.isfinite(s) or s < 0:
            raise ValueError(f"sigma must be a non-negative number of frames, got {sigma!r}")
        smooth = ndimage.gaussian_filter1d(filled, s, axis=-1, mode="nearest") if s > 0 else filled
        base = ndimage.minimum_filter1d(smooth, window, axis=-1, mode="nearest")
        base = ndimage.maximum_filter1d(base, window, axis=-1, mode="nearest")
    base[all_bad] = np.nan
    return np.moveaxis(base.reshape(shape), -1, axis).astype(out_dtype, copy=False)


def dff(
    traces: Any,
    baseline: str | Any = "percentile",
    window: int = 500,
    percentile: float = 8.0,
    sigma: float = 10.0,
    axis: int = -1,
) -> np.ndarray:
    """ΔF/F = (F − F0) / F0 of traces, vectorised over ROIs.

    Parameters
    ----------
    traces : array_like
        Fluorescence traces with time along ``axis``, e.g. an extraction's ``raw``
        ``(n_rois, n_frames)``.  NaN marks frames where a trace was not observed.
    baseline : {'percentile', 'maximin'} or array_like
        Baseline estimator (see the module notes), or the baseline ``F0`` itself
        (broadcastable to ``traces``).
    window : int
        Baseline window in frames (clipped to the trace length).
    percentile : float
        Percentile of the ``'percentile'`` baseline, in ``[0, 100]``.
    sigma : float
        Gaussian smoothing of the ``'maximin'`` baseline, in frames.
    axis : int
        Time axis.

    Returns
    -------
    numpy.ndarray
        ΔF/F, same shape as ``traces`` (float32 for float32 input, else float64); NaN
        where ``traces`` is NaN or ``F0`` is 0 or not finite.

    Raises
    ------
    ValueError
        For a bad method, window, percentile or sigma, or a baseline of the wrong shape.

    Examples
    --------
    >>> import numpy as np
    >>> f = np.full((1, 10), 2.0); f[0, 5] = 3.0
    >>> dff(f, window=5, percentile=10)[0, 4:7]
    array([0. , 0.5, 0. ])
    """
    x = np.asarray(traces)
    if x.dtype.kind not in "biuf":
        raise ValueError(f"traces must be numbers, got dtype {x.dtype}")
    out_dtype = np.float32 if x.dtype == np.float32 else np.float64
    if isinstance(baseline, str):
        f0 = globals()["baseline"](
            x, method=baseline, window=window, percentile=percentile, sigma=sigma, axis=axis
        ).astype(np.float64)
    else:
        f0 = np.asarray(baseline, dtype=np.float64)
        try:
            np.broadcast_shapes(f0.shape, x.shape)
        except ValueError:
            raise ValueError(
                f"a baseline of shape {f0.shape} does not fit traces of shape {x.shape}"
            ) from None
    xf = x.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (xf - f0) / f0
    out[~np.isfinite(out)] = np.nan
    return out.astype(out_dtype, copy=False)


def dff_parameters(
    baseline: str = "percentile", window: int = 500, percentile: float = 8.0, sigma: float = 10.0
) -> dict[str, Any]:
    """Return the parameters recorded with a stored ΔF/F (only those its baseline uses).

    Raises
    ------
    ValueError
        For an unknown baseline method.
    """
    if baseline not in _METHODS:
        raise ValueError(f"unknown baseline method {baseline!r}; use one of {_METHODS}")
    params: dict[str, Any] = {"baseline": baseline, "window": int(window),
                              "percentile": float(percentile)}
    if baseline == "maximin":
        params["sigma"] = float(sigma)
    return params


def store_dff(
    dataset: Any,
    channel: int | str = 0,
    label: str | None = None,
    baseline: str = "percentile",
    window: int = 500,
    percentile: float = 8.0,
    sigma: float = 10.0,
) -> list[np.ndarray]:
    """Compute ΔF/F of a stored signal set and store it with the set (entry ``dff``).

    Parameters
    ----------
    dataset : ImagingDataset
        A dataset with a folder (or in memory).
    channel : int or str
        The signal channel.
    label : str, optional
        The signal set (default: the most recent).
    baseline, window, percentile, sigma
        As :func:`dff`.

    Returns
    -------
    list of numpy.ndarray
        Per sequence, ``(n_rois, n_frames)`` float32 ΔF/F.

    Raises
    ------
    KeyError
        If there is no such signal set.
    PermissionError
        If the dataset is read-only.
    ValueError
        For bad baseline parameters.
    """
    from . import signal_store
    from .records import dff_record

    ch = dataset.resolve_channel(channel)
    labels = dataset.signal_labels(ch)
    if label is None:
        if not labels:
            raise KeyError(f"no signals stored for channel {ch} of {dataset.savedir!r}")
        label = labels[-1]
    if label not in labels:
        raise KeyError(f"no signal set {label!r} for channel {ch}; stored sets: {sorted(labels)}")
    if dataset.read_only:
        raise PermissionError(f"the dataset {dataset.savedir!r} is read-only; ΔF/F not stored")
    params = dff_parameters(baseline, window, percentile, sigma)
    if dataset.savedir is None:
        signals = signal_store.memory_store(dataset, ch)[label]
    else:
        signals = signal_store.dataset_signal_set(dataset.savedir, ch, label)
    out = [
        dff(np.asarray(r, dtype=np.float32), baseline=baseline, window=window,
            percentile=percentile, sigma=sigma)
        for r in signals["raw"]
    ]
    if dataset.savedir is None:
        signal_store.memory_store(dataset, ch)[label] = {
            **signals, "dff": out, "dff_parameters": params
        }
        return out
    record = dff_record(dataset, ch, label, params)
    signal_store.update_signal_set(
        signal_store.store_dir(dataset.savedir, ch),
        label,
        provenance=record,
        dff=out,
        dff_parameters=params,
    )
    return out
