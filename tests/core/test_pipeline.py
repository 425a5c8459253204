"""Pipelines: file validation, running, skipping unchanged steps, provenance, Dask batches."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_sima.core import ROI, ImagingDataset, signal_store
from napari_sima.core.imagej import write_imagej_rois
from napari_sima.core.pipeline import (
    PipelineError,
    load_pipeline,
    parse_pipeline,
    run_batch,
    run_pipeline,
)
from napari_sima.core.synthetic import make_calcium_movie

PIPELINE = """
name: test-analysis
steps:
  - create: {channel_names: [GCaMP]}
  - import-rois: {file: "{stem}_RoiSet.zip", label: cells}
  - extract: {label: signals}
  - dff: {window: 50}
  - infer-spikes: {mode: correct}
  - export: {signals: "{name}_signals.csv", averages: "{name}_mean.tif"}
"""

CLUSTER_PIPELINE = """
name: cluster-analysis
steps:
  - create: {channel_names: [GCaMP]}
  - import-rois: {file: "{stem}_RoiSet.zip", label: cells}
  - segment: {strategy: stica, params: {components: 8}, label: found}
  - extract: {rois: found, label: found_signals}
  - extract: {rois: cells, label: signals, split_frames: true}
  - dff: {window: 50}
  - infer-spikes: {split_rois: true}
  - export: {signals: "{name}_signals.csv"}
