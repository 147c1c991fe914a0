"""CPU time of a whole few-step (lcm-sd15) stack at full size: what `--backend diffusers` costs without a GPU.

Usage: python bench/bench_cpu_stack.py              (full size: 512x768, 4 steps, 3 layers; minutes)
       python bench/bench_cpu_stack.py --dry-run    (tiny configs at 96x64: checks the code in seconds)

No hub access: the LCM-distilled SD1.5 UNet, the SD1.5 depth ControlNet, both decoders (TAESD, which the CPU preset
takes, and the SD1.5 VAE of `--decoder full`) and the CLIP-L text encoder are built from their published configs
(bench_diffusers_gpu.py) with random weights, on the CPU in the dtype the CPU default preset uses there
(bfloat16 where the CPU computes it natively, else float32; --dtype to choose);
speed does not depend on weight values. The stack is what `python -m layers generate --backend diffusers`
renders on a CPU: plan, depth maps, the three layers in one 4-step pipeline call (LCM has no classifier-free
guidance, so the batch is 3), decoding, matting of two layers, composite. One cold run with the tiny decoder, as a
user's first stack is (no warm-up), then the same stack with the full VAE in the same process for comparison (warm
by then, which favours it).

Reported: seconds per stage and in all; the process's CPU time (on a shared machine, CPU seconds / threads is
close to what the stack takes where nothing else runs); the longest gap between two progress updates (how long the progress
bar stands still); the download the preset costs (float32 safetensors = 4 bytes per parameter of the files
from_pretrained fetches: UNet, text encoder, decoder, ControlNet; the safety checker is not fetched); the load
average before and after (the figure is inflated on a shared machine). Target: <= 90 s on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_diffusers_gpu import TAESD, build_pipeline, count_full_size_params, tiny  # noqa: E402  (sets up sys.path)

PROMPT = "a ruined gothic cathedral at dusk, two pilgrims in red cloaks, broken pillars and ivy in the foreground"
DOWNLOADED = {"tiny": ("lcm unet", "clip-l text", "taesd", "sd15 depth controlnet"),
              "full": ("lcm unet", "clip-l text", "vae", "sd15 depth controlnet")}
"""The components whose weights the lcm-sd15 preset downloads, by decoder (under the tiny one, the model's own VAE
is not fetched)."""


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny configs at 96x64: check the code")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), help="default: what the CPU default preset uses here")
    ap.add_argument("--decoders", default="tiny,full",
                    help="stacks to time, in order: tiny (TAESD, the CPU preset's) and/or full (the SD1.5 VAE)")
    args = ap.parse_args()

    import torch

    from diffusers import AutoencoderTiny

    from layers.backends.auto import cpu_dtype
    from layers.backends.diffusers import DiffusersBackend
    from layers.pipeline import GenerateOptions
    from tiny_models import write_clip_tokenizer

    counts = count_full_size_params(report=False)
    for decoder, parts in DOWNLOADED.items():
        params = sum(counts[k] for k in parts)
        print(f"lcm-sd15 download with the {decoder} decoder: {params:,} parameters x 4 bytes = "
              f"{params * 4 / 1e9:.2f} GB ({', '.join(f'{k} {counts[k] / 1e6:.1f}M' for k in parts)})")
    dtype = args.dtype or cpu_dtype()
    print(f"cpu: {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, {dtype}; "
          f"load average before {loadavg()}", flush=True)

    w, h = (96, 64) if args.dry_run else (512, 768)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_clip_tokenizer(Path(tmp) / "tokenizer")
        t = time.perf_counter()
        pipe = build_pipeline("lcm", torch.device("cpu"), getattr(torch, dtype), tokenizer, small=args.dry_run)
    decoders = {"full": pipe.vae,
                "tiny": AutoencoderTiny(**(tiny(TAESD) if args.dry_run else TAESD)).to(getattr(torch, dtype)).eval()}
    print(f"built {'tiny' if args.dry_run else 'full-size'} lcm pipeline and both decoders in "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    options = GenerateOptions(steps=args.steps, guidance=8.0, video=False)
    for decoder in args.decoders.split(","):
        pipe.vae = decoders[decoder]
        backend = DiffusersBackend.from_pipeline(pipe, model="random lcm-sd15")
        print(f"\n{decoder} decoder ({backend.model_info['decoder']}, {backend.model_info['memory_format']}):",
              flush=True)
        run_stack(backend, options, w, h, f"{dtype}, {decoder} decoder, {args.steps} steps")
    print(f"load average after {loadavg()} (a shared machine inflates the figure); target <= 90 s")


def run_stack(backend, options, w: int, h: int, what: str) -> None:
    """One whole stack with `backend`, timed, with its progress log and the longest gap in it."""
    import torch

    from layers.pipeline import build_stack
    from layers.plan import plan_scene

    stamps: list[tuple[float, str]] = []

    def progress(fraction: float, text: str) -> None:
        stamps.append((time.perf_counter(), text))
        print(f"  {stamps[-1][0] - start:7.1f} s  {fraction:4.0%}  {text}", flush=True)

    start, cpu_start = time.perf_counter(), time.process_time()
    plan = plan_scene(PROMPT, seed=1, width=w, height=h, count_tokens=backend.count_tokens)
    result = build_stack(plan, backend, options=options, progress=progress)
    result.stack.composite()
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    times = [start] + [s for s, _ in stamps] + [start + total]
    gaps = [(b - a, stamps[i - 1][1] if i else "start") for i, (a, b) in enumerate(zip(times, times[1:]))]
    longest, after = max(gaps)
    steps_done = next((s for s, text in stamps if "decoding" in text), start + total)
    render = result.render_info.get("timings", {})
    print(f"whole stack {w}x{h}, {what}, 3 layers ({result.render_info.get('batching')}): {total:.1f} s"
          f"  (depth {result.timings['depth']:.1f}, render {result.timings['render']:.1f} [text "
          f"{render.get('encode', 0):.1f}, pipeline {render.get('pipeline', 0):.1f}: steps until 'decoding' "
          f"{steps_done - start:.1f}], matte {result.timings['matte']:.1f})")
    threads = torch.get_num_threads()
    print(f"process CPU time: {cpu:.1f} s over {threads} threads, i.e. about {cpu / threads:.0f} s of wall time where "
          f"nothing else runs (a load-independent figure on a shared machine)")
    print(f"longest gap between progress updates: {longest:.1f} s (after '{after}')", flush=True)

if __name__ == "__main__":
    main()
