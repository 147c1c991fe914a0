"""Engine benchmark: seed 002 at 512x768 on the draft backend, every stage timed.

Usage: .venv/bin/python bench/bench_engine.py [--repeat 3] [--size 512x768]

Prints per-stage wall time (median of the repeats, after one warm-up run that pays imports and caches),
the whole generate + every export, 60 parallax frames before encoding, and peak RSS.
Targets: whole draft stack with all exports <= 3 s after imports; 60 frames <= 1 s; peak RSS <= 1 GB.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", default="512x768")
    args = ap.parse_args()
    width, height = map(int, args.size.split("x"))

    t = time.perf_counter()
    from layers.backends import get_backend
    from layers.export import export_ora, export_psd, export_zip
    from layers.parallax import render_parallax_frames, write_video
    from layers.pipeline import GenerateOptions, build_manifest, build_stack, write_outputs
    from layers.plan import plan_scene
    import layers.matte  # noqa: F401  (pymatting/numba load is part of imports)
    import pymatting  # noqa: F401
    imports = time.perf_counter() - t

    prompt = (ROOT / "seeds" / "002_velvet_planetarium.txt").read_text(encoding="utf-8")
    backend = get_backend("draft")
    options = GenerateOptions(frames=60)
    rows: dict[str, list[float]] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        value = fn()
        rows.setdefault(name, []).append(time.perf_counter() - t0)
        return value

    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat + 1):
            if i == 1:
                rows.clear()  # run 0 is the warm-up
            t_all = time.perf_counter()
            plan = timed("plan", lambda: plan_scene(prompt, 1, width=width, height=height))
            result = timed("depth + render + matte", lambda: build_stack(plan, backend, options=options))
            for stage, seconds in result.timings.items():
                rows.setdefault(f"  {stage}", []).append(seconds)
            out = Path(tmp) / f"run{i}"
            timed("write_outputs (pngs, psd, ora, zip, mp4, manifest)", lambda: write_outputs(result, out))
            rows.setdefault("WHOLE generate (draft + every export)", []).append(time.perf_counter() - t_all)

            stack = result.stack
            timed("  composite", stack.composite)
            timed("  export_psd", lambda: export_psd(stack, Path(tmp) / "x.psd"))
            timed("  export_ora", lambda: export_ora(stack, Path(tmp) / "x.ora"))
            timed("  export_zip", lambda: export_zip(stack, build_manifest(result), Path(tmp) / "x.zip"))
            frames = timed("60 parallax frames (sway, before encoding)",
                           lambda: render_parallax_frames(stack, "sway", frames=60))
            timed("  60 parallax frames (zoom)", lambda: render_parallax_frames(stack, "zoom", frames=60))
            timed("  mp4 encode (60 frames)", lambda: write_video(frames, Path(tmp) / "x.mp4"))

    print(f"Layercake engine benchmark: seed 002, {width}x{height}, draft backend, {os.cpu_count()} cores, "
          f"median of {args.repeat} after a warm-up")
    print(f"imports: {imports:.2f} s")
    for name, values in rows.items():
        print(f"{name:<58} {statistics.median(values):7.3f} s")
    print(f"peak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
