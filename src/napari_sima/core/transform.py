"""Geometric transforms between sessions: from images and from anchor ROIs.

Two ways to find the transform that maps a *source* dataset's coordinates onto a
*target* dataset's (both ``(x, y)`` in SIMA's ROI convention: pixel ``(r, c)`` is the
unit square ``[c, c+1) x [r, r+1)``, so pixel centres sit at ``(c + 0.5, r + 0.5)``):

* **from images** (:class:`ImageRegistration`): the two time-averaged planes are
  registered in three steps —

  1. *candidates*: the identity; a coarse search over rotation and scale, each with
     its translation from phase correlation; and (optionally) ORB or SIFT feature
     matches fitted with RANSAC (similarity and affine models);
  2. the best candidates (by normalised cross-correlation, NCC) are refined by
     maximising the NCC of the two images over the transform's parameters
     (L-BFGS with the analytic gradient) on an image pyramid, coarse to fine;
  3. methods with more freedom than an affine map ('projective', 'polynomial',
     'piecewise-affine') start from the refined affine map and are refined the same
     way on the finer levels; 'piecewise-affine' moves the nodes of a mesh over the
     source frame (with a small smoothness penalty keeping data-less nodes in place).

  The result is checked (NCC above ``min_ncc``, enough overlap, no reflection or
  collapse, no folded mesh); a failure raises :class:`TransformError` saying why.

* **from anchors** (:func:`anchor_transform`): one polygon per plane marking the
  same landmarks in both datasets; vertices are paired by the cyclic shift (and, an
  addition to SIMA, the orientation) that minimises their summed distance, then the
  transform is fitted with scikit-image (SIMA's section 3.6).

Every transform returned maps source ``(x, y)`` to target ``(x, y)`` and is a
scikit-image transform (callable on ``(N, 2)`` arrays), so
:meth:`napari_sima.core.ROIList.transform` takes it as is.

Long work is generator-shaped: :meth:`ImageRegistration.iter_estimate` yields
``(done, total)`` steps and returns a :class:`TransformEstimate`; closing the generator
cancels it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Generator
from typing import Any

import numpy as np

__all__ = [
    "METHODS",
    "ImageRegistration",
    "TransformError",
    "TransformEstimate",
    "anchor_transform",
    "check_method",
    "estimate_coordinate_transform",
    "estimate_image_transform",
    "fit_transform",
    "match_polygon_vertices",
    "min_points",
]

#: Transform kinds, as in :func:`skimage.transform.estimate_transform`.
METHODS = ("euclidean", "similarity", "affine", "projective", "polynomial", "piecewise-affine")

#: Feature matching runs on the first pyramid level with at most this many pixels.
FEATURE_PIXELS = 40_000

#: Penalty on polynomial terms above first order, per squared pixel of displacement
#: they cause at the frame's corners (a small pull towards the affine part, so that
#: corners without data do not fold over).
POLY_DAMPING = 1e-5

#: Corner offset of the far control points added around the frame for piecewise-affine
#: transforms (SIMA's 50 pixels).
FAR_MARGIN = 50.0


class TransformError(ValueError):
    """Raised when no transform can be estimated; the message says why."""


# ---------------------------------------------------------------------------------------
# Methods and point-based estimation
# ---------------------------------------------------------------------------------------
def check_method(method: str) -> str:
    """Return the canonical name of a transform method.

    Parameters
    ----------
    method : str
        One of :data:`METHODS` (case-insensitive; ``'piecewise_affine'`` accepted).

    Returns
    -------
    str

    Raises
    ------
    ValueError
        For an unknown method (the message lists the valid ones).
    """
    if not isinstance(method, str):
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    key = method.strip().lower().replace("_", "-").replace(" ", "-")
    if key not in METHODS:
        raise ValueError(
            f"unknown transform method {method!r}; expected one of {', '.join(METHODS)}"
        )
    return key


def _check_order(order: Any) -> int:
    if isinstance(order, (bool, np.bool_)) or not isinstance(order, (int, np.integer)) or order < 1:
        raise ValueError(f"polynomial order must be an integer >= 1, got {order!r}")
    return int(order)


def min_points(method: str, order: int = 2) -> int:
    """Smallest number of point pairs that determines a transform of this kind."""
    method = check_method(method)
    if method == "polynomial":
        order = _check_order(order)
        return (order + 1) * (order + 2) // 2
    return {"euclidean": 2, "similarity": 2, "affine": 3, "projective": 4, "piecewise-affine": 3}[
        method
    ]


def _skimage_class(method: str) -> type:
    from skimage import transform as sk

    return {
        "euclidean": sk.EuclideanTransform,
        "similarity": sk.SimilarityTransform,
        "affine": sk.AffineTransform,
        "projective": sk.ProjectiveTransform,
        "polynomial": sk.PolynomialTransform,
        "piecewise-affine": sk.PiecewiseAffineTransform,
    }[method]


def fit_transform(cls: type, src: np.ndarray, dst: np.ndarray, **kwargs: Any) -> tuple[Any, str]:
    """Fit a scikit-image transform class; return ``(transform or None, why it failed)``.

    Uses ``cls.from_estimate`` (scikit-image >= 0.26) or the older ``estimate``.
    """
    if hasattr(cls, "from_estimate"):
        tf = cls.from_estimate(src, dst, **kwargs)
        return (tf, "") if tf else (None, str(tf))
    tf = cls()  # pragma: no cover - scikit-image < 0.26
    ok = tf.estimate(src, dst, **kwargs)  # pragma: no cover
    return (tf, "") if ok else (None, "the estimation failed")  # pragma: no cover


def _as_points(points: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(points, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an (N, 2) array of (x, y) points") from None
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(f"{name} must be an (N, 2) array of (x, y) points, got shape {arr.shape}")
    arr = arr[:, :2]
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite coordinates")
    return arr


def estimate_coordinate_transform(
    source: Any, target: Any, method: str = "affine", **kwargs: Any
) -> Any:
    """Fit a transform mapping ``source`` points onto ``target`` points.

    Parameters
    ----------
    source, target : (N, 2) array-like
        Corresponding ``(x, y)`` points.
    method : str
        One of :data:`METHODS`.
    **kwargs
        ``order`` for 'polynomial' (default 2).

    Returns
    -------
    skimage transform
        Callable on ``(N, 2)`` arrays, source to target.

    Raises
    ------
    ValueError
        For malformed points or an unknown method or keyword.
    TransformError
        With too few points for the method, or a degenerate fit (collinear points,
        a reflection or a collapsed map).
    """
    method = check_method(method)
    src = _as_points(source, "source points")
    dst = _as_points(target, "target points")
    if len(src) != len(dst):
        raise ValueError(f"{len(src)} source points but {len(dst)} target points")
    extra = set(kwargs) - ({"order"} if method == "polynomial" else set())
    if extra:
        raise TypeError(f"unexpected keyword(s) for method {method!r}: {', '.join(sorted(extra))}")
    order = _check_order(kwargs.get("order", 2)) if method == "polynomial" else 2
    need = min_points(method, order)
    if len(src) < need:
        raise TransformError(
            f"a {method} transform needs at least {need} point pairs, got {len(src)}"
        )
    spread = np.linalg.svd(src - src.mean(axis=0), compute_uv=False)
    if spread[0] <= 1e-9:
        raise TransformError(f"degenerate {method} fit: all source points coincide")
    if method not in ("euclidean", "similarity") and spread[1] <= 1e-9 * spread[0]:
        raise TransformError(
            f"degenerate {method} fit: the source points are collinear, which leaves the "
            f"transform undetermined"
        )
    cls = _skimage_class(method)
    kw = {"order": order} if method == "polynomial" else {}
    tf, why = fit_transform(cls, src, dst, **kw)
    if tf is None:
        raise TransformError(f"the {method} fit failed: {why}")
    _check_transform(tf, method, src)
    return tf


def _linear_part_ok(m: np.ndarray) -> str | None:
    if not np.all(np.isfinite(m)):
        return "non-finite parameters"
    det = float(np.linalg.det(m[:2, :2]))
    if det <= 0:
        return "a reflection or a collapse (determinant <= 0)"
    sv = np.linalg.svd(m[:2, :2], compute_uv=False)
    if sv[-1] < 1e-3 * sv[0] or sv[0] > 20 or sv[-1] < 0.05:
        return f"a degenerate scaling (singular values {sv[0]:.3g}, {sv[1]:.3g})"
    return None


def _check_transform(tf: Any, method: str, points: np.ndarray) -> None:
    """Raise TransformError if a fitted transform is degenerate over ``points``."""
    if method in ("euclidean", "similarity", "affine", "projective"):
        m = np.asarray(tf.params, dtype=float)
        why = _linear_part_ok(m / m[2, 2] if m[2, 2] else m)
        if why:
            raise TransformError(f"degenerate {method} fit: {why}")
        if method == "projective":
            w = points @ m[2, :2] + m[2, 2]
            if np.any(w * m[2, 2] <= 0):
                raise TransformError(
                    "degenerate projective fit: the horizon line crosses the points"
                )
    mapped = np.asarray(tf(points), dtype=float)
    if not np.all(np.isfinite(mapped)):
        raise TransformError(f"degenerate {method} fit: it maps points to non-finite positions")
    if method == "polynomial":
        h = 0.5
        dx = (np.asarray(tf(points + [h, 0])) - np.asarray(tf(points - [h, 0]))) / (2 * h)
        dy = (np.asarray(tf(points + [0, h])) - np.asarray(tf(points - [0, h]))) / (2 * h)
        for k in range(len(points)):
            why = _linear_part_ok(np.column_stack([dx[k], dy[k]]))
            if why:
                x, y = points[k]
                raise TransformError(
                    f"degenerate {method} fit: near ({x:.0f}, {y:.0f}) it is {why}"
                )
    if method == "piecewise-affine":
        for aff in tf.affines:
            if aff is None:
                raise TransformError("degenerate piecewise-affine fit: a triangle has no map")
            why = _linear_part_ok(np.asarray(aff.params, dtype=float))
            if why:
                raise TransformError(
                    f"degenerate piecewise-affine fit: a triangle of the mesh is {why}"
                    + (" (the mesh folds over)" if "determinant" in why else "")
                )


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TransformEstimate:
    """A transform for one plane and how it was found.

    Attributes
    ----------
    transform : skimage transform
        Maps source ``(x, y)`` to target ``(x, y)`` (callable on ``(N, 2)`` arrays).
    method : str
        One of :data:`METHODS`.
    mode : {'image', 'anchor', 'filled'}
        Registered images, fitted anchor vertices, or copied from a neighbouring plane.
    plane : int or None
        Plane index, when known.
    ncc : float or None
        Normalised cross-correlation of the registered images (``'image'``).
    initial_ncc : float or None
        The same for the identity transform, for comparison.
    significance : float or None
        The affine-family registration's Fisher-transformed correlation in units of
        the standard deviation that unrelated images with the same spatial
        autocorrelation would show over the overlap (``'image'``); unrelated images
        reach about 6 at most, see :class:`ImageRegistration`.
    overlap : float or None
        Fraction of the source frame mapped inside the target frame (``'image'``).
    n_matches, n_inliers : int
        Feature matches and RANSAC inliers (``'image'``; 0 without features).
    rms_residual : float or None
        RMS distance (pixels) between fitted and given anchor vertices
        (``'anchor'``).
    note : str
        Human-readable summary.
    """

    transform: Any
    method: str
    mode: str
    plane: int | None = None
    ncc: float | None = None
    initial_ncc: float | None = None
    significance: float | None = None
    overlap: float | None = None
    n_matches: int = 0
    n_inliers: int = 0
    rms_residual: float | None = None
    note: str = ""

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        """Map ``(N, 2)`` source ``(x, y)`` points to the target.

        Raises
        ------
        ValueError
            For a piecewise-affine transform, if a point lies outside its mesh
            (scikit-image would return ``(-1, -1)`` for it).
        """
        pts = np.asarray(xy, dtype=float)
        out = np.asarray(self.transform(pts), dtype=float)
        if self.method == "piecewise-affine" and len(pts):
            outside = np.all(out == -1.0, axis=1)
            if outside.any():
                x, y = pts[np.flatnonzero(outside)[0]]
                raise ValueError(
                    f"point ({x:.1f}, {y:.1f}) lies outside the piecewise-affine mesh (it "
                    f"covers the source frame and {FAR_MARGIN:.0f} pixels around it)"
                )
        return out

    def with_plane(
        self, plane: int, mode: str | None = None, note: str | None = None
    ) -> TransformEstimate:
        """Return a copy for another plane (used to fill planes without anchors)."""
        return dataclasses.replace(
            self,
            plane=plane,
            mode=self.mode if mode is None else mode,
            note=self.note if note is None else note,
        )


# ---------------------------------------------------------------------------------------
# Anchors
# ---------------------------------------------------------------------------------------
def match_polygon_vertices(source: Any, target: Any, allow_reversal: bool = True) -> np.ndarray:
    """Reorder ``target`` vertices to correspond to ``source`` vertices.

    Among the cyclic shifts of the target ring (and, with ``allow_reversal``, of the
    reversed ring) the one minimising the summed distance between paired vertices is
    chosen.  SIMA tried cyclic shifts only; a ring drawn in the other direction then
    produced a garbage transform.

    Parameters
    ----------
    source, target : (N, 2) array-like
        Open rings of ``(x, y)`` vertices (no closing duplicate).
    allow_reversal : bool
        Also try the reversed target ring.

    Returns
    -------
    ndarray
        ``(N, 2)`` target vertices in source order.

    Raises
    ------
    TransformError
        If the rings have different numbers of vertices.
    """
    src = _as_points(source, "source anchor")
    trg = _as_points(target, "target anchor")
    if len(src) != len(trg):
        raise TransformError(
            f"the anchor polygons have different numbers of vertices ({len(src)} in the "
            f"source, {len(trg)} in the target); mark the same landmarks in both"
        )
    rings = [trg, trg[::-1]] if allow_reversal else [trg]
    best, best_cost = trg, math.inf
    for ring in rings:
        for s in range(len(ring)):
            cand = np.roll(ring, s, axis=0)
            cost = float(np.sum(np.linalg.norm(src - cand, axis=1)))
            if cost < best_cost - 1e-12:
                best, best_cost = cand, cost
    return best


def anchor_transform(
    source: Any,
    target: Any,
    method: str = "affine",
    source_shape: tuple[int, int] | None = None,
    plane: int | None = None,
    **kwargs: Any,
) -> TransformEstimate:
    """Fit a transform from anchor polygons marking the same landmarks.

    Parameters
    ----------
    source, target : (N, 2) array-like
        Anchor vertices ``(x, y)`` (open rings) in the source and target datasets; they
        are paired with :func:`match_polygon_vertices`.
    method : str
        One of :data:`METHODS`.
    source_shape : (rows, columns), optional
        Source frame size; required for 'piecewise-affine', which (as SIMA) adds four
        control points 50 pixels beyond the frame's corners, mapped by the affine fit
        of the anchors, so that the whole frame is covered.
    plane : int, optional
        Plane index (reported in the result).
    **kwargs
        ``order`` for 'polynomial'.

    Returns
    -------
    TransformEstimate
        ``mode='anchor'``, with the RMS residual of the anchor vertices.

    Raises
    ------
    TransformError
        Different vertex counts, too few vertices for the method, or a degenerate fit.
    """
    method = check_method(method)
    src = _as_points(source, "source anchor")
    trg = match_polygon_vertices(src, target)
    where = "" if plane is None else f" on plane {plane}"
    try:
        if method == "piecewise-affine":
            if source_shape is None:
                raise ValueError("source_shape=(rows, columns) is required for piecewise-affine")
            rows, cols = (float(v) for v in source_shape[-2:])
            if len(src) < 3:
                raise TransformError(
                    f"a piecewise-affine transform needs at least 3 anchor vertices, got {len(src)}"
                )
            global_affine = estimate_coordinate_transform(src, trg, "affine")
            m = FAR_MARGIN
            far = np.array([[-m, -m], [-m, rows + m], [cols + m, -m], [cols + m, rows + m]])
            src_all = np.vstack([src, far])
            trg_all = np.vstack([trg, global_affine(far)])
            tf = estimate_coordinate_transform(src_all, trg_all, method)
        else:
            tf = estimate_coordinate_transform(src, trg, method, **kwargs)
    except TransformError as err:
        raise TransformError(f"anchor transform{where}: {err}") from None
    resid = float(np.sqrt(np.mean(np.sum((tf(src) - trg) ** 2, axis=1))))
    return TransformEstimate(
        transform=tf,
        method=method,
        mode="anchor",
        plane=plane,
        rms_residual=resid,
        note=f"{method} fit of {len(src)} anchor vertices{where}, RMS residual {resid:.2f} px",
    )


# ---------------------------------------------------------------------------------------
# Parametric models for intensity-based refinement
#
# All models work in *normalised* coordinates u = (x - cx) / L, where (cx, cy) is the
# centre of the source frame and L half its longer side, so that parameters are of
# order one and independent of the pyramid level.
# ---------------------------------------------------------------------------------------
class _Model:
    """A family of maps u -> u' with parameters p (see the subclasses)."""

    n_params: int

    def identity(self) -> np.ndarray:
        raise NotImplementedError

    def from_matrix(self, m: np.ndarray) -> np.ndarray:
        """Parameters closest to the 3x3 (normalised) matrix ``m``."""
        raise NotImplementedError

    def prepare(self, u: np.ndarray) -> Any:
        """Per-sample-set design data."""
        return u

    def apply(self, p: np.ndarray, design: Any) -> np.ndarray:
        raise NotImplementedError

    def jac(self, p: np.ndarray, design: Any) -> tuple[Any, Any]:
        """``(d x' / d p, d y' / d p)``, each ``(N, n_params)`` (dense or sparse)."""
        raise NotImplementedError

    def penalty(self) -> tuple[Any, np.ndarray] | None:
        """``(H, p_ref)`` of a quadratic penalty ``(p - p_ref)' H (p - p_ref)``, or None."""
        return None


