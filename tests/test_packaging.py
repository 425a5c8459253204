"""Packaging: the headless core stays headless, the manifest is found, the wheel ships it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GUI_MODULES = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "pyqtgraph", "vispy")


def test_core_imports_no_gui():
    """Importing napari_sima.core and every module under it pulls in no GUI toolkit."""
    code = f"""
import importlib, pkgutil, sys
import napari_sima.core as core
for mod in pkgutil.walk_packages(core.__path__, 'napari_sima.core.'):
    importlib.import_module(mod.name)
bad = sorted(m for m in sys.modules if m.split('.')[0] in {GUI_MODULES!r})
print('LOADED', len([m for m in sys.modules if m.startswith('napari_sima.core')]))
assert not bad, bad
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split("LOADED")[1]) >= 8


def test_manifest_is_one_file():
    link = ROOT / "src" / "napari_sima" / "napari.yaml"
    assert (ROOT / "napari.yaml").is_file()
    assert link.is_symlink() and link.resolve() == (ROOT / "napari.yaml").resolve()


def test_npe2_validate_editable_install():
    npe2 = shutil.which("npe2", path=str(BIN)) or shutil.which("npe2")
    assert npe2, "npe2 command not found next to the test interpreter"
    out = subprocess.run([npe2, "validate", "napari-sima"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in (out.stdout + out.stderr).lower()


def test_manifest_found_through_entry_point():
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover(include_npe1=False)
    manifest = pm.get_manifest("napari-sima")
    assert manifest.name == "napari-sima"
    from importlib.metadata import entry_points
    from importlib.resources import files

    (ep,) = [e for e in entry_points(group="napari.manifest") if e.name == "napari-sima"]
    assert ep.value == "napari_sima:napari.yaml"
    found = files("napari_sima") / "napari.yaml"
    assert Path(str(found)).resolve() == (ROOT / "napari.yaml").resolve()
    ids = {c.id for c in manifest.contributions.commands or []}
    assert any(i.startswith("napari-sima.") for i in ids)


@pytest.mark.slow
def test_built_wheel_ships_manifest(tmp_path):
    """`python -m build` (sdist, then wheel from it) puts napari_sima/napari.yaml in the wheel."""
    src = tmp_path / "src-copy"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True,
    )
    files = listed.stdout.split() if listed.returncode == 0 and listed.stdout.strip() else None
    if files is None:  # not a git checkout: copy the tree without the venv
        shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist"), symlinks=True)
    else:
        for rel in files:
            target = src / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            source = ROOT / rel
            if source.is_symlink():
                os.symlink(os.readlink(source), target)
            elif source.is_file():
                shutil.copy2(source, target)
    out = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "SETUPTOOLS_SCM_PRETEND_VERSION": "0.1.0"},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "napari_sima/napari.yaml" in names
        shipped = zf.read("napari_sima/napari.yaml").decode()
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert shipped == (ROOT / "napari.yaml").read_text()
    assert "napari-sima = napari_sima:napari.yaml" in entry_points
    assert not any(n.startswith("tests/") for n in names)
    sdist = next((tmp_path / "dist").glob("*.tar.gz"))
    with tarfile.open(sdist) as tf:
        assert any(n.endswith("src/napari_sima/napari.yaml") for n in tf.getnames())


def test_no_qt_binding_in_base_dependencies():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = " ".join(project["dependencies"]).lower()
    for binding in ("pyqt5", "pyqt6", "pyside2", "pyside6", "napari[all]", "napari[qt]"):
        assert binding not in deps
    assert "PyQt6" in project["optional-dependencies"]["test"]
