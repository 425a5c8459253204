"""Transform estimation between sessions: speed and accuracy per method.

* **Speed**: time to estimate the transform between two 512 x 512 images (a synthetic
  two-photon-like texture; the target is the source rotated by 7 degrees and shifted
  by (12, -9) pixels, both with independent noise), per method, best of a few
  repeats; for 'affine' also with SIFT instead of ORB features, and without features.
* **Accuracy**: RMS error (pixels) of ROI-like points spread over the source frame,
  for SIMA's example image (time average of ``example.tif``, 128 x 256) moved by a
  grid of rotations (-10..10 degrees), scales (0.9..1.1) and shifts (up to 20 px),
  noise 0.5 x the image's s.d. added to both images; 'euclidean' only gets the
  scale-1 cases (it has no scale).  The flexible methods also get a smooth non-rigid
  bend (2 px) on top of the affine map ("bend" rows).

Run ``python benchmarks/bench_transform.py [--quick]``: prints markdown tables and
writes ``benchmarks/results/transform.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent.parent / "shared" / "data" / "sima-examples" / "example.tif"
METHODS = ("euclidean", "similarity", "affine", "projective", "polynomial", "piecewise-affine")


def _about_centre(shape, angle=0.0, scale=1.0, shift=(0.0, 0.0)):
    from skimage import transform as sk

    rows, cols = shape
    c = np.array([cols / 2, rows / 2])
    m = (
        sk.AffineTransform(translation=c + np.asarray(shift)).params
        @ sk.SimilarityTransform(scale=scale, rotation=np.deg2rad(angle)).params
        @ sk.AffineTransform(translation=-c).params
    )
    return sk.AffineTransform(matrix=m)


def _warp(image, inverse):
    from skimage.transform import warp

    return warp(
        image, lambda cr: inverse(cr + 0.5) - 0.5, order=3, mode="reflect", preserve_range=True
    )


def _bend(shape, amplitude):
    rows, cols = shape

    def f(xy):
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack(
            [x + amplitude * np.sin(np.pi * y / rows), y + amplitude * np.cos(np.pi * x / cols)]
        )

    return f


def _texture(shape, seed=0):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    img = 1.0 + 0.3 * ndimage.gaussian_filter(rng.normal(size=shape), 4)
    n = int(shape[0] * shape[1] / 120)
    ys, xs = rng.uniform(0, shape[0], n), rng.uniform(0, shape[1], n)
    rs = rng.uniform(2.5, 4.5, n)
    dots = np.zeros(shape)
    iy = np.clip(ys.astype(int), 0, shape[0] - 1)
    ix = np.clip(xs.astype(int), 0, shape[1] - 1)
    np.add.at(dots, (iy, ix), 1.0)
    img -= 0.6 * 2 * np.pi * 3.5**2 * ndimage.gaussian_filter(dots, float(np.mean(rs)))
    return img


def _pair(image, inverse, noise, seed):
    rng = np.random.default_rng(seed)
    sd = noise * image.std()
    return (
        image + sd * rng.normal(size=image.shape),
        _warp(image, inverse) + sd * rng.normal(size=image.shape),
    )


def _points(shape, margin=24):
    rows, cols = shape
    gx, gy = np.meshgrid(
        np.linspace(margin, cols - margin, 10), np.linspace(margin, rows - margin, 6)
    )
    return np.column_stack([gx.ravel(), gy.ravel()])


def _rms(estimate, inverse, points) -> float:
    back = inverse(estimate(points))
    return float(np.sqrt(np.mean(np.sum((back - points) ** 2, axis=1))))


def speed(quick: bool) -> dict[str, Any]:
    """Seconds to estimate a transform between two 512 x 512 images, per method."""
    from napari_sima.core.transform import ImageRegistration

    shape = (512, 512)
    image = _texture(shape)
    truth = _about_centre(shape, angle=7, scale=1.0, shift=(12, -9))
    source, target = _pair(image, truth.inverse, 0.5, 0)
    pts = _points(shape, 48)
    repeats = 1 if quick else 3
    ImageRegistration().estimate(source[:128, :128], target[:128, :128], "affine")  # warm up
    out: dict[str, Any] = {}
    runs = [(m, "orb") for m in METHODS] + [("affine", "sift"), ("affine", None)]
    for method, detector in runs:
        reg = ImageRegistration(detector=detector)
        best, est = float("inf"), None
        for _ in range(repeats):
            t0 = time.perf_counter()
            est = reg.estimate(source, target, method)
            best = min(best, time.perf_counter() - t0)
        key = method if detector == "orb" else f"{method} ({detector or 'no features'})"
        out[key] = {"seconds": round(best, 3), "rms_px": round(_rms(est, truth.inverse, pts), 4)}
    return out


def accuracy(quick: bool) -> dict[str, Any]:
    """RMS error per method over a grid of rotations, scales and shifts."""
    import tifffile

    from napari_sima.core.transform import TransformError, estimate_image_transform

    image = tifffile.imread(EXAMPLE).astype(float).mean(axis=0)
    shape = image.shape
    pts = _points(shape)
    angles = (-10, 0, 10) if quick else (-10, -5, 0, 5, 10)
    scales = (0.9, 1.1) if quick else (0.9, 1.0, 1.1)
    shifts = ((20, -20), (-15, 10), (0, 20))
    cases = []
    for i, angle in enumerate(angles):
        for j, scale in enumerate(scales):
            cases.append((angle, scale, shifts[(i + j) % len(shifts)]))
    if quick:
        cases.append((7, 1.0, (20, 20)))
    table: dict[str, Any] = {}
    for method in METHODS:
        errors, failures = [], []
        for k, (angle, scale, shift) in enumerate(cases):
            if method == "euclidean" and scale != 1.0:
                continue
            truth = _about_centre(shape, angle, scale, shift)
            source, target = _pair(image, truth.inverse, 0.5, 100 + k)
            try:
                est = estimate_image_transform(source, target, method)
            except TransformError as err:
                failures.append(f"{angle} deg, x{scale}, {shift}: {err}")
                continue
            errors.append(_rms(est, truth.inverse, pts))
        row = _summary(errors, failures)
        table[method] = row
    for method in ("polynomial", "piecewise-affine"):
        errors, failures = [], []
        for k, (angle, scale, shift) in enumerate(cases[:: 2 if not quick else 3]):
            affine = _about_centre(shape, angle, scale, shift)
            wobble = _bend(shape, 2.0)

            def inverse(xy, affine=affine, wobble=wobble):
                return wobble(affine.inverse(xy))

            source, target = _pair(image, inverse, 0.5, 200 + k)
            kw = {"order": 3} if method == "polynomial" else {}
            try:
                est = estimate_image_transform(source, target, method, **kw)
            except TransformError as err:
                failures.append(str(err))
                continue
            errors.append(_rms(est, inverse, pts))
        table[f"{method} + bend" + (" (order 3)" if method == "polynomial" else "")] = _summary(
            errors, failures
        )
    return table


def _summary(errors: list[float], failures: list[str]) -> dict[str, Any]:
    e = np.asarray(errors) if errors else np.array([np.nan])
    return {
        "cases": len(errors) + len(failures),
        "failed": len(failures),
        "median_rms_px": round(float(np.median(e)), 4),
        "max_rms_px": round(float(np.max(e)), 4),
        "failures": failures,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Run both parts; return the numbers."""
    t0 = time.perf_counter()
    out = {"speed_512x512": speed(quick)}
    out["accuracy_example"] = accuracy(quick)
    out["total_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def markdown(res: dict[str, Any]) -> str:
    lines = ["| method (512 x 512) | seconds | RMS error (px) |", "|---|---:|---:|"]
    for k, v in res["speed_512x512"].items():
        lines.append(f"| {k} | {v['seconds']:.2f} | {v['rms_px']:.3f} |")
    lines += [
        "",
        "| method (example.tif, grid) | cases | failed | median RMS (px) | max RMS (px) |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, v in res["accuracy_example"].items():
        lines.append(
            f"| {k} | {v['cases']} | {v['failed']} | {v['median_rms_px']:.3f} | "
            f"{v['max_rms_px']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    res = run(quick="--quick" in argv)
    print(markdown(res))
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "transform.json").write_text(
        json.dumps({"benchmark": "transform", "quick": "--quick" in argv, "results": res}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