class _Euclidean(_Model):
    n_params = 3  # theta, tx, ty

    def identity(self) -> np.ndarray:
        return np.zeros(3)

    def from_matrix(self, m: np.ndarray) -> np.ndarray:
        theta = math.atan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])
        return np.array([theta, m[0, 2], m[1, 2]])

    def matrix(self, p: np.ndarray) -> np.ndarray:
        c, s = math.cos(p[0]), math.sin(p[0])
        return np.array([[c, -s, p[1]], [s, c, p[2]], [0, 0, 1.0]])

    def apply(self, p, u):
        m = self.matrix(p)
        return u @ m[:2, :2].T + m[:2, 2]

    def jac(self, p, u):
        c, s = math.cos(p[0]), math.sin(p[0])
        n = len(u)
        jx = np.column_stack([-s * u[:, 0] - c * u[:, 1], np.ones(n), np.zeros(n)])
        jy = np.column_stack([c * u[:, 0] - s * u[:, 1], np.zeros(n), np.ones(n)])
        return jx, jy


class _Similarity(_Model):
    n_params = 4  # a, b, tx, ty: [[1+a, -b], [b, 1+a]]

    def identity(self) -> np.ndarray:
        return np.zeros(4)

    def from_matrix(self, m: np.ndarray) -> np.ndarray:
        a = 0.5 * (m[0, 0] + m[1, 1]) - 1.0
        b = 0.5 * (m[1, 0] - m[0, 1])
        return np.array([a, b, m[0, 2], m[1, 2]])

    def matrix(self, p: np.ndarray) -> np.ndarray:
        a, b = 1.0 + p[0], p[1]
        return np.array([[a, -b, p[2]], [b, a, p[3]], [0, 0, 1.0]])

    def apply(self, p, u):
        m = self.matrix(p)
        return u @ m[:2, :2].T + m[:2, 2]

    def jac(self, p, u):
        n = len(u)
        one, zero = np.ones(n), np.zeros(n)
        jx = np.column_stack([u[:, 0], -u[:, 1], one, zero])
        jy = np.column_stack([u[:, 1], u[:, 0], zero, one])
        return jx, jy


