"""The Dataset widget, driven through its public methods (no dialogs)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_sima._layers import sima_metadata
from napari_sima._sample_data import sample_dataset
from napari_sima.core import ImagingDataset
from napari_sima.core.lazy import LazyChannelArray

WAIT_MS = 60_000


def interleave(movie: np.ndarray) -> np.ndarray:
    """(t, z, y, x, c) -> pages ordered channel fastest, then plane, then time."""
    t, z, y, x, c = movie.shape
    return np.ascontiguousarray(movie.transpose(0, 1, 4, 2, 3)).reshape(t * z * c, y, x)


@pytest.fixture
def two_channel_tif(tmp_path, rng):
    movie = rng.integers(0, 3000, size=(10, 1, 20, 24, 2), dtype=np.uint16)
    path = tmp_path / "twochan.tif"
    with tifffile.TiffWriter(path) as tw:  # plain pages, no shape metadata
        for page in interleave(movie):
            tw.write(page, contiguous=False, metadata=None)
    return path, movie


def open_sample(widget, viewer):
    viewer.open_sample("napari-sima", "calcium")
    viewer.layers.selection.active = viewer.layers[0]
    assert widget.use_selected_layer()
    return widget.dataset


def test_widget_has_named_controls(dataset_widget):
    for name in (
        "open_file_button",
        "open_folder_button",
        "use_layer_button",
        "tiff_planes_spin",
        "tiff_channels_spin",
        "hdf5_key_edit",
        "hdf5_dim_order_combo",
        "reopen_button",
        "channel_names_edit",
        "apply_names_button",
        "sequence_list",
        "create_button",
        "save_button",
        "projections_button",
        "cancel_button",
        "projection_progress",
    ):
        assert getattr(dataset_widget, name).objectName() == name
    assert not dataset_widget.projections_button.isEnabled()


def test_open_interleaved_tiff_with_channel_option(dataset_widget, viewer, two_channel_tif):
    path, movie = two_channel_tif
    dataset_widget.tiff_channels_spin.setValue(2)
    assert dataset_widget.open_path(path)
    assert [layer.name for layer in viewer.layers] == ["twochan [0]", "twochan [1]"]
    for c, layer in enumerate(viewer.layers):
        assert isinstance(layer.data, LazyChannelArray)
        assert layer.data.shape == (10, 1, 20, 24)
        np.testing.assert_array_equal(layer.data[7, 0], movie[7, 0, ..., c])
    assert dataset_widget.dataset.frame_shape == (1, 20, 24, 2)
    assert dataset_widget.sequence_list.count() == 1
    assert "10 frames" in dataset_widget.sequence_list.item(0).text()

    # reopening with other options replaces the layers
    dataset_widget.tiff_channels_spin.setValue(1)
    assert dataset_widget.reopen()
    assert [layer.name for layer in viewer.layers] == ["twochan"]
    assert viewer.layers[0].data.shape == (20, 1, 20, 24)


def test_reopen_hdf5_with_dim_order(dataset_widget, viewer, tmp_path, rng, notifications, write_h5):
    movie = rng.integers(0, 1000, size=(16, 20, 7), dtype=np.uint16)  # (y, x, t), no labels
    path = write_h5(tmp_path / "yxt.h5", movie)
    assert dataset_widget.open_path(path)
    assert viewer.layers[0].data.shape == (16, 1, 20, 7)  # the documented 'tyx' guess
    assert any("Dataset widget" in m for m in notifications.messages("info"))
    dataset_widget.hdf5_dim_order_combo.setCurrentText("yxt")
    assert dataset_widget.reopen()
    assert len(viewer.layers) == 1
    layer = viewer.layers[0]
    assert layer.data.shape == (7, 1, 16, 20)
    np.testing.assert_array_equal(layer.data[3, 0], movie[..., 3])
    assert "'yxt'" in dataset_widget.format_status_label.text()
    # an impossible dim order is reported, and the old layers stay
    dataset_widget.hdf5_dim_order_combo.setCurrentText("tzyx")
    assert not dataset_widget.reopen()
    assert any("dim_order" in m for m in notifications.messages("error"))
    assert len(viewer.layers) == 1


def test_channel_names_rename_dataset_and_layers(
    dataset_widget, viewer, two_channel_tif, notifications
):
    path, _ = two_channel_tif
    dataset_widget.tiff_channels_spin.setValue(2)
    dataset_widget.open_path(path)
    dataset_widget.channel_names_edit.setText("GCaMP, tdTomato")
    dataset_widget._on_apply_names_clicked()
    assert dataset_widget.dataset.channel_names == ["GCaMP", "tdTomato"]
    assert [layer.name for layer in viewer.layers] == ["twochan [GCaMP]", "twochan [tdTomato]"]
    # wrong number of names: an error notification, nothing changes
    assert not dataset_widget.set_channel_names("only-one")
    assert any("channel" in m for m in notifications.messages("error"))
    assert dataset_widget.dataset.channel_names == ["GCaMP", "tdTomato"]
    assert dataset_widget.channel_names_edit.text() == "GCaMP, tdTomato"


def test_create_and_save_dataset(dataset_widget, viewer, two_channel_tif, tmp_path, notifications):
    path, movie = two_channel_tif
    dataset_widget.tiff_channels_spin.setValue(2)
    dataset_widget.open_path(path)
    assert not dataset_widget.save_dataset()  # no folder yet: a warning
    assert dataset_widget.create_dataset(tmp_path / "session")
    savedir = tmp_path / "session.sima"
    assert dataset_widget.dataset.savedir == str(savedir)
    assert str(savedir) in dataset_widget.savedir_label.text()
    assert dataset_widget.set_channel_names(["green", "red"])  # saved at once
    loaded = ImagingDataset.load(savedir)
    assert loaded.channel_names == ["green", "red"]
    assert loaded.sequences[0].shape == (10, 1, 20, 24, 2)
    np.testing.assert_array_equal(loaded.sequences[0].read(range(2, 3)), movie[2:3])
    assert dataset_widget.save_dataset()
    # creating over another dataset is refused with a notification
    other = ImagingDataset([loaded.sequences[0]], tmp_path / "other")
    assert not dataset_widget.create_dataset(other.savedir)
    assert any("already holds a dataset" in m for m in notifications.messages("error"))
    # the folder opens back through the widget
    viewer.layers.clear()
    assert dataset_widget.open_path(savedir)
    assert [layer.name for layer in viewer.layers] == ["session [green]", "session [red]"]


def test_in_memory_sample_saved_to_folder(dataset_widget, viewer, tmp_path):
    ds = open_sample(dataset_widget, viewer)
    assert dataset_widget.sequence_list.count() == 2
    assert dataset_widget.create_dataset(tmp_path / "calcium.sima")
    loaded = ImagingDataset.load(tmp_path / "calcium.sima")
    assert loaded.num_sequences == 2
    assert loaded.channel_names == ["GCaMP", "tdTomato"]
    np.testing.assert_array_equal(
        loaded.sequences[1].read(range(5, 6)), ds.sequences[1].read(range(5, 6))
    )
    assert all(sima_metadata(layer)["source"] == loaded.savedir for layer in viewer.layers)


def test_compute_projections_adds_layers(dataset_widget, viewer, qtbot, notifications):
    ds = open_sample(dataset_widget, viewer)
    worker = dataset_widget.compute_projections()
    assert worker is not None and dataset_widget.is_computing
    assert dataset_widget.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not dataset_widget.is_computing, timeout=WAIT_MS)
    names = [layer.name for layer in viewer.layers][4:]
    assert names == [
        f"calcium {kind} [{ch}]"
        for kind in ("mean", "std", "kurtosis")
        for ch in ("GCaMP", "tdTomato")
    ]
    stacked = np.concatenate([seq.read(dtype=float) for seq in sample_dataset().sequences])
    for kind, expected in (("mean", stacked.mean(axis=0)), ("std", stacked.std(axis=0))):
        for c, ch in enumerate(("GCaMP", "tdTomato")):
            layer = viewer.layers[f"calcium {kind} [{ch}]"]
            assert layer.data.shape == (1, 128, 128)
            assert tuple(layer.axis_labels) == ("z", "y", "x")
            np.testing.assert_allclose(layer.data, expected[..., c], rtol=1e-6, atol=1e-6)
            assert sima_metadata(layer)["dataset"] is ds
    assert dataset_widget.projection_progress.value() == ds.num_frames
    assert notifications.messages("error") == []
    # running again updates the layers in place
    dataset_widget.compute_projections(["mean"])
    qtbot.waitUntil(lambda: not dataset_widget.is_computing, timeout=WAIT_MS)
    assert len(viewer.layers) == 10


def test_cancel_projections_adds_nothing(dataset_widget, viewer, qtbot, notifications):
    open_sample(dataset_widget, viewer)
    dataset_widget.compute_projections()
    dataset_widget._on_cancel_clicked()
    qtbot.waitUntil(lambda: not dataset_widget.is_computing, timeout=WAIT_MS)
    qtbot.wait(50)
    assert len(viewer.layers) == 4
    assert notifications.messages("error") == []
    assert dataset_widget.projections_button.isEnabled()
    assert not dataset_widget.cancel_button.isEnabled()


def test_bad_paths_notify_without_raising(dataset_widget, tmp_path, notifications, viewer):
    assert not dataset_widget.open_path(tmp_path / "does-not-exist.tif")
    fake = tmp_path / "fake.tif"
    fake.write_text("not a tiff")
    assert not dataset_widget.open_path(fake)
    (tmp_path / "folder").mkdir()
    assert not dataset_widget.open_path(tmp_path / "folder")
    errors = notifications.messages("error")
    assert len(errors) == 3
    assert "does-not-exist.tif" in errors[0]
    assert "fake.tif" in errors[1]
    assert "not a dataset folder" in errors[2]
    assert len(viewer.layers) == 0
    assert dataset_widget.dataset is None


def test_use_selected_layer(dataset_widget, viewer, two_channel_tif, notifications):
    assert not dataset_widget.use_selected_layer()  # nothing selected: a warning
    path, _ = two_channel_tif
    viewer.open(str(path), plugin="napari-sima")
    viewer.layers.selection.active = viewer.layers[0]
    assert dataset_widget.use_selected_layer()
    assert dataset_widget.dataset is sima_metadata(viewer.layers[0])["dataset"]
    assert dataset_widget.source == str(path)
    # a plain numpy image layer is wrapped into an in-memory dataset
    data = np.arange(5 * 8 * 9, dtype=np.uint16).reshape(5, 8, 9)
    plain = viewer.add_image(data, name="plain")
    viewer.layers.selection.active = plain
    assert dataset_widget.use_selected_layer()
    assert dataset_widget.dataset.sequences[0].shape == (5, 1, 8, 9, 1)
    assert sima_metadata(plain)["dataset"] is dataset_widget.dataset
    # a 2-D image is not a movie
    viewer.layers.selection.active = viewer.add_image(np.zeros((4, 4)), name="flat")
    assert not dataset_widget.use_selected_layer()
    assert any("dimensions" in m for m in notifications.messages("warning"))


def test_widget_adopts_existing_dataset(viewer, qtbot):
    from napari_sima._widgets.dataset_widget import DatasetWidget

    viewer.open_sample("napari-sima", "calcium")
    widget = DatasetWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.dataset is sima_metadata(viewer.layers[0])["dataset"]
    assert widget.channel_names_edit.text() == "GCaMP, tdTomato"


def test_dock_widget_from_manifest(viewer, two_channel_tif):
    """napari gives the docked widget a public-only viewer proxy; everything still works."""
    from napari_sima._widgets.dataset_widget import DatasetWidget

    _, widget = viewer.window.add_plugin_dock_widget("napari-sima", "Dataset")
    assert isinstance(widget, DatasetWidget)
    path, _ = two_channel_tif
    widget.tiff_channels_spin.setValue(2)
    assert widget.open_path(path)
    assert widget.reopen()
    assert [layer.name for layer in viewer.layers] == ["twochan [0]", "twochan [1]"]


def test_run_demo(qtbot):
    from napari_sima._demo import DEMO_WIDGET_COMMANDS, run_demo, widget_display_names
    from napari_sima._widgets.dataset_widget import DatasetWidget

    viewer = run_demo(block=False)
    try:
        assert len(viewer.layers) == 4
        docks = viewer.window.dock_widgets
        assert "Dataset (napari-sima)" in docks
        widget = docks["Dataset (napari-sima)"]
        assert isinstance(widget, DatasetWidget)
        assert widget.dataset is sima_metadata(viewer.layers[0])["dataset"]
        names = widget_display_names()
        assert names[0] == "Dataset" and "ROIs" in names
        assert all(f"{name} (napari-sima)" in docks for name in names)
    finally:
        viewer.close()
    # every widget of the manifest is docked by the demo
    from npe2 import PluginManager

    manifest = PluginManager.instance().get_manifest("napari-sima")
    assert {w.command for w in manifest.contributions.widgets} == set(DEMO_WIDGET_COMMANDS)
