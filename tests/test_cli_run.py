"""``napari-sima run PIPELINE.yaml DATASET...`` as a subprocess on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tifffile

PIPELINE = """\
version: 1
name: cli-test
steps:
  - create: {channel_names: [GCaMP]}
  - segment: {strategy: stica, params: {components: 5}, label: auto}
  - extract: {label: signals}
  - export: {signals: "{name}_signals.csv"}
"""


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "napari_sima.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    from napari_sima.core.synthetic import make_calcium_movie

    folder = tmp_path_factory.mktemp("run")
    movie = make_calcium_movie(
        num_frames=60, frame_shape=(1, 64, 64, 1), num_sequences=1, num_cells=5, seed=5
    )
    tifffile.imwrite(folder / "s1.tif", movie.sequences[0][:, 0, :, :, 0])
    (folder / "pipeline.yaml").write_text(PIPELINE)
    return folder


def test_run_reports_each_dataset_and_exit_1_when_one_fails(work):
    missing = work / "missing.tif"
    proc = cli("run", work / "pipeline.yaml", work / "s1.tif", missing, "--json")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "missing.tif" in proc.stderr  # the failure is named on stderr
    out = json.loads(proc.stdout)
    assert out["command"] == "run" and not out["ok"] and out["exit_code"] == 1
    assert out["counts"] == {"datasets": 2, "ok": 1, "failed": 1}
    good, bad = out["report"]["datasets"]
    assert good["ok"] and good["dataset"] == str(work / "s1.sima")
    assert [s["status"] for s in good["steps"]] == ["done"] * 4
    assert not bad["ok"] and "missing.tif" in bad["error"]
    assert (work / "s1_signals.csv").is_file()
    assert out["outputs"][str(work / "s1.tif")] == str(work / "s1.sima")

    # a rerun finds every result up to date; text summary on stdout, exit 0
    proc = cli("run", work / "pipeline.yaml", work / "s1.tif")
    assert proc.returncode == 0, proc.stderr
    assert "4 skipped" in proc.stdout and "1/1 datasets ok" in proc.stdout


def test_run_usage_errors_exit_2(work, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nsteps:\n  - segment: {strategy: stica, bogus: 3}\n")
    proc = cli("run", bad, work / "s1.tif")
    assert proc.returncode == 2
    assert "bogus" in proc.stderr and "bad.yaml" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli(
        "run",
        work / "pipeline.yaml",
        work / "s1.tif",
        "--scheduler",
        "tcp://x:1",
        "--local-cluster",
        "2",
    )
    assert proc.returncode == 2 and "not allowed" in proc.stderr
    proc = cli("run", work / "pipeline.yaml")
    assert proc.returncode == 2 and "DATASET" in proc.stderr
    proc = cli("run", work / "pipeline.yaml", work / "s1.tif", work / "s1.tif")
    assert proc.returncode == 2 and "more than once" in proc.stderr
    proc = cli("run", tmp_path / "absent.yaml", work / "s1.tif")
    assert proc.returncode == 1 and "absent.yaml" in proc.stderr


def test_run_on_a_local_cluster(work, tmp_path):
    import shutil

    for name in ("c1.tif", "c2.tif"):
        shutil.copy(work / "s1.tif", tmp_path / name)
    proc = cli(
        "run", work / "pipeline.yaml", tmp_path / "c1.tif", tmp_path / "c2.tif",
        "--local-cluster", "2", "--json", "-q",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] and out["report"]["mode"] == "local-cluster (2 workers)"
    assert all(d["worker"].startswith("tcp://127.0.0.1") for d in out["report"]["datasets"])
    assert (tmp_path / "c1_signals.csv").read_bytes() == (tmp_path / "c2_signals.csv").read_bytes()