class _Projective(_Model):
    n_params = 8  # H - I without H[2, 2]

    def identity(self) -> np.ndarray:
        return np.zeros(8)

    def from_matrix(self, m: np.ndarray) -> np.ndarray:
        h = m / m[2, 2]
        return (h - np.eye(3)).ravel()[:8]

    def matrix(self, p: np.ndarray) -> np.ndarray:
        return np.eye(3) + np.append(p, 0.0).reshape(3, 3)

    def apply(self, p, u):
        h = self.matrix(p)
        num = u @ h[:2, :2].T + h[:2, 2]
        w = u @ h[2, :2] + 1.0
        return num / w[:, None]

    def jac(self, p, u):
        h = self.matrix(p)
        w = u @ h[2, :2] + 1.0
        out = (u @ h[:2, :2].T + h[:2, 2]) / w[:, None]
        b = np.column_stack([u, np.ones(len(u))]) / w[:, None]
        zero = np.zeros_like(b)
        jx = np.hstack([b, zero, -out[:, :1] * b[:, :2]])
        jy = np.hstack([zero, b, -out[:, 1:] * b[:, :2]])
        return jx, jy


def _poly_terms(order: int) -> list[tuple[int, int]]:
    """``(power of x, power of y)`` in scikit-image's PolynomialTransform order."""
    return [(j - i, i) for j in range(order + 1) for i in range(j + 1)]


class _Linear(_Model):
    """Models linear in their parameters: x' = Phi a, y' = Phi b."""

    n_basis: int

    def basis(self, u: np.ndarray) -> Any:
        raise NotImplementedError

    def prepare(self, u):
        return self.basis(u)

    def apply(self, p, phi):
        k = self.n_basis
        return np.column_stack([phi @ p[:k], phi @ p[k:]])

    def jac(self, p, phi):
        zero = np.zeros_like(phi)
        return np.hstack([phi, zero]), np.hstack([zero, phi])


