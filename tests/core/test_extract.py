"""Signal extraction: SIMA's extraction tests (spec 9.4, 9.3) and our own checks."""

from __future__ import annotations

import csv
import re
import warnings

import numpy as np
import pytest
import tifffile

from napari_sima.core import ROI, ImagingDataset, ROIList, Sequence
from napari_sima.core import extract as ex
from napari_sima.core.extract import extract_rois, iter_extract_rois, prepare_masks


def _constant_data() -> np.ndarray:
    data = np.ones((10, 2, 6, 8, 2))
    data[:, 0, 1:4, 2:6, 1] = 1000
    return data


def _varying_data() -> np.ndarray:
    pattern = np.tile([0.4, 0.8, 1.2, 1.6], (3, 1))
    data = np.ones((20, 2, 6, 8, 2))
    for t in range(20):
        data[t, 1, 1:4, 2:6, 0] = np.roll(pattern, t, axis=1) * 1000
    return data


def _bool_mask(shape, rows, cols, plane=0):
    m = np.zeros(shape, dtype=bool)
    m[plane, rows, cols] = True
    return m


# ============================================================ SIMA: Test_ConstantData
class TestConstantData:
    @pytest.fixture
    def ds(self):
        return ImagingDataset([Sequence.create("ndarray", _constant_data())], None)

    def test_polygon_roi(self, ds):
        roi = ROI(polygons=[[2, 1, 0], [6, 1, 0], [6, 4, 0], [2, 4, 0]], im_shape=(2, 6, 8))
        out = ds.extract(ROIList([roi]), signal_channel=1, remove_overlap=True, n_processes=2)
        assert np.all(out["raw"][0] == 1.0)

    def test_boolean_mask_roi(self, ds):
        roi = ROI(mask=_bool_mask((1, 4, 6), slice(1, 4), slice(2, 6)))
        out = ds.extract(ROIList([roi]), signal_channel=1, remove_overlap=True, n_processes=2)
        assert np.all(out["raw"][0] == 1.0)

    def test_non_boolean_mask(self, ds):
        mask = np.zeros((1, 4, 6))
        mask[0, 1:4] = [0, 0, 0.4, 0.3, 0.2, 0.1]
        out = ds.extract(ROIList([ROI(mask=mask)]), signal_channel=1, n_processes=2)
        assert np.all(out["raw"][0] == 3.0)  # weights summing to 3 are not normalised

    @pytest.mark.parametrize("remove_overlap,n_processes", [(True, 1), (False, 2)])
    def test_overlapping_rois(self, ds, remove_overlap, n_processes):
        roi1 = ROI(polygons=[[2, 1, 0], [5, 1, 0], [5, 3, 0], [2, 3, 0]], im_shape=(2, 6, 8))
        roi2 = ROI(mask=_bool_mask((1, 4, 6), slice(2, 4), slice(3, 6)))
        out = ds.extract(
            ROIList([roi1, roi2]),
            signal_channel=1,
            remove_overlap=remove_overlap,
            n_processes=n_processes,
        )
        assert np.all(out["raw"][0] == 1.0)


# ============================================================ SIMA: Test_VaryingData
C = np.array([-0.6, -0.2, 0.2, 0.6])


