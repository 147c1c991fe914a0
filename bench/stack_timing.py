"""Whole-stack timing shared by the benches that time a model-mode stack (bench_cpu_stack.py on a CPU,
bench_diffusers_gpu.py on a GPU): the machine's load while it runs, the plate's depth estimator at full size, and
one stack timed with its progress log."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def cpu_ticks() -> tuple[int, int, int]:
    """(busy, steal, total) clock ticks of all CPUs since boot, from /proc/stat's first line (what vmstat reads)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq, steal, sum(fields[:8])


class HostLoad:
    """The machine's state while a stack runs: steal on average and at worst over SAMPLE_SECONDS windows, and the
    CPU time every process together took (ours included), sampled in a thread from /proc/stat."""

    SAMPLE_SECONDS = 2.0

    def __init__(self):
        self.windows: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        last = cpu_ticks()
        while not self._stop.wait(self.SAMPLE_SECONDS):
            now = cpu_ticks()
            total = now[2] - last[2]
            if total > 0:
                self.windows.append(100.0 * (now[1] - last[1]) / total)
            last = now

    def __enter__(self):
        self.start = cpu_ticks()
        self.load_before = loadavg()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        end = cpu_ticks()
        ticks = os.sysconf("SC_CLK_TCK")
        total = max(1, end[2] - self.start[2])
        self.steal = 100.0 * (end[1] - self.start[1]) / total
        self.steal_max = max(self.windows, default=self.steal)
        self.busy_seconds = (end[0] - self.start[0]) / ticks
        self.load_after = loadavg()
        return False


def build_depth_anything_small(folder: Path, small: bool) -> Path:
    """Depth Anything V2 Small (the plate's default estimator) from its published config, random weights, saved in
    `folder` with its image processor, to load the user's way (a folder). small: the tests' tiny one, for --dry-run."""
    import torch
    from tiny_models import build_depth_anything, rescale_weights
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessorPil

    if small:
        return build_depth_anything(folder)
    # depth-anything/Depth-Anything-V2-Small-hf, config.json
    backbone = Dinov2Config(image_size=518, patch_size=14, hidden_size=384, num_hidden_layers=12,
                            num_attention_heads=6, mlp_ratio=4, layerscale_value=1.0,
                            out_features=["stage3", "stage6", "stage9", "stage12"], reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=384, patch_size=14,
                              neck_hidden_sizes=[48, 96, 192, 384], reassemble_factors=[4, 2, 1, 0.5],
                              fusion_hidden_size=64, head_hidden_size=32, depth_estimation_type="relative")
    net = DepthAnythingForDepthEstimation(cfg).eval()
    # With the default init (std 0.02) the map varies by ~1e-7 and can round to too few values to cut three layers;
    # weights that keep the signal's scale, and the head's last convolution lifted above its final ReLU, give a map
    # that varies with the plate (as tiny_models' estimators do). Its cost does not depend on the values.
    rescale_weights(net)
    with torch.no_grad():
        [c for c in net.head.modules() if isinstance(c, torch.nn.Conv2d)][-1].bias.fill_(2.0)
    net.save_pretrained(str(folder))
    DPTImageProcessorPil(size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
                         resample=3, do_pad=False).save_pretrained(str(folder))
    return folder


def picture_steps(info: dict, steps: int) -> int:
    """One picture through one denoising step, summed over the stack's passes (the plate's or the scaffold's render,
    the layers' repaints, the harmonising pass)."""
    if info.get("composition") != "plate":
        return steps * len(info.get("layers", {}) or [None] * 3)
    total = steps  # the plate
    total += sum(len(call["layers"]) * call["steps_run"] for call in info.get("calls", []))
    return total + int((info.get("harmonize") or {}).get("steps_run") or 0)


def run_stack(backend, options, w: int, h: int, what: str, prompt: str) -> dict:
    """One whole stack with `backend`, timed, with its progress log and the longest gap in it."""
    import torch

    from layers.pipeline import build_stack
    from layers.plan import plan_scene

    stamps: list[tuple[float, str]] = []

    def progress(fraction: float, text: str) -> None:
        stamps.append((time.perf_counter(), text))
        print(f"  {stamps[-1][0] - start:7.1f} s  {fraction:4.0%}  {text}", flush=True)

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with HostLoad() as host:
        start, cpu_start = time.perf_counter(), time.process_time()
        plan = plan_scene(prompt, seed=1, width=w, height=h, count_tokens=backend.count_tokens,
                          token_budget=backend.token_budget)
        result = build_stack(plan, backend, options=options, progress=progress)
        result.stack.composite()
        total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    times = [start] + [s for s, _ in stamps] + [start + total]
    gaps = [(b - a, stamps[i - 1][1] if i else "start") for i, (a, b) in enumerate(zip(times, times[1:]))]
    longest, after = max(gaps)
    stages = ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items())
    cut = result.render_info.get("decompose", {}).get("timings", {})
    covered = _covered_share(result.stack)
    steps = picture_steps(result.render_info, options.steps)
    print(f"whole stack {w}x{h}, {what}, 3 layers ({result.render_info.get('composition')} composition): "
          f"{total:.1f} s, {steps} picture-steps")
    print(f"stages: {stages}")
    if cut:
        print(f"cutting the plate: {', '.join(f'{k} {v:.2f}' for k, v in cut.items())} s; the nearer layers cover "
              f"{covered:.0%} of the background")
    for notice in result.render_info.get("notices", []):
        print(f"notice: {notice}")
    threads = torch.get_num_threads()
    print(f"process CPU time: {cpu:.1f} s over {threads} threads ({cpu / threads:.0f} s if every thread were busy "
          f"all the time; a load-independent figure on a shared machine, and a lower bound of the wall time)")
    others = max(0.0, host.busy_seconds - cpu)
    print(f"machine: steal {host.steal:.1f} % on average, {host.steal_max:.1f} % at worst over "
          f"{HostLoad.SAMPLE_SECONDS:g} s; other processes {others:.1f} CPU-s; load average {host.load_before} before, "
          f"{host.load_after} after")
    print(f"longest gap between progress updates: {longest:.1f} s (after '{after}')", flush=True)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    if cuda:
        print(f"peak GPU memory: {peak:.2f} GiB", flush=True)
    return {"wall": total, "cpu": cpu, "peak_gib": peak, "cut": cut, "covered": covered, "picture_steps": steps,
            "stages": stages, "gap": longest, "steal": host.steal, "steal_max": host.steal_max, "others": others,
            "load": f"{host.load_before.split()[0]} → {host.load_after.split()[0]}"}




def _covered_share(stack) -> float:
    """The share of the frame where the layers nearer than the background are opaque (alpha >= 0.5): what the
    background's fill had to invent."""
    import numpy as np

    nearer = [np.asarray(layer.rgba)[..., 3] >= 128 for layer in list(stack.layers)[1:]]
    return float(np.logical_or.reduce(nearer).mean()) if nearer else 0.0
