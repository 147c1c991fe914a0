"""Score picture-to-parallax against a real stereo camera.

Decompose the left image of a rectified stereo pair with its true disparity as the depth map, render the view
of the right camera (every pixel moves left by its disparity), and compare with the real right image: PSNR
over the frame (leaving out a strip as wide as the largest disparity at each side) and over the disoccluded
pixels (seen by the right camera, hidden from the left one). Four simple renderers are scored in the same run:

- ``no parallax``: the left image as is;
- ``three flat cards``: three depth bands, each moved by its median disparity, holes stretched along the row;
- ``one layer warped per pixel``: each pixel moved by its own disparity (nearest wins), holes stretched from
  the nearest pixel of the row (what single-image parallax tools do);
- ``same, holes filled from the farther side``: as above, each hole stretched from its farther edge;
- ``layercake``: ``layers.decompose`` (3 layers, offline fill) + ``parallax.render_view``.

The table gives wall seconds and the process's own CPU seconds per renderer (``--json`` keeps the four
documented keys).

With no arguments it scores the Middlebury motorcycle pair shipped in scikit-image's wheel
(``skimage.data.stereo_motorcycle``). ``--left L --right R --disparity D [--disparity-scale S]`` scores any
rectified pair: D is ``.npz`` / ``.npy`` in pixels, or a PNG whose value / S is the disparity; 0 (or
non-finite) = unknown.

    python bench/bench_stereo.py [--json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layers.decompose import decompose  # noqa: E402
from layers.parallax import render_view  # noqa: E402

NAMES = (
    "no parallax (left image as is)",
    "three flat cards, holes stretched",
    "one layer warped per pixel, holes stretched from the nearest pixel",
    "same, holes filled from the farther side of each gap",
    "layercake",
)


def load_pair(left=None, right=None, disparity=None, scale: float = 1.0):
    """(left uint8 (H, W, 3), right uint8, disparity float32 (H, W) in px with NaN = unknown)."""
    if left is None:
        from skimage import data

        l_img, r_img, disp = data.stereo_motorcycle()
        disp = disp.astype(np.float32)
    else:
        l_img = np.asarray(Image.open(left).convert("RGB"))
        r_img = np.asarray(Image.open(right).convert("RGB"))
        path = Path(disparity)
        if path.suffix.lower() == ".npz":
            with np.load(path) as z:
                disp = z[z.files[0]].astype(np.float32)
        elif path.suffix.lower() == ".npy":
            disp = np.load(path).astype(np.float32)
        else:
            disp = np.asarray(Image.open(path), dtype=np.float32) / float(scale)
        disp = np.where(disp > 0, disp, np.nan)
    if l_img.shape != r_img.shape or disp.shape != l_img.shape[:2]:
        raise SystemExit(f"left {l_img.shape}, right {r_img.shape} and disparity {disp.shape} must match")
    disp = np.where(np.isfinite(disp), disp, np.nan).astype(np.float32)
    return l_img, r_img, disp


def _nearest_filled(disp: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    unknown = ~np.isfinite(disp)
    if not unknown.any():
        return disp
    idx = ndimage.distance_transform_edt(unknown, return_distances=False, return_indices=True)
    return disp[tuple(idx)]


def _splat(values: np.ndarray, disp: np.ndarray, known: np.ndarray):
    """Forward warp to the right view, nearest (largest disparity) wins; -> (image, disparity, covered)."""
    h, w = disp.shape
    out = np.zeros_like(values, dtype=np.float32)
    zbuf = np.full((h, w), -np.inf, np.float32)
    ys, xs = np.nonzero(known)
    d = disp[ys, xs]
    order = np.argsort(d, kind="stable")  # far first, near last: later writes win
    ys, xs, d = ys[order], xs[order], d[order]
    for target in (np.floor(xs - d), np.ceil(xs - d)):
        t = target.astype(np.intp)
        ok = (t >= 0) & (t < w)
        better = d[ok] >= zbuf[ys[ok], t[ok]]
        yy, tt, src = ys[ok][better], t[ok][better], xs[ok][better]
        out[yy, tt] = values[yy, src]
        zbuf[yy, tt] = d[ok][better]
    covered = np.isfinite(zbuf)
    return out, zbuf, covered


def _fill_rows(image: np.ndarray, zbuf: np.ndarray, covered: np.ndarray, farther: bool) -> np.ndarray:
    """Fill uncovered pixels along each row from the nearest covered pixel (or the farther edge of the gap)."""
    h, w = covered.shape
    cols = np.arange(w)
    left_idx = np.where(covered, cols[None, :], -1)
    left_idx = np.maximum.accumulate(left_idx, axis=1)
    right_idx = np.where(covered, cols[None, :], w)
    right_idx = np.minimum.accumulate(right_idx[:, ::-1], axis=1)[:, ::-1]
    has_l, has_r = left_idx >= 0, right_idx < w
    li, ri = np.clip(left_idx, 0, w - 1), np.clip(right_idx, 0, w - 1)
    rows = np.arange(h)[:, None]
    if farther:
        zl = np.where(has_l, zbuf[rows, li], np.inf)
        zr = np.where(has_r, zbuf[rows, ri], np.inf)
        use_left = zl <= zr
    else:
        use_left = (cols[None, :] - left_idx) <= (right_idx - cols[None, :])
    use_left = np.where(~has_r, True, np.where(~has_l, False, use_left))
    src = np.where(use_left, li, ri)
    filled = image[rows, src]
    return np.where(covered[..., None], image, filled)


def render_flat_cards(left, disp):
    d = _nearest_filled(disp)
    cuts = np.quantile(d, [1 / 3, 2 / 3])
    band = np.searchsorted(cuts, d, side="right")
    h, w = d.shape
    out = np.zeros_like(left, dtype=np.float32)
    zbuf = np.full((h, w), -np.inf, np.float32)
    for k in range(3):
        mask = band == k
        if not mask.any():
            continue
        shift = int(round(float(np.median(d[mask]))))
        img = np.zeros_like(out)
        m = np.zeros((h, w), bool)
        img[:, :w - shift] = left[:, shift:]
        m[:, :w - shift] = mask[:, shift:]
        out[m] = img[m]
        zbuf[m] = shift
    return _fill_rows(out, zbuf, np.isfinite(zbuf), farther=False)


def render_warp(left, disp, farther: bool):
    d = _nearest_filled(disp)
    img, zbuf, covered = _splat(left.astype(np.float32), d, np.ones(d.shape, bool))
    return _fill_rows(img, zbuf, covered, farther=farther)


def render_layercake(left, disp):
    d = _nearest_filled(disp)
    lo, hi = float(d.min()), float(d.max())
    result = decompose(Image.fromarray(left), d)
    return render_view(result.stack, shift=(-(hi - lo), -lo))


def disoccluded(disp: np.ndarray) -> np.ndarray:
    """Right-view pixels no left pixel of known disparity lands on (seen by the right camera only)."""
    known = np.isfinite(disp)
    _, _, covered = _splat(np.zeros(disp.shape + (1,), np.float32), np.where(known, disp, 0), known)
    return ~covered


def psnr(a, b, mask) -> float:
    diff = (np.asarray(a, np.float64) - np.asarray(b, np.float64))[mask]
    mse = float(np.mean(diff ** 2)) if diff.size else float("nan")
    return 10.0 * math.log10(255.0 ** 2 / max(mse, 1e-12))


def score(left, right, disp) -> list[dict]:
    """Rows {"renderer", "psnr_frame", "psnr_disoccluded", "seconds"} for the four references and ours."""
    h, w = disp.shape
    strip = int(math.ceil(np.nanmax(disp)))
    frame = np.zeros((h, w), bool)
    frame[:, strip:w - strip] = True
    hole = disoccluded(disp) & frame
    renderers = (
        lambda: left,
        lambda: render_flat_cards(left, disp),
        lambda: render_warp(left, disp, farther=False),
        lambda: render_warp(left, disp, farther=True),
        lambda: render_layercake(left, disp),
    )
    rows = []
    for name, render in zip(NAMES, renderers):
        t, cpu = time.perf_counter(), time.process_time()
        view = render()
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
        rows.append({"renderer": name, "psnr_frame": round(psnr(view, right, frame), 2),
                     "psnr_disoccluded": round(psnr(view, right, hole), 2), "seconds": round(seconds, 3),
                     "cpu_seconds": round(cpu, 3)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--left")
    parser.add_argument("--right")
    parser.add_argument("--disparity")
    parser.add_argument("--disparity-scale", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    given = [args.left, args.right, args.disparity]
    if any(given) and not all(given):
        parser.error("--left, --right and --disparity go together")
    if not args.disparity_scale > 0:
        parser.error("--disparity-scale must be > 0")
    left, right, disp = load_pair(args.left, args.right, args.disparity, args.disparity_scale)
    # Warm-up (first imports, numba loads), not timed.
    ramp = np.tile(np.linspace(1, 9, 96, dtype=np.float32), (64, 1))
    render_layercake(np.full((64, 96, 3), 128, np.uint8), ramp)
    rows = score(left, right, disp)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "cpu_seconds"} for r in rows]))
    else:
        # Wall seconds, and the process's own CPU seconds (what a busy shared machine inflates less).
        print("| renderer | PSNR frame | PSNR disoccluded | seconds | CPU seconds |\n| --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['renderer']} | {r['psnr_frame']:.1f} dB | {r['psnr_disoccluded']:.1f} dB "
                  f"| {r['seconds']:.2f} | {r['cpu_seconds']:.2f} |")
        print(f"load average: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}"
              if Path("/proc/loadavg").exists() else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