class TestVaryingData:
    @pytest.fixture
    def ds(self, tmp_path):
        seq = Sequence.create("ndarray", _varying_data())
        return ImagingDataset([seq], tmp_path / "test_extract.sima")

    def test_polygon_roi(self, ds, tmp_path):
        roi = ROI(polygons=[[2, 1, 1], [6, 1, 1], [6, 4, 1], [2, 4, 1]], im_shape=(2, 6, 8))
        out = ds.extract(ROIList([roi]), signal_channel=0, remove_overlap=True, n_processes=2)
        assert np.all(out["raw"][0] == 1.0)
        ds.export_signals(tmp_path / "export_signals_test.csv")
        assert (tmp_path / "export_signals_test.csv").exists()

    def test_boolean_mask_roi(self, ds):
        roi = ROI(mask=_bool_mask((2, 4, 6), slice(1, 4), slice(2, 6), plane=1))
        out = ds.extract(ROIList([roi]), signal_channel=0, n_processes=1)
        assert np.all(out["raw"][0] == 1.0)

    def test_non_boolean_mask_roi(self, ds):
        mask = np.zeros((2, 4, 6))
        mask[1, 1:4] = [0, 0, 0.4, 0.3, 0.2, 0.1]
        out = ds.extract(ROIList([ROI(mask=mask)]), signal_channel=0, n_processes=2)
        w = np.array([0.4, 0.3, 0.2, 0.1])
        expected = [3 * np.sum(np.roll(C, t) * w) + 3 for t in range(20)]
        np.testing.assert_array_almost_equal(out["raw"][0][0], expected, decimal=6)

    @pytest.mark.parametrize("remove_overlap,n_processes", [(True, 1), (False, 2)])
    def test_overlapping_rois(self, ds, remove_overlap, n_processes):
        roi1 = ROI(polygons=[[2, 1, 1], [5, 1, 1], [5, 3, 1], [2, 3, 1]], im_shape=(2, 6, 8))
        roi2 = ROI(mask=_bool_mask((2, 4, 6), slice(2, 4), slice(3, 6), plane=1))
        out = ds.extract(
            ROIList([roi1, roi2]),
            signal_channel=0,
            remove_overlap=remove_overlap,
            n_processes=n_processes,
        )
        if remove_overlap:
            w1, w2 = [0.5, 0.25, 0.25, 0], [0, 0.25, 0.25, 0.5]
        else:
            w1, w2 = [1 / 3, 1 / 3, 1 / 3, 0], [0, 1 / 3, 1 / 3, 1 / 3]
        e1 = [np.sum(C * np.roll(w1, -t)) + 1 for t in range(20)]
        e2 = [np.sum(C * np.roll(w2, -t)) + 1 for t in range(20)]
        np.testing.assert_array_almost_equal(out["raw"][0][0], e1, decimal=6)
        np.testing.assert_array_almost_equal(out["raw"][0][1], e2, decimal=6)


# ============================================================ SIMA: Test_MissingData
class TestMissingData:
    def test_empty_roi(self):
        ds = ImagingDataset([Sequence.create("ndarray", _constant_data())], None)
        roi1 = ROI(mask=np.zeros((1, 4, 6), dtype=bool))
        roi2 = ROI(mask=_bool_mask((1, 4, 6), slice(1, 4), slice(2, 6)))
        with pytest.warns(RuntimeWarning, match="1 empty ROIs found"):
            out = ds.extract(ROIList([roi1, roi2]), signal_channel=1, n_processes=1)
        raw = out["raw"][0]
        assert raw.dtype == np.float32
        assert np.all(np.isnan(raw[0]))
        assert np.all(np.isfinite(raw[1]))
        assert len(out["rois"]) == 2  # empty ROIs keep their row

    @pytest.mark.parametrize("remove_overlap", [True, False])
    @pytest.mark.parametrize("n_processes", [1, 2])
    def test_missing_frame(self, remove_overlap, n_processes):
        data = _constant_data()
        data[3:5] = np.nan
        ds = ImagingDataset([Sequence.create("ndarray", data)], None)
        roi1 = ROI(mask=_bool_mask((1, 4, 6), slice(1, 3), slice(1, 3)))
        roi2 = ROI(mask=_bool_mask((1, 4, 6), slice(1, 4), slice(2, 6)))
        out = ds.extract(
            ROIList([roi1, roi2]),
            signal_channel=1,
            remove_overlap=remove_overlap,
            n_processes=n_processes,
        )
        raw = out["raw"][0]
        assert np.all(np.isnan(raw[:, 3:5]))
        assert np.all(np.isfinite(raw[:, :3]))
        assert np.all(np.isfinite(raw[:, 5:]))


def test_all_empty_rois_raise():
    ds = ImagingDataset([Sequence.create("ndarray", _constant_data())], None)
    with pytest.raises(ValueError, match="No valid ROIs found"):
        ds.extract([ROI(mask=np.zeros((1, 4, 6), dtype=bool))])


