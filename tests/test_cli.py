"""The ``napari-sima`` command line, run as a subprocess on real files.

One small synthetic dataset (two 100-frame 64 x 64 sequences) is taken through the
whole chain by module-scoped fixtures -- create, import-rois, segment, extract,
infer-spikes -- and the tests check what each step printed and stored.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

COMMANDS = (
    "demo",
    "info",
    "create",
    "import-rois",
    "export-rois",
    "segment",
    "extract",
    "infer-spikes",
    "export",
    "run",
)


def cli(*args: str | os.PathLike, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m napari_sima.cli ARGS`` and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "napari_sima.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=240,
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def summary(proc: subprocess.CompletedProcess) -> dict:
    """The one JSON object of ``--json`` (the whole of stdout)."""
    return json.loads(proc.stdout)


# ---------------------------------------------------------------------------------------
# One dataset taken through the chain
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Two synthetic movies and an ImageJ RoiSet of the true cells."""
    from napari_sima.core.imagej import write_imagej_rois
    from napari_sima.core.roi import ROI
    from napari_sima.core.synthetic import make_calcium_movie

    folder = tmp_path_factory.mktemp("cli")
    movie = make_calcium_movie(
        num_frames=100,
        frame_shape=(1, 64, 64, 1),
        num_sequences=2,
        num_cells=6,
        allow_overlap=False,
        seed=3,
    )
    for i, seq in enumerate(movie.sequences):
        tifffile.imwrite(folder / f"trial{i}.tif", seq[:, 0, :, :, 0])
    rois = [ROI(mask=c.mask, label=f"cell{k}") for k, c in enumerate(movie.cells)]
    write_imagej_rois(folder / "RoiSet.zip", rois)
    return folder


@pytest.fixture(scope="module")
def created(work: Path) -> tuple[Path, subprocess.CompletedProcess]:
    proc = ok(
        cli(
            "create",
            "trial0.tif",
            "trial1.tif",
            "-o",
            "mouse",
            "--channel-names",
            "GCaMP",
            cwd=work,
        )
    )
    return work / "mouse.sima", proc


@pytest.fixture(scope="module")
def imported(created) -> subprocess.CompletedProcess:
    ds, _ = created
    return ok(cli("import-rois", ds, ds.parent / "RoiSet.zip", "--label", "manual", "--json"))


@pytest.fixture(scope="module")
def segmented(created) -> subprocess.CompletedProcess:
    ds, _ = created
    return ok(
        cli(
            "segment",
            ds,
            "--strategy",
            "stica",
            "--param",
            "components=5",
            "--label",
            "auto",
            "--json",
        )
    )


@pytest.fixture(scope="module")
def extracted(created, imported) -> subprocess.CompletedProcess:
    ds, _ = created
    # -q given after the subcommand
    return ok(
        cli("extract", ds, "--rois", "manual", "--label", "signals", "--channel", "GCaMP", "-q")
    )


@pytest.fixture(scope="module")
def spikes(created, extracted) -> subprocess.CompletedProcess:
    ds, _ = created
    return ok(cli("--json", "infer-spikes", ds, "--signals", "signals", "--mode", "robust"))


def test_create_makes_one_sequence_per_movie(created):
    from napari_sima.core import ImagingDataset

    path, proc = created
    assert "created" in proc.stdout and str(path) in proc.stdout
    ds = ImagingDataset.load(path)
    assert ds.num_sequences == 2
    assert ds.num_frames == 200
    assert ds.frame_shape == (1, 64, 64, 1)
    assert ds.channel_names == ["GCaMP"]
    assert ds.creation_provenance["step"] == "create"


def test_create_refuses_to_overwrite_unless_forced(created, tmp_path):
    path, _ = created
    before = (path / "dataset.json").read_bytes()
    proc = cli("create", path.parent / "trial0.tif", "-o", path)
    assert proc.returncode == 1
    assert "already holds a dataset" in proc.stderr and "--force" in proc.stderr
    assert (path / "dataset.json").read_bytes() == before
    # --force replaces a dataset (a copy elsewhere, so the shared one stays intact)
    other = tmp_path / "copy.sima"
    shutil.copytree(path, other)
    ok(cli("create", path.parent / "trial0.tif", "-o", other, "--force"))
    from napari_sima.core import ImagingDataset

    replaced = ImagingDataset.load(other)
    assert replaced.num_sequences == 1 and replaced.ROIs == {}


