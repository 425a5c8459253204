"""Signal sets on disk (JSON index + NPZ), atomicity, and signal export (csv/tsv/npz)."""

from __future__ import annotations

import contextlib
import csv
import json
import os

import numpy as np
import pytest

from napari_sima.core import ROI, ImagingDataset, Sequence, signal_store, storage
from napari_sima.core.signal_store import (
    delete_signal_set,
    export_signals,
    load_signal_set,
    load_signal_sets,
    save_signal_set,
    signal_set_info,
    store_dir,
    update_signal_set,
)


def _signals(n_seq=2, demix=True, stamp="2024-01-02-03h04m05s"):
    rng = np.random.default_rng(0)
    mask = np.zeros((1, 6, 8), dtype=bool)
    mask[0, 1:3, 2:5] = True
    weights = np.zeros((1, 6, 8))
    weights[0, 4, 1:4] = [0.2, 0.5, 0.3]
    rois = [
        ROI(
            polygons=[[2, 1, 0], [5, 1, 0], [5, 3, 0]],
            im_shape=(1, 6, 8),
            label="a",
            tags={"z", "b"},
            id="1",
        ),
        ROI(mask=mask, label="b"),
        ROI(mask=weights, tags={"w"}),
    ]
    raw = [rng.normal(1, 0.1, size=(3, 5 + i)).astype(np.float32) for i in range(n_seq)]
    raw[0][1, 2] = np.nan
    out = {
        "raw": raw,
        "mean_frame": rng.uniform(size=(1, 6, 8)),
        "overlap": (np.zeros(2, np.int64), np.array([9, 10], np.int64)),
        "signal_channel": 0,
        "rois": [r.todict() for r in rois],
        "timestamp": stamp,
    }
    if demix:
        out["demixed_raw"] = [r * 0.5 for r in raw]
        out["demix_channel"] = 1
    return out