def test_rois_fully_overlapping_become_empty():
    ds = ImagingDataset([Sequence.create("ndarray", _constant_data())], None)
    big = ROI(mask=_bool_mask((1, 4, 6), slice(1, 4), slice(2, 6)))
    small = ROI(mask=_bool_mask((1, 4, 6), slice(1, 2), slice(2, 3)))
    with pytest.warns(RuntimeWarning, match="Empty ROIs"):
        out = ds.extract([big, small], signal_channel=1)
    assert np.all(np.isnan(out["raw"][0][1]))
    assert out["overlap"][1].tolist() == [1 * 8 + 2]


# ============================================================ reference implementation
def _reference(data, masks, mu, remove_overlap):
    """Straight from the behaviour spec (section 5), dense, one frame at a time."""
    n_pix = mu.size
    m = np.array([mk.ravel().astype(float) for mk in masks])
    is_bool = [mk.dtype == bool for mk in masks]
    counts = (m != 0).sum(axis=0)
    if remove_overlap:
        m[:, counts > 1] = 0
    for r in range(len(m)):
        if is_bool[r] and (m[r] != 0).any():
            m[r] = (m[r] != 0) / (m[r] != 0).sum()
    valid = np.flatnonzero((m != 0).any(axis=1))
    mv = m[valid]
    masked = np.flatnonzero((mv != 0).any(axis=0))
    mm = mv[:, masked]
    overlapping = (not remove_overlap) and ((mm != 0).sum(axis=0) > 1).any()
    a = np.linalg.pinv(mm)  # = M.T (M M.T)^-1
    out = np.full((len(masks), data.shape[0]), np.nan)
    for t, frame in enumerate(data):
        with np.errstate(divide="ignore", invalid="ignore"):
            d = ((frame.ravel() - mu) / mu)[masked]
        imaged = np.isfinite(d)
        if not imaged.any():
            continue
        rois_imaged = (mm[:, imaged] != 0).any(axis=1)
        if not overlapping:
            s = (mm**2).sum(axis=1)[rois_imaged] / (mm[:, imaged] ** 2).sum(axis=1)[rois_imaged]
            w = s[:, None] * mm[np.ix_(rois_imaged, imaged)]
        else:
            ap = a[np.ix_(imaged, rois_imaged)]
            w = np.linalg.pinv(ap)
        v = w @ d[imaged] + w @ np.ones(imaged.sum())
        out[valid[rois_imaged], t] = v
    assert n_pix == masked.max() + 1 or True
    return out


def _random_case(seed, n_frames=30, dtype=np.float64):
    rng = np.random.default_rng(seed)
    shape = (n_frames, 2, 12, 14, 1)
    data = rng.uniform(50, 150, size=shape)
    # NaN pixels and frames, and a pixel never observed / with zero mean
    nan_mask = rng.random(shape) < 0.05
    data[nan_mask] = np.nan
    data[7] = np.nan
    data[:, 0, 3, 4, 0] = np.nan
    data[:, 1, 5, 5, 0] = 0.0
    masks = []
    for k in range(7):
        m = np.zeros((2, 12, 14), dtype=bool)
        z = k % 2
        y0, x0 = rng.integers(0, 8), rng.integers(0, 10)
        m[z, y0 : y0 + rng.integers(2, 5), x0 : x0 + rng.integers(2, 5)] = True
        masks.append(m)
    w = np.zeros((2, 12, 14))
    w[1, 4:7, 3:8] = rng.uniform(0.1, 1.0, size=(3, 5))
    masks.append(w)  # float weights, overlapping
    masks.append(masks[0].copy())  # identical masks: singular M M^T
    return data.astype(dtype), masks


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("remove_overlap", [True, False])
def test_matches_reference_with_unobserved_pixels(seed, remove_overlap):
    data, masks = _random_case(seed)
    ds = ImagingDataset([Sequence.create("ndarray", data)], None)
    mu = ds.time_averages[..., 0].ravel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = extract_rois(ds, [ROI(mask=m) for m in masks], remove_overlap=remove_overlap)
        expected = _reference(data[..., 0], masks, mu, remove_overlap)
    np.testing.assert_allclose(out["raw"][0], expected, rtol=2e-6, atol=1e-6, equal_nan=True)
    assert np.isnan(out["raw"][0][:, 7]).all()


