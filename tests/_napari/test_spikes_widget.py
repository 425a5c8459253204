"""The Infer spikes dock, driven through its public methods under Xvfb."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from napari_sima._layers import dataset_layer_data, sima_metadata
from napari_sima._roi_convert import rois_to_shapes
from napari_sima._sample_data import sample_dataset, sample_true_rois
from napari_sima.core import ImagingDataset

WAIT_MS = 60_000

pytestmark = pytest.mark.filterwarnings("ignore:sigma estimate:RuntimeWarning")


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def movie():
    from napari_sima._sample_data import sample_movie

    return sample_movie()


@pytest.fixture
def saved_ds(viewer, movie, tmp_path):
    """The sample saved to ``tmp_path``, the true cells extracted as 'truth', in the viewer."""
    ds = sample_dataset(movie)
    ds.save(tmp_path / "sample.sima")
    rois = sample_true_rois(movie, start=0)
    ds.add_ROIs(rois, "truth")
    ds.extract(rois, label="truth", save_summary=False)
    for data, kwargs, _ in dataset_layer_data(ds, "sample"):
        viewer.add_image(data, **kwargs)
    viewer.add_shapes(**rois_to_shapes(rois), name="ROIs: truth")
    return ds


@pytest.fixture
def make_widget(make_dock):
    from napari_sima._widgets.spikes_widget import SpikesWidget

    return lambda: make_dock(SpikesWidget)


@pytest.fixture
def widget(make_widget, saved_ds):
    return make_widget()


@pytest.fixture
def traces(viewer, qtbot):
    from napari_sima._widgets.traces_widget import TracesWidget

    widget = TracesWidget(viewer)
    qtbot.addWidget(widget)
    widget.resize(900, 320)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def run_and_wait(widget, qtbot):
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    return worker


def stored(ds, label="truth"):
    """The set as stored on disk (read back through a fresh dataset)."""
    return ImagingDataset.load(ds.savedir).signals(0)[label]


def slow_progress(ds, monkeypatch, delay=0.05):
    """Make the dataset's ``infer_spikes`` pause at each progress report (real core)."""
    real = ds.infer_spikes
    calls = []

    def infer_spikes(*args, progress=None, **kwargs):
        def slow(done, total):
            calls.append(done)
            time.sleep(delay)
            if progress is not None:
                progress(done, total)

        return real(*args, progress=slow, **kwargs)

    monkeypatch.setattr(ds, "infer_spikes", infer_spikes)
    return calls


# --------------------------------------------------------------------------- tests
def check_controls_and_defaults(widget, saved_ds):
    for name in (
        "dataset_combo",
        "channel_combo",
        "signals_combo",
        "mode_combo",
        "estimate_gamma_check",
        "gamma_spin",
        "share_gamma_check",
        "solver_combo",
        "run_button",
        "cancel_button",
        "show_button",
        "progress_bar",
        "status_label",
    ):
        assert getattr(widget, name).objectName() == name
    assert widget.dataset is saved_ds
    assert widget.dataset_combo.currentText() == "sample"
    assert widget.signal_set == "truth"
    assert widget.signals_combo.currentText() == "truth"  # no spikes yet: no mark
    assert [widget.mode_combo.itemText(i) for i in range(3)] == ["correct", "robust", "psd"]
    assert [widget.solver_combo.itemText(i) for i in range(2)] == ["oasis", "cvxpy"]
    assert widget.options() == {
        "mode": "correct",
        "gamma": None,
        "share_gamma": True,
        "solver": "oasis",
    }
    assert not widget.gamma_spin.isEnabled()  # estimated
    assert widget.run_button.isEnabled()
    assert not widget.cancel_button.isEnabled()
    assert not widget.show_button.isEnabled()  # nothing inferred yet
    widget.estimate_gamma_check.setChecked(False)
    assert widget.gamma_spin.isEnabled() and not widget.share_gamma_check.isEnabled()
    assert widget.options()["gamma"] == pytest.approx(0.95)