def test_import_and_export_rois_round_trip(created, imported, tmp_path):
    path, _ = created
    out = summary(imported)
    assert out["ok"] and out["exit_code"] == 0
    assert out["command"] == "import-rois"
    assert out["outputs"]["rois"] == "manual"
    assert out["counts"]["rois"] == 6
    zip_path = tmp_path / "out" / "RoiSet.zip"
    zip_path.parent.mkdir()
    proc = ok(cli("export-rois", path, "--label", "manual", "-o", zip_path))
    assert "6 ROIs" in proc.stdout
    from napari_sima.core.imagej import read_imagej_rois

    back = read_imagej_rois(zip_path)
    assert sorted(r.label for r in back) == [f"cell{k}" for k in range(6)]
    # the same label again is refused without --force
    proc = cli("import-rois", path, zip_path, "--label", "manual")
    assert proc.returncode == 1 and "'manual' already exists" in proc.stderr


def test_segment_stores_rois_with_provenance(created, segmented):
    from napari_sima.core import ImagingDataset

    path, _ = created
    out = summary(segmented)
    assert out["ok"] and out["outputs"]["rois"] == "auto"
    n = out["counts"]["rois"]
    assert n >= 1
    assert out["strategy"]["components"] == 5
    assert "segment" in out["timings"]
    ds = ImagingDataset.load(path)
    assert len(ds.ROIs["auto"]) == n
    record = ds.provenance()["rois"]["auto"]
    assert record["step"] == "segment"
    # the progress bar went to stderr, nothing but the JSON object to stdout
    assert "segment" in segmented.stderr


def test_extract_and_infer_spikes(created, extracted, spikes):
    from napari_sima.core import ImagingDataset

    path, _ = created
    assert extracted.stdout == "" and extracted.stderr == ""  # -q
    out = summary(spikes)
    assert out["ok"] and out["outputs"] == {"signals": "signals", "channel": "GCaMP"}
    assert out["counts"]["rois"] == 6 and out["counts"]["sequences"] == 2
    ds = ImagingDataset.load(path)
    sig = ds.signals("GCaMP")["signals"]
    assert [r.shape for r in sig["raw"]] == [(6, 100), (6, 100)]
    assert [s.shape for s in sig["spikes"]] == [(6, 100), (6, 100)]
    derived = ds.provenance()["signals"]["GCaMP"]["signals"]["derived"]
    assert derived["spikes"]["step"] == "infer-spikes"
    assert derived["spikes"]["parameters"]["mode"] == "robust"


def test_info_text_and_json(created, imported, segmented, spikes):
    path, _ = created
    text = ok(cli("info", path)).stdout
    assert "2 sequences, 200 frames" in text
    assert "'GCaMP'" in text
    assert "'manual': 6 ROIs" in text
    assert "step: import-rois" in text and "step: segment" in text
    assert "step: create" in text and "step: extract" in text
    assert "spikes, spikes_fits, spikes_params:" in text and "step: infer-spikes" in text
    assert "entries: raw, spikes, spikes_fits, spikes_params" in text

    out = summary(ok(cli("info", path, "--json")))
    info = out["info"]
    assert out["dataset"] == str(path) and out["ok"]
    assert out["counts"]["rois"]["manual"] == 6
    assert out["counts"]["signal_sets"] == 1
    assert [s["shape"] for s in info["sequences"]] == [[100, 1, 64, 64, 1]] * 2
    assert info["provenance"]["step"] == "create"
    assert info["rois"]["manual"]["provenance"]["step"] == "import-rois"
    entry = info["signals"]["GCaMP"]["signals"]
    assert entry["n_rois"] == 6 and entry["num_frames"] == [100, 100]
    assert entry["provenance"]["inputs"]["rois"]["label"] == "manual"
    assert entry["derived"]["spikes"]["step"] == "infer-spikes"


def test_export_signals_averages_and_nwb(created, spikes, tmp_path):
    from napari_sima.core import ImagingDataset

    path, _ = created
    csv_path, tif_path, nwb_path = tmp_path / "s.csv", tmp_path / "mean.tif", tmp_path / "s.nwb"
    out = summary(
        ok(
            cli(
                "export",
                path,
                "--signals",
                csv_path,
                "--averages",
                tif_path,
                "--nwb",
                nwb_path,
                "--signals-label",
                "signals",
                "--json",
            )
        )
    )
    assert out["outputs"]["signals"] == str(csv_path)
    assert out["outputs"]["averages"] == [str(tif_path)]
    assert out["outputs"]["nwb"] == str(nwb_path) and nwb_path.stat().st_size > 0
    raw = ImagingDataset.load(path).signals(0)["signals"]["raw"]
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[1][1] == "label" and sorted(rows[1][2:]) == [f"cell{k}" for k in range(6)]
    body = rows[3:]
    assert len(body) == 200
    assert [(int(r[0]), int(r[1])) for r in body[98:102]] == [(0, 98), (0, 99), (1, 0), (1, 1)]
    values = np.array([[float(v) for v in r[2:]] for r in body], dtype=np.float32)
    np.testing.assert_array_equal(values, np.concatenate(raw, axis=1).T)
    mean = tifffile.imread(tif_path)
    assert mean.shape[-2:] == (64, 64) and mean.dtype == np.uint16 and mean.max() == 65535


