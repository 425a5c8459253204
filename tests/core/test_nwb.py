"""NWB export: the file passes pynwb's validator and reads back with the same data."""

from __future__ import annotations

import datetime as dt
import json
import sys
import warnings

import numpy as np
import pytest
import tifffile

pynwb = pytest.importorskip(
    "pynwb",
    reason="the NWB round trip needs the optional 'nwb' extra (pip install 'napari-sima[nwb]')",
)

from napari_sima.core import ROI, ImagingDataset, Sequence  # noqa: E402
from napari_sima.core import nwb as nwb_export  # noqa: E402
from napari_sima.core.dff import dff  # noqa: E402
from napari_sima.core.synthetic import make_calcium_movie  # noqa: E402

FRAMES = 100


def _validate(path):
    errors = pynwb.validate(path=str(path))
    if isinstance(errors, tuple):  # older pynwb: (errors, status)
        errors = errors[0]
    assert list(errors) == []


def _rois(movie, n_planes=1):
    """True ROIs of the movie: masks (one weighted), a polygon, ids/labels/tags."""
    rois = []
    for k, cell in enumerate(movie.cells):
        mask = np.zeros((n_planes, *cell.mask.shape), dtype=bool)
        mask[cell.plane] = cell.mask
        if k == 1:  # weighted mask
            weights = np.zeros(mask.shape, dtype=np.float32)
            weights[cell.plane] = np.where(cell.mask, cell.footprint, 0.0)
            mask = weights
        rois.append(ROI(mask=mask, label=f"cell{k}", id=f"id-{k}", tags={"true", f"t{k % 2}"}))
    rois[-1].tags = set()
    rois[-1].id = None
    # a drawn polygon ROI (no pixels of any cell) on the first plane
    rois.append(
        ROI(
            polygons=[[2, 2, 0], [8, 2, 0], [8, 6, 0], [2, 6, 0]],
            im_shape=(n_planes, *movie.frame_shape[1:3]),
            label="poly",
            tags={"drawn"},
        )
    )
    return rois


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A dataset folder of two TIFF sequences with true ROIs, signals and spikes."""
    tmp = tmp_path_factory.mktemp("nwb")
    movie = make_calcium_movie(
        num_frames=FRAMES,
        frame_shape=(1, 48, 48, 1),
        num_sequences=2,
        num_cells=4,
        spike_rate=1.0,
        seed=7,
        allow_overlap=False,
    )
    seqs = []
    for i, arr in enumerate(movie.sequences):
        path = tmp / f"movie{i}.tif"
        tifffile.imwrite(path, arr[:, 0, :, :, 0])
        seqs.append(Sequence.create("TIFF", str(path)))
    ds = ImagingDataset(seqs, tmp / "d.sima", channel_names=["green"])
    rois = _rois(movie)
    ds.add_ROIs(rois, "truth")
    ds.extract("truth", label="sig", save_summary=False)
    with warnings.catch_warnings():  # the polygon ROI holds no cell: its noise is ~0
        warnings.simplefilter("ignore", RuntimeWarning)
        ds.infer_spikes(label="sig")
    return ds, rois


def _ophys(nwbfile):
    return nwbfile.processing["ophys"]


def test_round_trip_signal_set(session, tmp_path):
    ds, rois = session
    out = tmp_path / "session.nwb"
    start = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    written = ds.export_nwb(
        out,
        channel="green",
        session_start_time=start,
        identifier="abc",
        experimenter="Ada",
        lab="Lab",
        institution="Inst",
        imaging_rate=20.0,
        indicator="GCaMP6f",
        location="CA1",
        excitation_lambda=920.0,
        emission_lambda=510.0,
    )
    assert written == out and out.is_file()
    assert not list(tmp_path.glob(".*tmp*"))
    _validate(out)
    signals = ds.signals("green")["sig"]
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        f = io.read()
        assert f.identifier == "abc" and f.session_start_time == start
        assert tuple(f.experimenter) == ("Ada",) and f.lab == "Lab" and f.institution == "Inst"
        plane = f.imaging_planes["ImagingPlane"]
        assert plane.indicator == "GCaMP6f" and plane.location == "CA1"
        assert plane.excitation_lambda == 920.0
        assert plane.optical_channel[0].emission_lambda == 510.0
        ps = _ophys(f)["ImageSegmentation"]["PlaneSegmentation"]
        # masks: (x, y) = (column, row), rows in the signal set's order
        masks = ps["image_mask"].data[:]
        assert masks.shape == (len(rois), 48, 48) and masks.dtype == np.float32
        for k, d in enumerate(signals["rois"]):
            expected = np.asarray(ROI(**d), dtype=np.float32)[0].T
            np.testing.assert_array_equal(masks[k], expected)
        np.testing.assert_array_equal(masks[-1], np.asarray(rois[-1], dtype=np.float32)[0].T)
        assert len(np.unique(masks[1])) > 10  # weights kept
        assert list(ps["roi_id"][:]) == [f"id-{k}" for k in range(3)] + ["", ""]
        assert list(ps["roi_label"][:]) == ["cell0", "cell1", "cell2", "cell3", "poly"]
        assert list(ps["roi_tags"][:]) == ["t0,true", "t1,true", "t0,true", "", "drawn"]
        assert list(ps["plane"][:]) == [0] * 5
        # traces: sequences concatenated along time, (time, ROIs), float32, exact
        fl = _ophys(f)["Fluorescence"]
        for name, key in (("raw", "raw"), ("spikes", "spikes"), ("spikes_fit", "spikes_fits")):
            series = fl[name]
            assert series.rate == 20.0 and series.starting_time == 0.0
            data = series.data[:]
            assert data.dtype == np.float32 and data.shape == (2 * FRAMES, len(rois))
            np.testing.assert_array_equal(data, np.concatenate(signals[key], axis=1).T)
            assert list(series.rois.data[:]) == list(range(len(rois)))
        assert "gamma" in fl["spikes"].comments
        dff_series = _ophys(f)["DfOverF"]["dff"]
        expected = np.concatenate(
            [dff(r, baseline="percentile", window=500, percentile=8.0) for r in signals["raw"]],
            axis=1,
        ).T
        np.testing.assert_array_equal(dff_series.data[:], expected.astype(np.float32))
        assert "computed at export" in dff_series.description
        # projections, (x, y) = (column, row)
        images = _ophys(f)["SummaryImages"]
        assert sorted(images.images) == ["kurtosis_plane0", "mean_plane0", "std_plane0"]
        np.testing.assert_array_equal(images["mean_plane0"].data[:], ds.time_averages[0, :, :, 0].T)
        np.testing.assert_array_equal(images["std_plane0"].data[:], ds.time_std[0, :, :, 0].T)
        np.testing.assert_array_equal(
            images["kurtosis_plane0"].data[:], ds.time_kurtosis[0, :, :, 0].T
        )
        # one epoch per sequence
        epochs = f.epochs.to_dataframe()
        assert epochs["start_time"].tolist() == [0.0, FRAMES / 20.0]
        assert epochs["stop_time"].tolist() == [FRAMES / 20.0, 2 * FRAMES / 20.0]
        assert [list(t) for t in epochs["tags"]] == [["sequence_0"], ["sequence_1"]]
        notes = json.loads(f.notes)
        assert notes["source"] == {"kind": "signals", "label": "sig"}
        assert notes["imaging_rate"] == {"source": "given", "value": 20.0}
        record = notes["provenance"]["signals"]["green"]["sig"]
        assert record["provenance"]["step"] == "extract"
        assert "spikes" in record["derived"]


def test_stored_dff_and_defaults(session, tmp_path):
    """A stored ΔF/F is exported as stored; without a rate, times are frame numbers."""
    from napari_sima.core import signal_store

    ds, _ = session
    signals = ds.signals(0)["sig"]
    stored = [np.full(r.shape, 0.25, np.float32) for r in signals["raw"]]
    stored[1][0, 3] = np.nan
    signal_store.update_signal_set(
        signal_store.store_dir(ds.savedir, 0), "sig", dff=stored, dff_parameters={"window": 7}
    )
    try:
        out = nwb_export.export_nwb(ds, tmp_path / "d.nwb")
        _validate(out)
        with pynwb.NWBHDF5IO(str(out), "r") as io:
            f = io.read()
            series = _ophys(f)["DfOverF"]["dff"]
            np.testing.assert_array_equal(series.data[:], np.concatenate(stored, axis=1).T)
            assert (
                "stored with the signal set" in series.description
                and '"window": 7' in series.description
            )
            assert series.rate == 1.0 and "frame numbers" in series.description
            assert f.imaging_planes["ImagingPlane"].indicator == "unknown"
            assert np.isnan(f.imaging_planes["ImagingPlane"].excitation_lambda)
            assert f.session_start_time.tzinfo is not None
            assert json.loads(f.notes)["imaging_rate"]["source"] == "unknown"
            assert len(f.identifier) == 36  # a UUID4
    finally:
        signal_store.update_signal_set(
            signal_store.store_dir(ds.savedir, 0), "sig", dff=None, dff_parameters=None
        )


def test_two_planes_in_memory(tmp_path):
    """A 2-plane dataset without a folder: voxel masks, one image per plane and kind."""
    movie = make_calcium_movie(
        num_frames=60,
        frame_shape=(2, 32, 32, 1),
        num_sequences=1,
        num_cells=4,
        seed=2,
        allow_overlap=False,
    )
    ds = ImagingDataset([Sequence.create("ndarray", movie.sequences[0])], None)
    rois = _rois(movie, n_planes=2) + [ROI(mask=np.zeros((2, 32, 32), bool), label="empty")]
    with pytest.warns(RuntimeWarning, match="Empty ROIs"):
        signals = ds.extract(rois, label="s", save_summary=False)
    assert np.isnan(signals["raw"][0][-1]).all()
    out = ds.export_nwb(tmp_path / "vol.nwb")
    _validate(out)
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        f = io.read()
        ps = _ophys(f)["ImageSegmentation"]["PlaneSegmentation"]
        assert "image_mask" not in ps.colnames
        assert list(ps["plane"][:]) == [0, 1, 0, 1, 0, -1]
        assert len(ps["voxel_mask"][5]) == 0
        for k, d in enumerate(signals["rois"]):
            dense = np.asarray(ROI(**d), dtype=np.float32)
            got = np.zeros((2, 32, 32), np.float32)
            for x, y, z, w in ps["voxel_mask"][k]:
                got[z, y, x] = w
            np.testing.assert_array_equal(got, dense)
        for name, key in (("Fluorescence", "raw"), ("DfOverF", "dff")):
            data = _ophys(f)[name][key].data[:]
            assert data.shape == (60, len(rois)) and np.isnan(data[:, -1]).all()
        np.testing.assert_array_equal(_ophys(f)["Fluorescence"]["raw"].data[:], signals["raw"][0].T)
        assert "epochs" in f.intervals and len(f.epochs) == 1
        images = _ophys(f)["SummaryImages"]
        assert len(images.images) == 6
        for z in range(2):
            np.testing.assert_array_equal(
                images[f"mean_plane{z}"].data[:], ds.time_averages[z, :, :, 0].T
            )


def test_roi_set_without_signals(tmp_path):
    movie = make_calcium_movie(
        num_frames=20, frame_shape=(1, 24, 24, 1), num_sequences=1, num_cells=2, seed=1
    )
    ds = ImagingDataset([Sequence.create("ndarray", movie.sequences[0])], tmp_path / "r.sima")
    rois = _rois(movie)
    ds.add_ROIs(rois[:2], "old")
    ds.add_ROIs(rois, "new")
    out = ds.export_nwb(tmp_path / "rois.nwb", rois_label="old")
    _validate(out)
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        f = io.read()
        ps = _ophys(f)["ImageSegmentation"]["PlaneSegmentation"]
        assert list(ps["roi_label"][:]) == ["cell0", "cell1"]
        assert "Fluorescence" not in _ophys(f).data_interfaces and f.epochs is None
        assert json.loads(f.notes)["source"] == {"kind": "rois", "label": "old"}
    # without signals, the default is the most recent ROI set
    out = ds.export_nwb(tmp_path / "default.nwb")
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        assert len(_ophys(io.read())["ImageSegmentation"]["PlaneSegmentation"]) == len(rois)


def test_errors(session, tmp_path):
    ds, _ = session
    with pytest.raises(KeyError, match="green"):
        ds.export_nwb(tmp_path / "a.nwb", channel="red")
    with pytest.raises(KeyError, match=r"stored sets: \['sig'\]"):
        ds.export_nwb(tmp_path / "a.nwb", signals_label="nope")
    with pytest.raises(KeyError, match=r"stored sets: \['truth'\]"):
        ds.export_nwb(tmp_path / "a.nwb", rois_label="nope")
    with pytest.raises(ValueError, match="not both"):
        ds.export_nwb(tmp_path / "a.nwb", signals_label="sig", rois_label="truth")
    with pytest.raises(ValueError, match="imaging_rate"):
        ds.export_nwb(tmp_path / "a.nwb", imaging_rate=0)
    with pytest.raises(ValueError, match="session_start_time"):
        ds.export_nwb(tmp_path / "a.nwb", session_start_time="yesterday")
    with pytest.raises(FileNotFoundError, match="missing"):
        ds.export_nwb(tmp_path / "missing" / "a.nwb")
    empty = ImagingDataset(
        [Sequence.create("ndarray", np.zeros((5, 1, 8, 8, 1), np.float32))], tmp_path / "empty.sima"
    )
    with pytest.raises(ValueError, match=r"empty\.sima.*nothing to export"):
        nwb_export.export_nwb(empty, tmp_path / "a.nwb")
    assert not list(tmp_path.glob("*.nwb")) and not list(tmp_path.glob(".*tmp*"))


def test_overwrite(session, tmp_path):
    ds, _ = session
    out = tmp_path / "x.nwb"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="x.nwb"):
        ds.export_nwb(out)
    assert out.read_bytes() == b"keep me"
    ds.export_nwb(out, overwrite=True, imaging_rate=5.0)
    _validate(out)
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        assert _ophys(io.read())["Fluorescence"]["raw"].rate == 5.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.nwb"]


def test_missing_extra_message(session, tmp_path, monkeypatch):
    ds, _ = session
    monkeypatch.setitem(sys.modules, "pynwb", None)  # as if pynwb were not installed
    with pytest.raises(ImportError, match=r"pip install 'napari-sima\[nwb\]'"):
        ds.export_nwb(tmp_path / "a.nwb")
    assert not (tmp_path / "a.nwb").exists()