def _same_roi_dicts(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["label"] == y["label"] and x["id"] == y["id"] and x["tags"] == y["tags"]
        assert tuple(x["im_shape"]) == tuple(y["im_shape"])
        if x["polygons"] is not None:
            for p, q in zip(x["polygons"], y["polygons"]):
                np.testing.assert_array_equal(p, q)
        else:
            assert y["polygons"] is None
            for p, q in zip(x["mask"], y["mask"]):
                assert p.dtype == q.dtype
                np.testing.assert_array_equal(p.toarray(), q.toarray())


def test_round_trip(tmp_path):
    sig = _signals()
    folder = tmp_path / "signals" / "channel_0"
    label = save_signal_set(folder, sig, parameters={"remove_overlap": True})
    assert label == sig["timestamp"]
    back = load_signal_set(folder)
    assert set(back) == set(sig)
    for a, b in zip(sig["raw"], back["raw"]):
        assert b.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    for a, b in zip(sig["demixed_raw"], back["demixed_raw"]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back["mean_frame"], sig["mean_frame"])
    assert [o.tolist() for o in back["overlap"]] == [[0, 0], [9, 10]]
    assert back["signal_channel"] == 0 and back["demix_channel"] == 1
    assert back["timestamp"] == sig["timestamp"]
    _same_roi_dicts(sig["rois"], back["rois"])
    info = signal_set_info(folder, label)
    assert info["parameters"] == {"remove_overlap": True}
    assert info["n_rois"] == 3 and info["num_frames"] == [5, 6]
    # rebuilt ROIs rasterise as before
    for d0, d1 in zip(sig["rois"], back["rois"]):
        np.testing.assert_array_equal(np.array(ROI(**d0)), np.array(ROI(**d1)))
    index = json.loads((folder / "index.json").read_text())
    assert index["format"] == "napari-sima signal sets"
    assert sorted(os.listdir(folder)) == sorted(["index.json", index["sets"][label]["file"]])


def test_labels_most_recent_replace_delete(tmp_path):
    folder = tmp_path / "st"
    save_signal_set(folder, _signals(stamp="2024-01-01-00h00m00s"), "old")
    save_signal_set(folder, _signals(stamp="2025-01-01-00h00m00s", demix=False), "new")
    assert load_signal_set(folder)["timestamp"].startswith("2025")  # most recent
    assert "demixed_raw" not in load_signal_set(folder, "new")
    assert set(load_signal_sets(folder)) == {"old", "new"}
    # replacing a label leaves one file per set
    save_signal_set(folder, _signals(stamp="2026-01-01-00h00m00s", n_seq=1), "old")
    assert len(load_signal_set(folder, "old")["raw"]) == 1
    assert len([f for f in os.listdir(folder) if f.endswith(".npz")]) == 2
    with pytest.raises(KeyError, match="stored sets"):
        load_signal_set(folder, "missing")
    assert delete_signal_set(folder, "old") is True
    assert delete_signal_set(folder, "old") is False
    assert set(load_signal_sets(folder)) == {"new"}
    assert load_signal_sets(tmp_path / "nothing") == {}
    with pytest.raises(KeyError, match="no signal sets"):
        load_signal_set(tmp_path / "nothing")


def test_extra_entries(tmp_path):
    folder = tmp_path / "st"
    sig = _signals()
    sig["dff"] = [r - 1 for r in sig["raw"]]
    sig["fit_summary"] = np.arange(6.0).reshape(2, 3)
    sig["spikes_params"] = [{"gamma": [np.float64(0.9)], "sigma": [0.1]}]
    sig["_masks"] = ["internal, dropped"]
    label = save_signal_set(folder, sig, "x")
    back = load_signal_set(folder, label)
    np.testing.assert_array_equal(back["dff"][1], sig["dff"][1])
    np.testing.assert_array_equal(back["fit_summary"], sig["fit_summary"])
    assert back["spikes_params"] == [{"gamma": [0.9], "sigma": [0.1]}]
    assert "_masks" not in back
    update_signal_set(folder, "x", spikes=[np.ones((3, 5)), np.ones((3, 6))], fit_summary=None)
    back = load_signal_set(folder, "x")
    assert "fit_summary" not in back and back["spikes"][1].shape == (3, 6)
    np.testing.assert_array_equal(back["raw"][0], sig["raw"][0])
    assert signal_set_info(folder, "x")["entries"] == ["dff", "spikes", "spikes_params"]
    _same_roi_dicts(back["rois"], sig["rois"])  # ROIs copied through untouched
    # a list entry replaced by a shorter one (or a single array) leaves no stale parts
    update_signal_set(folder, "x", dff=np.zeros((3, 4)))
    back = load_signal_set(folder, "x")
    assert back["dff"].shape == (3, 4)
    arrays = np.load(next(folder.glob("*.npz")))
    assert not [n for n in arrays.files if n.startswith("x_dff_")]
    with pytest.raises(ValueError, match="identifier"):
        update_signal_set(folder, "x", **{"bad key": 1})
    with pytest.raises(ValueError, match="core entry"):
        update_signal_set(folder, "x", raw=[])
    with pytest.raises(ValueError, match="identifier"):
        save_signal_set(folder, {**sig, "bad key": 1})
    with pytest.raises(TypeError, match="cannot store"):
        save_signal_set(folder, {**sig, "thing": object()})
    assert len([f for f in os.listdir(folder) if f.endswith(".npz")]) == 1


def test_atomic_crash_keeps_old_state(tmp_path, monkeypatch):
    folder = tmp_path / "st"
    save_signal_set(folder, _signals(), "keep")
    before = sorted(os.listdir(folder))
    index_before = (folder / "index.json").read_text()

    def boom(path, obj):
        raise OSError("disk full")

    monkeypatch.setattr(storage, "atomic_write_json", boom)
    with pytest.raises(OSError, match="disk full"):
        save_signal_set(folder, _signals(stamp="2030-01-01-00h00m00s"), "keep")
    with pytest.raises(OSError, match="disk full"):
        save_signal_set(folder, _signals(), "other")
    assert sorted(os.listdir(folder)) == before  # no orphan set file, no temporary file
    assert (folder / "index.json").read_text() == index_before
    monkeypatch.undo()
    assert load_signal_set(folder, "keep")["timestamp"] == "2024-01-02-03h04m05s"

    # a crash while streaming the set file itself leaves nothing behind either
    real = storage.atomic_open

    class Cut:
        """A file that takes 100 bytes, then the process is interrupted."""

        def __init__(self, fh):
            self.fh, self.left = fh, 100

        def write(self, data):
            if len(data) > self.left:
                self.fh.write(bytes(data[: self.left]))
                raise KeyboardInterrupt
            self.left -= len(data)
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

    @contextlib.contextmanager
    def half(path, mode="wb"):
        with real(path, mode) as fh:
            yield Cut(fh)

    monkeypatch.setattr(storage, "atomic_open", half)
    with pytest.raises(KeyboardInterrupt):
        save_signal_set(folder, _signals(), "third")
    monkeypatch.setattr(storage, "atomic_open", real)
    assert sorted(os.listdir(folder)) == before


def test_broken_files_give_clear_errors(tmp_path):
    folder = tmp_path / "st"
    label = save_signal_set(folder, _signals(), "a")
    (folder / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_signal_set(folder, label)
    (folder / "index.json").write_text(json.dumps({"format": "other", "sets": {}}))
    with pytest.raises(ValueError, match="not a napari-sima signal set index"):
        load_signal_sets(folder)
    (folder / "index.json").write_text(
        json.dumps({"format": "napari-sima signal sets", "format_version": 99, "sets": {}})
    )
    with pytest.raises(ValueError, match="format version 99"):
        load_signal_sets(folder)


def test_store_dir_layout(tmp_path):
    assert store_dir(tmp_path / "x.sima", 2) == (tmp_path / "x.sima" / "signals" / "channel_2")


# ------------------------------------------------------------------------------ export
def _read(path, delimiter):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh, delimiter=delimiter))


