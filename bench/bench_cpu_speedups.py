"""Which CPU settings make the few-step stack faster: one UNet+ControlNet step and one VAE decode at full size.

Usage: python bench/bench_cpu_speedups.py [--reps 2] [--dry-run]

The lcm-sd15 architecture (bench_diffusers_gpu.py's configs, random weights) in the dtype the CPU default preset
uses here, a batch of 3 layers at 512x768 (latents 64x96). Variants are run alternately (A, B, A, B, ...) in one
process so that load from other jobs on a shared machine falls on both alike; reported: the median wall and
process CPU time of each, and the load average before and after.
  step:   UNet + ControlNet forward, contiguous vs channels_last (model and inputs)
  decode: VAE decode of the batch in one call, one image at a time (slicing), channels_last; the tiny decoder
          (TAESD, AutoencoderTiny), contiguous and channels_last
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stack_timing import loadavg  # noqa: E402
from bench_diffusers_gpu import FAMILIES, TAESD, tiny  # noqa: E402


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--only", choices=("step", "decode"))
    args = ap.parse_args()

    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny, ControlNetModel, UNet2DConditionModel

    from layers.backends.auto import cpu_dtype

    dtype = getattr(torch, cpu_dtype())
    shrink = tiny if args.dry_run else (lambda c: c)
    spec = FAMILIES["lcm"]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**shrink(spec["unet"])).to(dtype=dtype).eval()
    cn = ControlNetModel(**shrink(spec["controlnet"])).to(dtype=dtype).eval()
    vae = AutoencoderKL(**shrink(spec["vae"])).to(dtype=dtype).eval()
    taesd = AutoencoderTiny(**shrink(TAESD)).to(dtype=dtype).eval()
    h, w = (64, 96) if args.dry_run else (768, 512)
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    n = 3
    lat = torch.randn(n, unet.config.in_channels, h // f, w // f, dtype=dtype)
    ctx = torch.randn(n, 77, unet.config.cross_attention_dim, dtype=dtype)
    cond = torch.rand(n, 3, h, w, dtype=dtype)
    t = torch.tensor(500)
    wemb = torch.randn(n, unet.config.time_cond_proj_dim, dtype=dtype) if unet.config.time_cond_proj_dim else None
    print(f"{cpu_dtype()}, {torch.get_num_threads()} threads, {w}x{h}, batch {n}; load average before {loadavg()}",
          flush=True)

    def step(fmt):
        def run():
            x = lat.contiguous(memory_format=fmt)
            c = cond.contiguous(memory_format=fmt)
            with torch.inference_mode():
                down, mid = cn(x, t, encoder_hidden_states=ctx, controlnet_cond=c, return_dict=False)
                unet(x, t, encoder_hidden_states=ctx, timestep_cond=wemb, down_block_additional_residuals=down,
                     mid_block_additional_residual=mid, return_dict=False)
        return run

    def decode(fmt, sliced, model=vae):
        def run():
            x = lat.contiguous(memory_format=fmt) / model.config.scaling_factor
            with torch.inference_mode():
                if sliced:
                    torch.cat([model.decode(x[i:i + 1]).sample for i in range(n)])
                else:
                    model.decode(x).sample
        return run

    def fmt_models(fmt):
        for m in (unet, cn, vae, taesd):
            m.to(memory_format=fmt)

    cl, cf = torch.channels_last, torch.contiguous_format
    groups = {
        "step": {"contiguous": (cf, step(cf)), "channels_last": (cl, step(cl))},
        "decode": {"batch of 3": (cf, decode(cf, False)), "one at a time": (cf, decode(cf, True)),
                   "batch, channels_last": (cl, decode(cl, False)),
                   "tiny decoder": (cf, decode(cf, False, taesd)),
                   "tiny, channels_last": (cl, decode(cl, False, taesd))},
    }
    for group, variants in groups.items():
        if args.only and group != args.only:
            continue
        times = {k: [] for k in variants}
        for rep in range(args.reps):
            for name, (fmt, fn) in variants.items():
                fmt_models(fmt)
                times[name].append(timed(fn))
                print(f"  {group} rep {rep + 1} {name}: {times[name][-1][0]:.1f} s wall, "
                      f"{times[name][-1][1]:.1f} s CPU", flush=True)
        for name, ts in times.items():
            print(f"{group:6} {name:22} median {statistics.median(a for a, _ in ts):6.1f} s wall, "
                  f"{statistics.median(b for _, b in ts):6.1f} s CPU", flush=True)
    print(f"load average after {loadavg()}")


if __name__ == "__main__":
    main()