class _Polynomial(_Linear):
    """Polynomial map; ``damping`` (normalised units) pulls terms above first order to 0."""

    def __init__(self, order: int, damping: float = 0.0) -> None:
        self.order = order
        self.terms = _poly_terms(order)
        self.n_basis = len(self.terms)
        self.n_params = 2 * self.n_basis
        self.damping = float(damping)

    def penalty(self):
        if self.damping <= 0 or self.order < 2:
            return None
        high = np.array([i + j >= 2 for i, j in self.terms] * 2, dtype=float)
        return np.diag(self.damping * high), np.zeros(self.n_params)

    def basis(self, u):
        return np.column_stack([u[:, 0] ** i * u[:, 1] ** j for i, j in self.terms])

    def identity(self) -> np.ndarray:
        return self.from_matrix(np.eye(3))

    def from_matrix(self, m: np.ndarray) -> np.ndarray:
        p = np.zeros(self.n_params)
        k = self.n_basis
        idx = {t: n for n, t in enumerate(self.terms)}
        for row, off in ((0, 0), (1, k)):
            p[off + idx[(0, 0)]] = m[row, 2]
            p[off + idx[(1, 0)]] = m[row, 0]
            p[off + idx[(0, 1)]] = m[row, 1]
        return p

    def matrix(self, p: np.ndarray) -> np.ndarray:
        """Return the affine (first-order) part as a 3x3 matrix."""
        k = self.n_basis
        idx = {t: n for n, t in enumerate(self.terms)}
        m = np.eye(3)
        for row, off in ((0, 0), (1, k)):
            m[row] = [p[off + idx[(1, 0)]], p[off + idx[(0, 1)]], p[off + idx[(0, 0)]]]
        return m


class _Affine(_Polynomial):
    def __init__(self) -> None:
        super().__init__(1)