@pytest.mark.parametrize("fmt,delimiter", [("csv", ","), ("tsv", "\t")])
def test_export_text(tmp_path, fmt, delimiter):
    sig = _signals()
    path = tmp_path / f"out.{fmt}"
    export_signals(sig, path, fmt=fmt)
    text = path.read_bytes().decode()
    assert text.count("\r\n") == 3 + 5 + 6  # csv module line ends, as SIMA's writer
    rows = _read(path, delimiter)
    assert rows[0] == ["sequence", "frame", "1", "", ""]
    assert rows[1] == ["", "label", "a", "b", ""]
    assert rows[2] == ["", "tags", "b,z", "", "w"]
    body = rows[3:]
    assert [(int(r[0]), int(r[1])) for r in body] == [(0, t) for t in range(5)] + [
        (1, t) for t in range(6)
    ]
    # values are Python str(float) of the stored float32 numbers
    v = sig["raw"][0][0, 0]
    assert body[0][2] == str(float(v))
    assert body[2][3] == "nan"
    got = np.array([[float(x) for x in r[2:]] for r in body[:5]]).T.astype(np.float32)
    np.testing.assert_array_equal(got, sig["raw"][0])
    if fmt == "tsv":
        first = text.split("\r\n")[0]
        assert first == "sequence\tframe\t1\t\t"


def test_export_npz(tmp_path):
    sig = _signals()
    path = tmp_path / "out.npz"
    export_signals(sig, path, fmt="npz")
    with np.load(path, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["raw_1"], sig["raw"][1])
        np.testing.assert_array_equal(z["demixed_raw_0"], sig["demixed_raw"][0])
        assert z["roi_labels"].tolist() == ["a", "b", ""]
        assert z["roi_ids"].tolist() == ["1", "", ""]
        assert z["roi_tags"].tolist() == ["b,z", "", "w"]
        assert int(z["num_sequences"]) == 2 and int(z["signal_channel"]) == 0
        assert str(z["timestamp"]) == sig["timestamp"]
        props = json.loads(str(z["roi_geometry_properties"]))
        assert [p["kind"] for p in props["rois"]] == ["polygons", "mask", "mask"]
    with pytest.raises(ValueError, match="unknown signal export format"):
        export_signals(sig, tmp_path / "x.xls", fmt="xls")


