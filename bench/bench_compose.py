"""What the plate composition costs over the scaffold composition, and where the time goes (CPU, tiny models).

Usage: .venv/bin/python bench/bench_compose.py [--size 256x384] [--steps 4] [--repeat 3] [--seed-file seeds/002_...]

Builds a tiny random SD1.5 depth-ControlNet pipeline and a tiny Depth Anything estimator (tests/tiny_models.py),
loads them the user's way, and renders the same prompt both ways in one run, side by side: composition="scaffold"
(three layer renders on the plan's scaffold) and composition="plate" (plate -> depth -> bands -> layers from the
plate -> harmonise). Both matte closed-form (no rembg weights offline), no video. Prints the median of the repeats
per stage, after a warm-up run of each that pays imports and first calls. Tiny random models: this measures the
pipeline's own work and the number and size of model calls, not what real weights cost on a GPU.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="256x384")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed-file", default=str(ROOT / "seeds" / "002_velvet_planetarium.txt"))
    args = ap.parse_args()
    width, height = map(int, args.size.split("x"))

    import torch

    from layers.backends.diffusers import DiffusersBackend
    from layers.pipeline import GenerateOptions, generate
    from tiny_models import build_depth_anything, build_sd15

    torch.set_num_threads(1)  # tiny ops: more threads only spin on a shared machine
    root = Path(tempfile.mkdtemp(prefix="bench_compose_"))
    backend = DiffusersBackend(model=str(build_sd15(root / "sd15")))
    estimator = str(build_depth_anything(root / "depth_anything"))
    prompt = Path(args.seed_file).read_text(encoding="utf-8")

    def run(composition):
        opts = GenerateOptions(steps=args.steps, composition=composition, depth_model=estimator,
                               matte_model="closed-form", video=False)
        t = time.perf_counter()
        result = generate(prompt, backend, seed=2, width=width, height=height, options=opts)
        return time.perf_counter() - t, result.timings

    rows = {}
    for composition in ("scaffold", "plate"):
        run(composition)  # warm-up
        totals, stages = [], {}
        for _ in range(args.repeat):
            total, timings = run(composition)
            totals.append(total)
            for k, v in timings.items():
                stages.setdefault(k, []).append(v)
        rows[composition] = (statistics.median(totals), {k: statistics.median(v) for k, v in stages.items()})

    print(f"tiny SD1.5 + tiny Depth Anything, {width}x{height}, {args.steps} steps, median of {args.repeat}, "
          f"load average {open('/proc/loadavg').read().split()[0]}")
    for composition, (total, stages) in rows.items():
        parts = ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
        print(f"  {composition:<8} {total:6.2f} s  ({parts})")
    extra = rows["plate"][0] - rows["scaffold"][0]
    print(f"  plate adds {extra:+.2f} s ({rows['plate'][0] / rows['scaffold'][0]:.2f}x the scaffold flow)")


if __name__ == "__main__":
    main()
