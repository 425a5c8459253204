"""``import_transformed_ROIs``: ROIs from another session, automatic and anchor modes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import shapely
import tifffile
from scipy import ndimage
from skimage import transform as sk

from napari_sima.core import ROI, ImagingDataset, ROIList, Sequence
from napari_sima.core.import_rois import (
    TransformedROIs,
    iter_import_transformed_ROIs,
    iter_transformed_ROIs,
    registration_images,
    store_transformed_ROIs,
    transformed_ROIs,
)
from napari_sima.core.transform import TransformError


# ------------------------------------------------------------------------------- helpers
def about_centre(shape, angle=0.0, scale=1.0, shift=(0.0, 0.0)) -> sk.AffineTransform:
    rows, cols = shape
    c = np.array([cols / 2, rows / 2])
    m = (
        sk.AffineTransform(translation=c + np.asarray(shift)).params
        @ sk.SimilarityTransform(scale=scale, rotation=np.deg2rad(angle)).params
        @ sk.AffineTransform(translation=-c).params
    )
    return sk.AffineTransform(matrix=m)


def warp_through(image, truth):
    """Target image for a source -> target transform (warp wants target -> source)."""
    return sk.warp(
        image,
        lambda cr: truth.inverse(cr + 0.5) - 0.5,
        order=3,
        mode="reflect",
        preserve_range=True,
    )


def texture(shape, seed=3):
    rng = np.random.default_rng(seed)
    img = 1.0 + 0.3 * ndimage.gaussian_filter(rng.normal(size=shape), 4)
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]]
    for _ in range(int(shape[0] * shape[1] / 120)):
        y, x, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(2.5, 4.5)
        img -= 0.6 * np.exp(-((rr - y) ** 2 + (cc - x) ** 2) / (2 * r**2))
    return img


def make_dataset(path, planes, noise=0.3, seed=0, n_frames=3, channels=None, names=None):
    """Dataset whose time average is ``planes`` (z, y, x) plus noise; optional channels."""
    planes = np.asarray(planes, dtype=float)
    if planes.ndim == 2:
        planes = planes[None]
    rng = np.random.default_rng(seed)
    sd = noise * planes.std()
    chans = channels or [planes]
    movie = np.stack(
        [c[None] + sd * rng.normal(size=(n_frames,) + c.shape) for c in chans], axis=-1
    )
    return ImagingDataset(
        [Sequence.create("ndarray", movie.astype(np.float32))], path, channel_names=names
    )


def circle(x, y, r=5.0, z=0, n=16):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([x + r * np.cos(t), y + r * np.sin(t), np.full(n, z)])


def cells(points, shape, z=0, r=5.0, prefix="cell"):
    return [
        ROI(
            polygons=circle(x, y, r, z),
            label=f"{prefix}{k}",
            id=f"{prefix}-{k}",
            tags={"accepted", f"n{k}"},
            im_shape=shape,
        )
        for k, (x, y) in enumerate(points)
    ]


def outside_expectation(rois, truth, frame_shape):
    """Names of ROIs the true transform puts fully outside, and partly outside."""
    rows, cols = frame_shape
    frame = shapely.box(0, 0, cols, rows)
    out, cut = set(), set()
    for roi in rois:
        poly = shapely.Polygon(truth(roi.polygon_arrays[0][:, :2]))
        inside = shapely.intersection(poly, frame).area
        if inside == 0:
            out.add(repr(roi.label))
        elif inside < poly.area - 1e-9:
            cut.add(repr(roi.label))
    return out, cut


@pytest.fixture(scope="module")
def mean_image(examples):
    return tifffile.imread(examples / "example.tif").astype(float).mean(axis=0)


# ------------------------------------------------------------------------- automatic
def test_import_automatic_on_example(tmp_path, mean_image):
    shape = mean_image.shape
    truth = about_centre(shape, angle=8, scale=1.05, shift=(15, -10))
    source = make_dataset(tmp_path / "day1.sima", mean_image, noise=0.5, seed=1)
    target = make_dataset(
        tmp_path / "day2.sima", warp_through(mean_image, truth), noise=0.5, seed=2
    )
    points = [(x, y) for x in (40, 90, 140, 190) for y in (35, 65, 95)]
    points += [(6, 120), (250, 6), (128, 3), (240, 60)]  # near the corners / edges
    rois = cells(points, shape)
    source.add_ROIs(ROIList(rois), "cells")
    gone, cut = outside_expectation(rois, truth, shape)
    assert gone and cut  # the layout exercises both cases

    with pytest.warns(UserWarning, match="fall entirely outside the target frame") as rec:
        out = target.import_transformed_ROIs(source, method="affine")
    for name in gone:
        assert name in str(rec[0].message)
    assert list(target.ROIs) == ["cells"]  # stored under the source label
    stored = target.ROIs["cells"]
    assert len(out) == len(stored) == len(rois) - len(gone)
    by_label = {r.label: r for r in rois}
    errors = []
    for roi, kept in zip(out, stored, strict=True):
        src = by_label[roi.label]
        assert roi.id == src.id and roi.tags == src.tags
        assert roi.im_shape == target.frame_shape[:3] == kept.im_shape
        np.testing.assert_allclose(roi.polygon_arrays[0], kept.polygon_arrays[0])
        if repr(roi.label) not in cut:
            d = roi.polygon_arrays[0][:, :2] - truth(src.polygon_arrays[0][:, :2])
            errors.append(np.sum(d**2, axis=1))
        else:  # clipped: every vertex inside the frame
            xy = roi.polygon_arrays[0][:, :2]
            assert xy.min() >= 0 and np.all(xy.max(axis=0) <= [shape[1], shape[0]])
    rms = float(np.sqrt(np.mean(np.concatenate(errors))))
    assert rms < 0.25, rms  # measured 0.02


def test_import_volume_per_plane_and_only_needed_planes(tmp_path):
    shape = (64, 96)
    images = np.stack([texture(shape, seed=1), texture(shape, seed=2)])
    truths = [about_centre(shape, shift=(6, -4)), about_centre(shape, angle=5, shift=(-3, 2))]
    moved = np.stack([warp_through(images[z], truths[z]) for z in range(2)])
    source = make_dataset(None, images, noise=0.3, seed=1)
    target = make_dataset(None, moved, noise=0.3, seed=2)
    vol = (2,) + shape
    rois = cells([(40, 30)], vol, z=1, prefix="b")
    source.add_ROIs(ROIList(rois), "plane1")
    result = transformed_ROIs(target, source, method="euclidean", detector=None)
    assert result.estimates[0] is None and result.estimates[1].plane == 1  # plane 0 skipped
    np.testing.assert_allclose(
        result.rois[0].polygon_arrays[0][:, :2],
        truths[1](rois[0].polygon_arrays[0][:, :2]),
        atol=0.3,
    )
    both = rois + cells([(50, 32)], vol, z=0, prefix="a")
    source.add_ROIs(ROIList(both), "both")
    result = transformed_ROIs(target, source, method="euclidean", source_label="both")
    assert [e.plane for e in result.estimates] == [0, 1]
    for roi, src in zip(result.rois, both, strict=True):
        z = int(src.polygon_arrays[0][0, 2])
        assert int(roi.polygon_arrays[0][0, 2]) == z
        np.testing.assert_allclose(
            roi.polygon_arrays[0][:, :2], truths[z](src.polygon_arrays[0][:, :2]), atol=0.3
        )


def test_preview_progress_cancel_and_store(tmp_path):
    shape = (80, 112)
    image = texture(shape)
    truth = about_centre(shape, angle=-4, shift=(5, 3))
    # channel 'red' is noise only: registering it would fail, 'green' holds the tissue
    rng = np.random.default_rng(9)
    source = make_dataset(
        tmp_path / "a.sima",
        image,
        seed=1,
        channels=[rng.normal(size=(1,) + shape), image[None]],
        names=["red", "green"],
    )
    target = make_dataset(
        tmp_path / "b.sima",
        warp_through(image, truth),
        seed=2,
        channels=[rng.normal(size=(1,) + shape), warp_through(image, truth)[None]],
        names=["red", "green"],
    )
    source.add_ROIs(ROIList(cells([(50, 40), (70, 30)], shape)), "cells")

    gen = iter_transformed_ROIs(
        target, source, "similarity", source_channel="green", target_channel=1
    )
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    assert isinstance(result, TransformedROIs) and len(result.rois) == 2
    done, total = steps[-1]
    assert done == total and all(d <= t for d, t in steps)
    assert target.ROIs == {}  # a preview stores nothing
    assert "similarity registration (plane 0)" in result.summary()
    assert result.transforms[0] is result.estimates[0].transform

    # cancelling the import half-way stores nothing either
    gen = iter_import_transformed_ROIs(
        target, source, "similarity", source_channel="green", target_channel="green"
    )
    for _ in range(4):
        next(gen)
    gen.close()
    assert target.ROIs == {}

    label = store_transformed_ROIs(target, result)
    assert label == "cells" and len(target.ROIs["cells"]) == 2
    # the label is taken now: the default becomes '<label>_<timestamp>' (never overwrite)
    label2 = store_transformed_ROIs(target, result)
    assert label2.startswith("cells_20") and set(target.ROIs) == {"cells", label2}
    store_transformed_ROIs(target, result, target_label="cells")  # explicit: replaced
    assert set(target.ROIs) == {"cells", label2}

    with pytest.raises(TransformError, match="could not register"):
        transformed_ROIs(target, source, "similarity", source_channel="red", target_channel="red")


def test_failed_estimate_imports_nothing(tmp_path):
    shape = (64, 96)
    source = make_dataset(tmp_path / "a.sima", texture(shape, seed=1))
    target = make_dataset(tmp_path / "b.sima", texture(shape, seed=2))  # another field
    source.add_ROIs(ROIList(cells([(40, 30)], shape)), "cells")
    target.add_ROIs(ROIList(cells([(10, 10)], shape)), "own")
    with pytest.raises(TransformError, match="significance"):
        target.import_transformed_ROIs(source, method="piecewise-affine")
    assert list(target.ROIs) == ["own"]


def test_ca1pc_pre_processing(tmp_path):
    shape = (80, 112)
    image = texture(shape, seed=5)
    truth = about_centre(shape, angle=6, scale=0.95, shift=(-6, 4))
    # the second session is dimmer with a brightness gradient: CLAHE evens it out
    ramp = np.linspace(0.5, 1.0, shape[1])[None, :]
    source = make_dataset(None, image, seed=1)
    target = make_dataset(None, warp_through(image, truth) * ramp, seed=2)
    processed = registration_images(target, 0, "ca1pc", {"x_diameter": 8, "y_diameter": 8})
    assert processed.shape == (1,) + shape and processed.max() <= 255
    rois = cells([(50, 40), (60, 30)], shape)
    source.add_ROIs(ROIList(rois), "cells")
    out = target.import_transformed_ROIs(
        source,
        "similarity",
        pre_processing_method="ca1pc",
        pre_processing_kwargs={"x_diameter": 8, "y_diameter": 8},
    )
    for roi, src in zip(out, rois, strict=True):
        d = roi.polygon_arrays[0][:, :2] - truth(src.polygon_arrays[0][:, :2])
        assert np.sqrt(np.mean(np.sum(d**2, axis=1))) < 0.5
    with pytest.raises(ValueError, match="pre_processing_method must be None or 'ca1pc'"):
        target.import_transformed_ROIs(source, pre_processing_method="clahe")
    with pytest.raises(TypeError, match="unexpected pre_processing_kwargs \\['sigma'\\]"):
        target.import_transformed_ROIs(
            source, pre_processing_method="ca1pc", pre_processing_kwargs={"sigma": 2}
        )


# ------------------------------------------------------------------------------ anchors
def anchor_datasets(tmp_path, shape=(50, 70), planes=2):
    rng = np.random.default_rng(0)
    source = make_dataset(tmp_path / "s.sima", rng.normal(size=(planes,) + shape))
    target = make_dataset(tmp_path / "t.sima", rng.normal(size=(planes,) + shape))
    return source, target


ANCHOR = np.array([[8, 6], [35, 4], [62, 9], [64, 30], [50, 45], [20, 44], [5, 25]], float)


def add_anchors(dataset, per_plane, label="anchor"):
    dataset.add_ROIs(
        ROIList(
            [
                ROI(polygons=np.column_stack([xy, np.full(len(xy), z)]), label=f"a{z}")
                for z, xy in per_plane.items()
            ]
        ),
        label,
    )


def test_anchor_mode_per_plane_exact(tmp_path):
    source, target = anchor_datasets(tmp_path)
    shape = (2, 50, 70)
    truths = [
        sk.AffineTransform(rotation=0.05, translation=(2, -1)),
        sk.AffineTransform(scale=(1.04, 0.98), shear=0.03, translation=(-1.5, 2)),
    ]
    add_anchors(source, {0: ANCHOR, 1: ANCHOR})
    # target anchors: cyclically shifted; plane 1 drawn in the other direction
    add_anchors(
        target,
        {0: np.roll(truths[0](ANCHOR), 2, axis=0), 1: np.roll(truths[1](ANCHOR)[::-1], 4, axis=0)},
    )
    rois = cells([(30, 25)], shape, z=0, r=6) + cells([(40, 20)], shape, z=1, r=6, prefix="b")
    blob = np.zeros((2, 50, 70), dtype=bool)
    blob[1, 20:26, 30:37] = True  # a boolean mask ROI: its outline is transformed
    rois.append(ROI(mask=blob, label="mask", id="m", tags={"drawn"}))
    truths.append(truths[1])
    source.add_ROIs(ROIList(rois), "cells")
    out = target.import_transformed_ROIs(
        source,
        method="affine",
        anchor_label="anchor",
        source_label="cells",
        target_label="imported",
    )
    assert set(target.ROIs) == {"anchor", "imported"}
    for roi, src, truth in zip(out, rois, truths, strict=True):
        np.testing.assert_allclose(
            roi.polygon_arrays[0][:, :2], truth(src.polygon_arrays[0][:, :2]), atol=1e-6
        )
        assert roi.label == src.label and roi.id == src.id and roi.tags == src.tags


def test_anchor_mode_fills_missing_planes_and_piecewise(tmp_path):
    source, target = anchor_datasets(tmp_path, planes=3)
    shape = (3, 50, 70)
    truth = sk.AffineTransform(rotation=-0.04, translation=(3, 1))
    add_anchors(source, {0: ANCHOR, 1: ANCHOR, 2: ANCHOR})
    add_anchors(target, {1: truth(ANCHOR)})  # planes 0 and 2 lack target anchors
    rois = [cells([(30, 25)], shape, z=z, prefix=f"p{z}")[0] for z in range(3)]
    source.add_ROIs(ROIList(rois), "cells")
    with pytest.warns(UserWarning, match=r"missing on plane\(s\) \[0, 2\].*0 <- 1, 2 <- 1"):
        result = transformed_ROIs(
            target, source, "piecewise-affine", anchor_label="anchor", source_label="cells"
        )
    assert [e.mode for e in result.estimates] == ["filled", "anchor", "filled"]
    for roi, src in zip(result.rois, rois, strict=True):
        # piecewise-affine through anchors of an affine map reproduces it
        np.testing.assert_allclose(
            roi.polygon_arrays[0][:, :2], truth(src.polygon_arrays[0][:, :2]), atol=1e-6
        )
        assert roi.polygon_arrays[0][0, 2] == src.polygon_arrays[0][0, 2]


def test_anchor_mode_errors_import_nothing(tmp_path):
    source, target = anchor_datasets(tmp_path, planes=1)
    source.add_ROIs(ROIList(cells([(30, 25)], (1, 50, 70))), "cells")
    add_anchors(source, {0: ANCHOR})
    with pytest.raises(KeyError, match="the target dataset .* has no ROI sets"):
        target.import_transformed_ROIs(source, anchor_label="anchor", source_label="cells")
    add_anchors(target, {0: ANCHOR[:-1]})
    with pytest.raises(TransformError, match="different numbers of vertices \\(7 in the source, 6"):
        target.import_transformed_ROIs(source, anchor_label="anchor", source_label="cells")
    # anchors only on a plane the target does not have: no plane has both
    add_anchors(target, {1: ANCHOR}, label="elsewhere")
    add_anchors(source, {0: ANCHOR}, label="elsewhere")
    with pytest.raises(TransformError, match="no plane has an anchor ROI 'elsewhere' in both"):
        target.import_transformed_ROIs(source, anchor_label="elsewhere", source_label="cells")
    assert set(target.ROIs) == {"anchor", "elsewhere"}  # nothing imported


@pytest.mark.parametrize("method", ["affine", "polynomial", "piecewise-affine"])
def test_weighted_mask_rois_are_resampled(tmp_path, method):
    source, target = anchor_datasets(tmp_path, planes=1)
    truth = sk.AffineTransform(scale=(1.1, 1.1), translation=(4, -2))
    add_anchors(source, {0: ANCHOR})
    add_anchors(target, {0: truth(ANCHOR)})
    rr, cc = np.mgrid[0:50, 0:70]
    weights = np.exp(-((rr + 0.5 - 24.0) ** 2 + (cc + 0.5 - 30.0) ** 2) / (2 * 3.0**2))
    weights[weights < 0.05] = 0
    source.add_ROIs(ROIList([ROI(mask=weights[None], label="w", tags={"stica"})]), "weighted")
    out = target.import_transformed_ROIs(
        source, method, anchor_label="anchor", source_label="weighted"
    )
    roi = out[0]
    assert roi.kind == "mask" and roi.label == "w" and roi.tags == {"stica"}
    m = np.asarray(roi)[0]
    assert m.dtype.kind == "f" and m.max() < 1.0  # weights, not a 0/1 outline
    centroid = np.array([(m * (cc + 0.5)).sum(), (m * (rr + 0.5)).sum()]) / m.sum()
    np.testing.assert_allclose(centroid, truth(np.array([[30.0, 24.0]]))[0], atol=0.1)
    assert m.sum() == pytest.approx(weights.sum() * 1.1**2, rel=0.05)


# ------------------------------------------------------------------------- bad inputs
def test_bad_arguments(tmp_path, examples):
    source, target = anchor_datasets(tmp_path, planes=1)
    with pytest.raises(KeyError, match="source dataset .* has no ROI sets"):
        target.import_transformed_ROIs(source)
    source.add_ROIs(ROIList(cells([(30, 25)], (1, 50, 70))), "cells")
    with pytest.raises(ValueError, match="unknown transform method 'rigid'"):
        target.import_transformed_ROIs(source, method="rigid")
    with pytest.raises(TypeError, match="unexpected keyword 'order' for method 'affine'"):
        target.import_transformed_ROIs(source, order=2)
    with pytest.raises(TypeError, match="unexpected keyword 'detector'.*anchor mode"):
        target.import_transformed_ROIs(source, anchor_label="a", detector="sift")
    with pytest.raises(KeyError, match="no ROI set 'nope' in the source dataset"):
        target.import_transformed_ROIs(source, source_label="nope")
    with pytest.raises(ValueError, match="no channel named 'gcamp'"):
        target.import_transformed_ROIs(source, source_channel="gcamp")
    with pytest.raises(TypeError, match="source_dataset must be an ImagingDataset"):
        target.import_transformed_ROIs("day1.sima")
    volume = make_dataset(None, np.random.default_rng(1).normal(size=(2, 50, 70)))
    with pytest.raises(ValueError, match="the source has 1 and the target 2 plane"):
        volume.import_transformed_ROIs(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy folder's own displacement notice
        legacy = ImagingDataset.load(examples / "example.sima")  # read-only
    with pytest.raises(PermissionError, match="read-only"):
        legacy.import_transformed_ROIs(source)
    with pytest.raises(ValueError, match="nothing to import"):
        store_transformed_ROIs(target, TransformedROIs(ROIList([]), [None], "cells", "affine"))