def test_dataset_export_signals(tmp_path):
    data = np.ones((6, 1, 5, 5, 2))
    data[:, 0, 1:3, 1:3, 1] = np.arange(1, 7)[:, None, None]
    mask = np.zeros((1, 5, 5), dtype=bool)
    mask[0, 1:3, 1:3] = True
    for savedir in (None, tmp_path / "d.sima"):
        ds = ImagingDataset([Sequence.create("ndarray", data)], savedir, channel_names=["r", "g"])
        roi = ROI(mask=mask, label="cell")
        out = ds.extract([roi], signal_channel="g", label="s", save_summary=False)
        for fmt in ("csv", "tsv", "npz"):
            path = tmp_path / f"e_{savedir is None}.{fmt}"
            ds.export_signals(path, fmt=fmt, channel="g")
            assert path.exists()
        rows = _read(tmp_path / f"e_{savedir is None}.csv", ",")
        vals = [float(r[2]) for r in rows[3:]]
        np.testing.assert_allclose(vals, np.arange(1, 7) / 3.5, rtol=1e-6)
        np.testing.assert_array_equal(np.float32(vals), out["raw"][0][0])
        with pytest.raises(KeyError):
            ds.export_signals(tmp_path / "none.csv", channel="r")
        with pytest.raises(KeyError):
            ds.export_signals(tmp_path / "none.csv", channel="g", signals_label="nope")


def test_package_exports_signal_store():
    assert signal_store.STORE_VERSION == 1


# ------------------------------------------------------------------------------ legacy
def test_legacy_signals_pickle(tmp_path):
    import pickle

    folder = tmp_path / "old.sima"
    folder.mkdir()
    entry = {
        "raw": [np.full((2, 3), 1.5, np.float32)],
        "_masks": ["dropped"],
        "mean_frame": np.ones((1, 6, 8)),
        "overlap": (np.zeros(1, np.int64), np.array([9])),
        "signal_channel": 0,
        "rois": [
            {"mask": None, "polygons": [np.array([[2.0, 1, 0], [5, 1, 0], [5, 3, 0]])],
             "label": "a", "id": None, "tags": {"t"}, "im_shape": (1, 6, 8)},
            {"mask": [np.eye(6, 8, dtype=bool)], "polygons": None, "label": b"b",
             "id": "2", "tags": set(), "im_shape": (1, 6, 8)},
        ],
        "timestamp": "2015-03-04-13h05m22s",
    }
    with open(folder / "signals_0.pkl", "wb") as fh:
        pickle.dump({"old": entry}, fh, protocol=2)
    sets = signal_store.dataset_signal_sets(folder, 0)
    assert list(sets) == ["old"]
    sig = sets["old"]
    assert "_masks" not in sig and sig["rois"][1]["label"] == "b"
    np.testing.assert_array_equal(sig["raw"][0], entry["raw"][0])
    assert sig["rois"][0]["tags"] == {"t"}
    assert signal_store.dataset_signal_set(folder, 0)["timestamp"] == entry["timestamp"]
    export_signals(sig, tmp_path / "old.csv")
    assert _read(tmp_path / "old.csv", ",")[1] == ["", "label", "a", "b"]
    with pytest.raises(KeyError):
        signal_store.dataset_signal_set(folder, 1)
    # a pickle naming anything else is refused
    with open(folder / "signals_1.pkl", "wb") as fh:
        pickle.dump({"x": {"raw": [], "evil": os.system}}, fh, protocol=2)
    from napari_sima.core.legacy import UnsafePickleError

    with pytest.raises(UnsafePickleError):
        signal_store.dataset_signal_sets(folder, 1)


def test_in_memory_signals_move_into_new_folder(tmp_path):
    from napari_sima.core import ROI, ImagingDataset, Sequence

    movie = np.random.default_rng(0).integers(100, 200, (8, 1, 6, 7, 1)).astype(np.uint16)
    ds = ImagingDataset([Sequence.create("ndarray", movie)], None)
    roi = ROI(polygons=[[1, 1], [4, 1], [4, 4], [1, 4]], label="a", im_shape=(1, 6, 7))
    ds.extract([roi], label="mem", save_summary=False)
    ds.save(tmp_path / "saved")
    again = ImagingDataset.load(tmp_path / "saved.sima")
    np.testing.assert_array_equal(again.signals(0)["mem"]["raw"][0], ds.signals(0)["mem"]["raw"][0])
