"""What our code adds around the diffusion pipeline call, on CPU with the tiny test models.

Usage: .venv/bin/python bench/bench_overhead.py [--size 128x192] [--steps 4] [--repeat 3] [--threads 1]

A tiny SD1.5 depth-ControlNet pipeline (tests/tiny_models.py) is saved to a temp folder and loaded with
DiffusersBackend(model=DIR), like `--model DIR`. One scene then goes through the real flow: plan_scene,
build_depth_maps, the backend's render (prompt encoding, control images, the pipeline call), matting (all
through layers.pipeline.generate, which times each stage), and write_outputs (PNGs, 16-bit depth, PSD, ORA, ZIP, manifest, parallax MP4). The backend times its pipeline
call and its prompt encoding (RenderResult.info["timings"]); the encoding is work the pipeline would do inside
the call if given the prompt strings, so it is listed on its own. Prints the median of the repeats after a
warm-up run.
Target: our code <= 10% of the pipeline call, or an account of where the time goes.
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
# Idle OpenMP threads of the matting (numba) must sleep, not spin, or every later torch op on this CPU slows
# down several times (see tests/conftest.py). Read when the OpenMP runtime loads: before importing torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PROMPT = ("a ruined gothic cathedral at dusk, two pilgrims in red cloaks in the nave, broken pillars and ivy in the "
          "foreground, gold rim light from the left, painterly, 2:3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="128x192", help="WxH (default %(default)s)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; the tiny model's ops are too small to share (default %(default)s)")
    ap.add_argument("--no-video", action="store_true", help="skip the parallax MP4 among the exports")
    args = ap.parse_args()
    width, height = map(int, args.size.lower().split("x"))

    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    from tiny_models import build_sd15

    from layers.backends.diffusers import DiffusersBackend
    from layers.pipeline import GenerateOptions, generate, write_outputs
    from layers.plan import LAYER_NAMES
    imports = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        model_dir = build_sd15(Path(tmp) / "tiny_sd15")
        built = time.perf_counter() - t
        t = time.perf_counter()
        backend = DiffusersBackend(model=str(model_dir))
        loaded = time.perf_counter() - t
        options = GenerateOptions(steps=args.steps, guidance=5.0, video=not args.no_video)
        print(f"setup: imports {imports:.1f}s, build tiny model {built:.1f}s, load {loaded:.1f}s; "
              f"{width}x{height}, {args.steps} steps, torch threads {torch.get_num_threads()}")

        runs = []
        for run in range(args.repeat + 1):  # run 0 warms up (lazy imports, numba JIT in the matting)
            stage = {}
            result = generate(PROMPT, backend, seed=run, width=width, height=height, options=options)
            rendered_info = result.render_info
            stage["plan"] = result.timings["plan"]
            stage["depth maps"] = result.timings["depth"]
            stage["pipeline call"] = rendered_info["timings"]["pipeline"]
            stage["prompt encoding"] = rendered_info["timings"]["encode"]
            stage["backend, the rest"] = result.timings["render"] - stage["pipeline call"] - stage["prompt encoding"]
            stage["matting"] = result.timings["matte"]
            with tempfile.TemporaryDirectory() as out:
                t = time.perf_counter()
                write_outputs(result, Path(out) / "stack")
                stage["exports"] = time.perf_counter() - t
            if rendered_info["batching"] != "batched":
                sys.exit(f"expected one batched pipeline call, got {rendered_info['batching']}")
            if run:
                runs.append(stage)
        # For comparison: the stock pipeline's own encoding of the same prompts (it truncates them at 77 tokens).
        seen = rendered_info["layers"]
        stock = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            backend.pipe.encode_prompt([seen[n]["prompt"] for n in LAYER_NAMES], torch.device("cpu"), 1, True,
                                       [seen[n]["negative_prompt"] for n in LAYER_NAMES])
            stock.append(time.perf_counter() - t)

    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    call = median["pipeline call"]
    ours = sum(v for k, v in median.items() if k not in ("pipeline call", "prompt encoding"))
    print(f"\n{'stage':<28}{'seconds':>10}{'% of call':>12}")
    for k, v in median.items():
        print(f"{k:<28}{v:>10.3f}{100 * v / call:>11.1f}%")
    print("-" * 50)
    print(f"{'our code around the call':<28}{ours:>10.3f}{100 * ours / call:>11.1f}%   (without prompt encoding)")
    enc = median["prompt encoding"]
    print(f"{'  + prompt encoding':<28}{ours + enc:>10.3f}{100 * (ours + enc) / call:>11.1f}%")
    print(f"(the stock pipeline's own encode_prompt of the same 3 + 3 prompts: {statistics.median(stock):.3f}s)")
    print(f"ratio our code / pipeline call: {ours / call:.3f} ({(ours + enc) / call:.3f} counting the encoding); "
          f"median of {args.repeat} runs after a warm-up")


if __name__ == "__main__":
    main()
