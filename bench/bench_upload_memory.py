"""Peak memory of one /decompose upload at the pixel limit: worked at the studio's budget, beside the same upload
worked at full size (the reference: what every upload cost before the budget).

Usage: .venv/bin/python bench/bench_upload_memory.py [--megapixels 39.9] [--reference-megapixels 39.9]
                                                     [--budget 8000000] [--out bench_upload_memory.json]

Each case runs in a fresh process (so one's memory cannot hide in another's), exactly as the /decompose endpoint
calls the studio: `Studio.decompose(picture, depth_map=...)` with the draft backend (offline fill), per-pixel
parallax and every export (PSD, ORA, ZIP, MP4, GLB, HTML). The upload is Middlebury's motorcycle (scikit-image's
stereo pair) scaled to the size asked, as a JPEG, with its disparity as a 16-bit PNG of the same size.

Peak resident memory is the kernel's high-water mark of the process (VmHWM), which includes the interpreter and
its imports; a psutil poll every 50 ms of the same process is printed beside it as a check. The reference case is
the same call with the budget raised to the pixel limit. --reference-megapixels 0 skips it (it needs ~9 GB at
39.9 MP and about 15 minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, re, sys, threading, time
import psutil
sys.path.insert(0, sys.argv[1])
from layers.backends import get_backend
from layers.pipeline import GenerateOptions
from layers.studio import Studio, StudioLimits

picture, depth, out, budget = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
me, peak = psutil.Process(), [0]
def poll():
    while True:
        peak[0] = max(peak[0], me.memory_info().rss)
        time.sleep(0.05)
threading.Thread(target=poll, daemon=True).start()
studio = Studio(get_backend("draft"), output_root=out, limits=StudioLimits(max_work_pixels=budget))
t = time.perf_counter()
run = studio.decompose(picture, depth_map=depth, options=GenerateOptions(displacement=1.0))
seconds = time.perf_counter() - t
hwm = int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
print(json.dumps({"seconds": round(seconds, 1), "vmhwm_mb": hwm // 2**20, "polled_mb": peak[0] // 2**20,
                  "worked_at": list(run.result.stack.size),
                  "notices": run.result.render_info["decompose"]["notices"]}))
"""


def make_upload(folder: Path, megapixels: float) -> tuple[Path, Path, tuple[int, int]]:
    """The motorcycle and its disparity, scaled to `megapixels`."""
    import numpy as np
    from PIL import Image
    from skimage import data

    left, _, disparity = data.stereo_motorcycle()
    h0, w0 = left.shape[:2]
    scale = (megapixels * 1e6 / (w0 * h0)) ** 0.5
    size = (int(w0 * scale), int(h0 * scale))
    picture = folder / f"moto-{megapixels}mp.jpg"
    Image.fromarray(left).resize(size, Image.Resampling.BICUBIC).save(picture, quality=92)
    disp = np.where(np.isfinite(disparity), disparity, 0)
    depth = folder / f"moto-{megapixels}mp-disparity.png"
    Image.fromarray((disp * 256).astype(np.uint16)).resize(size, Image.Resampling.NEAREST).save(depth)
    return picture, depth, size


def run_case(picture: Path, depth: Path, out: Path, budget: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(picture), str(depth), str(out), str(budget)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"case failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    from layers.images import MAX_IMAGE_PIXELS, MAX_WORK_PIXELS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megapixels", type=float, default=39.9, help="size of the upload (default 39.9)")
    parser.add_argument("--reference-megapixels", type=float, default=39.9,
                        help="size of the full-size reference upload; 0 skips it (default 39.9)")
    parser.add_argument("--budget", type=int, default=MAX_WORK_PIXELS, help="work budget in pixels (default: the "
                        "studio's)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="layercake-upload-bench-") as tmp:
        tmp = Path(tmp)
        cases = [("budget", args.megapixels, args.budget)]
        if args.reference_megapixels > 0:
            cases.append(("full size (reference)", args.reference_megapixels, MAX_IMAGE_PIXELS))
        for name, megapixels, budget in cases:
            picture, depth, size = make_upload(tmp, megapixels)
            t = time.perf_counter()
            figures = run_case(picture, depth, tmp / name.split()[0], budget)
            figures.update(upload=list(size), budget=budget, wall=round(time.perf_counter() - t, 1))
            results[name] = figures
            print(f"{name:<22} upload {size[0]}x{size[1]} ({megapixels} MP) worked at {figures['worked_at'][0]}x"
                  f"{figures['worked_at'][1]}: peak {figures['vmhwm_mb']} MB (polled {figures['polled_mb']} MB), "
                  f"{figures['seconds']} s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