class _Mesh(_Linear):
    """Piecewise-affine map on a triangulated grid; parameters are node positions.

    The grid covers the source frame; four far nodes beyond the corners are fixed to
    the initial (affine) map.  A membrane penalty on the differences between
    neighbouring nodes' departures from the initial map keeps nodes without data
    (outside the overlap, or on featureless tissue) in line with their neighbours.
    """

    def __init__(
        self,
        nodes_free: np.ndarray,
        nodes_far: np.ndarray,
        far_dst: np.ndarray,
        init_free: np.ndarray,
        weight: float,
    ) -> None:
        from scipy.spatial import Delaunay

        self.free = nodes_free
        self.far = nodes_far
        self.far_dst = far_dst
        self.nodes = np.vstack([nodes_free, nodes_far])
        self.tri = Delaunay(self.nodes)
        self.n_free = len(nodes_free)
        self.n_basis = len(self.nodes)
        self.n_params = 2 * self.n_free
        self.init = init_free.copy()  # (n_free, 2)
        self.weight = float(weight)
        edges = set()
        for simplex in self.tri.simplices:
            for a in range(3):
                i, j = int(simplex[a]), int(simplex[(a + 1) % 3])
                if i < self.n_free and j < self.n_free:
                    edges.add((min(i, j), max(i, j)))
        self.edges = np.array(sorted(edges), dtype=int).reshape(-1, 2)

    def basis(self, u):
        from scipy import sparse

        simplex = self.tri.find_simplex(u)
        inside = simplex >= 0
        s = np.where(inside, simplex, 0)
        trans = self.tri.transform[s]
        b = np.einsum("nij,nj->ni", trans[:, :2, :], u - trans[:, 2, :])
        w = np.column_stack([b, 1.0 - b.sum(axis=1)])
        w[~inside] = 0.0
        verts = self.tri.simplices[s]
        rows = np.repeat(np.arange(len(u)), 3)
        return sparse.csr_matrix((w.ravel(), (rows, verts.ravel())), shape=(len(u), self.n_basis))

    def identity(self) -> np.ndarray:
        return np.concatenate([self.free[:, 0], self.free[:, 1]])

    def from_matrix(self, m: np.ndarray) -> np.ndarray:
        d = self.free @ m[:2, :2].T + m[:2, 2]
        return np.concatenate([d[:, 0], d[:, 1]])

    def full(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = self.n_free
        return (
            np.concatenate([p[:n], self.far_dst[:, 0]]),
            np.concatenate([p[n:], self.far_dst[:, 1]]),
        )

    def apply(self, p, phi):
        ax, ay = self.full(p)
        return np.column_stack([phi @ ax, phi @ ay])

    def jac(self, p, phi):
        from scipy import sparse

        free = phi[:, : self.n_free]
        zero = sparse.csr_matrix(free.shape)
        return sparse.hstack([free, zero], format="csr"), sparse.hstack([zero, free], format="csr")

    def penalty(self):
        n = self.n_free
        lap = np.zeros((n, n))
        for i, j in self.edges:
            lap[i, i] += 1
            lap[j, j] += 1
            lap[i, j] -= 1
            lap[j, i] -= 1
        h = np.zeros((2 * n, 2 * n))
        h[:n, :n] = lap
        h[n:, n:] = lap
        return self.weight * h, np.concatenate([self.init[:, 0], self.init[:, 1]])


# ---------------------------------------------------------------------------------------
# Images, pyramids and the NCC objective
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Level:
    image: np.ndarray  # smoothed, NaN-filled
    gx: np.ndarray  # d image / d column
    gy: np.ndarray  # d image / d row
    valid: np.ndarray  # 1.0 where observed
    fx: float  # level pixels per full-resolution pixel, along x
    fy: float


def _prepare_image(image: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(image, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D image (rows, columns), got shape {arr.shape}")
    if min(arr.shape) < 16:
        raise TransformError(
            f"{name} is too small to register ({arr.shape[0]} x {arr.shape[1]} pixels; "
            f"at least 16 x 16 needed)"
        )
    valid = np.isfinite(arr)
    if valid.sum() < 0.25 * arr.size:
        raise TransformError(f"{name} has fewer than 25% observed (finite) pixels")
    vals = arr[valid]
    lo, hi = np.percentile(vals, [0.5, 99.5])
    if not hi > lo:
        raise TransformError(f"{name} has no contrast (all observed pixels are equal)")
    out = np.where(valid, arr, np.median(vals))
    out = np.clip((out - lo) / (hi - lo), -0.5, 1.5)
    return out, valid.astype(float)


def _pyramid(image: np.ndarray, valid: np.ndarray, n_levels: int, smooth: float) -> list[_Level]:
    """Levels halving the size each time (anti-aliased), then smoothed by ``smooth``."""
    from scipy import ndimage
    from skimage.transform import resize

    rows, cols = image.shape
    levels = []
    img, val = image, valid
    for k in range(n_levels):
        if k > 0:
            shape = (max(1, round(img.shape[0] / 2)), max(1, round(img.shape[1] / 2)))
            img = resize(img, shape, order=1, anti_aliasing=True, preserve_range=True)
            val = resize(val, shape, order=1, anti_aliasing=True, preserve_range=True)
        level = ndimage.gaussian_filter(img, smooth, mode="nearest") if smooth > 0 else img
        gy, gx = np.gradient(level)
        levels.append(_Level(level, gx, gy, val, level.shape[1] / cols, level.shape[0] / rows))
    return levels


def _sample(level: _Level, xy: np.ndarray, what: str = "image") -> np.ndarray:
    """Sample a level at full-resolution ``(x, y)`` coordinates (bilinear)."""
    from scipy.ndimage import map_coordinates

    coords = np.vstack([xy[:, 1] * level.fy - 0.5, xy[:, 0] * level.fx - 0.5])
    return map_coordinates(getattr(level, what), coords, order=1, mode="nearest")


def _inside(level: _Level, xy: np.ndarray, margin: float = 1.0) -> np.ndarray:
    rows, cols = level.image.shape
    c = xy[:, 0] * level.fx - 0.5
    r = xy[:, 1] * level.fy - 0.5
    return (
        (c >= margin - 0.5)
        & (c <= cols - 0.5 - margin)
        & (r >= margin - 0.5)
        & (r <= rows - 0.5 - margin)
    )


class _Frame:
    """Normalisation between full-resolution source pixels and model coordinates."""

    def __init__(self, rows: int, cols: int) -> None:
        self.c = np.array([cols / 2.0, rows / 2.0])
        self.half = max(rows, cols) / 2.0

    def norm(self, xy: np.ndarray) -> np.ndarray:
        return (xy - self.c) / self.half

    def pixels(self, u: np.ndarray) -> np.ndarray:
        return u * self.half + self.c

    def matrix(self) -> np.ndarray:
        """3x3 matrix taking pixels to normalised coordinates."""
        s = 1.0 / self.half
        return np.array([[s, 0, -self.c[0] * s], [0, s, -self.c[1] * s], [0, 0, 1.0]])


class _Objective:
    """NCC between the source level and the target level seen through a model.

    :meth:`optimise` maximises it with the enhanced-correlation-coefficient (ECC)
    Gauss-Newton iteration (Evangelidis & Psarakis, 2008): at each step the warped
    image is linearised in the parameters and the step maximising the linearised
    correlation is taken (with step halving if the correlation drops).
    """

    def __init__(
        self, model: _Model, src: _Level, trg: _Level, frame: _Frame, max_samples: int
    ) -> None:
        rows, cols = src.image.shape
        stride = max(1, int(math.ceil(math.sqrt(rows * cols / max_samples))))
        rr, cc = np.mgrid[0:rows:stride, 0:cols:stride]
        rr, cc = rr.ravel(), cc.ravel()
        keep = src.valid[rr, cc] > 0.99
        rr, cc = rr[keep], cc[keep]
        xy = np.column_stack([(cc + 0.5) / src.fx, (rr + 0.5) / src.fy])
        self.n_all = len(rr)
        self.u_all = frame.norm(xy)
        self.s_all = src.image[rr, cc]
        self.design_all = model.prepare(self.u_all)
        self.model, self.trg, self.frame = model, trg, frame
        # parameter unit -> target level pixels (for step sizes)
        self.px = frame.half * 0.5 * (trg.fx + trg.fy)
        self.mask = np.zeros(self.n_all, dtype=bool)

    def _select(self, p: np.ndarray) -> tuple[np.ndarray, Any, np.ndarray, np.ndarray]:
        xy = self.frame.pixels(self.model.apply(p, self.design_all))
        ok = _inside(self.trg, xy, 1.0)
        if ok.any():
            ok[ok] = _sample(self.trg, xy[ok], "valid") > 0.99
        self.mask = ok
        design = (
            self.design_all[ok]
            if not hasattr(self.design_all, "tocsr")
            else (self.design_all[np.flatnonzero(ok)])
        )
        t = self.s_all[ok]
        t = t - t.mean() if t.size else t
        norm = float(np.linalg.norm(t))
        return ok, design, (t / norm if norm > 0 else t), xy[ok]

    def overlap(self, p: np.ndarray) -> float:
        """Fraction of the source samples mapped inside the target's observed pixels."""
        self._select(p)
        return float(self.mask.mean()) if self.n_all else 0.0

    def ncc(self, p: np.ndarray) -> float:
        ok, _, t, xy = self._select(p)
        if ok.sum() < 16:
            return -1.0
        i = _sample(self.trg, xy)
        i = i - i.mean()
        n = float(np.linalg.norm(i))
        return float(t @ i / n) if n > 0 else 0.0

    def optimise(
        self, p0: np.ndarray, max_iter: int, tol: float = 2e-3
    ) -> tuple[np.ndarray, float]:
        """ECC iterations from ``p0``; returns the best parameters and their NCC.

        A step that lowers the correlation is halved (up to three times); the
        iteration stops when an accepted step moves the map by less than ``tol``
        level pixels.
        """
        from scipy import sparse

        p = np.asarray(p0, dtype=float).copy()
        pen = self.model.penalty()
        best_p, best = p.copy(), -np.inf
        delta: np.ndarray | None = None
        step, halvings, move = 1.0, 0, np.inf
        for _ in range(max_iter):
            ok, design, t, xy = self._select(p)
            enough = ok.sum() >= max(16, 2 * self.model.n_params)
            i = _sample(self.trg, xy) if enough else np.zeros(0)
            i = i - i.mean() if i.size else i
            scale = float(np.linalg.norm(i))
            score = float(t @ i / scale) if enough and scale > 0 else -np.inf
            if score < best - 1e-9:  # the last step lowered the correlation
                if delta is None or halvings >= 3:
                    break
                step, halvings = 0.5 * step, halvings + 1
                p = best_p + step * delta
                continue
            best_p, best, halvings = p.copy(), score, 0
            if delta is not None and move * step < tol:
                break
            if not np.isfinite(score):
                break
            i /= scale
            gxi = _sample(self.trg, xy, "gx") * (self.trg.fx * self.frame.half / scale)
            gyi = _sample(self.trg, xy, "gy") * (self.trg.fy * self.frame.half / scale)
            jx, jy = self.model.jac(p, design)
            if sparse.issparse(jx):
                g = (sparse.diags(gxi) @ jx + sparse.diags(gyi) @ jy).toarray()
            else:
                g = jx * gxi[:, None] + jy * gyi[:, None]
            g -= g.mean(axis=0)
            q = g.T @ g
            rhs_pen = np.zeros_like(p)
            if pen is not None:
                q = q + pen[0]
                rhs_pen = pen[0] @ (p - pen[1])
            q += np.eye(len(p)) * (1e-9 * max(float(np.trace(q)), 1e-12) / len(p))
            try:
                ip = g.T @ i
                q_ip = np.linalg.solve(q, ip)
                lam_n = float(i @ i - ip @ q_ip)
                lam_d = float(t @ i - (g.T @ t) @ q_ip)
                lam = lam_n / lam_d if lam_d > 1e-12 else 1.0
                delta = np.linalg.solve(q, g.T @ (lam * t - i) - rhs_pen)
            except np.linalg.LinAlgError:
                break
            move = float(np.max(np.abs(jx @ delta)) + np.max(np.abs(jy @ delta))) * self.px
            if not np.isfinite(move):
                break
            step = 1.0
            p = best_p + delta
        return best_p, float(best)


# ---------------------------------------------------------------------------------------
# Candidates
# ---------------------------------------------------------------------------------------
def _phase_translation(reference: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Shift ``(dx, dy)`` with ``reference(x) ~ moving(x - shift)``."""
    from skimage.registration import phase_cross_correlation

    shift, _, _ = phase_cross_correlation(reference, moving, normalization=None)
    return np.array([shift[1], shift[0]], dtype=float)


def _render(src: _Level, trg: _Level, frame: _Frame, m_norm: np.ndarray) -> np.ndarray:
    """Render the source level on the target level's grid through an affine map."""
    from skimage.transform import warp

    rows, cols = trg.image.shape
    inv = np.linalg.inv(m_norm)

    def inverse_map(colrow: np.ndarray) -> np.ndarray:
        # target level index -> full-res target pixels -> normalised -> source
        xy = np.column_stack([(colrow[:, 0] + 0.5) / trg.fx, (colrow[:, 1] + 0.5) / trg.fy])
        u = frame.norm(xy)
        us = u @ inv[:2, :2].T + inv[:2, 2]
        sxy = frame.pixels(us)
        return np.column_stack([sxy[:, 0] * src.fx - 0.5, sxy[:, 1] * src.fy - 0.5])

    fill = float(np.mean(src.image))
    return warp(
        src.image, inverse_map, output_shape=(rows, cols), order=1, cval=fill, preserve_range=True
    )


def _similarity_norm(angle_deg: float, scale: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array(
        [
            [scale * math.cos(a), -scale * math.sin(a), 0.0],
            [scale * math.sin(a), scale * math.cos(a), 0.0],
            [0.0, 0.0, 1.0],
        ]
    )


def _search_candidates(
    src: _Level, trg: _Level, frame: _Frame, angles: np.ndarray, scales: np.ndarray
) -> list[np.ndarray]:
    """Similarity candidates (normalised 3x3): rotation x scale grid + phase correlation."""
    out = []
    for scale in scales:
        for angle in angles:
            m = _similarity_norm(float(angle), float(scale))
            rendered = _render(src, trg, frame, m)
            d = _phase_translation(trg.image, rendered)  # target level pixels
            shift = np.array([d[0] / trg.fx, d[1] / trg.fy]) / frame.half
            m = m.copy()
            m[:2, 2] += shift
            out.append(m)
    return out


def _feature_points(image: np.ndarray, detector: str, n_keypoints: int):
    from skimage import feature

    img = (image - image.min()) / max(float(np.ptp(image)), 1e-12)
    if detector == "orb":
        ext = feature.ORB(n_keypoints=n_keypoints, fast_threshold=0.02, n_scales=4, downscale=1.3)
    else:
        ext = feature.SIFT()
    try:
        ext.detect_and_extract(img)
    except RuntimeError:
        return np.empty((0, 2)), None
    kp = np.asarray(ext.keypoints, dtype=float)
    desc = ext.descriptors
    if detector == "sift" and len(kp) > n_keypoints:
        kp, desc = kp[:n_keypoints], desc[:n_keypoints]
    return kp, desc


def _feature_candidates(
    src: _Level, trg: _Level, frame: _Frame, detector: str, n_keypoints: int, seed: int
) -> tuple[list[np.ndarray], int, int]:
    """Affine and similarity candidates from feature matches + RANSAC."""
    from skimage.feature import match_descriptors
    from skimage.measure import ransac
    from skimage.transform import AffineTransform, SimilarityTransform

    kp_s, d_s = _feature_points(src.image, detector, n_keypoints)
    kp_t, d_t = _feature_points(trg.image, detector, n_keypoints)
    if d_s is None or d_t is None or len(kp_s) < 3 or len(kp_t) < 3:
        return [], 0, 0
    matches = match_descriptors(d_s, d_t, cross_check=True, max_ratio=0.9)
    n_matches = len(matches)
    if n_matches < 3:
        return [], n_matches, 0
    # (row, col) level index -> normalised coordinates of full-resolution pixels
    ps = frame.norm(
        np.column_stack(
            [(kp_s[matches[:, 0], 1] + 0.5) / src.fx, (kp_s[matches[:, 0], 0] + 0.5) / src.fy]
        )
    )
    pt = frame.norm(
        np.column_stack(
            [(kp_t[matches[:, 1], 1] + 0.5) / trg.fx, (kp_t[matches[:, 1], 0] + 0.5) / trg.fy]
        )
    )
    thr = 2.0 / (frame.half * src.fx)  # two level pixels
    out, best_inliers = [], 0
    for cls, k in ((SimilarityTransform, 2), (AffineTransform, 3)):
        if n_matches < k + 1:
            continue
        model, inliers = ransac(
            (ps, pt), cls, min_samples=k, residual_threshold=thr, max_trials=500, rng=seed
        )
        if model is None or not model or inliers is None or inliers.sum() < k + 1:
            continue
        best_inliers = max(best_inliers, int(inliers.sum()))
        out.append(np.asarray(model.params, dtype=float))
    return out, n_matches, best_inliers


# ---------------------------------------------------------------------------------------
# The strategy
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class ImageRegistration:
    """Estimate a transform between two images (feature matching + NCC refinement).

    Parameters
    ----------
    detector : {'orb', 'sift', None}
        Feature detector whose RANSAC-fitted matches add starting points ('sift' is
        slower but finds more matches in noisy images; ``None`` skips features).
    n_keypoints : int
        Keypoints per image.
    max_rotation : float
        Degrees; the coarse search covers ``[-max_rotation, max_rotation]`` (larger
        rotations need feature matches).
    rotation_step : float
        Degrees between searched rotations.
    scales : tuple of float
        Scales searched.
    refine : bool
        Refine by maximising the images' normalised cross-correlation (otherwise the
        best candidate is returned; only euclidean / similarity / affine).
    smooth : float
        Gaussian sigma (pixels of each pyramid level) applied before registering.
    min_size : int
        The coarsest pyramid level keeps at least this many pixels on its shorter side.
    max_samples : int
        Source pixels used per level (a regular sub-grid above this).
    max_iter : int
        L-BFGS iterations per level and round.
    mesh_cells : int
        'piecewise-affine': mesh cells along the longer side of the source frame.
    mesh_stiffness : float
        'piecewise-affine': weight of the membrane penalty (per pixel squared of
        difference between neighbouring nodes' displacements).
    min_ncc : float
        Reject a result whose normalised cross-correlation is below this.
    min_significance : float
        Reject a result whose correlation is less than this many standard deviations
        of the chance correlation of unrelated images (see Notes).
    min_overlap : float
        Reject a result mapping less than this fraction of the source frame inside
        the target frame.
    seed : int
        Random seed (RANSAC).

    Notes
    -----
    A correlation alone does not tell a match from chance: smooth images correlate
    by chance more than grainy ones, and an optimiser finds the best chance
    alignment.  The correlation of two unrelated images over ``n`` pixels has a
    variance of about ``1 / n_eff`` with ``n_eff = n / sum_k rho_s(k) rho_t(k)``
    (``rho``: the images' spatial autocorrelations, summed over lags ``k``), so the
    result's *significance* is its Fisher-transformed correlation in units of that
    standard deviation, ``atanh(ncc) * sqrt(n_eff)``.  On SIMA's example image
    registered against unrelated smooth textures and against its mirror images the
    significance stayed below 6.1; true matches with heavy noise (correlation 0.24)
    scored 12.
    """

    detector: str | None = "orb"
    n_keypoints: int = 400
    max_rotation: float = 12.0
    rotation_step: float = 3.0
    scales: tuple[float, ...] = (0.9, 1.0, 1.1)
    refine: bool = True
    smooth: float = 1.0
    min_size: int = 32
    max_samples: int = 65536
    max_iter: int = 60
    mesh_cells: int = 4
    mesh_stiffness: float = 2e-4
    min_ncc: float = 0.1
    min_significance: float = 8.0
    min_overlap: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        if self.detector is not None:
            det = str(self.detector).lower()
            if det not in ("orb", "sift"):
                raise ValueError(f"detector must be 'orb', 'sift' or None, got {self.detector!r}")
            self.detector = det
        for name in ("n_keypoints", "min_size", "max_samples", "max_iter", "mesh_cells"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("max_rotation", "rotation_step", "smooth", "mesh_stiffness"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.rotation_step == 0:
            raise ValueError("rotation_step must be > 0")
        if not -1 <= self.min_ncc < 1:
            raise ValueError(f"min_ncc must be in [-1, 1), got {self.min_ncc!r}")
        if not np.isfinite(self.min_significance):
            raise ValueError(
                f"min_significance must be a finite number, got {self.min_significance!r}"
            )
        if not 0 <= self.min_overlap <= 1:
            raise ValueError(f"min_overlap must be in [0, 1], got {self.min_overlap!r}")
        scales = tuple(float(s) for s in self.scales)
        if not scales or min(scales) <= 0:
            raise ValueError(f"scales must be positive numbers, got {self.scales!r}")
        self.scales = scales

    # -- public ---------------------------------------------------------------------------
    def n_steps(self, method: str) -> int:
        """Return the number of progress steps :meth:`iter_estimate` yields for ``method``."""
        method = check_method(method)
        return 4 if method in ("euclidean", "similarity", "affine") else 5

    def estimate(
        self,
        source: Any,
        target: Any,
        method: str = "affine",
        plane: int | None = None,
        **kwargs: Any,
    ) -> TransformEstimate:
        """Estimate the transform mapping ``source`` image coordinates onto ``target``.

        See :meth:`iter_estimate` (this drives it to the end).
        """
        gen = self.iter_estimate(source, target, method, plane=plane, **kwargs)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    def iter_estimate(
        self,
        source: Any,
        target: Any,
        method: str = "affine",
        plane: int | None = None,
        **kwargs: Any,
    ) -> Generator[tuple[int, int], None, TransformEstimate]:
        """Estimate a transform, as a generator yielding ``(step, n_steps)``.

        Parameters
        ----------
        source, target : (rows, columns) array-like
            Images of (roughly) the same field of view; NaN marks unobserved pixels.
            Sizes may differ.
        method : str
            One of :data:`METHODS`.
        plane : int, optional
            Plane index, for messages and the result.
        **kwargs
            ``order`` for 'polynomial' (default 2).

        Returns
        -------
        TransformEstimate
            As the generator's return value.

        Raises
        ------
        TransformError
            If the images cannot be registered (no contrast, no good match, a
            degenerate or implausible result); the message says why.

        Notes
        -----
        The work runs with a single BLAS thread (many small matrix-vector products
        are much slower with several threads competing); closing the generator
        between steps cancels it.
        """
        return (
            yield from _one_blas_thread(
                self._iter_estimate(source, target, method, plane=plane, **kwargs)
            )
        )

    def _iter_estimate(
        self,
        source: Any,
        target: Any,
        method: str = "affine",
        plane: int | None = None,
        **kwargs: Any,
    ) -> Generator[tuple[int, int], None, TransformEstimate]:
        """Do the work of :meth:`iter_estimate` (see there)."""
        method = check_method(method)
        extra = set(kwargs) - ({"order"} if method == "polynomial" else set())
        if extra:
            raise TypeError(
                f"unexpected keyword(s) for method {method!r}: {', '.join(sorted(extra))}"
            )
        order = _check_order(kwargs.get("order", 2)) if method == "polynomial" else 2
        where = "" if plane is None else f" (plane {plane})"
        if not self.refine and method not in ("euclidean", "similarity", "affine"):
            raise ValueError(f"method {method!r} needs refine=True")
        total = self.n_steps(method)
        s_img, s_val = _prepare_image(source, f"source image{where}")
        t_img, t_val = _prepare_image(target, f"target image{where}")
        frame = _Frame(*s_img.shape)
        n_levels = 1
        smallest = min(min(s_img.shape), min(t_img.shape))
        while smallest * 0.5**n_levels >= self.min_size and n_levels < 6:
            n_levels += 1
        src_pyr = _pyramid(s_img, s_val, n_levels, self.smooth)
        trg_pyr = _pyramid(t_img, t_val, n_levels, self.smooth)
        base = _base_model(method)
        yield 0, total

        # 1. candidates at the coarsest level
        coarse = n_levels - 1
        cands: list[np.ndarray] = [np.eye(3)]
        angles = _angles(self.max_rotation, self.rotation_step)
        cands += _search_candidates(
            src_pyr[coarse], trg_pyr[coarse], frame, angles, np.asarray(self.scales)
        )
        n_matches = n_inliers = 0
        if self.detector is not None:
            feat_level = next(
                (k for k in range(n_levels) if src_pyr[k].image.size <= FEATURE_PIXELS),
                coarse,
            )
            fc, n_matches, n_inliers = _feature_candidates(
                src_pyr[feat_level],
                trg_pyr[feat_level],
                frame,
                self.detector,
                self.n_keypoints,
                self.seed,
            )
            cands += fc
        yield 1, total

        obj = _Objective(base, src_pyr[coarse], trg_pyr[coarse], frame, self.max_samples)
        scored = []
        for k, m in enumerate(cands):
            p = base.from_matrix(m)
            score = obj.ncc(p) if obj.overlap(p) >= 0.5 * self.min_overlap else -1.0
            scored.append((score, k, p))
        scored.sort(key=lambda t: -t[0])
        starts = [scored[0][2]]
        for _, _, p in scored[1:]:
            if len(starts) >= 3:
                break
            if all(np.max(np.abs(p - q)) * obj.px > 2.0 for q in starts):
                starts.append(p)

        # 2. refine the base model coarse -> fine
        if self.refine:
            results = [obj.optimise(p, self.max_iter) for p in starts]
            p = max(results, key=lambda t: t[1])[0]
            yield 2, total
            for lev in range(coarse - 1, -1, -1):
                o = _Objective(base, src_pyr[lev], trg_pyr[lev], frame, self.max_samples)
                p, _ = o.optimise(p, self.max_iter)
        else:
            p = starts[0]
            yield 2, total
        # check the affine-family result before going further
        rows, cols = s_img.shape
        check_pts = np.array(
            [[x, y] for x in np.linspace(0, cols, 9) for y in np.linspace(0, rows, 9)]
        )
        base_obj = _Objective(base, src_pyr[0], trg_pyr[0], frame, self.max_samples)
        initial_ncc = base_obj.ncc(base.identity())
        base_ncc = base_obj.ncc(p)
        overlap = base_obj.overlap(p)
        area = _correlation_area(src_pyr[0].image, trg_pyr[0].image)
        significance = math.atanh(min(max(base_ncc, -0.999999), 0.999999)) * math.sqrt(
            overlap * s_img.size / area
        )
        base_name = method if method in ("euclidean", "similarity") else "affine"
        stats = (
            f"normalised cross-correlation {base_ncc:.2f}, significance "
            f"{significance:.1f}; {_match_text(self.detector, n_matches, n_inliers)}"
        )
        try:
            _check_transform(
                _to_skimage(base_name, base, p, frame, s_img.shape, order), base_name, check_pts
            )
        except TransformError as err:
            raise TransformError(
                f"could not register the images{where}: the best {base_name} transform is "
                f"degenerate ({err}; {stats}). They may not show the same field of view; "
                f"try another channel, pre_processing_method='ca1pc', or anchor ROIs"
            ) from None
        if base_ncc < self.min_ncc or significance < self.min_significance:
            raise TransformError(
                f"could not register the images{where}: after the best {base_name} "
                f"transform they still differ too much ({stats}; needed: correlation >= "
                f"{self.min_ncc}, significance >= {self.min_significance}). They may not "
                f"show the same field of view; try another channel, "
                f"pre_processing_method='ca1pc', or anchor ROIs"
            )
        if overlap < self.min_overlap:
            raise TransformError(
                f"implausible {base_name} transform{where}: it maps only {overlap:.0%} of "
                f"the source frame inside the target frame (min_overlap={self.min_overlap})"
            )
        yield 3, total

        # 3. richer models from the refined affine map
        model: _Model = base
        ncc = base_ncc
        if method in ("projective", "polynomial", "piecewise-affine"):
            m_aff = base.matrix(p)
            if method == "projective":
                model = _Projective()
            elif method == "polynomial":
                model = _Polynomial(order, POLY_DAMPING * frame.half**2)
            else:
                model = _mesh_model(frame, s_img.shape, m_aff, self.mesh_cells, self.mesh_stiffness)
            p = model.from_matrix(m_aff)
            for lev in range(min(coarse, 1), -1, -1):
                o = _Objective(model, src_pyr[lev], trg_pyr[lev], frame, self.max_samples)
                p, _ = o.optimise(p, self.max_iter)
            final = _Objective(model, src_pyr[0], trg_pyr[0], frame, self.max_samples)
            ncc = final.ncc(p)
            overlap = final.overlap(p)
            yield 4, total
        tf = _to_skimage(method, model, p, frame, s_img.shape, order)
        try:
            _check_transform(tf, method, check_pts)
        except TransformError as err:
            raise TransformError(f"{err}{where}; the {base_name} part was fine ({stats})") from None
        if overlap < self.min_overlap:
            raise TransformError(
                f"implausible {method} transform{where}: it maps only {overlap:.0%} of the "
                f"source frame inside the target frame (min_overlap={self.min_overlap})"
            )
        yield total, total
        return TransformEstimate(
            transform=tf,
            method=method,
            mode="image",
            plane=plane,
            ncc=float(ncc),
            initial_ncc=float(initial_ncc),
            significance=float(significance),
            overlap=float(overlap),
            n_matches=int(n_matches),
            n_inliers=int(n_inliers),
            note=(
                f"{method} registration{where}: correlation {ncc:.2f} (identity "
                f"{initial_ncc:.2f}); {base_name} part: {stats}; {overlap:.0%} of the "
                f"source frame overlaps the target"
            ),
        )


def _correlation_area(a: np.ndarray, b: np.ndarray, max_lag: int = 48) -> float:
    """``sum_k rho_a(k) rho_b(k)`` over lags up to ``max_lag`` (pixels), at least 1."""
    lag = int(max(1, min(max_lag, min(a.shape) // 4, min(b.shape) // 4)))
    out = None
    for img in (a, b):
        z = img - img.mean()
        shape = (z.shape[0] + lag + 1, z.shape[1] + lag + 1)
        f = np.fft.rfft2(z, s=shape)
        c = np.fft.irfft2(np.abs(f) ** 2, s=shape)
        c = c / c[0, 0] if c[0, 0] > 0 else c
        idx_r = np.r_[0 : lag + 1, shape[0] - lag : shape[0]]
        idx_c = np.r_[0 : lag + 1, shape[1] - lag : shape[1]]
        win = c[np.ix_(idx_r, idx_c)]
        out = win if out is None else out * win
    return max(1.0, float(np.sum(out)))


def _one_blas_thread(gen: Generator[Any, None, Any]) -> Generator[Any, None, Any]:
    """Drive ``gen`` with BLAS limited to one thread during each step."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return (yield from gen)
    while True:
        with threadpool_limits(limits=1, user_api="blas"):
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
        try:
            yield item
        except GeneratorExit:
            gen.close()
            raise


def _match_text(detector: str | None, n_matches: int, n_inliers: int) -> str:
    if detector is None:
        return "no feature matching"
    return f"{n_matches} {detector.upper()} matches, {n_inliers} RANSAC inliers"


def _angles(max_rotation: float, step: float) -> np.ndarray:
    n = int(math.floor(max_rotation / step + 1e-9))
    return np.arange(-n, n + 1) * step


def _base_model(method: str) -> _Model:
    if method == "euclidean":
        return _Euclidean()
    if method == "similarity":
        return _Similarity()
    return _Affine()


def _mesh_model(
    frame: _Frame, shape: tuple[int, int], m_aff: np.ndarray, cells: int, stiffness: float
) -> _Mesh:
    rows, cols = shape
    step = max(rows, cols) / cells
    nx = max(1, int(round(cols / step)))
    ny = max(1, int(round(rows / step)))
    xs = np.linspace(0, cols, nx + 1)
    ys = np.linspace(0, rows, ny + 1)
    gx, gy = np.meshgrid(xs, ys)
    # a tiny stagger breaks the co-circularity of grid squares, so that Delaunay
    # triangulations (ours and scikit-image's) agree
    jitter = 1e-3 * (np.arange(gx.size) % 3 - 1)
    free_px = np.column_stack([gx.ravel() + jitter, gy.ravel() - jitter])
    m = FAR_MARGIN
    far_px = np.array([[-m, -m], [-m, rows + m], [cols + m, -m], [cols + m, rows + m]])
    free = frame.norm(free_px)
    far = frame.norm(far_px)
    far_dst = far @ m_aff[:2, :2].T + m_aff[:2, 2]
    init = free @ m_aff[:2, :2].T + m_aff[:2, 2]
    weight = stiffness * frame.half**2
    return _Mesh(free, far, far_dst, init, weight)


def _to_skimage(
    method: str, model: _Model, p: np.ndarray, frame: _Frame, shape: tuple[int, int], order: int
) -> Any:
    """Express the fitted model as a scikit-image transform in pixel coordinates."""
    from skimage import transform as sk

    nm = frame.matrix()
    if method in ("euclidean", "similarity", "affine", "projective"):
        m = model.matrix(p)  # type: ignore[attr-defined]
        px = np.linalg.inv(nm) @ m @ nm
        px = px / px[2, 2]
        return _skimage_class(method)(matrix=px)
    if method == "polynomial":
        rows, cols = shape
        n = max(8, 2 * order + 2)
        gx, gy = np.meshgrid(np.linspace(0, cols, n), np.linspace(0, rows, n))
        pts = np.column_stack([gx.ravel(), gy.ravel()])
        dst = frame.pixels(model.apply(p, model.prepare(frame.norm(pts))))
        tf, why = fit_transform(sk.PolynomialTransform, pts, dst, order=order)
        if tf is None:
            raise TransformError(f"could not express the polynomial transform: {why}")
        return tf
    mesh = model
    assert isinstance(mesh, _Mesh)
    ax, ay = mesh.full(p)
    src = frame.pixels(mesh.nodes)
    dst = frame.pixels(np.column_stack([ax, ay]))
    tf, why = fit_transform(sk.PiecewiseAffineTransform, src, dst)
    if tf is None:
        raise TransformError(f"could not build the piecewise-affine transform: {why}")
    return tf


def estimate_image_transform(
    source: Any,
    target: Any,
    method: str = "affine",
    registration: ImageRegistration | None = None,
    **kwargs: Any,
) -> TransformEstimate:
    """Estimate the transform mapping ``source`` image coordinates onto ``target``'s.

    Parameters
    ----------
    source, target : (rows, columns) array-like
        Images of the same field of view (NaN = unobserved).
    method : str
        One of :data:`METHODS`.
    registration : ImageRegistration, optional
        The strategy and its settings (default ``ImageRegistration()``).
    **kwargs
        ``order`` for 'polynomial'.

    Returns
    -------
    TransformEstimate

    Raises
    ------
    TransformError
        When the images cannot be registered (the message says why).
    """
    return (registration or ImageRegistration()).estimate(source, target, method, **kwargs)
