"""Transforms between sessions: point fits, anchors, and image registration accuracy.

Accuracy is the RMS distance between where the estimated and the true transforms put
ROI-like points spread over the source frame.  Target images are made by resampling
the source image through the inverse of the true transform (``skimage.transform.warp``
takes a map from output to input, in (column, row) index coordinates, whereas our
transforms act on SIMA's (x, y) with pixel centres at +0.5), and both images get
independent noise.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from skimage import transform as sk

from napari_sima.core.transform import (
    METHODS,
    ImageRegistration,
    TransformError,
    anchor_transform,
    check_method,
    estimate_coordinate_transform,
    estimate_image_transform,
    match_polygon_vertices,
)


# ------------------------------------------------------------------------------- helpers
def about_centre(
    shape, angle=0.0, scale=(1.0, 1.0), shear=0.0, shift=(0.0, 0.0), perspective=(0.0, 0.0)
) -> sk.ProjectiveTransform:
    """A transform of (x, y) rotating / scaling about the frame centre, then shifting."""
    rows, cols = shape
    c = np.array([cols / 2, rows / 2])
    m = sk.AffineTransform(scale=scale, rotation=np.deg2rad(angle), shear=shear).params.copy()
    m[2, :2] = perspective
    full = (
        sk.AffineTransform(translation=c + np.asarray(shift)).params
        @ m
        @ sk.AffineTransform(translation=-c).params
    )
    return sk.ProjectiveTransform(matrix=full)


def warp_through(image, inverse):
    """The image seen through a transform whose inverse (target -> source) is given."""
    return sk.warp(
        image,
        lambda colrow: inverse(colrow + 0.5) - 0.5,
        order=3,
        mode="reflect",
        preserve_range=True,
    )


def bend(shape, amplitude):
    """A smooth non-rigid (x, y) -> (x, y) displacement field (target -> source side)."""
    rows, cols = shape

    def f(xy):
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack(
            [x + amplitude * np.sin(np.pi * y / rows), y + amplitude * np.cos(np.pi * x / cols)]
        )

    return f


def grid_points(shape, margin=24, n=(10, 6)):
    rows, cols = shape
    gx, gy = np.meshgrid(
        np.linspace(margin, cols - margin, n[0]), np.linspace(margin, rows - margin, n[1])
    )
    return np.column_stack([gx.ravel(), gy.ravel()])


def rms_error(estimate, inverse_truth, points):
    """RMS of |G(F_est(p)) - p| (source pixels), G the true target -> source map."""
    back = inverse_truth(estimate(points))
    return float(np.sqrt(np.mean(np.sum((back - points) ** 2, axis=1))))


@pytest.fixture(scope="module")
def mean_image(examples):
    """Time average of SIMA's example.tif (128 x 256)."""
    return tifffile.imread(examples / "example.tif").astype(float).mean(axis=0)


def texture(shape=(96, 128), seed=3):
    """Synthetic two-photon-like texture: bright neuropil with dark nuclei."""
    rng = np.random.default_rng(seed)
    img = 1.0 + 0.3 * ndimage.gaussian_filter(rng.normal(size=shape), 4)
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]]
    for _ in range(int(shape[0] * shape[1] / 120)):
        y, x = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        r = rng.uniform(2.5, 4.5)
        img -= 0.6 * np.exp(-((rr - y) ** 2 + (cc - x) ** 2) / (2 * r**2))
    return img


def noisy_pair(image, inverse, noise, seed):
    rng = np.random.default_rng(seed)
    sd = noise * image.std()
    source = image + sd * rng.normal(size=image.shape)
    target = warp_through(image, inverse) + sd * rng.normal(size=image.shape)
    return source, target


# --------------------------------------------------------------------------- point fits
def test_check_method_names():
    assert check_method("Piecewise_Affine") == "piecewise-affine"
    assert check_method(" affine ") == "affine"
    with pytest.raises(ValueError, match="unknown transform method 'rigid'.*euclidean"):
        check_method("rigid")
    with pytest.raises(ValueError, match="method must be one of"):
        check_method(3)