def test_end_to_end_stores_and_shows_spikes(
    widget, saved_ds, traces, viewer, movie, qtbot, notifications
):
    from napari_sima._raster import raster_name

    check_controls_and_defaults(widget, saved_ds)
    layer = viewer.layers["ROIs: truth"]
    assert traces.shapes_layer is layer
    layer.selected_data = {0, 4}
    assert traces.curves and traces.fit_curves == []  # no spikes yet
    run_and_wait(widget, qtbot)

    sig = stored(saved_ds)
    assert [s.shape for s in sig["spikes"]] == [(12, 200), (12, 200)]
    assert [f.shape for f in sig["spikes_fits"]] == [(12, 200), (12, 200)]
    params = sig["spikes_params"]
    assert len(params) == 2 and len(set(params[0]["gamma"])) == 1  # shared gamma
    for q in range(2):
        np.testing.assert_allclose(np.nanmax(sig["spikes"][q], axis=1), 1.0)
        corr = [
            np.corrcoef(sig["spikes"][q][i], c.spikes[q])[0, 1] for i, c in enumerate(movie.cells)
        ]
        assert np.median(corr) > 0.8, corr
    # reported, listed, shown
    infos = notifications.messages("info")
    assert any("Inferred spikes of 12 ROIs × 400 frames in 'truth'" in m for m in infos), infos
    assert not notifications.messages("error")
    assert widget.last_label == "truth"
    assert widget.signals_combo.currentText() == "truth   ✓ spikes"
    assert widget.show_button.isEnabled()
    assert widget.progress_bar.value() == widget.progress_bar.maximum()
    # the Traces dock reloaded the set: fits over the raw traces, spikes row
    assert traces.has_spikes
    assert len(traces.fit_curves) == 2 and len(traces.spike_curves) == 2
    np.testing.assert_allclose(traces.fit_curves[0].yData, sig["spikes_fits"][0][0])
    assert traces.spikes_plot_widget.isVisible()
    # and the spikes raster layer
    raster = viewer.layers[raster_name("truth", "spikes")]
    np.testing.assert_allclose(raster.data, np.concatenate(sig["spikes"], axis=1), rtol=1e-6)
    assert sima_metadata(raster)["signal_kind"] == "spikes"


def test_options_channel_and_set_reach_the_core(widget, saved_ds, movie, qtbot, notifications):
    from napari_sima.core.spikes import estimate_parameters_many

    assert widget.set_options(mode="robust", gamma=0.9, share_gamma=False)
    assert widget.options() == {
        "mode": "robust",
        "gamma": 0.9,
        "share_gamma": False,
        "solver": "oasis",
    }
    run_and_wait(widget, qtbot)
    sig = stored(saved_ds)
    raw = sig["raw"]
    _, sigma = estimate_parameters_many(raw, 0.9, mode="robust")
    for q in range(2):
        assert sig["spikes_params"][q]["gamma"] == [0.9] * 12
        np.testing.assert_allclose(sig["spikes_params"][q]["sigma"], sigma)
    assert any("γ = 0.900" in m for m in notifications.messages("info"))
    # bad values: refused with a message, nothing changed
    for kwargs in ({"mode": "fast"}, {"solver": "magic"}, {"gamma": 1.5}, {"gamma": "x"}):
        assert not widget.set_options(**kwargs)
    assert len(notifications.messages("error")) == 4
    assert widget.options()["mode"] == "robust" and widget.options()["gamma"] == 0.9
    assert widget.set_options(gamma="estimate", solver="cvxpy")
    assert widget.options()["gamma"] is None and widget.options()["solver"] == "cvxpy"
    # another channel's set, by the reference solver
    saved_ds.extract(sample_true_rois(movie), label="red", signal_channel=1, save_summary=False)
    assert widget.set_channel("tdTomato")
    assert widget.signal_set == "red"
    run_and_wait(widget, qtbot)
    red = ImagingDataset.load(saved_ds.savedir).signals(1)["red"]
    assert red["spikes"][0].shape == (12, 200)
    assert widget.set_channel(0) and widget.set_signal_set("truth")
    assert stored(saved_ds)["spikes_params"][0]["gamma"] == [0.9] * 12  # untouched