def test_float32_movie_matches_reference():
    data, masks = _random_case(5, dtype=np.float32)
    ds = ImagingDataset([Sequence.create("ndarray", data)], None)
    mu = ds.time_averages[..., 0].ravel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = extract_rois(ds, [ROI(mask=m) for m in masks], remove_overlap=False)
        expected = _reference(data[..., 0].astype(float), masks, mu, False)
    np.testing.assert_allclose(out["raw"][0], expected, rtol=2e-6, atol=1e-6, equal_nan=True)


def test_integer_movie_with_zero_mean_pixels_matches_reference():
    rng = np.random.default_rng(3)
    data = rng.integers(0, 40, size=(25, 1, 10, 10, 1)).astype(np.uint16)
    data[:, 0, 2, 2, 0] = 0  # never bright: zero time average = unobserved
    masks = [
        _bool_mask((1, 10, 10), slice(1, 4), slice(1, 4)),
        _bool_mask((1, 10, 10), slice(2, 6), slice(2, 5)),
    ]
    ds = ImagingDataset([Sequence.create("ndarray", data)], None)
    mu = ds.time_averages[..., 0].ravel()
    for remove in (True, False):
        out = extract_rois(ds, [ROI(mask=m) for m in masks], remove_overlap=remove)
        expected = _reference(data[..., 0].astype(float), masks, mu, remove)
        np.testing.assert_allclose(out["raw"][0], expected, rtol=2e-6, equal_nan=True)


# ============================================================ result layout
def test_result_layout_and_no_mutation():
    ds = ImagingDataset([Sequence.create("ndarray", _constant_data())] * 2, None)
    roi1 = ROI(polygons=[[2, 1, 0], [5, 1, 0], [5, 3, 0], [2, 3, 0]], label="a", tags={"x"})
    roi2 = ROI(mask=_bool_mask((1, 4, 6), slice(2, 4), slice(3, 6)), id="7")
    out = ds.extract([roi1, roi2], signal_channel="1")
    assert list(out) == ["raw", "mean_frame", "overlap", "signal_channel", "rois", "timestamp"]
    assert len(out["raw"]) == 2 and out["raw"][1].shape == (2, 10)
    assert all(r.dtype == np.float32 for r in out["raw"])
    np.testing.assert_array_equal(out["mean_frame"], ds.time_averages[..., 1])
    zeros, flat = out["overlap"]
    assert zeros.dtype == flat.dtype == np.int64 and not zeros.any()
    assert sorted(flat.tolist()) == [2 * 8 + 3, 2 * 8 + 4]
    assert out["signal_channel"] == 1
    assert [r["label"] for r in out["rois"]] == ["a", None]
    assert out["rois"][1]["id"] == "7" and out["rois"][0]["im_shape"] == (2, 6, 8)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d-\d\dh\d\dm\d\ds", out["timestamp"])
    assert roi1.im_shape is None  # the caller's ROIs are not changed
    out2 = ds.extract([roi1, roi2], signal_channel=np.int64(1), remove_overlap=False)
    assert "overlap" not in out2


def test_bad_inputs():
    ds = ImagingDataset([Sequence.create("ndarray", _constant_data())], None)
    roi = ROI(mask=_bool_mask((1, 4, 6), slice(1, 4), slice(2, 6)))
    with pytest.raises(ValueError, match="no channel named"):
        ds.extract([roi], signal_channel="green")
    with pytest.raises(ValueError, match="out of range"):
        ds.extract([roi], signal_channel=5)
    with pytest.raises(ValueError, match="n_processes"):
        ds.extract([roi], n_processes=0)
    with pytest.raises(ValueError, match="n_processes"):
        ds.extract([roi], n_processes=1.5)
    with pytest.raises(ValueError, match="no ROIs"):
        ds.extract([])
    with pytest.raises(ValueError, match="no ROI sets"):
        ds.extract()
    with pytest.raises(ValueError, match="must differ"):
        ds.extract([roi], signal_channel=1, demix_channel=1)
    with pytest.raises(TypeError, match="not an ROI"):
        ds.extract([roi, "x"])
    bad_plane = ROI(polygons=[[0, 0, 5], [3, 0, 5], [3, 3, 5]])
    with pytest.raises(ValueError, match="plane"):
        ds.extract([bad_plane])


