"""The Segment dock widget, driven through its public methods under Xvfb."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sima._layers import METADATA_KEY, dataset_layer_data, sima_metadata
from napari_sima.core import ImagingDataset, Sequence

WAIT_MS = 120_000


# --------------------------------------------------------------------------- helpers
def small_dataset(
    num_frames: int = 60, planes: int = 1, cells: int = 4, seed: int = 3
) -> ImagingDataset:
    """A small in-memory synthetic dataset (fast to segment)."""
    from napari_sima.core.synthetic import make_calcium_movie

    movie = make_calcium_movie(
        num_frames=num_frames,
        frame_shape=(planes, 40, 40, 1),
        num_sequences=1,
        num_cells=cells,
        cell_radius=(4.0, 5.0),
        seed=seed,
        allow_overlap=False,
    )
    sequences = [Sequence.create("ndarray", a, "tzyxc") for a in movie.sequences]
    return ImagingDataset(sequences, None, channel_names=["GCaMP"])


def show_dataset(viewer, ds: ImagingDataset, name: str = "small") -> ImagingDataset:
    for data, kwargs, _ in dataset_layer_data(ds, name):
        viewer.add_image(data, **kwargs)
    return ds


def fast(widget) -> None:
    """Lower the heavy parameters of the strategy shown (few components / PCs)."""
    for path in ("components", "num_pcs", "affinity_method.num_pcs"):
        try:
            editor = widget.panel.editor(path)
        except KeyError:
            continue
        editor.value = min(int(editor.value), 12)


def run_and_wait(widget, qtbot, replace: bool = False):
    worker = widget.run(replace=replace)
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    return worker


# --------------------------------------------------------------------------- fixtures
@pytest.fixture
def make_widget(make_dock):
    from napari_sima._widgets.segment_widget import SegmentWidget

    return lambda: make_dock(SegmentWidget)


@pytest.fixture
def sample_folder(tmp_path):
    """The sample dataset saved as a .sima folder."""
    from napari_sima._sample_data import sample_dataset

    path = tmp_path / "sample.sima"
    sample_dataset().save(path)
    return path


# --------------------------------------------------------------------------- registries
def test_registries_offer_presets_and_editable_steps():
    from napari_sima._widgets.segment_widget import (
        available_steps,
        default_preset,
        strategy_presets,
    )
    from napari_sima.core.segment.base import SegmentationStrategy
    from napari_sima.core.segment.defaults import default_strategy

    presets = strategy_presets()
    assert presets and all(isinstance(f(), SegmentationStrategy) for f in presets.values())
    name, strategy = default_preset()
    assert strategy.parameters() == default_strategy().parameters()
    assert name in presets
    steps = available_steps()
    assert {
        "SizeFilter",
        "CircularityFilter",
        "SparseROIsFromMasks",
        "SmoothROIBoundaries",
        "MergeOverlapping",
    } <= set(steps)
    assert "ROIFilter" not in steps  # takes a Python function: not editable in a panel


# --------------------------------------------------------------------------- end to end
def test_default_strategy_end_to_end(viewer, make_widget, qtbot, sample_folder, notifications):
    from napari_sima._widgets.roi_widget import ROIManagerWidget
    from napari_sima.core.segment.defaults import default_strategy

    viewer.open(str(sample_folder), plugin="napari-sima")
    manager = ROIManagerWidget(viewer)
    viewer.window.add_dock_widget(manager, name="ROIs")
    widget = make_widget()
    assert widget.dataset is not None and widget.dataset.savedir is not None
    assert type(widget.strategy()) is type(default_strategy())
    assert [type(s).__name__ for s in widget.strategy().steps] == [
        type(s).__name__ for s in default_strategy().steps
    ]
    fast(widget)
    widget.set_label("auto")
    run_and_wait(widget, qtbot)

    assert widget.last_label == "auto", widget.status_label.text()
    n = len(widget.last_rois)
    assert n >= 6, widget.status_label.text()  # the sample has 12 cells
    assert f"found {n} ROIs" in widget.status_label.text()
    assert widget.progress_bar.value() == widget.progress_bar.maximum()
    # stored with the dataset, on disk
    assert len(ImagingDataset.load(sample_folder).ROIs["auto"]) == n
    # shown by the ROIs dock, which can curate it
    assert manager.current_set == "auto"
    layer = manager.layer
    assert layer is widget.last_layer and layer.name == "ROIs: auto"
    assert layer.features["roi"].nunique() == n
    assert sima_metadata(layer)["roi_set"] == "auto"
    layer.selected_data = {0}
    assert manager.selected_roi_indices() == [int(layer.features["roi"].iloc[0])]
    assert manager.mark_selected("accepted") == 1
    assert any("found" in m for m in notifications.messages("info"))
    # the label now exists: the widget warns and suggests another one next time
    widget.set_label("auto")
    assert widget.label_exists() and widget.label_warning.isVisibleTo(widget)
    assert widget.run() is None  # not replaced without asking
    assert any("already has an ROI set 'auto'" in m for m in notifications.messages("warning"))
    # replacing the set the ROIs dock shows reloads it; unsaved curation is kept aside
    assert manager.is_dirty
    run_and_wait(widget, qtbot, replace=True)  # the offset PCA is cached: fast
    assert "replacing" in widget.status_label.text()
    assert manager.current_set == "auto" and manager.layer is widget.last_layer
    assert not manager.layer.features["accepted"].any() and not manager.is_dirty
    assert manager.recovery_labels()


def test_result_as_layer_without_roi_manager(viewer, make_widget, qtbot):
    from napari_sima._widgets.segment_widget import find_roi_manager

    ds = show_dataset(viewer, small_dataset())
    widget = make_widget()
    widget.set_strategy(_stica(components=6))
    widget.curate_check.setChecked(False)
    widget.set_label("")  # blank: the core names the set with its timestamp
    run_and_wait(widget, qtbot)
    assert find_roi_manager(viewer) is None
    label = widget.last_label
    assert label in ds.ROIs, widget.status_label.text()
    n = len(ds.ROIs[label])
    assert n >= 1
    layer = viewer.layers[f"ROIs: {label}"]
    meta = sima_metadata(layer)
    assert meta["kind"] == "rois" and meta["dataset"] is ds and meta["roi_set"] == label
    assert layer.features["roi"].nunique() == n
    # the Extract dock offers the layer as an ROI source
    from napari_sima._widgets.extract_widget import ExtractWidget

    extract = ExtractWidget(viewer)
    qtbot.addWidget(extract)
    assert layer in extract.roi_layers()
    # "Curate in the ROIs panel" opens the ROIs dock, which shows the new set
    widget.curate_check.setChecked(True)
    widget.set_label("curate me")
    run_and_wait(widget, qtbot)
    manager = find_roi_manager(viewer)
    assert manager is not None and manager.dataset is ds
    assert manager.current_set == "curate me" and manager.layer is widget.last_layer
    assert manager.layer.features["roi"].nunique() == len(ds.ROIs["curate me"])


# --------------------------------------------------------------------------- panels
def _stica(**kwargs):
    from napari_sima.core.segment.postprocess import (
        MergeOverlapping,
        SmoothROIBoundaries,
        SparseROIsFromMasks,
    )
    from napari_sima.core.segment.stica import STICA

    strategy = STICA(**kwargs)
    for step in (SparseROIsFromMasks(min_size=20), SmoothROIBoundaries(), MergeOverlapping(0.5)):
        strategy.append(step)
    return strategy


def test_panel_is_built_from_the_fields(viewer, make_widget):
    from napari_sima._sample_data import sample_dataset
    from napari_sima.core.segment.affinity import AffinityMatrixCA1PC
    from napari_sima.core.segment.ca1pc import PlaneCA1PC
    from napari_sima.core.segment.normcut import PlaneNormalizedCuts

    show_dataset(viewer, sample_dataset(), "calcium")
    widget = make_widget()
    original = _stica(components=30)
    assert widget.set_strategy(original)
    assert widget.panel.field_names == ["channel", "mu", "components", "seed"]
    widget.panel.editor("components").value = 5
    widget.panel.editor("mu").value = 0.005  # more decimals than the default shows
    channel = widget.panel.editor("channel")
    assert list(channel.choices) == [0, 1]
    assert channel.native.itemText(1) == "tdTomato"
    channel.value = 1
    strategy = widget.strategy()
    assert (strategy.components, strategy.mu, strategy.channel) == (5, 0.005, 1)
    assert [type(s).__name__ for s in strategy.steps] == [
        "SparseROIsFromMasks",
        "SmoothROIBoundaries",
        "MergeOverlapping",
    ]
    assert original.components == 30 and original.channel == 0  # the source is untouched

    # a nested dataclass field is an indented sub-panel, with a class box
    widget.set_strategy(PlaneNormalizedCuts())
    nested = widget.panel.editor("affinity_method")
    assert nested.class_name == "BasicAffinityMatrix"
    assert "verbose" not in nested.panel.field_names  # SIMA-compatibility flag hidden
    widget.panel.editor("affinity_method.num_pcs").value = 7
    widget.panel.editor("cut_max_size").value = 150
    strategy = widget.strategy()
    assert strategy.affinity_method.num_pcs == 7 and strategy.cut_max_size == 150
    nested.set_class("AffinityMatrixCA1PC")
    strategy = widget.strategy()
    assert isinstance(strategy.affinity_method, AffinityMatrixCA1PC)
    assert strategy.affinity_method.num_pcs == 7  # carried over
    widget.panel.editor("affinity_method.x_diameter").value = 12
    assert widget.strategy().affinity_method.x_diameter == 12

    # a strategy holding a strategy (plane by plane): the inner one is a sub-panel
    from napari_sima.core.segment.planewise import PlaneWiseSegmentation

    widget.set_strategy(PlaneWiseSegmentation(_stica(components=5)))
    assert widget.panel.editor("plane_strategy").class_name == "STICA"
    widget.panel.editor("plane_strategy.components").value = 4
    inner = widget.strategy().plane_strategy
    assert inner.components == 4 and len(inner.steps) == 3  # its own steps are kept
    # a value no editor fits (one strategy per plane) is shown read-only and kept
    from napari_sima._widgets.segment_widget import ReadOnlyEditor

    per_plane = [_stica(components=3), _stica(components=4)]
    widget.set_strategy(PlaneWiseSegmentation(per_plane))
    assert isinstance(widget.panel.editor("plane_strategy"), ReadOnlyEditor)
    assert widget.strategy().plane_strategy == per_plane

    # optional fields have a "none" state
    widget.set_strategy(PlaneCA1PC())
    max_dist = widget.panel.editor("max_dist")
    assert max_dist.value is None and widget.strategy().max_dist is None
    max_dist.value = (3, 2)
    assert widget.strategy().max_dist == (3, 2)
    max_dist.none_box.value = True
    assert widget.strategy().max_dist is None


def test_user_errors_are_notified(viewer, make_widget, notifications):
    widget = make_widget()
    assert widget.dataset is None and not widget.run_button.isEnabled()
    assert widget.run() is None
    assert any("No dataset" in m for m in notifications.messages("error"))
    ds = show_dataset(viewer, small_dataset())
    assert widget.dataset is ds and widget.run_button.isEnabled()
    # a parameter the core rejects: its message, nothing runs
    widget.set_strategy(_stica())
    widget.panel.editor("mu").value = 2.0
    assert widget.run() is None
    assert not widget.is_running
    errors = notifications.messages("error")
    assert any("mu must lie in [0, 1]" in m for m in errors), errors
    assert "mu must lie in [0, 1]" in widget.status_label.text()


# --------------------------------------------------------------------------- steps
def test_steps_add_remove_reorder(viewer, make_widget, notifications):
    from napari_sima.core.segment.postprocess import ROIFilter

    show_dataset(viewer, small_dataset())
    widget = make_widget()
    widget.set_strategy(_stica())
    editor = widget.steps_editor
    assert editor.step_names() == ["SparseROIsFromMasks", "SmoothROIBoundaries", "MergeOverlapping"]

    assert widget.add_step("SizeFilter") == 3
    editor.cards[3].panel.editor("min_size").value = 33
    editor.cards[3].panel.editor("max_size").value = 400  # unticks "none"
    assert widget.move_step(3, -2) == 1
    # the card's buttons do the same
    editor.cards[0].down_button.click()
    assert editor.step_names() == [
        "SizeFilter",
        "SparseROIsFromMasks",
        "SmoothROIBoundaries",
        "MergeOverlapping",
    ]
    assert (
        not editor.cards[0].up_button.isEnabled() and not editor.cards[-1].down_button.isEnabled()
    )
    editor.cards[2].remove_button.click()
    assert widget.remove_step(2)
    steps = widget.strategy().steps
    assert [type(s).__name__ for s in steps] == ["SizeFilter", "SparseROIsFromMasks"]
    assert (steps[0].min_size, steps[0].max_size) == (33, 400)

    # the add box and button
    editor.add_combo.setCurrentText("CircularityFilter")
    editor.add_button.click()
    assert widget.strategy().steps[-1].circularity_threshold == 0.5

    # errors are notified, not raised
    assert widget.add_step("NoSuchStep") == -1
    assert not widget.remove_step(10)
    assert any(
        "unknown post-processing step 'NoSuchStep'" in m for m in notifications.messages("error")
    )

    # a step holding Python code is shown, kept as it is, and not editable
    strategy = _stica()
    keep_big = ROIFilter(lambda roi: roi.size > 30)
    strategy.append(keep_big)
    widget.set_strategy(strategy)
    assert editor.cards[-1].panel is None
    assert widget.strategy().steps[-1] is keep_big

    # a rejected step parameter names the step
    widget.add_step("SizeFilter")
    card = editor.cards[-1]
    card.panel.editor("min_size").value = 50
    card.panel.editor("max_size").value = 10
    with pytest.raises(ValueError, match=r"step 5 \(SizeFilter\).*max_size"):
        widget.strategy()


# --------------------------------------------------------------------------- cancel, errors
def test_cancel_stores_nothing(viewer, make_widget, qtbot, notifications):
    from napari_sima._sample_data import sample_dataset

    ds = show_dataset(viewer, sample_dataset(), "calcium")
    widget = make_widget()
    widget.set_strategy(_stica(components=40))
    widget.set_label("cancelled")
    worker = widget.run()
    assert worker is not None and widget.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: widget.progress_bar.maximum() > 0, timeout=WAIT_MS)  # first report
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT_MS)
    assert "cancelled" not in ds.ROIs
    assert widget.last_label is None
    assert "Cancelled; nothing was stored" in widget.status_label.text()
    assert any("cancelled" in m for m in notifications.messages("info"))
    assert not [layer for layer in viewer.layers if layer.name.startswith("ROIs:")]


def test_core_errors_and_warnings_reach_the_user(viewer, make_widget, qtbot, notifications):
    # an error raised by the core inside the worker: notified, nothing stored
    one_frame = show_dataset(viewer, small_dataset(num_frames=1), "one")
    few_frames = show_dataset(viewer, small_dataset(num_frames=8), "few")
    widget = make_widget()
    assert widget.set_dataset(one_frame)
    widget.set_strategy(_stica(components=3))
    widget.set_label("one frame")
    run_and_wait(widget, qtbot)
    errors = notifications.messages("error")
    assert any("STICA needs at least 2 frames" in m for m in errors), errors
    assert "one frame" not in one_frame.ROIs
    assert widget.status_label.text().startswith("Failed: STICA needs at least 2 frames")
    # more components than frames: the core's warning is shown, the set stored
    assert widget.set_dataset(few_frames)
    widget.set_strategy(_stica(components=75))
    widget.set_label("few frames")
    run_and_wait(widget, qtbot)
    assert "few frames" in few_frames.ROIs, widget.status_label.text()
    warned = notifications.messages("warning")
    assert any("75 components asked for" in m and "using 7" in m for m in warned), warned
    assert "75 components asked for" in widget.status_label.text()


def test_planes_of_a_volume(viewer, make_widget, qtbot, notifications):
    from napari_sima.core.segment.normcut import PlaneNormalizedCuts
    from napari_sima.core.segment.postprocess import SizeFilter

    ds = show_dataset(viewer, small_dataset(num_frames=40, planes=2, cells=4))
    widget = make_widget()
    assert widget.planes_widget.isVisibleTo(widget) and widget.planes_list.count() == 2
    widget.set_strategy(_stica(components=4))
    # no plane ticked: a clear message, nothing runs
    widget.set_planes([])
    assert widget.run() is None
    assert any("No plane chosen" in m for m in notifications.messages("error"))
    with pytest.raises(IndexError, match="plane"):
        widget.set_planes([2])
    widget.curate_check.setChecked(False)
    # STICA may segment the volume as a whole when asked
    widget.set_planes(None)
    assert widget.planewise_check.isEnabled() and widget.planewise_check.isChecked()
    widget.planewise_check.setChecked(False)
    widget.set_label("whole volume")
    run_and_wait(widget, qtbot)
    assert "whole volume" in ds.ROIs, widget.status_label.text()
    # a single-plane strategy on "all planes" segments each plane on its own
    strategy = PlaneNormalizedCuts()
    strategy.affinity_method.num_pcs = 5
    strategy.append(SizeFilter(min_size=20))
    widget.set_strategy(strategy)
    assert widget.planewise_check.isChecked() and not widget.planewise_check.isEnabled()
    widget.set_label("volume")
    run_and_wait(widget, qtbot)
    rois = ds.ROIs.get("volume")
    assert rois is not None, widget.status_label.text()
    assert all(sum(m.nnz > 0 for m in roi.mask) == 1 for roi in rois)  # one plane each
    planes = {int(np.argmax([m.nnz for m in roi.mask])) for roi in rois}
    assert planes == {0, 1}
    # one chosen plane
    widget.set_planes([1])
    widget.set_label("plane 1")
    run_and_wait(widget, qtbot)
    assert {int(np.argmax([m.nnz for m in roi.mask])) for roi in ds.ROIs["plane 1"]} == {1}
    layer = viewer.layers["ROIs: plane 1"]
    assert sima_metadata(layer)["dataset"] is ds
    assert METADATA_KEY in layer.metadata