def test_cancel_leaves_the_stored_set_unchanged(
    widget, saved_ds, qtbot, notifications, monkeypatch
):
    widget.set_options(gamma=0.9)
    run_and_wait(widget, qtbot)
    before = stored(saved_ds)
    index = (Path(saved_ds.savedir) / "signals" / "channel_0" / "index.json").read_bytes()

    calls = slow_progress(saved_ds, monkeypatch)
    widget.set_options(mode="robust", gamma="estimate")
    worker = widget.run()
    assert worker is not None and widget.is_running
    assert widget.cancel_button.isEnabled() and not widget.run_button.isEnabled()
    assert not widget.mode_combo.isEnabled()
    qtbot.waitUntil(lambda: len(calls) > 0, timeout=WAIT_MS)
    widget.cancel()
    assert not widget.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    assert len(calls) < 24  # stopped before the last trace

    after = stored(saved_ds)
    assert (Path(saved_ds.savedir) / "signals" / "channel_0" / "index.json").read_bytes() == index
    for q in range(2):
        np.testing.assert_array_equal(after["spikes"][q], before["spikes"][q])
        np.testing.assert_array_equal(after["spikes_fits"][q], before["spikes_fits"][q])
    assert after["spikes_params"] == before["spikes_params"]
    assert any("cancelled" in m for m in notifications.messages("info"))
    assert widget.status_label.text() == "Cancelled; the signal set was left unchanged."
    assert widget.run_button.isEnabled()
    # it works again afterwards
    monkeypatch.delattr(saved_ds, "infer_spikes")
    run_and_wait(widget, qtbot)
    assert stored(saved_ds)["spikes_params"][0]["gamma"][0] != 0.9


def test_no_signal_set_is_a_clear_message(viewer, movie, make_widget, notifications):
    ds = sample_dataset(movie)
    for data, kwargs, _ in dataset_layer_data(ds, "bare"):
        viewer.add_image(data, **kwargs)
    widget = make_widget()
    assert widget.dataset is ds
    assert widget.signal_set is None
    assert not widget.run_button.isEnabled()
    assert "extract ROI signals" in widget.status_label.text()
    assert widget.run() is None
    (message,) = notifications.messages("error")
    assert message == (
        "No signal set to deconvolve for channel 'GCaMP': extract ROI signals in the "
        "Extract dock first."
    )
    assert not widget.show_spikes()
    assert not widget.set_signal_set("nope")


def test_core_error_is_a_notification(widget, saved_ds, qtbot, notifications, monkeypatch):
    real = saved_ds.infer_spikes

    def infer_spikes(*args, **kwargs):
        return real(*args, **{**kwargs, "mode": "nonsense"})

    monkeypatch.setattr(saved_ds, "infer_spikes", infer_spikes)
    run_and_wait(widget, qtbot)
    (message,) = notifications.messages("error")
    assert message.startswith("Spike inference failed: unknown mode 'nonsense'")
    assert widget.status_label.text().startswith("Failed: unknown mode")
    assert "spikes" not in stored(saved_ds)


def test_docked_from_the_manifest_and_in_the_demo(make_napari_viewer):
    from napari_sima._demo import DEMO_WIDGET_COMMANDS, widget_display_names
    from napari_sima._widgets.spikes_widget import SpikesWidget

    commands = DEMO_WIDGET_COMMANDS
    assert commands.index("napari-sima.spikes_widget") > commands.index(
        "napari-sima.extract_widget"
    )  # docked after Extract: its input is Extract's output
    assert "Infer spikes" in widget_display_names()
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-sima", "Infer spikes")
    assert isinstance(widget, SpikesWidget)
    assert widget.dataset is None
    assert "No dataset" in widget.status_label.text()
    viewer.open_sample("napari-sima", "calcium")
    assert widget.dataset is not None  # adopted when its layers arrive