@pytest.mark.parametrize("method", METHODS)
def test_point_fit_recovers_transform(method):
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, size=(30, 2))
    truth = {
        "euclidean": sk.EuclideanTransform(rotation=0.2, translation=(5, -3)),
        "similarity": sk.SimilarityTransform(scale=1.1, rotation=-0.1, translation=(2, 7)),
        "affine": sk.AffineTransform(scale=(1.1, 0.9), shear=0.1, translation=(1, 2)),
        "projective": sk.ProjectiveTransform(
            matrix=np.array([[1.0, 0.05, 3], [0.02, 0.95, -2], [1e-4, -2e-4, 1]])
        ),
        "polynomial": None,
        "piecewise-affine": sk.AffineTransform(rotation=0.05, translation=(4, 4)),
    }[method]
    if method == "polynomial":

        def truth(xy):
            return np.column_stack(
                [xy[:, 0] + 1e-3 * xy[:, 1] ** 2, xy[:, 1] + 2 + 1e-3 * xy[:, 0] * xy[:, 1]]
            )

    tf = estimate_coordinate_transform(src, truth(src), method)
    np.testing.assert_allclose(tf(src), truth(src), atol=1e-6)


def test_point_fit_errors():
    pts = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    with pytest.raises(TransformError, match="at least 3 point pairs, got 2"):
        estimate_coordinate_transform(pts[:2], pts[:2], "affine")
    with pytest.raises(TransformError, match="at least 6 point pairs"):
        estimate_coordinate_transform(pts, pts, "polynomial", order=2)
    collinear = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    with pytest.raises(TransformError, match="degenerate|failed"):
        estimate_coordinate_transform(collinear, collinear, "affine")
    mirrored = pts * [-1, 1]
    with pytest.raises(TransformError, match="reflection"):
        estimate_coordinate_transform(pts, mirrored, "affine")
    with pytest.raises(ValueError, match="4 source points but 3 target points"):
        estimate_coordinate_transform(pts, pts[:3], "affine")
    with pytest.raises(TypeError, match="unexpected keyword.*order"):
        estimate_coordinate_transform(pts, pts, "affine", order=2)
    with pytest.raises(ValueError, match="polynomial order must be an integer >= 1"):
        estimate_coordinate_transform(pts, pts, "polynomial", order=0)
    with pytest.raises(ValueError, match=r"\(N, 2\) array"):
        estimate_coordinate_transform([1, 2, 3], pts, "affine")


# ------------------------------------------------------------------------------ anchors
def test_match_polygon_vertices_cyclic_and_reversed():
    ring = np.array([[0.0, 0.0], [10.0, 0.0], [12.0, 8.0], [5.0, 12.0], [-2.0, 7.0]])
    moved = ring + [3.0, -2.0]
    for shifted in (np.roll(moved, 2, axis=0), np.roll(moved[::-1], 1, axis=0)):
        np.testing.assert_array_equal(match_polygon_vertices(ring, shifted), moved)
    # SIMA's rule alone (no reversal) cannot pair a ring drawn the other way
    assert not np.array_equal(
        match_polygon_vertices(ring, moved[::-1], allow_reversal=False), moved
    )
    with pytest.raises(TransformError, match="different numbers of vertices \\(5 in the source, 4"):
        match_polygon_vertices(ring, ring[:4])


@pytest.mark.parametrize("method", METHODS)
def test_anchor_transform_recovers_known_map(method):
    shape = (100, 140)
    truth = about_centre(shape, angle=4, scale=(1.05, 0.97), shift=(6, -4))
    if method in ("euclidean", "similarity"):
        truth = about_centre(
            shape, angle=4, scale=(1.05, 1.05) if method == "similarity" else (1, 1), shift=(6, -4)
        )
    anchor = np.array(
        [[20, 15], [70, 10], [120, 20], [130, 60], [110, 90], [60, 85], [15, 70], [40, 45]],
        dtype=float,
    )
    target = np.roll(truth(anchor), 3, axis=0)
    est = anchor_transform(anchor, target, method, source_shape=shape, plane=0)
    assert est.mode == "anchor" and est.plane == 0 and est.rms_residual < 1e-6
    inside = grid_points(shape, margin=10)
    if method == "piecewise-affine":  # exact at the anchors, affine beyond them
        np.testing.assert_allclose(est(anchor), truth(anchor), atol=1e-6)
        corners = np.array([[0.0, 0.0], [140.0, 100.0]])
        np.testing.assert_allclose(est(corners), truth(corners), atol=1e-6)
    else:
        np.testing.assert_allclose(est(inside), truth(inside), atol=1e-6)


