"""Provenance records kept next to every stored result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_sima.core import ROI, ImagingDataset, Sequence, signal_store
from napari_sima.core.provenance import (
    edit_provenance,
    file_digest,
    format_provenance,
    jsonable,
    make_provenance,
    software_versions,
    stable_hash,
    step_hash,
)
from napari_sima.core.segment import make_strategy


def test_jsonable_and_stable_hash():
    value = {
        "a": np.float32(1.5),
        "b": np.arange(3),
        "c": (1, 2),
        "d": float("nan"),
        "e": Path("/x/y"),
        "f": {3, 1},
        "g": np.bool_(True),
    }
    out = jsonable(value)
    assert out == {"a": 1.5, "b": [0, 1, 2], "c": [1, 2], "d": None, "e": "/x/y",
                   "f": [1, 3], "g": True}
    json.dumps(out, allow_nan=False)
    assert stable_hash({"x": 1, "y": [1, 2]}) == stable_hash({"y": (1, 2), "x": 1})
    assert stable_hash({"x": 1}) != stable_hash({"x": 2})
    assert len(stable_hash(None)) == 64
    # a strategy becomes its parameters; an unknown object its repr (never an error)
    strategy = make_strategy("stica")
    assert jsonable(strategy) == strategy.parameters()
    assert isinstance(jsonable(object()), str)


def test_make_provenance_fields_and_hash():
    rec = make_provenance("extract", {"remove_overlap": True}, {"rois": {"label": "a"}})
    assert set(rec) == {"step", "parameters", "inputs", "versions", "timestamp", "hash"}
    assert rec["hash"] == step_hash("extract", {"remove_overlap": True}, {"rois": {"label": "a"}})
    assert rec["versions"] == software_versions()
    assert "napari-sima" in rec["versions"] and "numpy" in rec["versions"]
    assert rec["timestamp"][10] == "T"
    later = make_provenance("extract", {"remove_overlap": True}, {"rois": {"label": "a"}})
    assert later["hash"] == rec["hash"]  # the time is not part of the identity
    assert make_provenance("extract", {"remove_overlap": False})["hash"] != rec["hash"]
    with pytest.raises(ValueError, match="step name"):
        make_provenance("")
    # records of results saved by hand are all different
    assert edit_provenance()["hash"] != edit_provenance()["hash"]
    text = format_provenance(rec)
    assert "step: extract" in text and "rois" in text and "numpy" in text
    assert "no provenance" in format_provenance(None)


def test_file_digest(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert file_digest(path) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    with pytest.raises(FileNotFoundError):
        file_digest(tmp_path / "none")


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(100, 200, size=(40, 1, 16, 16, 1)).astype(np.uint16)
    frames[:, :, 4:8, 4:8] += 50
    ds = ImagingDataset([Sequence.create("ndarray", frames)], tmp_path / "d.sima")
    mask = np.zeros((16, 16), bool)
    mask[4:8, 4:8] = True
    mask2 = np.zeros((16, 16), bool)
    mask2[10:14, 2:6] = True
    ds.add_ROIs([ROI(mask=mask, id="a"), ROI(mask=mask2, id="b")], "cells")
    return ds


def test_every_stored_result_has_a_record(dataset):
    prov = dataset.provenance()
    cells = prov["rois"]["cells"]
    assert cells["step"] == "add_ROIs" and len(cells["hash"]) == 64

    dataset.extract("cells", label="sig", save_summary=False, remove_overlap=False)
    rec = dataset.provenance()["signals"]["0"]["sig"]["provenance"]
    assert rec["step"] == "extract"
    assert rec["parameters"] == {"signal_channel": "0", "remove_overlap": False,
                                 "demix_channel": None}
    assert rec["inputs"]["rois"] == {"label": "cells", "hash": cells["hash"]}
    assert rec["inputs"]["movies"]

    dataset.infer_spikes(label="sig", n_processes=1)
    derived = dataset.provenance()["signals"]["0"]["sig"]["derived"]
    assert derived["spikes"]["step"] == "infer-spikes"
    assert derived["spikes"]["parameters"]["mode"] == "correct"
    assert "n_processes" not in derived["spikes"]["parameters"]
    assert derived["spikes"]["inputs"]["signals"]["hash"] == rec["hash"]

    # removing an entry removes its record; the set's own record stays
    folder = signal_store.store_dir(dataset.savedir, 0)
    signal_store.update_signal_set(folder, "sig", spikes=None)
    derived = dataset.provenance()["signals"]["0"]["sig"]["derived"]
    assert "spikes" not in derived and "spikes_fits" in derived
    assert dataset.provenance()["signals"]["0"]["sig"]["provenance"] == rec


def test_dff_is_stored_with_its_record(dataset):
    from napari_sima.core.dff import dff, store_dff

    dataset.extract("cells", label="sig", save_summary=False)
    out = store_dff(dataset, 0, "sig", window=10)
    stored = dataset.signals(0)["sig"]
    np.testing.assert_array_equal(stored["dff"][0], out[0])
    np.testing.assert_array_equal(out[0], dff(stored["raw"][0], window=10))
    assert stored["dff_parameters"] == {"baseline": "percentile", "window": 10,
                                        "percentile": 8.0}
    rec = dataset.provenance()["signals"]["0"]["sig"]["derived"]["dff"]
    assert rec["step"] == "dff" and rec["parameters"]["window"] == 10
    with pytest.raises(KeyError, match="nope"):
        store_dff(dataset, 0, "nope")
    with pytest.raises(ValueError, match="baseline"):
        store_dff(dataset, 0, "sig", baseline="magic")


def test_segment_records_the_strategy(tmp_path):
    from napari_sima.core.synthetic import make_calcium_movie

    movie = make_calcium_movie(num_frames=80, frame_shape=(1, 40, 40, 1), num_sequences=1,
                               num_cells=3, seed=3)
    ds = ImagingDataset([Sequence.create("ndarray", np.asarray(movie.sequences[0]))],
                        tmp_path / "s.sima")
    strategy = make_strategy("stica")
    strategy.components = 4
    ds.segment(strategy, label="auto")
    rec = ds.provenance()["rois"]["auto"]
    assert rec["step"] == "segment"
    assert rec["parameters"]["strategy"] == "STICA"
    assert rec["parameters"]["strategy_parameters"]["components"] == 4
    assert [s["step"] for s in rec["parameters"]["strategy_parameters"]["post_processing"]]
    assert rec["inputs"]["movies"]


def test_creation_record_persists_in_dataset_json(tmp_path):
    frames = np.zeros((5, 1, 4, 4, 1), np.uint16)
    ds = ImagingDataset([Sequence.create("ndarray", frames)], None)
    ds.creation_provenance = make_provenance("create", {"x": 1})
    ds.save(tmp_path / "c.sima")
    meta = json.loads((tmp_path / "c.sima" / "dataset.json").read_text())
    assert meta["provenance"]["step"] == "create"
    again = ImagingDataset.load(tmp_path / "c.sima")
    assert again.creation_provenance["parameters"] == {"x": 1}
    again.save()  # saving again keeps it
    assert ImagingDataset.load(tmp_path / "c.sima").provenance()["dataset"]["step"] == "create"