def test_default_rois_most_recent_set_and_label(tmp_path):
    ds = ImagingDataset([Sequence.create("ndarray", _constant_data())], tmp_path / "d.sima")
    one = ROIList([ROI(mask=_bool_mask((1, 4, 6), slice(1, 4), slice(2, 6)))])
    two = ROIList(
        [
            ROI(mask=_bool_mask((1, 4, 6), slice(1, 3), slice(2, 4))),
            ROI(mask=_bool_mask((1, 4, 6), slice(3, 4), slice(2, 6))),
        ]
    )
    ds.add_ROIs(one, "one")
    import time

    time.sleep(1.1)
    ds.add_ROIs(two, "two")
    out = ds.extract(signal_channel=1, save_summary=False)
    assert out["raw"][0].shape[0] == 2  # the most recent set
    assert list(ds.signals(1)) == [out["timestamp"]]  # default label: the timestamp
    out = ds.extract("one", signal_channel=1, label="first", save_summary=False)
    assert out["raw"][0].shape[0] == 1
    assert len(ds.signals(1)) == 2 and "first" in ds.signals(1)
    with pytest.raises(KeyError, match="no ROI set 'nope'"):
        ds.extract("nope")


# ============================================================ processes, threads, progress
def _tiff_dataset(tmp_path, data, name="m.tif", savedir=None):
    t, z, y, x, c = data.shape
    pages = np.ascontiguousarray(data.transpose(0, 1, 4, 2, 3)).reshape(-1, y, x)
    path = tmp_path / name
    tifffile.imwrite(path, pages)
    seq = Sequence.create("TIFF", str(path), num_planes=z, num_channels=c)
    return ImagingDataset([seq, seq[5:]], savedir)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_processes_equal_one_process_exactly(tmp_path, dtype, monkeypatch):
    monkeypatch.setattr(ex, "POOL_START_SECONDS", 0.0)  # start workers even for tiny jobs
    rng = np.random.default_rng(0)
    data = rng.integers(100, 4000, size=(700, 2, 24, 20, 2)).astype(dtype)
    if dtype == np.float32:
        data[rng.random(data.shape) < 0.01] = np.nan
        data[100:103] = np.nan
    ds = _tiff_dataset(tmp_path, data)
    rois = []
    for k in range(12):
        m = np.zeros((2, 24, 20), dtype=bool)
        m[k % 2, 2 * k % 20 : 2 * k % 20 + 5, k : k + 6] = True
        rois.append(ROI(mask=m))
    for remove in (True, False):
        one = extract_rois(ds, rois, signal_channel=1, remove_overlap=remove, n_processes=1)
        two = extract_rois(
            ds, rois, signal_channel=1, remove_overlap=remove, n_processes=2, block_frames=16
        )
        for a, b in zip(one["raw"], two["raw"]):
            np.testing.assert_array_equal(a, b)
        assert ex.LAST_RUN["worker_chunks"] + ex.LAST_RUN["own_chunks"] >= ex.LAST_RUN["chunks"]
        # different block sizes give identical numbers too
        three = extract_rois(ds, rois, signal_channel=1, remove_overlap=remove, block_frames=7)
        for a, b in zip(one["raw"], three["raw"]):
            np.testing.assert_array_equal(a, b)


