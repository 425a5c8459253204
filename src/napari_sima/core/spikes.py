"""Spike inference from calcium fluorescence traces (noise-constrained AR deconvolution).

The model (Vogelstein et al. 2010; Pnevmatikakis et al., arXiv:1409.2903) writes a
fluorescence trace ``F`` of ``T`` frames as ``F = c + b + noise`` with a calcium trace
``c`` following an autoregressive process driven by non-negative spikes ``s``:

* AR(1) (modes ``'correct'`` and ``'robust'``): ``c_t = gamma * c_{t-1} + s_t`` for
  ``t >= 1``; the initial calcium ``c_0 >= 0`` is free and its contribution decays as
  ``gamma**t``;
* AR(p) (mode ``'psd'``, ``ar_order = p``): ``c_t = sum_i gamma_i c_{t-1-i} + s_t``.

The spikes are the solution of the noise-constrained problem ::

    minimise    sum_{t >= 1} s_t
    over        c (T), b (scalar, free)
    subject to  s = G c >= 0  (t >= 1),  c_0 >= 0,
                ||F - c - b||_2 <= sigma * sqrt(T)

(the first frame, i.e. the initial calcium, is not penalised).  Two solvers:

``'oasis'`` (default)
    Our own exact active-set solver (pool-adjacent violators for AR(1), in the spirit
    of OASIS, Friedrich et al. 2017) of the penalised problem
    ``min 1/2 ||F - b - c||^2 + lam * sum_{t>=1} s_t`` with an outer search over the
    sparsity weight ``lam`` and the baseline ``b`` that makes the noise constraint tight
    (``||F - b - c||^2 = sigma^2 T``).  Compiled with numba (lazily, cached).  AR(2)
    (mode ``'psd'`` with ``ar_order=2``) falls back to the cvxpy formulation.
``'cvxpy'``
    The reference second-order cone program with a sparse ``G``, solved by CLARABEL.

Parameter estimation follows SIMA 1.3.2's formulas exactly (including its unnormalised
autocovariance, :func:`axcov`).  This module is written from a behaviour description;
it contains no SIMA or OASIS code.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

__all__ = [
    "axcov",
    "default_psd_opts",
    "estimate_gamma",
    "estimate_parameters",
    "estimate_parameters_many",
    "estimate_sigma",
    "get_poisson_spikes",
    "infer_spikes",
    "nextpow2",
    "spike_inference",
]

SOLVERS = ("oasis", "cvxpy")
MODES = ("correct", "robust", "psd")


# ---------------------------------------------------------------------------------------
# Closed-form helpers (SIMA's formulas)
# ---------------------------------------------------------------------------------------
def get_poisson_spikes(
    seed: int = 11111, rate: float = 5, steps: int = 1000, deltat: float = 1 / 30
) -> np.ndarray:
    """Bernoulli approximation of a Poisson spike train (SIMA's test data generator).

    Seeds NumPy's global legacy RNG with ``seed`` and, for each step, draws one
    ``scipy.stats.uniform.rvs()``; the step has a spike (1.0) when the draw is
    ``<= rate * deltat``.

    Returns
    -------
    numpy.ndarray
        ``(steps,)`` float array of zeros and ones.
    """
    from scipy.stats import uniform

    np.random.seed(seed)
    out = np.zeros(int(steps))
    for i in range(int(steps)):
        if uniform.rvs() <= rate * deltat:
            out[i] = 1.0
    return out


def nextpow2(value: float) -> int:
    """Smallest ``e >= 0`` with ``2**e >= |value|``."""
    v = abs(value)
    e = 0
    while 2**e < v:
        e += 1
    return e


def axcov(x: np.ndarray, maxlag: int = 1) -> np.ndarray:
    """Autocovariance of a trace for lags ``-maxlag .. maxlag``, **not** divided by N.

    The mean is removed and the sums of lagged products are computed by FFT (length
    ``2**nextpow2(2N - 1)``).  Index ``maxlag`` of the result is lag 0.

    Returns
    -------
    numpy.ndarray
        ``(2 * maxlag + 1,)`` float array.
    """
    x = np.asarray(x, dtype=float)
    return _axcov_rows(x[None, :], maxlag)[0]


def _axcov_rows(x: np.ndarray, maxlag: int) -> np.ndarray:
    """:func:`axcov` of every row of a 2-D array, ``(n, 2*maxlag+1)``."""
    x = np.asarray(x, dtype=float)
    n = x.shape[1]
    x = x - x.mean(axis=1, keepdims=True)
    nfft = 2 ** nextpow2(2 * n - 1)
    spec = np.fft.fft(x, nfft, axis=1)
    xc = np.fft.ifft(spec * np.conj(spec), axis=1).real
    maxlag = int(maxlag)
    return np.concatenate([xc[:, nfft - maxlag :], xc[:, : maxlag + 1]], axis=1)


def default_psd_opts() -> dict[str, Any]:
    """Default options of the ``'psd'`` parameter estimation (SIMA's values)."""
    return {
        "method": "cvx",
        "bas_nonneg": True,
        "noise_range": (0.25, 0.5),
        "noise_method": "logmexp",
        "lags": 5,
        "resparse": 0,
        "fudge_factor": 1,
        "verbosity": False,
    }


def estimate_sigma(
    fluor: np.ndarray, range_ff: tuple[float, float] = (0.25, 0.5), method: str = "logmexp"
) -> float:
    """Noise level from the high-frequency part of the power spectral density.

    ``scipy.signal.welch(fluor, nperseg=min(len, 256))``; keep the frequencies strictly
    inside ``range_ff``; ``sigma = sqrt(agg(Pxx / 2))`` with ``agg`` the mean, the median,
    or ``exp(mean(log(.)))`` (``method`` ``'mean'``, ``'median'``, ``'logmexp'``).
    """
    from scipy.signal import welch

    fluor = np.asarray(fluor, dtype=float)
    freqs, pxx = welch(fluor, nperseg=min(len(fluor), 256))
    keep = (freqs > range_ff[0]) & (freqs < range_ff[1])
    p = pxx[keep] / 2
    if method == "mean":
        return float(np.sqrt(np.mean(p)))
    if method == "median":
        return float(np.sqrt(np.median(p)))
    if method == "logmexp":
        return float(np.sqrt(np.exp(np.mean(np.log(p)))))
    raise ValueError(f"unknown noise method {method!r}; use 'mean', 'median' or 'logmexp'")


def estimate_gamma(
    fluor: np.ndarray,
    sigma: float | None,
    p: int = 2,
    lags: int = 5,
    fudge_factor: float = 1,
) -> np.ndarray:
    """AR(p) coefficients from the (unnormalised) autocovariance, Yule-Walker style.

    With ``L = lags + p`` and ``c = axcov(fluor, L)``: least-squares solution of
    ``A gamma = c(1..L)`` with ``A[i, j] = c(|i - j|) - sigma^2 [i == j]``
    (``i < L``, ``j < p``).  ``fudge_factor < 1`` shrinks the roots of the AR polynomial.

    Returns
    -------
    numpy.ndarray
        ``(p,)`` coefficients.
    """
    fluor = np.asarray(fluor, dtype=float)
    if sigma is None:
        sigma = estimate_sigma(fluor)
    p = int(p)
    big_l = int(lags) + p
    xc = axcov(fluor, big_l)[big_l:]  # lags 0..L
    i = np.arange(big_l)[:, None]
    j = np.arange(p)[None, :]
    a = xc[np.abs(i - j)] - (sigma**2) * (i == j)
    g = np.linalg.lstsq(a, xc[1 : big_l + 1], rcond=None)[0]
    if fudge_factor < 1:
        roots = np.roots(np.concatenate([[1.0], -g])) * fudge_factor
        roots = np.real((roots + np.conj(roots)) / 2)  # symmetrised with the conjugates
        roots[roots > 1] = 0.95
        roots[roots < 0] = 0.15
        g = -np.real(np.poly(roots))[1:]
    return np.asarray(g, dtype=float).ravel()


def estimate_parameters(
    fluor: Sequence[np.ndarray],
    gamma: float | np.ndarray | None = None,
    sigma: float | None = None,
    mode: str = "correct",
    ar_order: int = 2,
    psd_opts: dict[str, Any] | None = None,
) -> tuple[Any, float]:
    """Estimate the decay ``gamma`` and noise ``sigma`` shared by a list of traces.

    Parameters
    ----------
    fluor : list of 1-D arrays
        Traces sharing the parameters (e.g. one ROI in every sequence).
    gamma, sigma : optional
        Given values are returned unchanged (not in ``'psd'`` mode).
    mode : {'correct', 'robust', 'psd'}
        ``'correct'``/``'robust'`` (SIMA's formulas; other names are treated as
        ``'correct'``): ``gamma = sum c(3) / sum c(2)`` over the traces'
        :func:`axcov` with ``maxlag = min(50, len//2 - 1)``, capped at 0.98 with a
        warning; with ``c = sum axcov(trace, 1) / sum len``: ``sigma =
        sqrt(c(0) - c(1)/gamma)`` (``'correct'``) or ``sqrt(c(0) - c(1))``
        (``'robust'``), 0 with a warning when negative or NaN.  ``'psd'``: on the
        concatenated traces, :func:`estimate_sigma` then :func:`estimate_gamma`
        (``ar_order`` coefficients; the given values are ignored).
    ar_order : int
        AR order in ``'psd'`` mode.
    psd_opts : dict, optional
        ``'psd'`` options (:func:`default_psd_opts`).

    Returns
    -------
    (gamma, sigma)
        ``gamma`` a float (an array in ``'psd'`` mode) and ``sigma`` a float.
    """
    traces = [np.asarray(f, dtype=float).ravel() for f in fluor]
    if mode == "psd":
        opts = default_psd_opts()
        if psd_opts:
            opts.update(psd_opts)
        concat = np.concatenate(traces)
        sigma = estimate_sigma(concat, opts["noise_range"], opts["noise_method"])
        gamma = estimate_gamma(concat, sigma, ar_order, opts["lags"], opts["fudge_factor"])
        return gamma, sigma
    if gamma is None:
        num = den = 0.0
        for tr in traces:
            lag = min(50, len(tr) // 2 - 1)
            xc = axcov(tr, lag)
            num += xc[lag + 3]
            den += xc[lag + 2]
        gamma = _cap_gamma(num / den)
    if sigma is None:
        sigma = _sigma_from_cov(
            sum(axcov(tr, 1) for tr in traces) / sum(len(tr) for tr in traces), gamma, mode
        )
    return gamma, sigma


def _cap_gamma(g: float) -> float:
    if g >= 1:
        warnings.warn("estimated gamma >= 1; using 0.98", RuntimeWarning, stacklevel=3)
        return 0.98
    return float(g)


def _sigma_from_cov(c: np.ndarray, gamma: float, mode: str) -> float:
    if mode == "robust":
        s2 = c[1] - c[2]
    else:
        s2 = c[1] - c[2] / gamma
    with np.errstate(invalid="ignore"):
        sigma = np.sqrt(s2) if s2 >= 0 else np.nan
    if not np.isfinite(sigma):
        warnings.warn("sigma estimate is negative or NaN; using 0", RuntimeWarning, stacklevel=3)
        return 0.0
    return float(sigma)


def estimate_parameters_many(
    traces: Sequence[np.ndarray],
    gamma: float | np.ndarray | None = None,
    mode: str = "correct",
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`estimate_parameters` for many ROIs (modes 'correct'/'robust').

    Parameters
    ----------
    traces : list of 2-D arrays
        One ``(n_rois, n_frames)`` array per sequence; row ``i`` of every array forms
        the trace list of ROI ``i``.
    gamma : float or array, optional
        Given gamma (scalar or per ROI); estimated per ROI when None.
    mode : {'correct', 'robust'}

    Returns
    -------
    (gamma, sigma)
        ``(n_rois,)`` arrays equal (to rounding) to calling :func:`estimate_parameters`
        on each ROI's traces: first for gamma (``sigma=0``), then for sigma with that
        gamma.
    """
    arrs = [np.atleast_2d(np.asarray(t, dtype=float)) for t in traces]
    n = arrs[0].shape[0]
    if gamma is None:
        num = np.zeros(n)
        den = np.zeros(n)
        for a in arrs:
            lag = min(50, a.shape[1] // 2 - 1)
            if lag >= 3:  # only lags 2 and 3 are used: direct sums (= axcov to rounding)
                d = a - a.mean(axis=1, keepdims=True)
                num += np.einsum("ij,ij->i", d[:, :-3], d[:, 3:])
                den += np.einsum("ij,ij->i", d[:, :-2], d[:, 2:])
            else:  # very short traces: SIMA's indexing as is
                xc = _axcov_rows(a, lag)
                num += xc[:, lag + 3]
                den += xc[:, lag + 2]
        g = num / den
        if np.any(g >= 1):
            warnings.warn("estimated gamma >= 1; using 0.98", RuntimeWarning, stacklevel=2)
            g = np.where(g >= 1, 0.98, g)
    else:
        g = np.broadcast_to(np.asarray(gamma, dtype=float), (n,)).copy()
    c = np.zeros((n, 3))
    for a in arrs:
        d = a - a.mean(axis=1, keepdims=True)
        c[:, 1] += np.einsum("ij,ij->i", d, d)
        c[:, 2] += np.einsum("ij,ij->i", d[:, :-1], d[:, 1:])
    c /= sum(a.shape[1] for a in arrs)
    with np.errstate(invalid="ignore", divide="ignore"):
        s2 = c[:, 1] - c[:, 2] if mode == "robust" else c[:, 1] - c[:, 2] / g
        sigma = np.sqrt(np.where(s2 >= 0, s2, np.nan))
    bad = ~np.isfinite(sigma)
    if np.any(bad):
        warnings.warn("sigma estimate is negative or NaN; using 0", RuntimeWarning, stacklevel=2)
        sigma[bad] = 0.0
    return g, sigma


# ---------------------------------------------------------------------------------------
# The OASIS-type AR(1) active-set kernel (numba, compiled lazily)
# ---------------------------------------------------------------------------------------
def _pav_ar1(y: np.ndarray, g: float, starts: np.ndarray, lens: np.ndarray,
             vals: np.ndarray, wts: np.ndarray) -> int:  # pragma: no cover - numba
    """Pool-adjacent violators for ``min 1/2||y - c||^2`` s.t. ``c_t >= g c_{t-1}``.

    A pool ``i`` covers frames ``starts[i] .. starts[i]+lens[i]-1`` with
    ``c = vals[i] * g**k``; ``wts[i] = sum g**(2k)``.  Returns the number of pools.
    Pools with a negative value are not clipped here.
    """
    n = y.shape[0]
    i = -1
    for t in range(n):
        i += 1
        starts[i] = t
        lens[i] = 1
        vals[i] = y[t]
        wts[i] = 1.0
        while i > 0:
            gl = g ** lens[i - 1]
            if vals[i] >= gl * vals[i - 1]:
                break
            w0 = wts[i - 1]
            w1 = wts[i]
            vals[i - 1] = (w0 * vals[i - 1] + gl * w1 * vals[i]) / (w0 + gl * gl * w1)
            wts[i - 1] = w0 + gl * gl * w1
            lens[i - 1] += lens[i]
            i -= 1
    return i + 1


def _oasis_solve_kernel(
    f: np.ndarray, g: float, sigma2t: float, lam0: float, b0: float, max_iter: int,
    tol: float, out_c: np.ndarray, info: np.ndarray,
) -> None:  # pragma: no cover - numba
    """Outer search over (lam, b); writes calcium to ``out_c`` and (lam, b, iters, ok)."""
    n = f.shape[0]
    m = np.empty(n)
    for t in range(n):
        m[t] = 1.0 - g
    m[0] = -g
    m[n - 1] = 1.0
    if n == 1:
        m[0] = 0.0
    starts = np.empty(n, np.int64)
    lens = np.empty(n, np.int64)
    vals = np.empty(n)
    wts = np.empty(n)
    y = np.empty(n)
    pf = np.empty(n)
    p1 = np.empty(n)
    pm = np.empty(n)
    lam = lam0
    b = b0
    ok = 0
    it = 0
    for it in range(max_iter):
        for t in range(n):
            y[t] = f[t] - b - lam * m[t]
        npool = _pav_ar1(y, g, starts, lens, vals, wts)
        # projections onto the active pools' kernels
        for k in range(npool):
            s0 = starts[k]
            ln = lens[k]
            if vals[k] <= 0.0:
                for t in range(s0, s0 + ln):
                    pf[t] = 0.0
                    p1[t] = 0.0
                    pm[t] = 0.0
                continue
            hf = 0.0
            h1 = 0.0
            hm = 0.0
            h = 1.0
            for t in range(s0, s0 + ln):
                hf += h * f[t]
                h1 += h
                hm += h * m[t]
                h *= g
            w = wts[k]
            h = 1.0
            for t in range(s0, s0 + ln):
                pf[t] = h * hf / w
                p1[t] = h * h1 / w
                pm[t] = h * hm / w
                h *= g
        den = 0.0
        num_b = 0.0
        s_pm = 0.0
        for t in range(n):
            den += 1.0 - p1[t]
            num_b += f[t] - pf[t]
            s_pm += pm[t]
        if den <= 1e-12 * n:
            bb0 = b
            beta = 0.0
        else:
            bb0 = num_b / den
            beta = s_pm / den
        aa = 0.0
        ad = 0.0
        dd = 0.0
        for t in range(n):
            a_t = f[t] - pf[t] - bb0 * (1.0 - p1[t])
            d_t = pm[t] - beta * (1.0 - p1[t])
            aa += a_t * a_t
            ad += a_t * d_t
            dd += d_t * d_t
        if dd <= 1e-20 * (aa + 1.0):
            # the residual does not depend on lam in this structure (no spike): the
            # noise constraint is violated there (checked by the caller), so shrink lam
            new_lam = 0.5 * lam
        else:
            disc = ad * ad - dd * (aa - sigma2t)
            if disc < 0.0:
                new_lam = -ad / dd
            else:
                new_lam = (-ad + np.sqrt(disc)) / dd
        if new_lam < 0.0:
            new_lam = 0.0
        new_b = bb0 + beta * new_lam
        scale = abs(new_lam) + abs(lam) + 1e-300
        if abs(new_lam - lam) <= tol * scale and abs(new_b - b) <= tol * (abs(b) + 1.0):
            lam = new_lam
            b = new_b
            ok = 1
            break
        lam = new_lam
        b = new_b
    for t in range(n):
        y[t] = f[t] - b - lam * m[t]
    npool = _pav_ar1(y, g, starts, lens, vals, wts)
    for k in range(npool):
        v = vals[k] if vals[k] > 0.0 else 0.0
        for t in range(starts[k], starts[k] + lens[k]):
            out_c[t] = v
            v *= g
    info[0] = lam
    info[1] = b
    info[2] = it + 1
    info[3] = ok


_lock = threading.Lock()
_compiled: Callable[..., None] | None = None


def _get_kernel() -> Callable[..., None]:
    """Compile (or load from numba's cache) the OASIS kernel on first use."""
    global _compiled, _pav_ar1
    with _lock:
        if _compiled is None:
            import numba

            pav = numba.njit(cache=True, nogil=True)(_pav_ar1)
            _pav_ar1 = pav  # the outer kernel resolves this global at compile time
            _compiled = numba.njit(cache=True, nogil=True)(_oasis_solve_kernel)
        return _compiled


def _solve_oasis_ar1(f: np.ndarray, sigma: float, gamma: float) -> tuple[np.ndarray, float]:
    """Exact noise-constrained AR(1) deconvolution; returns ``(c, b)``."""
    kernel = _get_kernel()
    f = np.ascontiguousarray(f, dtype=float)
    n = f.shape[0]
    # lam -> infinity: no spike at all, F ~ b + c0 gamma**t (c0 >= 0).  When that meets
    # the noise constraint the objective is 0 and this is an optimum.
    h = float(gamma) ** np.arange(n)
    hc = h - h.mean()
    den = float(hc @ hc)
    c0 = max(float(hc @ f) / den, 0.0) if den > 0 else 0.0
    b_inf = float(np.mean(f - c0 * h))
    if np.sum((f - b_inf - c0 * h) ** 2) <= float(sigma) ** 2 * n:
        return c0 * h, b_inf
    out = np.zeros(n)
    info = np.zeros(4)
    b0 = float(np.percentile(f, 15))
    kernel(f, float(gamma), float(sigma) ** 2 * n, 0.0, b0, 200, 1e-10, out, info)
    if info[3] == 0:  # no convergence of the active-set search: use the reference solver
        warnings.warn(
            "OASIS search did not converge; solving with cvxpy", RuntimeWarning, stacklevel=3
        )
        return _solve_cvxpy(f, sigma, np.array([gamma]), baseline_lb=None)
    return out, float(info[1])


# ---------------------------------------------------------------------------------------
# cvxpy reference
# ---------------------------------------------------------------------------------------
def _ar_matrix(n: int, gammas: np.ndarray) -> Any:
    import scipy.sparse as sp

    diags = [np.ones(n)] + [-gi * np.ones(n - 1 - i) for i, gi in enumerate(gammas)]
    return sp.diags(diags, [0] + [-(i + 1) for i in range(len(gammas))], shape=(n, n),
                    format="csr")


def _solve_cvxpy(
    f: np.ndarray, sigma: float, gammas: np.ndarray, baseline_lb: float | None,
    verbose: bool = False,
) -> tuple[np.ndarray, float]:
    """Reference SOCP (CLARABEL); returns ``(c, b)``."""
    import cvxpy as cp

    n = f.shape[0]
    gammas = np.atleast_1d(np.asarray(gammas, dtype=float))
    g_mat = _ar_matrix(n, gammas)
    c = cp.Variable(n)
    b = cp.Variable()
    s = g_mat @ c
    cons = [s >= 0, cp.norm(f - c - b, 2) <= sigma * np.sqrt(n)]
    if baseline_lb is not None:
        cons.append(b >= baseline_lb)
    if len(gammas) == 1:
        cvar = c
    else:
        # free decaying initial condition with the slowest root of the AR polynomial
        roots = np.roots(np.concatenate([[1.0], -gammas]))
        gd = float(np.max(np.abs(roots)))
        c0 = cp.Variable(nonneg=True)
        cvar = c + c0 * gd ** np.arange(n)
        cons[1] = cp.norm(f - cvar - b, 2) <= sigma * np.sqrt(n)
    prob = cp.Problem(cp.Minimize(cp.sum(s[1:])), cons)
    try:
        prob.solve(solver="CLARABEL", verbose=verbose)
    except cp.error.SolverError:
        prob.solve(solver="SCS", verbose=verbose)
    if c.value is None or prob.status not in ("optimal", "optimal_inaccurate"):
        # infeasible noise constraint: best least-squares fit
        obj = cp.Minimize(cp.sum_squares(f - cvar - b))
        cp.Problem(obj, [s >= 0] + ([b >= baseline_lb] if baseline_lb is not None else [])
                   ).solve(solver="CLARABEL")
    cval = np.asarray(cvar.value, dtype=float).ravel()
    return cval, float(b.value)


# ---------------------------------------------------------------------------------------
# spike_inference
# ---------------------------------------------------------------------------------------
def _interp_nans(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolate NaN frames (nearest value at the ends); returns (x, nan_mask)."""
    x = np.asarray(x, dtype=float)
    bad = ~np.isfinite(x)
    if not bad.any():
        return x, bad
    if bad.all():
        raise ValueError("the trace has no finite frame")
    idx = np.arange(len(x))
    y = x.copy()
    y[bad] = np.interp(idx[bad], idx[~bad], x[~bad])
    return y, bad


def spike_inference(
    fluor: np.ndarray,
    sigma: float | None = None,
    gamma: float | np.ndarray | None = None,
    mode: str = "correct",
    ar_order: int = 2,
    psd_opts: dict[str, Any] | None = None,
    solver: str = "oasis",
    verbose: bool = False,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Infer spikes of one trace by noise-constrained deconvolution.

    Solves ::

        minimise    sum_{t >= 1} s_t
        subject to  s = G c >= 0 (t >= 1), c_0 >= 0,  ||F - c - b|| <= sigma sqrt(T)

    with ``G`` the AR(1) operator (``s_t = c_t - gamma c_{t-1}``; AR(p) in ``'psd'``
    mode), a free baseline ``b`` and a free initial calcium whose contribution decays
    as ``gamma**t`` (the first frame is not penalised).

    Parameters
    ----------
    fluor : 1-D array
        The trace; NaN frames are interpolated for the fit and NaN in the outputs.
    sigma, gamma : optional
        Noise level and decay; when either is None both are estimated with
        :func:`estimate_parameters` (a given value is kept in 'correct'/'robust').
    mode : {'correct', 'robust', 'psd'}
    ar_order : int
        AR order in 'psd' mode.
    psd_opts : dict, optional
        See :func:`default_psd_opts`; ``'bas_nonneg'`` constrains ``b >= 0`` in 'psd'
        mode.
    solver : {'oasis', 'cvxpy'}
        Exact active-set solver (AR(1); AR(p>1) falls back to cvxpy) or the reference
        cvxpy + CLARABEL cone program.
    verbose : bool
        Print solver progress.

    Returns
    -------
    spikes : numpy.ndarray
        ``(T,)`` spike estimate ``s`` (``s_0`` is the initial calcium), baseline
        excluded, normalised to its maximum (unchanged when all zero).
    fit : numpy.ndarray
        ``(T,)`` denoised fluorescence ``c + b``.
    parameters : dict
        ``'sigma'``, ``'gamma'``, ``'baseline'``, ``'spike_scale'`` (the maximum the
        spikes were divided by), ``'spike_amounts'`` (unnormalised spikes).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; use one of {SOLVERS}")
    raw = np.asarray(fluor, dtype=float).ravel()
    f, bad = _interp_nans(raw)
    n = f.shape[0]
    if sigma is None or gamma is None:
        gamma, sigma = estimate_parameters([f], gamma, sigma, mode, ar_order, psd_opts)
    if mode == "psd":
        gammas = np.atleast_1d(np.asarray(gamma, dtype=float))
        opts = default_psd_opts()
        if psd_opts:
            opts.update(psd_opts)
        lb = 0.0 if opts["bas_nonneg"] else float(np.min(f))
    else:
        gammas = np.atleast_1d(np.asarray(gamma, dtype=float))
        lb = None
    if solver == "oasis" and len(gammas) == 1 and lb is None:
        c, b = _solve_oasis_ar1(f, float(sigma), float(gammas[0]))
    elif solver == "oasis" and len(gammas) == 1:
        c, b = _solve_oasis_ar1(f, float(sigma), float(gammas[0]))
        if b < lb:
            c, b = _solve_cvxpy(f, float(sigma), gammas, lb, verbose)
    else:
        c, b = _solve_cvxpy(f, float(sigma), gammas, lb, verbose)
    if len(gammas) == 1:
        amounts = c.copy()
        amounts[1:] -= gammas[0] * c[:-1]
    else:
        amounts = np.asarray(_ar_matrix(n, gammas) @ c)
    amounts[amounts < 0] = 0.0  # solver round-off
    fit = c + b
    scale = float(np.max(amounts)) if n else 0.0
    spikes = amounts / scale if scale > 0 else amounts.copy()
    if bad.any():
        spikes[bad] = np.nan
        fit[bad] = np.nan
        amounts[bad] = np.nan
    if verbose:
        print(f"spike_inference: T={n} gamma={gammas} sigma={sigma:.4g} baseline={b:.4g}")
    g_out: Any = float(gammas[0]) if (mode != "psd" and np.ndim(gamma) == 0) else gamma
    params = {
        "gamma": g_out,
        "sigma": sigma,
        "baseline": b,
        "spike_scale": scale,
        "spike_amounts": amounts,
    }
    return spikes, fit, params


# ---------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------
def _stored_rows(r: Any) -> np.ndarray:
    """Return a stored ``(n_rois, n_frames)`` signal as a 2-D float array (float: no copy).

    Rows are converted to float64 where they are used (exactly: every float32 value is
    a float64 value), so the results are those of a float64 copy of the whole set.
    """
    a = np.atleast_2d(np.asarray(r))
    return a if a.dtype.kind == "f" else a.astype(float)


def _finite_rows(a: np.ndarray, block: int = 256) -> np.ndarray:
    """Return whether each row has a finite value (by blocks of rows: little memory)."""
    out = np.zeros(a.shape[0], dtype=bool)
    for k in range(0, a.shape[0], block):
        out[k:k + block] = np.isfinite(a[k:k + block]).any(axis=1)
    return out


#: Float64 values per block of traces in :func:`_estimate_blocks` (32 MB).
ESTIMATE_BLOCK_VALUES = 1 << 22


def _estimate_blocks(
    raw: list[np.ndarray], rows: np.ndarray, gamma: Any, mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`estimate_parameters_many` of the filled ``rows``, a block of rows at a time.

    Every ROI's estimate depends on its own traces only, so the blocks give the numbers
    of one call on all rows, with float64 copies of only a block of traces at a time.
    ``gamma`` is None, a scalar or one value per row of ``rows``.
    """
    n = len(rows)
    per_row = gamma is not None and np.ndim(gamma) > 0
    if per_row:  # the error of a single call for a wrong length
        gamma = np.broadcast_to(np.asarray(gamma, dtype=float), (n,))
    frames = sum(r.shape[1] for r in raw)
    block = max(1, ESTIMATE_BLOCK_VALUES // max(frames, 1))
    g_out = np.empty(n)
    s_out = np.empty(n)
    for k in range(0, n, block):
        idx = rows[k:k + block]
        sub = [_fill_rows(r[idx]) for r in raw]
        g_k = gamma[k:k + block] if per_row else gamma
        g_out[k:k + block], s_out[k:k + block] = estimate_parameters_many(sub, g_k, mode)
    return g_out, s_out


def _fill_rows(a: np.ndarray) -> np.ndarray:
    """Interpolate NaN frames row by row (rows without a finite value stay NaN)."""
    a = np.array(a, dtype=float)
    for i in np.flatnonzero(~np.isfinite(a).all(axis=1)):
        if np.isfinite(a[i]).any():
            a[i] = _interp_nans(a[i])[0]
    return a


#: Traces per block of work in :func:`infer_spikes` (a progress report per block; the
#: unit handed to a worker process with ``n_processes > 1``).
SPIKES_CHUNK_ROWS = 32


def _check_processes(n_processes: Any) -> int:
    if isinstance(n_processes, bool) or not isinstance(n_processes, (int, np.integer)):
        raise ValueError(f"n_processes must be a positive integer, got {n_processes!r}")
    if int(n_processes) < 1:
        raise ValueError(f"n_processes must be at least 1, got {int(n_processes)}")
    return int(n_processes)


def _solve_rows(
    traces: list[np.ndarray], sigmas: list[float], gammas: list[Any], mode: str, solver: str
) -> tuple[list[np.ndarray], list[np.ndarray], list[float], list[float]]:
    """Solve a block of traces (runs in this process or in a worker process)."""
    spikes, fits, bases, scales = [], [], [], []
    for trace, sigma, g in zip(traces, sigmas, gammas, strict=True):
        s_i, f_i, p_i = spike_inference(trace, float(sigma), g, mode=mode, ar_order=2,
                                        solver=solver)
        spikes.append(s_i)
        fits.append(f_i)
        bases.append(float(p_i["baseline"]))
        scales.append(float(p_i["spike_scale"]))
    return spikes, fits, bases, scales


def _solve_chunks(
    chunks: list[list[tuple[int, int]]],
    raw: list[np.ndarray],
    sigmas: np.ndarray,
    gammas: list[Any],
    mode: str,
    solver: str,
    n_processes: int,
    executor: cf.Executor | None = None,
) -> Iterator[tuple[list[tuple[int, int]], tuple]]:
    """Yield ``(chunk, results)`` for every block of ``(sequence, roi)`` rows.

    In order, except with an ``executor``: then every block is submitted at once and
    yielded as it finishes (closing the iterator cancels the blocks not finished).
    """

    def job(chunk: list[tuple[int, int]]) -> tuple:
        return (
            [raw[q][i] for q, i in chunk],
            [float(sigmas[i]) for _, i in chunk],
            [gammas[i] for _, i in chunk],
            mode,
            solver,
        )

    if executor is not None:
        from ._executor import cancel, completed

        submitted: dict[Any, int] = {}
        try:
            for k, chunk in enumerate(chunks):
                submitted[executor.submit(_solve_rows, *job(chunk))] = k
        except BaseException:
            cancel(submitted)
            raise

        def describe(k: int) -> str:
            (q0, i0), (q1, i1) = chunks[k][0], chunks[k][-1]
            return f"the spikes of traces (sequence {q0}, ROI {i0}) to ({q1}, {i1})"

        results = completed(submitted, describe)
        try:
            for k, result in results:
                yield chunks[k], result
        finally:
            results.close()
        return
    if n_processes <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield chunk, _solve_rows(*job(chunk))
        return
    from concurrent.futures.process import BrokenProcessPool

    from .extract import _get_pool, shutdown_pool

    futures: list[Any] = []
    k = 0
    try:
        pool = _get_pool(n_processes)
        futures = [pool.submit(_solve_rows, *job(chunk)) for chunk in chunks]
        for k, (chunk, future) in enumerate(zip(chunks, futures, strict=True)):
            yield chunk, future.result()
        return
    except BrokenProcessPool:
        # e.g. a script without ``if __name__ == '__main__':`` (its workers cannot start)
        warnings.warn(
            "infer_spikes: the worker processes failed (is the script's main code under "
            "`if __name__ == '__main__':`?); finishing in this process",
            RuntimeWarning,
            stacklevel=3,
        )
        shutdown_pool(wait=False)
    finally:  # cancelled (an exception from the progress callback) or done
        for future in futures:
            future.cancel()
    for chunk in chunks[k:]:
        yield chunk, _solve_rows(*job(chunk))


def infer_spikes(
    dataset: Any,
    channel: int | str = 0,
    label: str | None = None,
    gamma: float | np.ndarray | None = None,
    share_gamma: bool = True,
    mode: str = "correct",
    verbose: bool = False,
    solver: str = "oasis",
    progress: Callable[[int, int], Any] | None = None,
    n_processes: int = 1,
    *,
    executor: cf.Executor | None = None,
    chunk_rows: int | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], list[dict[str, list[Any]]]]:
    """Infer the spikes of every ROI of a stored signal set, and store them with it.

    Parameters
    ----------
    dataset : ImagingDataset
    channel : int or str
        Signal channel.
    label : str, optional
        Signal set (default: the most recent).
    gamma : float, optional
        Decay (AR coefficients in 'psd' mode); estimated when None.
    share_gamma : bool
        Use one gamma for all ROIs (the median of the per-ROI estimates; in 'psd' mode,
        estimated on the concatenated traces of all ROIs and sequences).
    mode : {'correct', 'robust', 'psd'}
        Parameter estimation mode, honoured for sigma too (SIMA always used
        'correct' for sigma).  'psd' uses AR(2).
    verbose : bool
        Print progress.
    solver : {'oasis', 'cvxpy'}
    progress : callable, optional
        Called as ``progress(done, total)`` after each trace (each block of
        :data:`SPIKES_CHUNK_ROWS` traces with ``n_processes > 1``, each finished
        block with an executor); an exception it raises stops the work (nothing is
        stored; an executor's blocks not finished are cancelled).
    n_processes : int
        Processes solving blocks of ROIs in parallel (default 1: in this process).
        With more, blocks of :data:`SPIKES_CHUNK_ROWS` traces go to a shared
        ``forkserver`` pool (the one of :mod:`napari_sima.core.extract`); the results
        are identical to one process.  Scripts must keep their main code under
        ``if __name__ == '__main__':``.
    executor : concurrent.futures.Executor, optional
        Solve blocks of traces on this executor instead, e.g. ``client.get_executor()``
        of a ``dask.distributed`` client (also from ``distributed.worker_client()``
        inside a task), a ``ProcessPoolExecutor`` or a ``ThreadPoolExecutor``.  All
        blocks are submitted at once; this process waits and places each block's
        results where one process puts them (identical numbers).  Cannot be combined
        with ``n_processes > 1``.
    chunk_rows : int, optional
        Traces (ROI x sequence) per executor task (default
        :data:`SPIKES_CHUNK_ROWS`).  Used only with ``executor``.

    Returns
    -------
    spikes, fits : list of numpy.ndarray
        Per sequence, ``(n_rois, n_frames)`` float32 (NaN for unobserved frames and ROIs
        without a signal).
    parameters : list of dict
        Per sequence, ``{'gamma': [...], 'sigma': [...], 'baseline': [...],
        'spike_scale': [...]}`` (one entry per ROI).

    Raises
    ------
    ValueError
        For an unknown mode, ``n_processes`` or ``chunk_rows`` that is not a positive
        integer, or ``executor`` given with ``n_processes > 1``.
    TypeError
        If ``executor`` is not a :class:`concurrent.futures.Executor`.
    KeyError
        If the channel has no (such) signal set.

    Notes
    -----
    The results are stored in the signal set as ``spikes``, ``spikes_fits`` and
    ``spikes_params`` (atomically in a dataset folder; in memory otherwise; not stored
    for a read-only dataset).
    """
    from . import signal_store
    from ._executor import check_chunk_size, check_executor

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
    n_proc = _check_processes(n_processes)
    executor = check_executor(executor, n_proc)
    chunk_rows = check_chunk_size(chunk_rows, "chunk_rows")
    ch = dataset.resolve_channel(channel)
    labels = dataset.signal_labels(ch)
    if not labels:
        raise KeyError(f"no signals stored for channel {ch}")
    if label is None:
        label = labels[-1]
    if label not in labels:
        raise KeyError(f"no signal set {label!r} for channel {ch}; stored sets: {sorted(labels)}")
    savedir = getattr(dataset, "savedir", None)
    if savedir is None:
        signals = signal_store.memory_store(dataset, ch)[label]
    else:  # read only the set used, not every set of the channel
        signals = signal_store.dataset_signal_set(savedir, ch, label)
    # Kept in their stored precision (float32 from an extraction): the float64 copies
    # the estimation and the solver need are made a block of rows at a time, so the
    # memory used stays a small multiple of the signal set (see _estimate_blocks).
    raw = [_stored_rows(r) for r in signals["raw"]]
    n_rois = raw[0].shape[0]
    # a trace is usable when it has a finite frame in every sequence (NaN frames are
    # interpolated, as _fill_rows does)
    valid = np.all([_finite_rows(r) for r in raw], axis=0)

    # -- parameters ----------------------------------------------------------------------
    gammas: list[Any] = [None] * n_rois
    sigmas = np.zeros(n_rois)
    if mode == "psd":
        filled = [_fill_rows(r) for r in raw]
        opts = default_psd_opts()
        if share_gamma:
            concat = np.concatenate([r[valid].ravel() for r in filled])
            s = estimate_sigma(concat, opts["noise_range"], opts["noise_method"])
            g = (np.atleast_1d(np.asarray(gamma, float)) if gamma is not None
                 else estimate_gamma(concat, s, 2, opts["lags"], opts["fudge_factor"]))
            gammas = [g] * n_rois
            sigmas[:] = s
        else:
            for i in np.flatnonzero(valid):
                g, s = estimate_parameters([r[i] for r in filled], mode="psd", ar_order=2)
                gammas[i] = g if gamma is None else np.atleast_1d(np.asarray(gamma, float))
                sigmas[i] = s
    else:
        gv = np.full(n_rois, np.nan)
        if valid.any():
            rows_valid = np.flatnonzero(valid)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                g_est, _ = _estimate_blocks(raw, rows_valid, gamma, mode)
            if share_gamma and gamma is None:
                g_est = np.full_like(g_est, np.median(g_est))
            _, s_est = _estimate_blocks(raw, rows_valid, g_est, mode)
            gv[valid] = g_est
            sigmas[valid] = s_est
        gammas = [float(x) for x in gv]

    # -- inference -----------------------------------------------------------------------
    total = len(raw) * n_rois
    rows = [(q, i) for q in range(len(raw)) for i in range(n_rois) if valid[i]]
    # Returned and stored as float32 like the raw signals they come from (half the
    # memory and the size on disk; the solver's precision is far finer than float32's):
    # each solved row is rounded when it is placed.
    spikes_out = [np.full(r.shape, np.nan, dtype=np.float32) for r in raw]
    fits_out = [np.full(r.shape, np.nan, dtype=np.float32) for r in raw]
    bases = np.full((len(raw), n_rois), np.nan)
    scales = np.full((len(raw), n_rois), np.nan)
    skipped = total - len(rows)  # ROIs without a signal count as done at once
    done = skipped
    if progress is not None and skipped:
        progress(done, total)
    if executor is not None:
        per = chunk_rows or SPIKES_CHUNK_ROWS
    else:
        per = 1 if n_proc == 1 else SPIKES_CHUNK_ROWS
    chunks = [rows[k:k + per] for k in range(0, len(rows), per)]
    solved = _solve_chunks(chunks, raw, sigmas, gammas, mode, solver, n_proc, executor)
    with contextlib.closing(solved):  # an exception from progress() cancels at once
        for chunk, result in solved:
            for (q, i), sp, ft, base, scale in zip(chunk, *result, strict=True):
                spikes_out[q][i] = sp
                fits_out[q][i] = ft
                bases[q, i] = base
                scales[q, i] = scale
            done += len(chunk)
            if progress is not None:
                progress(done, total)
            if verbose:
                print(f"infer_spikes: {done}/{total} traces done")
    params_out: list[dict[str, list[Any]]] = []
    for q in range(len(raw)):
        par: dict[str, list[Any]] = {"gamma": [], "sigma": [], "baseline": [],
                                     "spike_scale": []}
        for i in range(n_rois):
            g_i = gammas[i]
            g_store = (np.asarray(g_i).tolist() if g_i is not None and np.ndim(g_i)
                       else (float(g_i) if g_i is not None else float("nan")))
            par["gamma"].append(g_store)
            par["sigma"].append(float(sigmas[i]))
            par["baseline"].append(float(bases[q, i]))
            par["spike_scale"].append(float(scales[q, i]))
        params_out.append(par)

    # -- storage -------------------------------------------------------------------------
    entries = {"spikes": spikes_out, "spikes_fits": fits_out, "spikes_params": params_out}
    if savedir is None:
        store = signal_store.memory_store(dataset, ch)
        store[label] = {**store[label], **entries}
    elif getattr(dataset, "read_only", False):
        warnings.warn("read-only dataset: spikes not stored", UserWarning, stacklevel=2)
    else:
        folder = signal_store.store_dir(savedir, ch)
        from .records import spikes_record

        record = spikes_record(dataset, ch, label, gamma, share_gamma, mode, solver)
        if (folder / signal_store.INDEX_FILE).exists():
            signal_store.update_signal_set(
                folder, label, provenance=record, **_json_safe(entries)
            )
        else:  # a legacy SIMA folder: write the set (with the spikes) in our store
            signal_store.save_signal_set(folder, {**signals, **_json_safe(entries)}, label)
    return spikes_out, fits_out, params_out


def _json_safe(entries: dict[str, Any]) -> dict[str, Any]:
    """NaN floats are not valid JSON in the stored parameters: store them as None."""
    out = dict(entries)
    out["spikes_params"] = [
        {k: [None if isinstance(v, float) and not np.isfinite(v) else v for v in vals]
         for k, vals in par.items()}
        for par in entries["spikes_params"]
    ]
    return out