def test_export_nwb_without_pynwb_is_a_clear_error(created, spikes, tmp_path):
    path, _ = created
    code = (
        "import sys; sys.modules['pynwb'] = None\n"  # make `import pynwb` fail
        "from napari_sima.cli import main\n"
        f"sys.exit(main(['export', {str(path)!r}, '--nwb', {str(tmp_path / 'x.nwb')!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("napari-sima: error:") and "napari-sima[nwb]" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.nwb").exists()


# ---------------------------------------------------------------------------------------
# Usage, errors, output modes
# ---------------------------------------------------------------------------------------
def test_cli_module_imports_no_gui_and_no_core():
    code = (
        "import napari_sima.cli, sys; "
        "assert 'napari' not in sys.modules and 'qtpy' not in sys.modules, 'GUI imported'; "
        "assert 'napari_sima.core' not in sys.modules, 'core imported at start'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_help_of_every_command_shows_defaults():
    main = ok(cli("--help")).stdout
    for name in COMMANDS:
        assert name in main
    # whitespace normalised: argparse wraps to the terminal width
    texts = {name: " ".join(ok(cli(name, "--help")).stdout.split()) for name in COMMANDS}
    assert "--no-block" in texts["demo"]
    assert "(default: 0)" in texts["segment"]  # --channel, --seed
    for preset in ("stica (default)", "normcuts", "ca1pc", "stica-sima"):
        assert preset in texts["segment"]
    assert "(default: correct)" in texts["infer-spikes"]
    assert "(default: oasis)" in texts["infer-spikes"]
    assert "(default: 1)" in texts["extract"]  # --n-processes
    assert "(default: average)" in texts["export"]
    assert "--local-cluster" in texts["run"] and "--scheduler" in texts["run"]
    for text in texts.values():
        assert "--json" in text and "--quiet" in text


def test_list_strategies_json():
    out = summary(ok(cli("segment", "--list-strategies", "--json")))
    assert out["strategies"]["stica"]["default"] is True
    assert "components" in out["strategies"]["stica"]["parameters"]


def test_bad_usage_exits_2(created):
    path, _ = created
    cases = [
        (("extract", path, "--frobnicate"), ["--frobnicate"]),
        (("export", path), ["nothing to export"]),
        (("segment", path, "--param", "bogus=1", "--label", "never"), ["'bogus'", "components"]),
        (("export", path, "--signals", "out.xls"), [".xls", ".csv"]),
        (("segment", path, "--param", "components"), ["KEY=VALUE", "'components'"]),
    ]
    for args, expected in cases:
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("usage: napari-sima"), proc.stderr
        assert "Traceback" not in proc.stderr
        for text in expected:
            assert text in proc.stderr, (args, proc.stderr)
    assert "never" not in stored_roi_labels(path)
    # --json still gives one JSON object for a usage error
    proc = cli("--json", "extract", path, "--n-processes", "0")
    out = summary(proc)
    assert out["exit_code"] == 2 and not out["ok"] and "--n-processes" in out["error"]


def stored_roi_labels(path: Path) -> list[str]:
    from napari_sima.core import ImagingDataset

    return list(ImagingDataset.load(path).ROIs)


def test_missing_dataset_exit_1_names_it_and_debug_shows_traceback(tmp_path):
    missing = tmp_path / "nowhere.sima"
    proc = cli("info", missing)
    assert proc.returncode == 1
    assert proc.stderr.startswith("napari-sima: error:") and str(missing) in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = cli("segment", missing, "--debug")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and str(missing) in proc.stderr
    proc = cli("create", tmp_path / "nope.tif", "-o", tmp_path / "x")
    assert proc.returncode == 1 and "nope.tif" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.sima").exists()


def test_key_errors_print_without_quotes(created):
    path, _ = created
    proc = cli("export", path, "--signals", "x.csv", "--signals-label", "unknown")
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("napari-sima: error: no ") and "'unknown'" in line
    assert not line.startswith('napari-sima: error: "')


def test_quiet_prints_nothing_on_stderr(created, imported):
    path, _ = created
    proc = ok(cli("-q", "extract", path, "--rois", "manual", "--label", "quiet", "--no-summary"))
    assert proc.stderr == "" and proc.stdout == ""
