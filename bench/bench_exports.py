"""Exports benchmark: time and size of stack.glb (flat and relief), parallax.html and the ZIP's depth pair.

Usage: .venv/bin/python bench/bench_exports.py [--repeat 5] [--sizes 512x768,1024x1536]

For each size, seed 002 is rendered once on the draft backend; then, median of the repeats:
- each new output alone, with the layer PNGs already encoded (as in an export, where the layer files are written
  first and their encodings are reused) and from cold (the PNG cache emptied first);
- a whole write_outputs without the video, with and without glb + html: the difference is what they add.
Sizes: each file, and parallax.html against the layer PNGs it embeds.
Targets: GLB + HTML add <= 0.5 s to an export at 512x768; parallax.html <= 1.5 x the layer PNGs.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def median_time(fn, repeat: int, before=None) -> float:
    times = []
    for _ in range(repeat):
        if before:
            before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sizes", default="512x768,1024x1536")
    args = ap.parse_args()

    from layers import export
    from layers.backends import get_backend
    from layers.depthpair import depth_pair_files
    from layers.gltf import GlbSettings, export_glb
    from layers.pipeline import EXPORT_FORMATS, GenerateOptions, generate, write_outputs
    from layers.webpage import export_html

    prompt = (ROOT / "seeds" / "002_velvet_planetarium.txt").read_text(encoding="utf-8")
    print(f"load average: {open('/proc/loadavg').read().split()[:3]}  (cores: {os.cpu_count()})")
    for size in args.sizes.split(","):
        width, height = map(int, size.split("x"))
        result = generate(prompt, get_backend("draft"), seed=1, width=width, height=height,
                          options=GenerateOptions(video=False))
        stack = result.stack
        layer_png = sum(len(export.png_bytes(layer.rgba)) for layer in stack)
        composite = stack.composite()
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            cold = export._PNG_CACHE.clear
            rows = []
            for name, fn, path in (
                ("stack.glb (flat)", lambda: export_glb(stack, tmp / "flat.glb"), tmp / "flat.glb"),
                ("stack.glb (relief 64x96)",
                 lambda: export_glb(stack, tmp / "relief.glb", settings=GlbSettings(relief=True)), tmp / "relief.glb"),
                ("parallax.html", lambda: export_html(stack, tmp / "parallax.html"), tmp / "parallax.html"),
                ("depth pair + scene depth (in the ZIP)", lambda: depth_pair_files(stack, composite), None),
            ):
                warm = median_time(fn, args.repeat)
                from_cold = median_time(fn, args.repeat, before=cold)
                nbytes = path.stat().st_size if path else sum(len(v) for v in depth_pair_files(stack, composite).values())
                rows.append((name, warm, from_cold, nbytes))

            base = dataclasses.replace(result.options, video=False,
                                       formats=tuple(f for f in EXPORT_FORMATS if f not in ("glb", "html", "mp4")))
            full = dataclasses.replace(base, formats=base.formats + ("glb", "html"))
            without = median_time(lambda: write_outputs(dataclasses.replace(result, options=base), tmp / "a"),
                                  args.repeat, before=cold)
            with_new = median_time(lambda: write_outputs(dataclasses.replace(result, options=full), tmp / "b"),
                                   args.repeat, before=cold)

        print(f"\n## {width}x{height} (median of {args.repeat})\n")
        print("| output | s, layer PNGs encoded | s, from cold | size |")
        print("| --- | --- | --- | --- |")
        for name, warm, from_cold, nbytes in rows:
            print(f"| {name} | {warm:.3f} | {from_cold:.3f} | {nbytes / 1e6:.2f} MB |")
        html_size = rows[2][3]
        print(f"\nwrite_outputs (PNGs, PSD, ORA, ZIP with the pair, manifest; no video): {without:.3f} s; "
              f"+ GLB + HTML: {with_new:.3f} s -> they add {with_new - without:.3f} s (target <= 0.5 s at 512x768)")
        print(f"parallax.html {html_size / 1e6:.2f} MB vs the layer PNGs it embeds {layer_png / 1e6:.2f} MB: "
              f"{html_size / layer_png:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