def test_anchor_transform_errors():
    square = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]])
    with pytest.raises(TransformError, match="on plane 2: a projective transform needs at least 4"):
        anchor_transform(square[:3], square[:3], "projective", plane=2)
    with pytest.raises(ValueError, match="source_shape"):
        anchor_transform(square, square, "piecewise-affine")
    est = anchor_transform(square, square + 1, "piecewise-affine", source_shape=(10, 10))
    with pytest.raises(ValueError, match="outside the piecewise-affine mesh"):
        est(np.array([[-500.0, -500.0]]))


# ---------------------------------------------------------------- image registration
# rotations up to 10 degrees, scales 0.9-1.1, shifts up to 20 pixels
AFFINE_FAMILY = [
    ("euclidean", dict(angle=10, shift=(20, -20))),
    ("euclidean", dict(angle=-7, shift=(-15, 12))),
    ("similarity", dict(angle=-10, scale=(0.9, 0.9), shift=(-20, 10))),
    ("similarity", dict(angle=6, scale=(1.1, 1.1), shift=(18, 20))),
    ("affine", dict(angle=10, scale=(1.1, 0.95), shear=0.05, shift=(20, 20))),
    ("affine", dict(angle=-10, scale=(0.9, 1.05), shear=-0.08, shift=(-20, -15))),
]


@pytest.mark.parametrize("method, params", AFFINE_FAMILY)
def test_registration_recovers_affine_family_on_example(mean_image, method, params):
    truth = about_centre(mean_image.shape, **params)
    source, target = noisy_pair(mean_image, truth.inverse, noise=0.5, seed=1)
    est = estimate_image_transform(source, target, method)
    err = rms_error(est, truth.inverse, grid_points(mean_image.shape))
    assert err < 0.25, f"{method} {params}: RMS error {err:.3f} px"  # measured 0.008-0.046
    assert est.mode == "image" and est.method == method
    assert est.significance > 8 and est.ncc > 0.9 and 0.5 < est.overlap <= 1


def test_registration_heavy_noise_still_within_target(mean_image):
    # noise 3x the image's s.d.: ORB finds almost nothing, the intensity search works
    truth = about_centre(mean_image.shape, angle=8, scale=(1.05, 1.05), shift=(-12, 9))
    source, target = noisy_pair(mean_image, truth.inverse, noise=3.0, seed=2)
    est = estimate_image_transform(source, target, "similarity")
    assert rms_error(est, truth.inverse, grid_points(mean_image.shape)) < 0.4  # measured 0.14
    assert est.ncc < 0.6


@pytest.mark.parametrize(
    "method, kwargs, bound",
    [
        # measured 0.05 px
        ("projective", {}, 0.15),
        # a smooth 2-px bend on top of an affine map: measured 0.07 px with order 3
        # (0.15 with order 2: the bend is not quadratic)
        ("polynomial", {"order": 3}, 0.2),
        # measured 0.22 px with the default 4-cell mesh
        ("piecewise-affine", {}, 0.35),
    ],
)
def test_registration_recovers_flexible_methods(mean_image, method, kwargs, bound):
    shape = mean_image.shape
    L = max(shape)
    if method == "projective":
        truth = about_centre(
            shape, angle=-7, shear=0.05, shift=(5, -15), perspective=(0.1 / L, -0.07 / L)
        )
        inverse = truth.inverse
    else:
        affine = about_centre(shape, angle=5, scale=(1.05, 1.0), shift=(15, 10))
        wobble = bend(shape, 2.0)

        def inverse(xy, affine=affine, wobble=wobble):
            return wobble(affine.inverse(xy))

    source, target = noisy_pair(mean_image, inverse, noise=0.5, seed=3)
    est = estimate_image_transform(source, target, method, **kwargs)
    err = rms_error(est, inverse, grid_points(shape))
    assert err < bound, f"{method}: RMS error {err:.3f} px"


def test_registration_on_synthetic_texture():
    image = texture()
    truth = about_centre(image.shape, angle=-9, scale=(0.93, 0.93), shift=(8, -10))
    source, target = noisy_pair(image, truth.inverse, noise=0.4, seed=4)
    est = estimate_image_transform(source, target, "similarity")
    assert rms_error(est, truth.inverse, grid_points(image.shape, margin=16)) < 0.2  # 0.05


