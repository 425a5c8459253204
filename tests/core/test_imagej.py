"""ImageJ ROI import/export through roifile (``napari_sima.core.imagej``)."""

from __future__ import annotations

import os
import warnings
import zipfile

import numpy as np
import pytest
import roifile
import tifffile
from roifile import ROI_OPTIONS, ROI_SUBTYPE, ROI_TYPE, ImagejRoi

from napari_sima.core import imagej
from napari_sima.core.imagej import read_imagej_rois, write_imagej_rois
from napari_sima.core.roi import ROI, ROIList


# --------------------------------------------------------------------------- helpers
def centre_mask(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """SIMA's rule, computed independently: even-odd ray test on pixel centres, with
    centres lying exactly on an edge counted as outside."""
    rows, cols = shape
    cx, cy = np.meshgrid(np.arange(cols) + 0.5, np.arange(rows) + 0.5)
    xy = np.asarray(xy, dtype=float)
    inside = np.zeros(shape, dtype=bool)
    on_edge = np.zeros(shape, dtype=bool)
    for (xa, ya), (xb, yb) in zip(xy, np.roll(xy, -1, axis=0), strict=True):
        cross = (xb - xa) * (cy - ya) - (yb - ya) * (cx - xa)
        within = (
            (np.minimum(xa, xb) <= cx)
            & (cx <= np.maximum(xa, xb))
            & (np.minimum(ya, yb) <= cy)
            & (cy <= np.maximum(ya, yb))
        )
        on_edge |= (cross == 0) & within
        if ya != yb:
            crosses = (ya > cy) != (yb > cy)
            x_at = xa + (cy - ya) * (xb - xa) / (yb - ya)
            inside ^= crosses & (cx < x_at)
    return inside & ~on_edge


def single_warning(record, text: str):
    hits = [w for w in record if issubclass(w.category, UserWarning) and text in str(w.message)]
    assert len(hits) == 1, [str(w.message) for w in record]
    return str(hits[0].message)


def polygon_roi(xy, name="", roitype=ROI_TYPE.POLYGON, **kwargs) -> ImagejRoi:
    roi = ImagejRoi.frompoints(np.asarray(xy), name=name, **kwargs)
    roi.roitype = roitype
    return roi


def bounds_roi(roitype, left, top, right, bottom, name="") -> ImagejRoi:
    roi = ImagejRoi()
    roi.roitype = roitype
    roi.left, roi.top, roi.right, roi.bottom = left, top, right, bottom
    roi.name = name
    return roi


def composite_roi(rings, name="") -> ImagejRoi:
    path = []
    for ring in rings:
        path += [0, *ring[0]]
        for x, y in ring[1:]:
            path += [1, x, y]
        path.append(4)
    xy = np.concatenate([np.asarray(r, float) for r in rings])
    roi = ImagejRoi()
    roi.roitype = ROI_TYPE.RECT
    roi.multi_coordinates = np.asarray(path, np.float32)
    roi.shape_roi_size = len(path)
    roi.left, roi.top = (int(v) for v in np.floor(xy.min(0)))
    roi.right, roi.bottom = (int(v) for v in np.ceil(xy.max(0)))
    roi.name = name
    return roi


def write_zip(path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def square(x0, y0, s=4.0):
    return [[x0, y0], [x0 + s, y0], [x0 + s, y0 + s], [x0, y0 + s]]


def assert_same_rois(a: list[ROI], b: list[ROI]) -> None:
    assert [r.label for r in a] == [r.label for r in b]
    for ra, rb in zip(a, b, strict=True):
        pa, pb = ra.polygon_arrays, rb.polygon_arrays
        assert len(pa) == len(pb), ra.label
        for va, vb in zip(pa, pb, strict=True):
            assert va.shape == vb.shape
            np.testing.assert_allclose(va, vb, atol=1e-3)


# --------------------------------------------------------------------------- real data
def test_sima_example_rois_match_rasterisation_rule(examples):
    path = examples / "imageJ_ROIs.zip"
    frame = tifffile.TiffFile(examples / "example.tif").series[0].shape[-2:]
    assert frame == (128, 256)
    rois = read_imagej_rois(path, im_shape=frame)
    assert [r.label for r in rois] == ["0001-0087-0085", "0001-0049-0041"]
    raw = roifile.roiread(path)
    # section 4.5: vertex counts and bounding boxes (top, left, bottom, right)
    expected = {"0001-0087-0085": (66, (76, 75, 98, 96)), "0001-0049-0041": (50, (43, 33, 56, 50))}
    for roi, ij in zip(rois, raw, strict=True):
        n, (top, left, bottom, right) = expected[roi.label]
        xy = ij.coordinates()
        assert len(xy) == n
        assert (ij.top, ij.left, ij.bottom, ij.right) == (top, left, bottom, right)
        assert tuple(xy.min(0)) == (left, top) and tuple(xy.max(0)) == (right, bottom)
        assert roi.kind == "polygons" and roi.im_shape == (1, 128, 256)
        (verts,) = roi.polygon_arrays
        assert np.all(verts[:, 2] == 0)  # position 1 -> z = 0
        # our polygons drop collinear vertices (SIMA did too), same bbox
        assert tuple(verts[:, :2].min(0)) == (left, top)
        assert tuple(verts[:, :2].max(0)) == (right, bottom)
        mask = roi.mask
        assert len(mask) == 1
        np.testing.assert_array_equal(mask[0].toarray(), centre_mask(xy, frame))
    assert [r.size for r in rois] == [355, 197]


def test_sima_example_via_roilist(examples):
    rois = ROIList.load(examples / "imageJ_ROIs.zip", fmt="ImageJ", im_shape=(128, 256))
    assert isinstance(rois, ROIList) and len(rois) == 2


# --------------------------------------------------------------------------- types
def test_area_types(tmp_path):
    tri = [[1, 1], [9, 2], [4, 8]]
    sub = [[1.25, 1.5], [9.75, 2.125], [4.5, 8.875]]
    traced = [[10, 10], [14, 10], [14, 13], [10, 13]]
    rois = [
        polygon_roi(tri, "poly"),
        polygon_roi(sub, "free", ROI_TYPE.FREEHAND),
        polygon_roi(traced, "traced", ROI_TYPE.TRACED),
        bounds_roi(ROI_TYPE.RECT, 2, 3, 7, 5, "rect"),
        bounds_roi(ROI_TYPE.OVAL, 3, 4, 11, 10, "oval"),
    ]
    subrect = bounds_roi(ROI_TYPE.RECT, 0, 0, 0, 0, "subrect")
    subrect.options = ROI_OPTIONS.SUB_PIXEL_RESOLUTION
    subrect.xd, subrect.yd, subrect.widthd, subrect.heightd = 2.5, 3.25, 4.0, 2.5
    rois.append(subrect)
    assert rois[1].subpixelresolution
    path = tmp_path / "types.zip"
    roifile.roiwrite(path, rois)
    out = {r.label: r for r in read_imagej_rois(path, im_shape=(20, 20))}
    assert list(out) == ["poly", "free", "traced", "rect", "oval", "subrect"]
    assert all(r.kind == "polygons" for r in out.values())
    np.testing.assert_array_equal(out["poly"].polygon_arrays[0][:, :2], tri)
    np.testing.assert_allclose(out["free"].polygon_arrays[0][:, :2], sub, atol=1e-6)
    assert sorted(map(tuple, out["traced"].polygon_arrays[0][:, :2])) == sorted(map(tuple, traced))
    rect = out["rect"].mask[0].toarray()
    assert rect.sum() == 10 and rect[3:5, 2:7].all()  # rows 3-4, cols 2-6
    np.testing.assert_allclose(
        sorted(map(tuple, out["subrect"].polygon_arrays[0][:, :2])),
        [(2.5, 3.25), (2.5, 5.75), (6.5, 3.25), (6.5, 5.75)],
    )
    # small ovals: exactly roifile's own polygon (33 points, closing point dropped)
    oval_xy = roifile.roiread(path)[4].coordinates()
    np.testing.assert_allclose(out["oval"].polygon_arrays[0][:, :2], oval_xy[:-1], atol=1e-5)
    np.testing.assert_array_equal(out["oval"].mask[0].toarray(), centre_mask(oval_xy, (20, 20)))


def test_large_oval_gets_more_vertices(tmp_path):
    roifile.roiwrite(tmp_path / "o.zip", [bounds_roi(ROI_TYPE.OVAL, 0, 0, 100, 60, "big")])
    (roi,) = read_imagej_rois(tmp_path / "o.zip")
    xy = roi.polygon_arrays[0][:, :2]
    assert len(xy) > 300
    # vertices on the ellipse inscribed in the bounds
    np.testing.assert_allclose(
        ((xy[:, 0] - 50) / 50) ** 2 + ((xy[:, 1] - 30) / 30) ** 2, 1, atol=1e-5
    )


def test_ellipse_subtype_uses_outline(tmp_path):
    ring = [[5.5, 2.0], [8.0, 5.0], [5.5, 8.0], [3.0, 5.0]]
    ij = polygon_roi(ring, "ell", ROI_TYPE.FREEHAND)
    ij.subtype = ROI_SUBTYPE.ELLIPSE
    ij.x1, ij.y1, ij.x2, ij.y2 = 5.5, 2.0, 5.5, 8.0
    ij.tofile(tmp_path / "e.roi")
    (roi,) = read_imagej_rois(tmp_path / "e.roi")
    np.testing.assert_allclose(roi.polygon_arrays[0][:, :2], ring)


def test_composite_disjoint_parts_are_polygons(tmp_path):
    ij = composite_roi([square(1, 1), square(10, 2, 3)], "two")
    ij.tofile(tmp_path / "c.roi")
    (roi,) = read_imagej_rois(tmp_path / "c.roi", im_shape=(16, 16))
    assert roi.kind == "polygons" and len(roi.polygon_arrays) == 2
    assert roi.size == 16 + 9


def test_composite_with_hole_is_an_evenodd_mask(tmp_path):
    outer, hole = square(2, 2, 8), square(4, 4, 3)
    composite_roi([outer, hole], "donut").tofile(tmp_path / "d.roi")
    with pytest.warns(UserWarning, match="holes") as record:
        (roi,) = read_imagej_rois(tmp_path / "d.roi", im_shape=(12, 12))
    assert "donut" in single_warning(record, "holes")
    assert roi.kind == "mask" and roi.label == "donut"
    expected = centre_mask(np.array(outer), (12, 12)) ^ centre_mask(np.array(hole), (12, 12))
    np.testing.assert_array_equal(roi.mask[0].toarray(), expected)
    assert roi.size == 64 - 9
    # without im_shape the mask covers the ROI's extent
    with pytest.warns(UserWarning):
        (roi,) = read_imagej_rois(tmp_path / "d.roi")
    assert roi.im_shape == (1, 10, 10)
    np.testing.assert_array_equal(roi.mask[0].toarray(), expected[:10, :10])


def test_non_area_types_skipped_with_one_warning(tmp_path):
    pts = [[1, 1], [5, 2], [3, 6]]
    rois = [polygon_roi(pts, "keep")]
    for t in (ROI_TYPE.POINT, ROI_TYPE.POLYLINE, ROI_TYPE.FREELINE, ROI_TYPE.ANGLE, ROI_TYPE.NOROI):
        rois.append(polygon_roi(pts, f"a-{t.name.lower()}", t))
    line = ImagejRoi()
    line.roitype, line.name = ROI_TYPE.LINE, "a-line"
    line.x1, line.y1, line.x2, line.y2 = 1.0, 1.0, 8.0, 5.0
    rois.append(line)
    text = bounds_roi(ROI_TYPE.RECT, 1, 1, 9, 4, "a-text")
    text.subtype, text.text = ROI_SUBTYPE.TEXT, "hello"
    rois.append(text)
    roifile.roiwrite(tmp_path / "mixed.zip", rois)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = read_imagej_rois(tmp_path / "mixed.zip")
    assert [r.label for r in out] == ["keep"]
    assert len(record) == 1
    msg = str(record[0].message)
    for name, kind in [
        ("a-point", "point"),
        ("a-polyline", "polyline"),
        ("a-freeline", "freeline"),
        ("a-angle", "angle"),
        ("a-noroi", "noroi"),
        ("a-line", "line"),
        ("a-text", "text"),
    ]:
        assert f"'{name}'" in msg and kind in msg


def test_degenerate_roi_skipped(tmp_path):
    roifile.roiwrite(
        tmp_path / "deg.zip",
        [
            polygon_roi([[1, 1], [5, 5], [1, 1]], "flat"),
            polygon_roi([[1, 1], [2, 2], [3, 3]], "line3"),
            polygon_roi(square(0, 0), "ok"),
        ],
    )
    with pytest.warns(UserWarning) as record:
        out = read_imagej_rois(tmp_path / "deg.zip")
    msg = single_warning(record, "fewer than 3 distinct vertices")
    assert "'flat'" in msg and "'line3'" in msg
    assert [r.label for r in out] == ["ok"]


# --------------------------------------------------------------------------- labels
def test_label_rules(tmp_path):
    write_zip(
        tmp_path / "labels.zip",
        {
            "cell_ratio.roi": polygon_roi(square(0, 0)).tobytes(),  # unnamed -> member name
            "RoiSet/other.ROI": polygon_roi(square(0, 0)).tobytes(),
            "member.roi": polygon_roi(square(0, 0), "own name").tobytes(),
            "roi.roi.roi": polygon_roi(square(0, 0)).tobytes(),
        },
    )
    labels = [r.label for r in read_imagej_rois(tmp_path / "labels.zip")]
    assert labels == ["cell_ratio", "other", "own name", "roi.roi"]
    polygon_roi(square(0, 0)).tofile(tmp_path / "single_cell.roi")
    assert read_imagej_rois(tmp_path / "single_cell.roi")[0].label == "single_cell"


def test_same_names_from_imagej_are_not_merged(tmp_path):
    write_zip(
        tmp_path / "dup.zip",
        {
            "a.roi": polygon_roi(square(0, 0), "cell").tobytes(),
            "b.roi": polygon_roi(square(5, 5), "cell").tobytes(),
        },
    )
    out = read_imagej_rois(tmp_path / "dup.zip")
    assert [r.label for r in out] == ["cell", "cell"]


# --------------------------------------------------------------------------- planes
def test_plane_from_position_and_hyperstack_position(tmp_path):
    rois = [
        polygon_roi(square(0, 0), "none"),
        polygon_roi(square(0, 0), "pos3", position=2),  # frompoints: 0-based -> stored 3
        polygon_roi(square(0, 0), "hyper2", z=1),
        polygon_roi(square(0, 0), "both", position=5, z=2),  # hyperstack z wins
    ]
    assert rois[1].position == 3 and rois[2].z_position == 2
    roifile.roiwrite(tmp_path / "z.zip", rois)
    out = read_imagej_rois(tmp_path / "z.zip")
    assert [int(r.polygon_arrays[0][0, 2]) for r in out] == [0, 2, 1, 2]
    out = read_imagej_rois(tmp_path / "z.zip", im_shape=(3, 10, 10))
    assert [int(r.polygon_arrays[0][0, 2]) for r in out] == [0, 2, 1, 2]
    assert all(r.im_shape == (3, 10, 10) for r in out)


def test_position_outside_planes_goes_to_plane_zero(tmp_path):
    roifile.roiwrite(
        tmp_path / "t.zip",
        [
            polygon_roi(square(1, 1), "frame57", position=56),
            polygon_roi(square(1, 1), "first", position=0),
        ],
    )
    # without im_shape: SIMA's rule, position - 1
    assert int(read_imagej_rois(tmp_path / "t.zip")[0].polygon_arrays[0][0, 2]) == 56
    with pytest.warns(UserWarning) as record:
        out = read_imagej_rois(tmp_path / "t.zip", im_shape=(16, 16))
    msg = single_warning(record, "plane")
    assert "'frame57'" in msg and "'first'" not in msg
    assert [int(r.polygon_arrays[0][0, 2]) for r in out] == [0, 0]
    assert out[0].mask[0].nnz == 16


# --------------------------------------------------------------------------- im_shape
def test_rois_outside_the_image(tmp_path):
    roifile.roiwrite(
        tmp_path / "out.zip",
        [
            polygon_roi(square(30, 30), "far"),
            polygon_roi(square(-10, 2), "left"),  # touches nothing
            polygon_roi(square(8, 8), "partly"),  # half inside a 10 x 10 image
        ],
    )
    assert len(read_imagej_rois(tmp_path / "out.zip")) == 3
    with pytest.warns(UserWarning) as record:
        out = read_imagej_rois(tmp_path / "out.zip", im_shape=(10, 10))
    msg = single_warning(record, "outside")
    assert "'far'" in msg and "'left'" in msg and "'partly'" not in msg
    (partly,) = out
    assert partly.label == "partly" and partly.im_shape == (1, 10, 10)
    assert partly.size == 4  # clipped to rows/cols 8-9


def test_bad_im_shape(tmp_path):
    polygon_roi(square(0, 0)).tofile(tmp_path / "a.roi")
    with pytest.raises(ValueError, match="im_shape"):
        read_imagej_rois(tmp_path / "a.roi", im_shape=(0, 5))


# --------------------------------------------------------------------------- round trips
def test_roundtrip_polygon_rois(tmp_path):
    rng = np.random.default_rng(0)
    rois = []
    for k in range(5):
        centre = rng.uniform(10, 90, 2)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
        radii = rng.uniform(3, 8, 12)
        xy = centre + np.column_stack([radii * np.cos(angles), radii * np.sin(angles)])
        rois.append(
            ROI(polygons=xy, label=f"cell {k}", im_shape=(100, 100), id=str(k), tags={"a", "b"})
        )
    write_imagej_rois(tmp_path / "set.zip", rois)
    first = read_imagej_rois(tmp_path / "set.zip", im_shape=(100, 100))
    assert_same_rois(rois, first)
    assert [r.id for r in first] == ["0", "1", "2", "3", "4"]
    assert all(r.tags == {"a", "b"} for r in first)
    for a, b in zip(rois, first, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    write_imagej_rois(tmp_path / "again.zip", first)
    second = read_imagej_rois(tmp_path / "again.zip", im_shape=(100, 100))
    assert_same_rois(first, second)
    # ImageJ side: sub-pixel polygons, position and hyperstack z both set
    for ij in roifile.roiread(tmp_path / "set.zip"):
        assert ij.roitype == ROI_TYPE.POLYGON and ij.subpixelresolution
        assert ij.position == 1 and ij.z_position == 1


def test_roundtrip_sima_example(examples, tmp_path):
    first = read_imagej_rois(examples / "imageJ_ROIs.zip", im_shape=(128, 256))
    ROIList(first).save(tmp_path / "copy.zip", fmt="ImageJ")
    second = ROIList.load(tmp_path / "copy.zip", fmt="ImageJ", im_shape=(128, 256))
    assert_same_rois(first, second)
    assert zipfile.ZipFile(tmp_path / "copy.zip").namelist() == [
        "0001-0087-0085.roi",
        "0001-0049-0041.roi",
    ]


def test_roundtrip_multi_polygon_and_three_planes(tmp_path):
    multi = ROI(
        polygons=[
            np.column_stack([square(1, 1), np.zeros(4)]),
            np.column_stack([square(3, 3), np.zeros(4)]),  # overlaps the first
            np.column_stack([square(10, 10, 2.5), np.full(4, 2.0)]),
        ],
        label="multi",
        im_shape=(3, 20, 20),
    )
    planes = [
        ROI(
            polygons=np.column_stack([square(2 + z, 4, 3.5), np.full(4, float(z))]),
            label=f"z{z}",
            im_shape=(3, 20, 20),
        )
        for z in range(3)
    ]
    rois = [multi, *planes]
    write_imagej_rois(tmp_path / "m.zip", rois)
    raw = roifile.roiread(tmp_path / "m.zip")
    assert len(raw) == 6 and [r.name for r in raw[:3]] == ["multi"] * 3
    assert [r.z_position for r in raw] == [1, 1, 3, 1, 2, 3]
    assert [r.position for r in raw] == [1, 1, 3, 1, 2, 3]
    out = read_imagej_rois(tmp_path / "m.zip", im_shape=(3, 20, 20))
    assert_same_rois(rois, out)
    for a, b in zip(rois, out, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    # and once more through the reader's output
    write_imagej_rois(tmp_path / "m2.zip", out)
    assert_same_rois(out, read_imagej_rois(tmp_path / "m2.zip", im_shape=(3, 20, 20)))


def test_roundtrip_mask_rois(tmp_path):
    donut = np.zeros((2, 16, 16), dtype=bool)
    donut[0, 2:10, 2:10] = True
    donut[0, 4:7, 4:7] = False  # a hole
    donut[1, 11:14, 3:5] = True
    blobs = np.zeros((16, 16), dtype=bool)
    blobs[1:3, 1:4] = True
    blobs[8:12, 9:13] = True
    rois = [
        ROI(mask=donut, label="donut"),
        ROI(mask=blobs, label="blobs"),
        ROI(mask=blobs[None, :8, :8].astype(float), label="float01"),
    ]
    with pytest.warns(UserWarning, match="holes"):
        write_imagej_rois(tmp_path / "mask.zip", rois)
        out = read_imagej_rois(tmp_path / "mask.zip", im_shape=(2, 16, 16))
    raw = roifile.roiread(tmp_path / "mask.zip")
    assert raw[0].composite and raw[0].z_position == 1 and raw[1].z_position == 2
    assert [r.label for r in out] == ["donut", "blobs", "float01"]
    assert out[0].kind == "mask" and out[1].kind == "polygons"
    np.testing.assert_array_equal(np.array(out[0]), donut)
    np.testing.assert_array_equal(np.array(out[1])[0], blobs)
    assert out[2].size == 6


def test_weighted_mask_refused(tmp_path):
    weights = np.zeros((8, 8))
    weights[2:4, 2:4] = 0.25
    with pytest.raises(ValueError, match="'seg'.*weighted"):
        write_imagej_rois(tmp_path / "w.zip", [ROI(mask=weights, label="seg")])
    assert not (tmp_path / "w.zip").exists()


def test_duplicate_and_missing_labels(tmp_path):
    rois = [
        ROI(polygons=square(k, k), label=label)
        for k, label in enumerate(["cell", "cell", None, "cell-2", "", "cell"])
    ]
    with pytest.warns(UserWarning, match="duplicate") as record:
        write_imagej_rois(tmp_path / "d.zip", rois)
    assert "'cell' -> 'cell-3'" in str(record[0].message)
    names = ["cell", "cell-3", "roi-0003", "cell-2", "roi-0005", "cell-4"]
    assert [r.name for r in roifile.roiread(tmp_path / "d.zip")] == names
    assert [r.label for r in read_imagej_rois(tmp_path / "d.zip")] == names
    assert len(set(zipfile.ZipFile(tmp_path / "d.zip").namelist())) == 6


def test_single_roi_file_and_write_errors(tmp_path):
    roi = ROI(polygons=[[1.5, 1.25], [6.0, 1.0], [4.0, 7.75]], label="one")
    write_imagej_rois(tmp_path / "one.roi", [roi])
    assert isinstance(roifile.roiread(tmp_path / "one.roi"), ImagejRoi)
    assert_same_rois([roi], read_imagej_rois(tmp_path / "one.roi"))
    two = ROI(polygons=[square(0, 0), square(5, 5)], label="two")
    with pytest.raises(ValueError, match=".zip"):
        write_imagej_rois(tmp_path / "two.roi", [two])
    with pytest.raises(ValueError, match=".zip"), pytest.warns(UserWarning, match="duplicate"):
        write_imagej_rois(tmp_path / "x.roi", [roi, roi])
    with pytest.raises(ValueError, match="'.zip' or"):
        write_imagej_rois(tmp_path / "x.txt", [roi])
    with pytest.raises(ValueError, match="no ROIs"):
        write_imagej_rois(tmp_path / "x.zip", [])
    assert sorted(os.listdir(tmp_path)) == ["one.roi"]


def test_write_is_atomic(tmp_path, monkeypatch):
    rois = [ROI(polygons=square(0, 0), label="a"), ROI(polygons=square(5, 5), label="b")]
    target = tmp_path / "set.zip"
    calls = []

    def failing_writestr(self, name, data, *args, **kwargs):
        calls.append(name)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(self, name, data, *args, **kwargs)

    original = zipfile.ZipFile.writestr
    monkeypatch.setattr(zipfile.ZipFile, "writestr", failing_writestr)
    with pytest.raises(OSError, match="disk full"):
        write_imagej_rois(target, rois)
    assert os.listdir(tmp_path) == []  # no final file, no temporary left behind
    monkeypatch.undo()
    write_imagej_rois(target, rois[:1])
    before = target.read_bytes()
    monkeypatch.setattr(zipfile.ZipFile, "writestr", failing_writestr)
    calls.clear()
    with pytest.raises(OSError):
        write_imagej_rois(target, rois)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["set.zip"]


# --------------------------------------------------------------------------- TIFF overlays
def test_tiff_overlay(tmp_path):
    overlays = [
        polygon_roi(square(1, 1), "ov-a", position=1),
        polygon_roi([[2.5, 3.5], [7, 3], [5, 8.25]]),
    ]
    tifffile.imwrite(
        tmp_path / "img.tif",
        np.zeros((2, 12, 12), np.uint8),
        imagej=True,
        metadata={"Overlays": [r.tobytes() for r in overlays]},
    )
    out = read_imagej_rois(tmp_path / "img.tif", im_shape=(2, 12, 12))
    assert [r.label for r in out] == ["ov-a", None]
    assert int(out[0].polygon_arrays[0][0, 2]) == 1
    np.testing.assert_allclose(out[1].polygon_arrays[0][:, :2], [[2.5, 3.5], [7, 3], [5, 8.25]])
    # a '.tiff' name and a single overlay work too
    tifffile.imwrite(
        tmp_path / "one.tiff",
        np.zeros((12, 12), np.uint8),
        imagej=True,
        metadata={"Overlays": overlays[0].tobytes()},
    )
    assert [r.label for r in read_imagej_rois(tmp_path / "one.tiff")] == ["ov-a"]


def test_tiff_without_overlay(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="plain.tif.*not an ImageJ TIFF"):
        read_imagej_rois(tmp_path / "plain.tif")
    tifffile.imwrite(tmp_path / "ij.tif", np.zeros((4, 4), np.uint8), imagej=True)
    with pytest.raises(ValueError, match="no ROIs"):
        read_imagej_rois(tmp_path / "ij.tif")


# --------------------------------------------------------------------------- bad input
def test_zip_with_non_roi_members(tmp_path):
    good = polygon_roi(square(0, 0), "good").tobytes()
    write_zip(
        tmp_path / "mixed.zip",
        {"good.roi": good, "README.txt": b"hello", "__MACOSX/._good.roi": b"\x00\x05\x16\x07xx"},
    )
    with pytest.warns(UserWarning) as record:
        out = read_imagej_rois(tmp_path / "mixed.zip")
    msg = single_warning(record, "not ImageJ ROIs")
    assert "'README.txt'" in msg and "'__MACOSX/._good.roi'" in msg
    assert [r.label for r in out] == ["good"]
    write_zip(tmp_path / "text.zip", {"notes.txt": b"nothing here"})
    with pytest.raises(ValueError, match="no ImageJ ROIs.*notes.txt"):
        read_imagej_rois(tmp_path / "text.zip")


def test_truncated_rois(tmp_path):
    data = polygon_roi(np.array(square(0.5, 0.5)) * 3, "cut").tobytes()
    (tmp_path / "short.roi").write_bytes(data[:40])
    with pytest.raises(ValueError, match="short.roi.*truncated or corrupt"):
        read_imagej_rois(tmp_path / "short.roi")
    for cut in (70, 100, len(data) - 30, len(data) - 2):  # coords, floats, header 2, name
        (tmp_path / "cut.roi").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="cut.roi.*truncated or corrupt"):
            read_imagej_rois(tmp_path / "cut.roi")
    write_zip(
        tmp_path / "set.zip",
        {"fine.roi": polygon_roi(square(0, 0)).tobytes(), "broken.roi": data[:90]},
    )
    with pytest.raises(ValueError, match=r"set.zip.*member 'broken.roi'.*truncated"):
        read_imagej_rois(tmp_path / "set.zip")
    bad_path = composite_roi([square(0, 0)])
    bad_path.multi_coordinates = np.array([1, 2, 3, 7, 1, 1], np.float32)  # invalid command
    bad_path.shape_roi_size = 6
    bad_path.tofile(tmp_path / "path.roi")
    with pytest.raises(ValueError, match="path.roi.*corrupt"):
        read_imagej_rois(tmp_path / "path.roi")


def test_empty_missing_and_foreign_files(tmp_path):
    with zipfile.ZipFile(tmp_path / "empty.zip", "w"):
        pass
    with pytest.raises(ValueError, match="empty"):
        read_imagej_rois(tmp_path / "empty.zip")
    with pytest.raises(FileNotFoundError, match="nope.zip"):
        read_imagej_rois(tmp_path / "nope.zip")
    (tmp_path / "notes.roi").write_text("not a roi")
    with pytest.raises(ValueError, match="notes.roi.*not an ImageJ ROI"):
        read_imagej_rois(tmp_path / "notes.roi")
    (tmp_path / "fake.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(ValueError, match="fake.zip.*zip"):
        read_imagej_rois(tmp_path / "fake.zip")
    (tmp_path / "empty.roi").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.roi"):
        read_imagej_rois(tmp_path / "empty.roi")


def test_zip_bomb_guards(tmp_path, monkeypatch):
    big = b"Iout" + b"\x00" * 5000
    with zipfile.ZipFile(tmp_path / "big.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("huge.roi", big)
    monkeypatch.setattr(imagej, "MAX_MEMBER_BYTES", 1000)
    with pytest.raises(ValueError, match="'huge.roi'.*refusing"):
        read_imagej_rois(tmp_path / "big.zip")
    monkeypatch.undo()
    good = polygon_roi(square(0, 0)).tobytes()
    write_zip(tmp_path / "many.zip", {f"{k}.roi": good for k in range(6)})
    monkeypatch.setattr(imagej, "MAX_MEMBERS", 5)
    with pytest.raises(ValueError, match="6 members.*refusing"):
        read_imagej_rois(tmp_path / "many.zip")
    monkeypatch.undo()
    monkeypatch.setattr(imagej, "MAX_TOTAL_BYTES", 100)
    with pytest.raises(ValueError, match="refusing"):
        read_imagej_rois(tmp_path / "many.zip")
    monkeypatch.undo()
    assert len(read_imagej_rois(tmp_path / "many.zip")) == 6


def test_curved_composite_skipped(tmp_path):
    ij = composite_roi([square(0, 0)], "curvy")
    ij.multi_coordinates = np.array([0, 0, 0, 3, 1, 1, 2, 2, 4, 0, 4], np.float32)  # CUBICTO
    ij.shape_roi_size = len(ij.multi_coordinates)
    ij.tofile(tmp_path / "curvy.roi")
    with pytest.warns(UserWarning, match="'curvy'.*curved"):
        assert read_imagej_rois(tmp_path / "curvy.roi") == []


def test_imports_stay_headless():
    with open(imagej.__file__, encoding="utf-8") as fh:
        src = fh.read()
    for name in ("napari", "qtpy", "magicgui", "pyqtgraph"):
        assert f"import {name}" not in src and f"from {name}" not in src
