"""ROI <-> napari Shapes benchmark: conversions, layer creation and rasterisation.

Builds 2,000 polygon ROIs (about 30 vertices each, cell-sized: radius 4-10 px) in a
512 x 512 frame and times, each best of a few repeats:

* ``rois_to_shapes``  — ROIs -> Shapes keyword arguments;
* ``shapes_layer``    — ``napari.layers.Shapes(**kwargs)`` (headless, no viewer);
* ``shapes_to_rois``  — the layer back to ROIs (unchanged shapes: original vertices);
* ``shapes_to_rois_edited`` — the same vertices without the layer's metadata, i.e.
  every ROI rebuilt from napari's vertices (what happens after editing all shapes);
* ``rasterise``       — ``[r.mask for r in rois]`` (SIMA's pixel-centre rule).

Targets: each < 1 s.  Run ``python benchmarks/bench_rois.py [--quick]``.

Shapes layer creation is dominated by napari's polygon triangulation.  napari's
settings (loaded here as a viewer would) pick the fastest installed backend:
with ``bermuda`` (``napari[bermuda]``) 2,000 cell outlines take well under a second;
without it napari triangulates non-convex polygons in pure Python (vispy), about
6-7 ms per polygon.  The result records the backend used and whether ``bermuda`` is
importable.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

FRAME = (512, 512)
TARGET_SECONDS = 1.0

#: Compiled triangulation modules napari uses when installed.
COMPILED_BACKENDS = ("bermuda", "PartSegCore_compiled_backend", "triangle")


def make_rois(n: int, seed: int = 0, n_vertices: int = 30):
    """Return ``n`` random cell-like polygon ROIs in a 512 x 512 frame."""
    from napari_sima.core import ROI, ROIList

    rng = np.random.default_rng(seed)
    rois = []
    for k in range(n):
        cx, cy = rng.uniform(12, FRAME[1] - 12), rng.uniform(12, FRAME[0] - 12)
        radius = rng.uniform(4, 10)
        t = np.sort(rng.uniform(0, 2 * np.pi, n_vertices))
        r = radius * rng.uniform(0.85, 1.15, n_vertices)
        xy = np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)])
        tags = {"accepted"} if k % 3 == 0 else set()
        rois.append(ROI(polygons=xy, label=f"cell {k}", id=str(k), tags=tags, im_shape=FRAME))
    return ROIList(rois)


def _best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(quick: bool = False) -> dict:
    """Run the benchmark; return timings in seconds and whether targets were met."""
    import importlib.util

    import napari
    from napari.settings import get_settings

    from napari_sima._roi_convert import rois_to_shapes, shapes_to_rois

    backend_setting = str(get_settings().experimental.triangulation_backend)

    n = 200 if quick else 2000
    repeats = 1 if quick else 3
    rois = make_rois(n)
    n_vertices = int(sum(len(p) for r in rois for p in r.polygon_arrays))

    t_to, kwargs = _best(lambda: rois_to_shapes(rois), repeats)
    napari.layers.Shapes(**rois_to_shapes(rois[:5]))  # warm up compiled backends
    t_layer, layer = _best(lambda: napari.layers.Shapes(**kwargs), 1)
    if t_layer < 2 * TARGET_SECONDS:
        t_layer = min(t_layer, _best(lambda: napari.layers.Shapes(**kwargs), repeats)[0])
    t_back, back = _best(lambda: shapes_to_rois(layer, im_shape=FRAME), repeats)
    edited = {
        "data": layer.data,
        "shape_type": layer.shape_type,
        "features": layer.features,
    }
    t_edit, back_edit = _best(lambda: shapes_to_rois(edited, im_shape=FRAME), repeats)
    t_mask, masks = _best(lambda: [r.mask for r in rois], repeats)

    assert len(back) == len(rois) == len(back_edit)
    assert all(
        np.array_equal(a.polygon_arrays[0], b.polygon_arrays[0])
        for a, b in zip(rois, back, strict=True)
    )
    pixels = int(sum(m[0].nnz for m in masks))
    timings = {
        "rois_to_shapes": t_to,
        "shapes_layer": t_layer,
        "shapes_to_rois": t_back,
        "shapes_to_rois_edited": t_edit,
        "rasterise": t_mask,
    }
    return {
        "n_rois": n,
        "n_vertices": n_vertices,
        "mask_pixels": pixels,
        "frame": list(FRAME),
        "repeats": repeats,
        "napari": napari.__version__,
        "triangulation_backend": backend_setting,
        "compiled_triangulation": [m for m in COMPILED_BACKENDS if m in sys.modules] or None,
        "bermuda_installed": importlib.util.find_spec("bermuda") is not None,
        "seconds": {k: round(v, 4) for k, v in timings.items()},
        "target_seconds": TARGET_SECONDS,
        "all_within_target": bool(all(v < TARGET_SECONDS for v in timings.values())),
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