"""


def write_session(folder: Path, name: str, seed: int, frames: int = 150) -> Path:
    """A synthetic one-channel movie ``name.tif`` and its true ROIs ``name_RoiSet.zip``."""
    movie = make_calcium_movie(
        num_frames=frames, frame_shape=(1, 64, 64, 1), num_sequences=1, num_cells=6, seed=seed
    )
    path = folder / f"{name}.tif"
    tifffile.imwrite(path, np.asarray(movie.sequences[0])[:, 0, :, :, 0])
    rois = [ROI(mask=m, label=f"cell{i}", id=f"c{i}") for i, m in enumerate(movie.true_masks())]
    write_imagej_rois(folder / f"{name}_RoiSet.zip", rois)
    return path


def write_pipeline(folder: Path, text: str = PIPELINE, name: str = "p.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def stored_results(dataset: str | Path) -> dict[str, np.ndarray]:
    """Every stored number of a dataset: ROI masks, signals, ΔF/F, spikes."""
    ds = ImagingDataset.load(dataset)
    out: dict[str, np.ndarray] = {}
    for label, rois in ds.ROIs.items():
        for i, roi in enumerate(rois):
            out[f"rois/{label}/{i}"] = np.stack([m.toarray() for m in roi.mask])
    for label, sig in ds.signals(0).items():
        for key in ("raw", "dff", "spikes", "spikes_fits"):
            for q, arr in enumerate(sig.get(key) or []):
                out[f"signals/{label}/{key}/{q}"] = np.asarray(arr)
    return out


def assert_same_results(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ---------------------------------------------------------------------------------------
# Pipeline files
# ---------------------------------------------------------------------------------------
def test_load_pipeline_fills_defaults_and_round_trips(tmp_path):
    p = load_pipeline(write_pipeline(tmp_path))
    assert p.name == "test-analysis"
    assert [s.name for s in p.steps] == [
        "create", "import-rois", "extract", "dff", "infer-spikes", "export"
    ]
    assert p.creates
    assert p.steps[2].params["remove_overlap"] is True
    assert p.steps[3].params["window"] == 50
    assert parse_pipeline(p.to_dict()).to_dict() == p.to_dict()
    # the `- step: NAME` form and a bare list are accepted too
    q = parse_pipeline([{"step": "extract", "label": "x"}, "infer-spikes"])
    assert q.steps[0].params["label"] == "x" and q.steps[1].name == "infer-spikes"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("steps: [{extrac: {}}]", "unknown step 'extrac'"),
        ("steps: [{extract: {lable: x}}]", "unknown parameter 'lable'"),
        ("steps: [{extract: {remove_overlap: 3}}]", "remove_overlap must be true/false"),
        ("steps: [{dff: {window: 'big'}}]", "window must be an integer"),
        ("steps: [{import-rois: {}}]", "'file' is required"),
        ("steps: [{extract: {}}, {create: {}}]", "create can only be the first step"),
        ("steps: [{export: {}}]", "at least one of 'signals', 'averages', 'nwb'"),
        ("steps: [{segment: {strategy: magic}}]", "unknown strategy 'magic'"),
        ("steps: []", "'steps' must be a non-empty list"),
        ("version: 99\nsteps: [extract]", "newer than this napari-sima reads"),
        ("stepz: [extract]", "unknown top-level key"),
        ("steps: [extract\n  - : :", "not valid YAML"),
        # the safe loader refuses Python objects: a pipeline file cannot run code
        ("steps: !!python/object/apply:os.system ['touch CANARY']", "not valid YAML"),
    ],
)
def test_bad_pipeline_files_are_refused_with_the_reason(tmp_path, text, message):
    path = write_pipeline(tmp_path, text, "bad.yaml")
    with pytest.raises(PipelineError, match="bad.yaml") as info:
        load_pipeline(path)
    assert message in str(info.value)
    assert not (tmp_path / "CANARY").exists()


def test_alias_bombs_and_deep_nesting_are_refused(tmp_path):
    lines = ['a0: &a0 [x, x, x, x, x, x, x, x, x, x]']
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    lines.append("steps: [{extract: {label: *a8}}]")
    path = write_pipeline(tmp_path, "\n".join(lines), "bomb.yaml")
    with pytest.raises(PipelineError, match="more than 100000 values"):
        load_pipeline(path)
    deep = "steps: [{segment: {params: {p: " + "[" * 100 + "]" * 100 + "}}}]"
    with pytest.raises(PipelineError, match="nested more than"):
        load_pipeline(write_pipeline(tmp_path, deep, "deep.yaml"))


def test_missing_pipeline_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_pipeline(tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------------------
# One dataset: run, rerun, partial rerun, provenance
# ---------------------------------------------------------------------------------------
def test_run_then_rerun_skips_everything_and_records_provenance(tmp_path):
    movie = write_session(tmp_path, "s1", seed=1)
    pipeline = load_pipeline(write_pipeline(tmp_path))
    report = run_pipeline(pipeline, movie)
    assert report.ok, report.error
    assert [s.status for s in report.steps] == ["done"] * 6
    assert report.dataset == str(tmp_path / "s1.sima")
    ds = ImagingDataset.load(report.dataset)
    assert ds.channel_names == ["GCaMP"]
    assert len(ds.ROIs["cells"]) == 6
    sig = ds.signals(0)["signals"]
    assert {"dff", "spikes"} <= set(sig)
    assert (tmp_path / "s1_signals.csv").is_file() and (tmp_path / "s1_mean.tif").is_file()

    prov = ds.provenance()
    assert prov["dataset"]["step"] == "create"
    rois_rec = prov["rois"]["cells"]
    assert rois_rec["step"] == "import-rois"
    assert rois_rec["inputs"]["file"]["name"] == "s1_RoiSet.zip"
    sig_rec = prov["signals"]["GCaMP"]["signals"]
    assert sig_rec["provenance"]["step"] == "extract"
    assert sig_rec["provenance"]["inputs"]["rois"] == {"label": "cells", "hash": rois_rec["hash"]}
    assert sig_rec["derived"]["dff"]["step"] == "dff"
    assert sig_rec["derived"]["dff"]["parameters"]["window"] == 50
    assert sig_rec["derived"]["spikes"]["step"] == "infer-spikes"
    assert sig_rec["derived"]["spikes"]["inputs"]["signals"]["hash"] == (
        sig_rec["provenance"]["hash"]
    )
    for rec in (prov["dataset"], rois_rec, sig_rec["provenance"]):
        assert "numpy" in rec["versions"] and "napari-sima" in rec["versions"]
        assert rec["timestamp"][:4].isdigit()
    side = json.loads((tmp_path / "s1_signals.csv.provenance.json").read_text())
    assert side["step"] == "export"

    before = stored_results(report.dataset)
    index_path = Path(report.dataset) / "signals" / "channel_0" / "index.json"
    index_before = index_path.read_bytes()
    again = run_pipeline(pipeline, movie)
    assert again.ok
    assert [s.status for s in again.steps] == ["skipped"] * 6
    assert index_path.read_bytes() == index_before
    assert_same_results(before, stored_results(report.dataset))


def test_changed_parameters_redo_that_step_and_everything_after_it(tmp_path):
    movie = write_session(tmp_path, "s1", seed=2)
    run_pipeline(load_pipeline(write_pipeline(tmp_path)), movie)
    changed = PIPELINE.replace("dff: {window: 50}", "dff: {window: 40}")
    report = run_pipeline(load_pipeline(write_pipeline(tmp_path, changed, "p2.yaml")), movie)
    assert [s.status for s in report.steps] == [
        "skipped", "skipped", "skipped", "done", "skipped", "done"
    ]  # spikes come from the raw signals, not from ΔF/F; the export includes ΔF/F's hash
    ds = ImagingDataset.load(report.dataset)
    assert ds.provenance()["signals"]["GCaMP"]["signals"]["derived"]["dff"]["parameters"][
        "window"
    ] == 40

    # the import step restores the set its file describes; signals made from that
    # very set stay valid (same hashes), so nothing else is redone
    rois = ds.ROIs["cells"]
    ds.add_ROIs(list(rois)[:4], "cells")
    again = run_pipeline(load_pipeline(tmp_path / "p2.yaml"), movie)
    assert [s.status for s in again.steps] == [
        "skipped", "done", "skipped", "skipped", "skipped", "skipped"
    ]
    # ROIs edited by hand, pipeline on the dataset folder: extraction and everything
    # computed from it is redone
    ds.add_ROIs(list(rois)[:4], "cells")
    rest = "steps:\n  - extract: {rois: cells, label: signals}\n  - dff: {window: 40}\n"
    redo = run_pipeline(load_pipeline(write_pipeline(tmp_path, rest, "p3.yaml")), ds.savedir)
    assert [s.status for s in redo.steps] == ["done", "done"]
    signals = ImagingDataset.load(report.dataset).signals(0)["signals"]
    assert signals["raw"][0].shape[0] == 4 and signals["dff"][0].shape[0] == 4
    assert "spikes" not in signals  # computed from the old signals: gone with them


def test_results_made_outside_a_pipeline_are_recognised(tmp_path):
    """A set extracted from a script with the same parameters is not extracted again."""
    movie = write_session(tmp_path, "s1", seed=3)
    steps = PIPELINE.split("  - extract")[0]
    run_pipeline(load_pipeline(write_pipeline(tmp_path, steps, "a.yaml")), movie)
    ds = ImagingDataset.load(tmp_path / "s1.sima")
    ds.extract("cells", label="signals", save_summary=False)
    ds.infer_spikes(label="signals")
    report = run_pipeline(load_pipeline(write_pipeline(tmp_path)), movie)
    assert [s.status for s in report.steps][:5] == [
        "skipped", "skipped", "skipped", "done", "skipped"
    ]


def test_a_failing_dataset_is_reported_and_the_others_finish(tmp_path):
    good = write_session(tmp_path, "good", seed=4)
    bad = write_session(tmp_path, "bad", seed=5)
    (tmp_path / "bad_RoiSet.zip").write_bytes(b"not a zip file at all")
    missing = tmp_path / "missing.tif"
    events = []
    report = run_batch(
        load_pipeline(write_pipeline(tmp_path)), [bad, missing, good], progress=events.append
    )
    assert not report.ok
    by_target = {Path(d.target).name: d for d in report.datasets}
    assert by_target["good.tif"].ok
    assert not by_target["bad.tif"].ok
    assert "step 2:import-rois" in by_target["bad.tif"].error
    assert "bad_RoiSet.zip" in by_target["bad.tif"].error
    assert [s.status for s in by_target["bad.tif"].steps] == [
        "done", "failed", "not-run", "not-run", "not-run", "not-run"
    ]
    assert "missing.tif" in by_target["missing.tif"].error
    assert [d.target for d in report.datasets] == [str(bad), str(missing), str(good)]
    assert [e["index"] for e in events if e["kind"] == "dataset"] == [0, 1, 2]
    assert any(e["kind"] == "step" for e in events)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["n_failed"] == 2 and data["ok"] is False
    assert "1/3 datasets ok" in report.summary()


def test_pipeline_on_existing_dataset_folders(tmp_path):
    movie = write_session(tmp_path, "s1", seed=6)
    first = PIPELINE.split("  - extract")[0]
    run_pipeline(load_pipeline(write_pipeline(tmp_path, first, "a.yaml")), movie)
    rest = "steps:\n  - extract: {label: signals}\n  - infer-spikes: {}\n"
    report = run_pipeline(load_pipeline(write_pipeline(tmp_path, rest, "b.yaml")),
                          tmp_path / "s1.sima")
    assert report.ok and [s.status for s in report.steps] == ["done", "done"]
    not_a_dataset = run_pipeline(load_pipeline(tmp_path / "b.yaml"), movie)
    assert not not_a_dataset.ok and "not a dataset folder" in not_a_dataset.error


def test_create_refuses_to_clobber_a_dataset_it_did_not_make(tmp_path):
    movie = write_session(tmp_path, "s1", seed=7)
    pipeline = load_pipeline(write_pipeline(tmp_path))
    assert run_pipeline(pipeline, movie).ok
    other = PIPELINE.replace("channel_names: [GCaMP]", "channel_names: [red]")
    report = run_pipeline(load_pipeline(write_pipeline(tmp_path, other, "o.yaml")), movie)
    assert not report.ok
    assert "already holds a dataset" in report.error
    assert ImagingDataset.load(tmp_path / "s1.sima").channel_names == ["GCaMP"]


def test_batch_argument_errors(tmp_path):
    pipeline = load_pipeline(write_pipeline(tmp_path))
    with pytest.raises(ValueError, match="no datasets"):
        run_batch(pipeline, [])
    with pytest.raises(ValueError, match="more than once"):
        run_batch(pipeline, [tmp_path / "a.tif", tmp_path / "a.tif"])
    with pytest.raises(ValueError, match="at most one"):
        run_batch(pipeline, [tmp_path / "a.tif"], scheduler="tcp://127.0.0.1:1", n_workers=2)
    with pytest.raises(ValueError, match="n_workers"):
        run_batch(pipeline, [tmp_path / "a.tif"], n_workers=0)


# ---------------------------------------------------------------------------------------
# Dask: a real LocalCluster of 2 worker processes on loopback
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster_client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster, distributed.Client(cluster) as client:
        yield client


def _sessions(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_session(folder, f"s{i}", seed=10 + i) for i in range(n)]


def test_cluster_batch_gives_the_serial_results(tmp_path, cluster_client):
    serial_dir, cluster_dir = tmp_path / "serial", tmp_path / "cluster"
    text = CLUSTER_PIPELINE
    serial_movies = _sessions(serial_dir, 4)
    cluster_movies = _sessions(cluster_dir, 4)
    pipeline = load_pipeline(write_pipeline(tmp_path, text))
    serial = run_batch(pipeline, serial_movies)
    assert serial.ok, serial.summary()
    parallel = run_batch(pipeline, cluster_movies, client=cluster_client)
    assert parallel.ok, parallel.summary()
    assert {d.worker for d in parallel.datasets} <= set(
        cluster_client.scheduler_info()["workers"]
    )
    for a, b in zip(serial.datasets, parallel.datasets, strict=True):
        assert Path(a.dataset).name == Path(b.dataset).name
        assert_same_results(stored_results(a.dataset), stored_results(b.dataset))
        assert (Path(a.dataset).parent / f"{Path(a.dataset).stem}_signals.csv").read_bytes() == (
            Path(b.dataset).parent / f"{Path(b.dataset).stem}_signals.csv"
        ).read_bytes()


def test_killed_worker_loses_nothing_and_the_rerun_completes(tmp_path, cluster_client):
    movies = _sessions(tmp_path / "k", 6)
    pipeline = load_pipeline(write_pipeline(tmp_path))
    pids = cluster_client.run(os.getpid)
    killed: dict[str, object] = {}
    lock = threading.Lock()

    def on_event(event):
        # when the first dataset is finished, kill a worker while the others run
        if event["kind"] == "dataset" and not killed:
            with lock:
                first = event["report"]
                killed["first"] = first.dataset
                killed["snapshot"] = {
                    p: p.read_bytes() for p in Path(first.dataset).rglob("*") if p.is_file()
                }
                victim = sorted(a for a in pids if a != first.worker)[0]
                os.kill(pids[victim], signal.SIGKILL)
                killed["victim"] = victim

    report = run_batch(pipeline, movies, client=cluster_client, progress=on_event)
    assert "victim" in killed
    # datasets are never lost: the ones Dask could not finish are reported, not raised
    assert len(report.datasets) == 6
    # nothing saved before the kill was lost or rewritten
    for path, data in killed["snapshot"].items():
        assert path.read_bytes() == data, path
    rerun = run_batch(pipeline, movies, client=cluster_client)
    assert rerun.ok, rerun.summary()
    first = next(d for d in rerun.datasets if d.dataset == killed["first"])
    assert [s.status for s in first.steps] == ["skipped"] * 6
    for d in rerun.datasets:
        ds = ImagingDataset.load(d.dataset)
        assert len(ds.ROIs["cells"]) == 6
        assert "spikes" in ds.signals(0)["signals"]
    # and the results equal a clean serial run of the same movies
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    for m in movies[:2]:
        shutil.copy(m, clean_dir / m.name)
        shutil.copy(m.with_name(m.stem + "_RoiSet.zip"), clean_dir / (m.stem + "_RoiSet.zip"))
    clean = run_batch(pipeline, [clean_dir / m.name for m in movies[:2]])
    for c, d in zip(clean.datasets, rerun.datasets[:2], strict=True):
        assert_same_results(stored_results(c.dataset), stored_results(d.dataset))


def test_signal_store_index_lists_provenance_for_each_set(tmp_path):
    movie = write_session(tmp_path, "s1", seed=8)
    report = run_pipeline(load_pipeline(write_pipeline(tmp_path)), movie)
    index = json.loads(
        (Path(report.dataset) / "signals" / "channel_0" / signal_store.INDEX_FILE).read_text()
    )
    entry = index["sets"]["signals"]
    assert entry["provenance"]["step"] == "extract"
    assert set(entry["derived"]) >= {"dff", "spikes", "spikes_fits", "spikes_params"}


def test_the_documented_example_pipeline_loads():
    example = Path(__file__).resolve().parents[2] / "docs" / "examples" / "analysis.yaml"
    pipeline = load_pipeline(example)
    assert pipeline.name == "example-analysis"
    assert [s.name for s in pipeline.steps] == [
        "create", "segment", "extract", "dff", "infer-spikes", "export"
    ]


def test_transform_import_from_a_reference_session(tmp_path):
    """Day 2 is day 1 shifted: the reference's ROIs land shifted, and a rerun skips."""
    movie = make_calcium_movie(
        num_frames=120, frame_shape=(1, 128, 128, 1), num_sequences=1, num_cells=20, seed=21
    )
    frames = np.asarray(movie.sequences[0])[:, 0, :, :, 0]
    tifffile.imwrite(tmp_path / "day1.tif", frames)
    tifffile.imwrite(tmp_path / "day2.tif", np.roll(frames, (4, -6), axis=(1, 2)))
    rois = [ROI(mask=m, id=f"c{i}") for i, m in enumerate(movie.true_masks())]
    write_imagej_rois(tmp_path / "day1_RoiSet.zip", rois)
    first = "steps:\n  - create: {}\n  - import-rois: {file: day1_RoiSet.zip, label: cells}\n"
    assert run_pipeline(load_pipeline(write_pipeline(tmp_path, first, "a.yaml")),
                        tmp_path / "day1.tif").ok
    text = (
        "steps:\n  - create: {}\n"
        "  - transform-import: {reference: day1.sima, source_label: cells, method: euclidean}\n"
        "  - extract: {}\n"
    )
    pipeline = load_pipeline(write_pipeline(tmp_path, text, "b.yaml"))
    report = run_pipeline(pipeline, tmp_path / "day2.tif")
    assert report.ok, report.error
    day2 = ImagingDataset.load(report.dataset)
    moved = day2.ROIs["cells"]
    assert len(moved) == len(rois)
    for src, dst in zip(rois, moved, strict=True):
        assert dst.id == src.id
        expected = np.roll(src.mask[0].toarray(), (4, -6), axis=(0, 1))
        overlap = (expected & (dst.mask[0].toarray() > 0)).sum() / expected.sum()
        assert overlap > 0.8, (src.id, overlap)
    rec = day2.provenance()["rois"]["cells"]
    assert rec["step"] == "transform-import" and rec["parameters"]["method"] == "euclidean"
    assert rec["inputs"]["reference_rois"]["label"] == "cells"
    assert len(rec["parameters"]["transforms"]) == 1
    again = run_pipeline(pipeline, tmp_path / "day2.tif")
    assert [s.status for s in again.steps] == ["skipped"] * 3
