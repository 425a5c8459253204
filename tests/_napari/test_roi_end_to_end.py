"""End to end: SIMA's example movie -> dataset -> ImageJ import -> edit -> save -> export."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sima._layers import dataset_layer_data
from napari_sima.core import ImagingDataset, Sequence, poly2mask

IM_SHAPE = (1, 128, 256)
NAMES = ["0001-0087-0085", "0001-0049-0041"]


@pytest.fixture(autouse=True)
def recovery_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SIMA_RECOVERY_DIR", str(tmp_path / "recovery"))


def test_imagej_roundtrip_through_the_widget(viewer, qtbot, examples, tmp_path, notifications):
    import roifile

    from napari_sima._widgets.roi_widget import ROIManagerWidget

    # a dataset folder in tmp_path for the read-only example movie
    seq = Sequence.create("TIFF", str(examples / "example.tif"))
    ds = ImagingDataset([seq], tmp_path / "example.sima")
    assert ds.frame_shape[:3] == IM_SHAPE
    for data, kwargs, layer_type in dataset_layer_data(ds, "example", source=ds.savedir):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    widget = ROIManagerWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.dataset is ds and widget.layer is None

    # import the RoiSet into a new set named after the file
    assert widget.import_imagej(examples / "imageJ_ROIs.zip") == 2
    assert widget.current_set == "imageJ_ROIs"
    layer = widget.layer
    assert layer.features["label"].tolist() == NAMES
    assert any(" mean" in lay.name for lay in viewer.layers)
    # the imported outlines cover the pixels of ImageJ's own polygons
    for ij, k in zip(roifile.roiread(examples / "imageJ_ROIs.zip"), range(2), strict=True):
        expected = poly2mask(ij.coordinates().astype(float), IM_SHAPE)[0].toarray()
        got = poly2mask([np.asarray(layer.data[k])[:, [2, 1]] + 0.5], IM_SHAPE)[0].toarray()
        np.testing.assert_array_equal(got, expected)
    assert widget.save_set() == "imageJ_ROIs"
    imported = {r.label: r for r in ImagingDataset.load(ds.savedir).ROIs["imageJ_ROIs"]}

    # edit: move the first ROI by (+2 rows, -3 columns), delete the second, draw a new one
    data = list(layer.data)
    data[0] = data[0] + np.array([0.0, 2.0, -3.0])
    layer.data = data
    assert widget.is_dirty
    layer.selected_data = {1}
    assert widget.delete_selected() == 1
    layer.add(
        np.array([[0, 60.5, 150.5], [0, 60.5, 160.5], [0, 70.5, 160.5], [0, 70.5, 150.5]]),
        shape_type="polygon",
    )
    layer.selected_data = {1}
    assert widget.set_label("new-cell") == 1
    assert widget.add_tags("PV") == 1
    assert widget.mark_selected("accepted") == 1
    layer.selected_data = {0}
    assert widget.add_tags("moved") == 1
    assert widget.save_set() == "imageJ_ROIs"
    assert not notifications.messages("error")

    # reload the dataset from disk
    saved = ImagingDataset.load(ds.savedir).ROIs["imageJ_ROIs"]
    assert [r.label for r in saved] == [NAMES[0], "new-cell"]
    moved, new = saved
    assert moved.tags == {"moved"} and new.tags == {"PV", "accepted"}
    original = imported[NAMES[0]].polygon_arrays[0]
    np.testing.assert_allclose(moved.polygon_arrays[0], original + [-3.0, 2.0, 0.0], atol=1e-9)
    np.testing.assert_array_equal(
        np.asarray(moved)[0],
        np.roll(np.roll(np.asarray(imported[NAMES[0]])[0], 2, axis=0), -3, axis=1),
    )
    expected = np.zeros(IM_SHAPE, dtype=bool)
    expected[0, 61:71, 151:161] = True
    np.testing.assert_array_equal(np.asarray(new), expected)

    # export to ImageJ and read back with roifile
    out = tmp_path / "exported.zip"
    assert widget.export_imagej(out) == 2
    back = roifile.roiread(out)
    assert [r.name for r in back] == [NAMES[0], "new-cell"]
    for ij, roi in zip(back, saved, strict=True):
        np.testing.assert_allclose(ij.coordinates(), roi.polygon_arrays[0][:, :2], atol=1e-3)

    # and the export imports again into another set, unchanged
    assert widget.new_set("reimported")
    assert widget.import_imagej(out) == 2
    assert widget.save_set() == "reimported"
    again = ImagingDataset.load(ds.savedir).ROIs["reimported"]
    assert [r.label for r in again] == [NAMES[0], "new-cell"]
    for a, b in zip(again, saved, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
