"""ImageJ ROI reader and RoiSet writer contributions (napari_sima._roi_io)."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from napari_sima._roi_convert import rois_to_shapes, shapes_to_rois
from napari_sima._roi_io import get_roi_reader, read_roi_file, write_shapes_roiset
from napari_sima.core import ROI

roifile = pytest.importorskip("roifile")

EXAMPLE_LABELS = ["0001-0087-0085", "0001-0049-0041"]


def _roi_bytes(points, name="", roitype=None):
    roi = roifile.ImagejRoi.frompoints(np.asarray(points, dtype=float), name=name)
    if roitype is not None:
        roi.roitype = roitype
    return roi.tobytes()


def _napari_to_xy(data):
    """napari (…, y, x) vertices -> ImageJ/SIMA (x, y) corner coordinates."""
    data = np.asarray(data, dtype=float)
    return np.column_stack([data[:, -1] + 0.5, data[:, -2] + 0.5])


# ---------------------------------------------------------------------------------------
# get_roi_reader
# ---------------------------------------------------------------------------------------
def test_reader_declines_what_it_cannot_read(tmp_path):
    assert get_roi_reader(str(tmp_path / "missing.zip")) is None
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("readme.txt", "not ROIs")
    assert get_roi_reader(str(other)) is None
    notzip = tmp_path / "fake.zip"
    notzip.write_text("hello")
    assert get_roi_reader(str(notzip)) is None
    fake_roi = tmp_path / "fake.roi"
    fake_roi.write_bytes(b"nope" * 20)
    assert get_roi_reader(str(fake_roi)) is None
    assert get_roi_reader(str(tmp_path / "movie.tif")) is None
    assert get_roi_reader([]) is None


def test_read_example_roiset(examples):
    path = examples / "imageJ_ROIs.zip"
    reader = get_roi_reader(str(path))
    assert callable(reader)
    ((data, kwargs, layer_type),) = reader(str(path))
    assert layer_type == "shapes"
    assert len(data) == 2 and kwargs["name"] == "imageJ_ROIs"
    assert kwargs["features"]["label"].tolist() == EXAMPLE_LABELS
    meta = kwargs["metadata"]["napari_sima"]
    assert os.path.samefile(meta["source"], path)
    assert [len(d) for d in data] == [66, 50] or all(len(d) >= 3 for d in data)
    # vertices are the file's, in napari coordinates
    ij = roifile.roiread(str(path))
    for verts, roi in zip(data, ij, strict=True):
        xy = roi.coordinates()
        got = _napari_to_xy(verts)
        assert len(got) <= len(xy)
        assert {tuple(p) for p in np.round(got, 3)} <= {tuple(p) for p in np.round(xy, 3)}
    assert all(np.all(d[:, 0] == 0) for d in data)  # position 1 -> plane 0


def test_viewer_open_example_roiset(make_napari_viewer, examples):
    viewer = make_napari_viewer()
    layers = viewer.open(examples / "imageJ_ROIs.zip", plugin="napari-sima")
    assert len(layers) == 1
    layer = viewer.layers["imageJ_ROIs"]
    assert layer._type_string == "shapes"
    assert len(layer.data) == 2
    assert layer.features["label"].tolist() == EXAMPLE_LABELS
    rois = shapes_to_rois(layer, im_shape=(128, 256))
    assert [r.label for r in rois] == EXAMPLE_LABELS
    assert all(r.size > 100 for r in rois)


def test_single_roi_file_and_warnings_as_notifications(make_napari_viewer, tmp_path, notifications):
    single = tmp_path / "cell.roi"
    single.write_bytes(_roi_bytes([[2, 3], [10, 3], [10, 9], [2, 9]], name="cell"))
    viewer = make_napari_viewer()
    viewer.open(single, plugin="napari-sima")
    layer = viewer.layers["cell"]
    assert layer.features["label"].tolist() == ["cell"]
    (roi,) = shapes_to_rois(layer, im_shape=(12, 12))
    np.testing.assert_allclose(roi.polygon_arrays[0][:, :2], [[2, 3], [10, 3], [10, 9], [2, 9]])

    mixed = tmp_path / "mixed.zip"
    with zipfile.ZipFile(mixed, "w") as zf:
        zf.writestr("a.roi", _roi_bytes([[1, 1], [6, 1], [6, 6]], name="a"))
        zf.writestr("p.roi", _roi_bytes([[4, 4]], name="dot", roitype=roifile.ROI_TYPE.POINT))
    data, kwargs, _ = read_roi_file(mixed)
    assert kwargs["features"]["label"].tolist() == ["a"]
    warned = notifications.messages()
    assert any("mixed.zip" in m and "dot" in m for m in warned), warned


# ---------------------------------------------------------------------------------------
# write_shapes_roiset
# ---------------------------------------------------------------------------------------
def _check_roiset(path, layer):
    ij = roifile.roiread(str(path))
    assert len(ij) == len(layer.data)
    for roi, verts, label in zip(ij, layer.data, layer.features["label"], strict=True):
        if isinstance(label, str):
            assert roi.name == label
        np.testing.assert_allclose(roi.coordinates(), _napari_to_xy(verts), atol=1e-3)
    return ij


def test_viewer_save_layer_as_roiset(make_napari_viewer, tmp_path, examples):
    import napari

    viewer = make_napari_viewer()
    viewer.open(examples / "imageJ_ROIs.zip", plugin="napari-sima")
    layer = viewer.layers[0]
    layer.add(np.array([[0, 10, 10], [0, 10, 20], [0, 18, 15.5]]), shape_type="polygon")
    out = tmp_path / "saved.zip"
    written = viewer.layers.save(str(out), plugin="napari-sima")
    assert written == [str(out)]
    ij = _check_roiset(out, layer)
    assert [r.name for r in ij] == EXAMPLE_LABELS + ["roi-0003"]
    # napari.save_layers, and reading back with our reader
    out2 = tmp_path / "again.zip"
    assert napari.save_layers(str(out2), [layer], plugin="napari-sima") == [str(out2)]
    data, kwargs, _ = read_roi_file(out2)
    assert kwargs["features"]["label"].tolist() == EXAMPLE_LABELS + ["roi-0003"]
    for a, b in zip(data, layer.data, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3)


def test_writer_shapes_types_groups_and_properties(tmp_path, notifications):
    rois = [
        ROI(
            polygons=[[[1, 1, 0], [6, 1, 0], [6, 5, 0]], [[10, 10, 1], [14, 10, 1], [14, 15, 1]]],
            label="two",
            id="x7",
            tags={"accepted", "big"},
        ),
    ]
    kwargs = rois_to_shapes(rois)
    import napari

    layer = napari.layers.Shapes(**kwargs)
    layer.add(
        np.array([[0, 20, 20], [0, 20, 30], [0, 26, 30], [0, 26, 20.0]]), shape_type="ellipse"
    )
    layer.add(np.array([[0, 1, 1], [0, 5, 5.0]]), shape_type="line")
    written = write_shapes_roiset(str(tmp_path / "set"), layer.data, layer._get_state())
    assert any("3 (line)" in m for m in notifications.messages()), notifications.messages()
    assert written == [str(tmp_path / "set.zip")]
    ij = roifile.roiread(written[0])
    assert [r.name for r in ij] == ["two", "two", "roi-0002"]
    assert [r.position for r in ij] == [1, 2, 1]
    data, kw, _ = read_roi_file(written[0])
    back = shapes_to_rois(dict(kw, data=data))
    assert len(back) == 2
    assert back[0].label == "two" and back[0].id == "x7" and back[0].tags == {"accepted", "big"}
    assert len(back[1].polygon_arrays[0]) >= 16  # the polygonised ellipse


def test_writer_weighted_mask_and_errors(tmp_path, notifications):
    w = np.zeros((12, 12))
    w[2:6, 3:8] = 0.3
    kwargs = rois_to_shapes([ROI(mask=w, label="weights")])
    state = {k: v for k, v in kwargs.items() if k != "data"}
    (path,) = write_shapes_roiset(str(tmp_path / "w.zip"), kwargs["data"], state)
    data, kw, _ = read_roi_file(path)
    (roi,) = shapes_to_rois(dict(kw, data=data), im_shape=(12, 12))
    np.testing.assert_array_equal(roi.mask[0].toarray(), w > 0)
    with pytest.raises(ValueError, match="no shape with an area"):
        write_shapes_roiset(
            str(tmp_path / "l.zip"), [np.array([[0, 0], [3, 3.0]])], {"shape_type": ["line"]}
        )
    assert any("0 (line)" in m for m in notifications.messages())
    assert not (tmp_path / "l.zip").exists()
