"""What cutting a plate into layers costs, fill by fill: the CPU work of a model-mode stack that does not shrink with a
faster GPU.

Usage: .venv/bin/python bench/bench_cut.py [--repeat 3] [--sizes 512x768,832x1216]

On a GPU the plate's cutting (layers.compose._cut: thresholds, matting the boundaries, each layer completed behind the
nearer ones) is most of a few-step stack (bench_diffusers_gpu.py). This times `decompose` on real photographs
(scikit-image's astronaut, coffee and chelsea, resized to the preset sizes) under a plate-like depth (a near disc
over a far-to-middle ramp: the three bands of a plate), side by side in one run:
  texture everywhere     every hidden part texture-filled (a plate whose background fill is re-noised below 1:
                         the few-step presets, 0.75)
  background discarded   the background smooth-filled, the midground texture-filled (a fill denoise of 1: sd15,
                         sdxl, lightning-sdxl, where the background's hidden part is inpainted from noise)
  smooth                 every hidden part smooth-filled (--fill smooth)
Reported: the median seconds of the fill and of the whole cut per photo and size, after one warm-up cut.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHOTOS = ("astronaut", "coffee", "chelsea")
CASES = {"texture everywhere": ("texture", ()), "background discarded": ("texture", ("background",)),
         "smooth": ("smooth", ())}


def plate_depth(w: int, h: int):
    import numpy as np

    y, x = np.mgrid[0:h, 0:w]
    disc = (x - w / 2) ** 2 + (y - 0.6 * h) ** 2 < (w / 4) ** 2
    return (y / h * 0.6 + 0.3 * disc).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sizes", default="512x768,832x1216")
    args = ap.parse_args()

    import numpy as np
    from PIL import Image
    from skimage import data

    from layers.decompose import DecomposeSettings, decompose

    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    print(f"| photo | size | {' | '.join(f'{c}: fill / cut' for c in CASES)} |")
    print(f"| --- | --- |{' --- |' * len(CASES)}")
    for w, h in sizes:
        depth = plate_depth(w, h)
        for name in PHOTOS:
            picture = Image.fromarray(np.asarray(getattr(data, name)())[..., :3]).resize((w, h))
            decompose(picture, depth, layers=3, seed=1)  # warm-up: the compiled kernels load
            times: dict[str, list] = {c: [] for c in CASES}
            for _ in range(args.repeat):  # alternately, so that other load falls on every case alike
                for case, (fill, discarded) in CASES.items():
                    t = time.perf_counter()
                    parts = decompose(picture, depth, layers=3, seed=1, settings=DecomposeSettings(fill=fill),
                                      discarded=discarded)
                    times[case].append((parts.info["timings"]["fill"], time.perf_counter() - t))
            cells = [f"{statistics.median(f for f, _ in v):.2f} / {statistics.median(c for _, c in v):.2f} s"
                     for v in times.values()]
            print(f"| {name} | {w}×{h} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