def test_worker_processes_do_work(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    data = rng.integers(0, 3000, size=(2000, 1, 64, 64, 1)).astype(np.uint16)
    ds = _tiff_dataset(tmp_path, data)
    rois = [
        ROI(mask=_bool_mask((1, 64, 64), slice(k, k + 6), slice(k, k + 6)))
        for k in range(0, 56, 7)
    ]
    monkeypatch.setattr(ex, "POOL_START_SECONDS", 0.0)
    one = extract_rois(ds, rois, n_processes=1)
    extract_rois(ds, rois, n_processes=2, block_frames=8)  # starts the pool
    import time

    deadline = time.monotonic() + 60
    while not ex._pool_is_warm(1) and time.monotonic() < deadline:
        time.sleep(0.05)
    worked = 0
    for _ in range(20):  # warm pool: workers get chunks from the start
        two = extract_rois(ds, rois, n_processes=2, block_frames=8)
        for a, b in zip(one["raw"], two["raw"]):
            np.testing.assert_array_equal(a, b)
        worked += ex.LAST_RUN["worker_chunks"]
        if worked:
            break
    assert worked > 0


def test_broken_worker_pool_falls_back_to_this_process(tmp_path, monkeypatch):
    import concurrent.futures as cf
    import multiprocessing as mp
    import os

    data = np.random.default_rng(8).integers(0, 3000, size=(300, 1, 16, 16, 1))
    ds = _tiff_dataset(tmp_path, data.astype(np.uint16))
    rois = [ROI(mask=_bool_mask((1, 16, 16), slice(2, 9), slice(3, 8)))]
    one = extract_rois(ds, rois)

    def dying_pool(n):  # workers exit while starting, as with an unguarded script
        ctx = mp.get_context(ex._start_method())
        return cf.ProcessPoolExecutor(n, mp_context=ctx, initializer=os._exit, initargs=(3,))

    monkeypatch.setattr(ex, "_get_pool", dying_pool)
    monkeypatch.setattr(ex, "_pool_is_warm", lambda n: True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        two = extract_rois(ds, rois, n_processes=2, block_frames=8)
    np.testing.assert_array_equal(one["raw"][0], two["raw"][0])
    np.testing.assert_array_equal(one["raw"][1], two["raw"][1])
    assert ex.LAST_RUN["worker_chunks"] == 0
    messages = [str(w.message) for w in caught]
    assert any("worker processes failed" in m for m in messages) or ex.LAST_RUN[
        "own_chunks"
    ] == ex.LAST_RUN["chunks"]


def test_in_memory_movie_with_threads_equals_one_process():
    rng = np.random.default_rng(1)
    data = rng.uniform(1, 2, size=(300, 1, 16, 16, 1))
    ds = ImagingDataset([Sequence.create("ndarray", data)], None)
    rois = [ROI(mask=_bool_mask((1, 16, 16), slice(k, k + 4), slice(k, k + 5))) for k in range(10)]
    one = extract_rois(ds, rois, n_processes=1)
    three = extract_rois(ds, rois, n_processes=3, block_frames=8)
    np.testing.assert_array_equal(one["raw"][0], three["raw"][0])


def test_iter_extract_progress_and_cancel(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.integers(0, 1000, size=(400, 1, 16, 16, 1)).astype(np.uint16)
    ds = _tiff_dataset(tmp_path, data)
    roi = ROI(mask=_bool_mask((1, 16, 16), slice(2, 8), slice(2, 8)))
    gen = iter_extract_rois(ds, [roi], block_frames=32)
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    totals = {t for _, t in steps}
    assert len(totals) == 1
    total = totals.pop()
    assert total == 2 * ds.num_frames  # the projection pass counted first
    done = [d for d, _ in steps]
    assert done == sorted(done) and done[-1] == total
    assert result["raw"][0].shape == (1, 400)
    # now cached: only the extraction pass; cancel half-way (also with workers)
    for n in (1, 2):
        gen = iter_extract_rois(ds, [roi], block_frames=16, n_processes=n)
        first = next(gen)
        assert first == (0, ds.num_frames)
        next(gen)
        gen.close()


def test_dataset_iter_extract_stores(tmp_path):
    data = np.random.default_rng(3).uniform(1, 2, size=(20, 1, 8, 8, 1))
    ds = ImagingDataset([Sequence.create("ndarray", data)], tmp_path / "d.sima")
    roi = ROI(mask=_bool_mask((1, 8, 8), slice(2, 5), slice(2, 5)))
    gen = ds.iter_extract([roi], label="it", save_summary=False)
    progress = list(_drain_steps(gen))
    assert progress[-1][0] == progress[-1][1]
    assert "it" in ds.signals()


def _drain_steps(gen):
    while True:
        try:
            yield next(gen)
        except StopIteration:
            return


# ============================================================ storage, summary, read-only
def test_extract_stores_and_writes_summary(tmp_path):
    ds = ImagingDataset([Sequence.create("ndarray", _varying_data())], tmp_path / "s.sima")
    roi = ROI(polygons=[[2, 1, 1], [6, 1, 1], [6, 4, 1], [2, 4, 1]], label="cell")
    out = ds.extract([roi], label="lbl")
    stored = ds.signals()["lbl"]
    np.testing.assert_array_equal(stored["raw"][0], out["raw"][0])
    assert stored["timestamp"] == out["timestamp"]
    png = tmp_path / "s.sima" / f"extractSummary_{out['timestamp']}.png"
    pdf = png.with_suffix(".pdf")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    # reopened dataset sees it
    again = ImagingDataset.load(tmp_path / "s.sima")
    assert list(again.signals(0)) == ["lbl"]
    again.delete_signals("lbl")
    again.delete_signals("lbl")  # unknown label: silent
    assert ds.signals() == {}


def test_in_memory_dataset_keeps_signals():
    ds = ImagingDataset([Sequence.create("ndarray", _constant_data())], None)
    roi = ROI(mask=_bool_mask((1, 4, 6), slice(1, 4), slice(2, 6)))
    out = ds.extract([roi], signal_channel=1, label="m")
    assert ds.signals(1)["m"] is out
    assert ds.signals(0) == {}
    ds.delete_signals("m", channel=1)
    assert ds.signals(1) == {}


def test_read_only_dataset_refuses(tmp_path):
    ds = ImagingDataset([Sequence.create("ndarray", _constant_data())], tmp_path / "r.sima")
    ds._read_only = True
    roi = ROI(mask=_bool_mask((1, 4, 6), slice(1, 4), slice(2, 6)))
    with pytest.raises(PermissionError):
        ds.extract([roi])


# ============================================================ rasterisation shortcut
def test_vectorised_rasterisation_matches_roi_masks():
    rng = np.random.default_rng(4)
    rois = []
    for k in range(60):
        n = rng.integers(3, 9)
        verts = np.column_stack(
            [rng.uniform(-5, 45, n), rng.uniform(-5, 35, n), np.full(n, k % 3)]
        )
        if k % 7 == 0:
            verts[:, :2] = np.round(verts[:, :2])  # vertices on pixel corners, edges on centres
        rois.append(ROI(polygons=verts))
    two = [[[1, 1, 0], [6, 1, 0], [6, 6, 0]], [[10, 10, 1], [14, 10, 1], [12, 15, 1]]]
    rois.append(ROI(polygons=two))
    rois.append(ROI(polygons=[[0, 0, 0], [10, 10, 0], [10, 0, 0], [0, 10, 0]]))  # bow tie
    shape = (3, 30, 40)
    masks = prepare_masks(rois, shape, remove_overlap=False)
    for k, roi in enumerate(rois):
        fitted = roi.copy()
        fitted.im_shape = shape
        expected = np.flatnonzero(np.array(fitted).ravel())
        got = masks.matrix[k].indices
        np.testing.assert_array_equal(np.sort(got), expected, err_msg=f"ROI {k}")


# ============================================================ demixing (experimental)
def test_demixing_removes_static_bleed_through():
    rng = np.random.default_rng(5)
    y, x, t = 40, 40, 60
    green = rng.exponential(100.0, size=(y, x)) + 50  # functional channel, true image
    red = rng.gamma(0.5, 300.0, size=(y, x)) + 20  # structural channel
    k = 0.3  # red bleeds into green
    activity = 1 + 0.5 * np.sin(np.arange(t) / 5.0)
    data = np.empty((t, 1, y, x, 2))
    data[:, 0, :, :, 0] = green[None] * activity[:, None, None] + k * red[None]
    data[:, 0, :, :, 1] = red[None]
    ds = ImagingDataset([Sequence.create("ndarray", data)], None, channel_names=["g", "r"])
    w = ex.demixing_matrix(ds.time_averages[..., 0], ds.time_averages[..., 1])
    assert w[0, 0] == pytest.approx(1) and w[1, 1] == pytest.approx(1)
    assert w[0, 1] == pytest.approx(-k, abs=0.03)
    roi = ROI(mask=_bool_mask((1, y, x), slice(5, 15), slice(5, 15)))
    out = ds.extract([roi], signal_channel="g", demix_channel="r")
    assert out["demix_channel"] == 1 and out["raw"][0].dtype == np.float32
    dem = out["demixed_raw"][0][0]
    mu_g = ds.time_averages[0, 5:15, 5:15, 0]
    mu_r = ds.time_averages[0, 5:15, 5:15, 1]
    frames = data[:, 0, 5:15, 5:15, 0]
    expected = np.mean((frames + w[0, 1] * mu_r) / mu_g, axis=(1, 2))
    np.testing.assert_allclose(dem, expected, rtol=1e-5)
    # bleed-through removed: the demixed trace is proportional to the true activity
    true = np.mean(green[5:15, 5:15] / mu_g) * activity
    np.testing.assert_allclose(dem, true, rtol=0.05)
    raw = out["raw"][0][0]
    assert np.ptp(dem) / np.mean(dem) > np.ptp(raw) / np.mean(raw)  # contrast restored


def test_demixing_needs_two_channels():
    ds = ImagingDataset([Sequence.create("ndarray", np.ones((4, 1, 5, 5, 1)))], None)
    roi = ROI(mask=_bool_mask((1, 5, 5), slice(1, 3), slice(1, 3)))
    with pytest.raises(ValueError):
        ds.extract([roi], demix_channel=1)


# ============================================================ realistic synthetic movie
def test_synthetic_movie_traces_follow_calcium():
    from napari_sima.core.synthetic import make_calcium_movie

    movie = make_calcium_movie(
        num_frames=300, frame_shape=(1, 64, 64, 1), num_sequences=1, num_cells=5,
        spike_rate=1.0, seed=3, allow_overlap=False,
    )
    ds = ImagingDataset([Sequence.create("ndarray", movie.sequences[0])], None)
    rois = [ROI(mask=c.mask[None]) for c in movie.cells]
    raw = ds.extract(rois)["raw"][0]
    for k, cell in enumerate(movie.cells):
        r = np.corrcoef(raw[k], cell.calcium[0])[0, 1]
        assert r > 0.9, (k, r)


# ============================================================ SIMA 9.3 test_extract and end to end
def test_imaging_extract_sima_example(examples, tmp_path):
    seq = Sequence.create("HDF5", str(examples / "example.h5"), "yxt")
    ds = ImagingDataset([seq, seq], tmp_path / "test_imaging_dataset.sima")
    rois = ROIList.load(examples / "imageJ_ROIs.zip", fmt="ImageJ")
    extracted = ds.extract(rois, label="rois")
    assert len(ds.signals()) == 1
    for a, b in zip(extracted["raw"], ds.signals()["rois"]["raw"]):
        np.testing.assert_array_equal(a, b)
    assert len(extracted["raw"]) == 2
    assert len(extracted["raw"][0]) == 2


def test_end_to_end_example_tif_csv(examples, tmp_path):
    seq = Sequence.create("TIFF", str(examples / "example.tif"))
    ds = ImagingDataset([seq], tmp_path / "e2e.sima")
    rois = ROIList.load(examples / "imageJ_ROIs.zip", fmt="ImageJ")
    ds.add_ROIs(rois, "imagej")
    out = ds.extract(n_processes=2)
    raw = out["raw"][0]
    assert raw.shape == (len(rois), 20) and np.all(np.isfinite(raw))
    # F / time_average, weights summing to 1: the mean over all frames is exactly 1
    np.testing.assert_allclose(raw.astype(float).mean(axis=1), 1.0, rtol=1e-6)
    path = tmp_path / "signals.csv"
    ds.export_signals(path)
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:2] == ["sequence", "frame"]
    assert rows[1][1] == "label" and rows[1][2:] == [r.label or "" for r in rois]
    body = np.array([[float(v) for v in row[2:]] for row in rows[3:]])
    np.testing.assert_array_equal(body.T.astype(np.float32), raw)
    assert [int(r[1]) for r in rows[3:]] == list(range(20))