def test_large_rotation_found_by_feature_matching(mean_image):
    truth = about_centre(mean_image.shape, angle=45, shift=(3, 4))
    source, target = noisy_pair(mean_image, truth.inverse, noise=0.5, seed=5)
    est = ImageRegistration(detector="orb").estimate(source, target, "euclidean")
    assert est.n_inliers >= 10
    assert rms_error(est, truth.inverse, grid_points(mean_image.shape, margin=40)) < 0.25
    # without features the rotation search (+-12 degrees) cannot reach it
    with pytest.raises(TransformError, match="still differ too much"):
        ImageRegistration(detector=None).estimate(source, target, "euclidean")


def test_target_with_unobserved_margins(mean_image):
    truth = about_centre(mean_image.shape, angle=5, shift=(10, 6))
    rng = np.random.default_rng(6)
    target = sk.warp(
        mean_image,
        lambda cr: truth.inverse(cr + 0.5) - 0.5,
        order=1,
        mode="constant",
        cval=np.nan,
        preserve_range=True,
    )
    assert np.isnan(target).mean() > 0.05
    target += 0.5 * mean_image.std() * rng.normal(size=target.shape)
    est = estimate_image_transform(
        mean_image, target, "affine", registration=ImageRegistration(detector=None)
    )
    assert rms_error(est, truth.inverse, grid_points(mean_image.shape)) < 0.25


@pytest.mark.parametrize("make_target", ["mirror", "noise"])
def test_unrelated_images_raise(mean_image, make_target):
    rng = np.random.default_rng(7)
    target = (
        mean_image[:, ::-1].copy()
        if make_target == "mirror"
        else ndimage.gaussian_filter(rng.normal(size=mean_image.shape), 3)
    )
    with pytest.raises(TransformError, match="could not register the images.*significance"):
        estimate_image_transform(mean_image, target, "affine")


def test_bad_images_raise():
    flat = np.ones((64, 64))
    with pytest.raises(TransformError, match="source image has no contrast"):
        estimate_image_transform(flat, texture((64, 64)), "affine")
    with pytest.raises(TransformError, match="too small to register \\(8 x 64"):
        estimate_image_transform(np.ones((8, 64)), texture((64, 64)), "affine")
    holes = texture((64, 64))
    holes[:, 10:] = np.nan
    with pytest.raises(TransformError, match="target image \\(plane 3\\) has fewer than 25%"):
        ImageRegistration().estimate(texture((64, 64)), holes, "affine", plane=3)
    with pytest.raises(ValueError, match="2-D image"):
        estimate_image_transform(np.ones((4, 64, 64)), texture((64, 64)), "affine")


def test_registration_settings_are_checked():
    with pytest.raises(ValueError, match="detector must be 'orb', 'sift' or None"):
        ImageRegistration(detector="akaze")
    with pytest.raises(ValueError, match="mesh_cells must be a positive integer"):
        ImageRegistration(mesh_cells=0)
    with pytest.raises(ValueError, match="min_overlap must be in"):
        ImageRegistration(min_overlap=2)
    with pytest.raises(ValueError, match="scales must be positive"):
        ImageRegistration(scales=(0.0,))
    with pytest.raises(ValueError, match="needs refine=True"):
        ImageRegistration(refine=False).estimate(texture(), texture(), "projective")
    with pytest.raises(TypeError, match="unexpected keyword.*order"):
        ImageRegistration().estimate(texture(), texture(), "affine", order=2)


def test_iter_estimate_progress_and_cancel():
    image = texture()
    truth = about_centre(image.shape, angle=3, shift=(4, -2))
    source, target = noisy_pair(image, truth.inverse, noise=0.3, seed=8)
    reg = ImageRegistration(detector=None)
    gen = reg.iter_estimate(source, target, "affine")
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    total = reg.n_steps("affine")
    assert steps[0] == (0, total) and steps[-1] == (total, total)
    assert [d for d, _ in steps] == sorted(d for d, _ in steps)
    assert rms_error(result, truth.inverse, grid_points(image.shape, margin=16)) < 0.25
    gen = reg.iter_estimate(source, target, "affine")
    next(gen)
    gen.close()  # cancelling between steps is clean
    with pytest.raises(StopIteration):
        next(gen)


def test_images_of_different_sizes(mean_image):
    # the target frame is smaller (a crop keeping its top-left corner: same coordinates)
    truth = about_centre(mean_image.shape, angle=-6, scale=(1.05, 1.05), shift=(-10, 8))
    source, target = noisy_pair(mean_image, truth.inverse, noise=0.5, seed=9)
    est = estimate_image_transform(source, target[:110, :230], "similarity")
    assert rms_error(est, truth.inverse, grid_points(mean_image.shape)) < 0.25
