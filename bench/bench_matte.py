"""Matting benchmark: every matting method against the true coverage of draft layers, side by side in one run.

Usage: .venv/bin/python bench/bench_matte.py [--size 512x768] [--quick] [--figure DIR [--figure-seed 001]]
       [--cost MODEL ...] [--cost-only]

The draft backend knows the exact coverage it paints (``DraftBackend.render_with_coverage``), so each matte of
the midground and foreground is scored against the right answer (``layers.matte_score``): SAD, MSE and gradient
error as on alphamatting.com, the see-through, lost-coverage and halo rates, and the time per layer of
``matte_rgba``, what the pipeline calls (wall and process CPU, median of two runs after a warm-up). Cases: the
three seed prompts (the targets), and prompts for figures, thin parts, scattered debris and a pale subject.

Methods (all through ``layers.matte``'s public functions):
- closed-form     the offline matte before keying: closed-form matting of the prior's trimap;
- key+cf          keying, its edge refined by closed-form matting (the default);
- key             known-backdrop keying alone;
- rembg           the segmenter's mask alone, limited to the prior's band (the rule before keying);
- rembg+key+cf    the segmenter's mask united with the default matte (the model-mode rule).
The rembg rows use a real rembg session (``u2net_custom``); with no real weights on the machine (``--model``
unset) it runs a tiny one-blob ONNX model built here, which keeps one central subject and drops the rest --
a stand-in for a salient-object segmenter, not a measurement of one.

Targets (three seeds, 512x768): see-through <= 0.5 %, lost <= 1 %, halo <= 0.5 %, SAD <= half of closed-form's,
time per layer <= closed-form's.

``--cost MODEL`` (repeatable) times what a segmenter adds to a stack's matting (its midground and foreground),
each model in a fresh process so its peak memory is its own: a rembg model name, an ``.onnx`` under U2NET_HOME
(e.g. the real ``u2netp.onnx`` / ``u2net.onnx``), or ``isnet-shaped``, a full-size IS-Net (the architecture of
rembg's default ``isnet-general-use``, 44 M parameters, 1024 px) built here with random weights
(``bench/isnet_shaped.py``): speed and memory do not depend on weight values. Side by side per case: the offline
matte; before, the rule that ran the segmenter on every layer (the offline matte plus one segmenter call per
layer, each timed on its own after a warm-up call); after, ``matte_rgba`` with the session, which runs it only on
a layer with an enclosed patch of ``decide_px`` pixels or more (the runs column counts its calls). Target: <= 1 s
added per stack where no layer needs the segmenter.
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

SEEDS = [("000", "000_masquerade_babel", 3), ("001", "001_archive_cradle", 5), ("002", "002_velvet_planetarium", 7)]
EXTRA = [
    ("figures", "two robed dancers with long bare arms in a crimson and gold ballroom", 11),
    ("thin", "a tangle of hanging chains, wires and thin ropes over a teal and brass workshop", 23),
    ("debris", "an explosion of scattered glass shards, sparks and dust in a cobalt observatory", 31),
    ("pale", "ivory and pearl figures in a white marble cloister, cream light", 5),
]
TARGETS = {"see_through": 0.005, "lost": 0.01, "halo": 0.005}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="512x768")
    ap.add_argument("--quick", action="store_true", help="the three seeds only")
    ap.add_argument("--model", help="a real rembg model name or .onnx under U2NET_HOME (default: tiny blob model)")
    ap.add_argument("--figure", help="write a look at a seed's stack (default matte vs closed-form) into this folder")
    ap.add_argument("--figure-seed", default="000", choices=[tag for tag, _, _ in SEEDS], help="the seed to look at")
    ap.add_argument("--cost", action="append", default=[], metavar="MODEL",
                    help="time a segmenter's cost per stack (rembg name, .onnx under U2NET_HOME, or isnet-shaped)")
    ap.add_argument("--cost-only", action="store_true", help="only the segmenter cost per stack")
    args = ap.parse_args()
    width, height = map(int, args.size.split("x"))
    cases = [(tag, (ROOT / "seeds" / f"{stem}.txt").read_text(encoding="utf-8"), seed) for tag, stem, seed in SEEDS]
    if not args.quick:
        cases += EXTRA
    if args.cost:
        stack_costs(args.cost, cases, width, height)
        if args.cost_only:
            return

    from layers.matte import MatteSettings, matte_layer, matte_rgba, new_matte_session
    from layers.matte_score import draft_cases, score_matte

    session, session_name = None, None
    if args.model:
        session, session_name = new_matte_session(args.model), args.model
    else:
        home = Path(tempfile.mkdtemp(prefix="bench_u2net_"))
        os.environ["U2NET_HOME"] = str(home)
        sys.path.insert(0, str(ROOT / "tests"))
        from helpers import build_blob_u2net

        session = new_matte_session(build_blob_u2net(home / "models" / "blob.onnx"))
        session_name = "tiny one-blob ONNX (no real weights here)"
    methods = {
        "closed-form": (MatteSettings(method="closed-form"), None),
        "key+cf": (MatteSettings(), None),
        "key": (MatteSettings(method="key"), None),
        "rembg": (MatteSettings(method="closed-form"), session),
        "rembg+key+cf": (MatteSettings(), session),
    }

    print(f"Layercake matting benchmark: {width}x{height}, draft layers scored against their true coverage; "
          f"{machine()}; rembg session: {session_name}")
    print_head(f"{'case':<8} {'layer':<10} {'method':<13} {'SAD':>7} {'MSE':>8} {'grad':>7} {'see-thr%':>8} "
               f"{'lost%':>6} {'halo%':>6} {'s/layer':>8} {'cpu s':>7}")
    results: dict[tuple[str, str, str], tuple] = {}
    for tag, prompt, seed in cases:
        for case in draft_cases(prompt, seed, width=width, height=height):
            for name, (settings, sess) in methods.items():
                # Timed: matte_rgba, what the pipeline calls per layer (alpha + edge colours). Scored: the float
                # alpha of matte_layer (the same matte before 8-bit rounding).
                matte_rgba(case.rgb, case.prior, settings=settings, session=sess)  # warm-up (numba, caches)
                walls, cpus = [], []
                for _ in range(2):
                    t0, c0 = time.perf_counter(), time.process_time()
                    matte_rgba(case.rgb, case.prior, settings=settings, session=sess)
                    walls.append(time.perf_counter() - t0)
                    cpus.append(time.process_time() - c0)
                s = score_matte(matte_layer(case.rgb, case.prior, settings=settings, session=sess), case.truth)
                seconds, cpu = statistics.median(walls), statistics.median(cpus)
                results[(tag, case.name, name)] = (s, seconds, cpu)
                print(f"{tag:<8} {case.name:<10} {name:<13} {s.sad:7.3f} {s.mse:8.5f} {s.gradient:7.3f} "
                      f"{100 * s.see_through:8.2f} {100 * s.lost:6.2f} {100 * s.halo:6.2f} {seconds:8.3f} {cpu:7.3f}",
                      flush=True)
    print()
    # Time is compared in process CPU seconds: on a shared machine wall time mostly measures the neighbours. The
    # time target is the mean per layer (the old matte's 0.29 s was a mean), so it is checked over the seeds'
    # layers together; each layer's time is in the table above.
    misses = 0
    seed_layers = [(tag, layer) for tag, _, _ in SEEDS for layer in ("midground", "foreground")]
    for method in ("key+cf", "key"):
        print(f"Targets on the seeds ({method} against closed-form in the same run):")
        for tag, layer in seed_layers:
            s = results[(tag, layer, method)][0]
            before = results[(tag, layer, "closed-form")][0]
            checks = {f"see-through {100 * s.see_through:.2f}% <= 0.5%": s.see_through <= TARGETS["see_through"],
                      f"lost {100 * s.lost:.2f}% <= 1%": s.lost <= TARGETS["lost"],
                      f"halo {100 * s.halo:.2f}% <= 0.5%": s.halo <= TARGETS["halo"],
                      f"SAD {s.sad:.3f} <= {before.sad / 2:.3f}": s.sad <= before.sad / 2}
            missed = [k for k, ok in checks.items() if not ok]
            misses += len(missed) if method == MatteSettings().method else 0
            seed = next(number for t, _, number in SEEDS if t == tag)
            print(f"  {tag} (seed {seed}) {layer:<10} " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
        mean_cpu = statistics.mean(results[(tag, layer, method)][2] for tag, layer in seed_layers)
        mean_before = statistics.mean(results[(tag, layer, "closed-form")][2] for tag, layer in seed_layers)
        met = mean_cpu <= mean_before
        misses += 0 if met or method != MatteSettings().method else 1
        print(f"  mean CPU per layer {mean_cpu:.3f} s <= {mean_before:.3f} s: {'met' if met else 'MISSED'}")
    count = {m: max(1, sum(k[2] == m for k in results)) for m in methods}
    wall = {m: sum(v[1] for k, v in results.items() if k[2] == m) / count[m] for m in methods}
    cpu = {m: sum(v[2] for k, v in results.items() if k[2] == m) / count[m] for m in methods}
    print(f"mean time per layer over all {count['closed-form']} layers (matte_rgba), wall / cpu: "
          + ", ".join(f"{m} {wall[m]:.3f} / {cpu[m]:.3f} s" for m in methods))
    if args.figure:
        _, stem, seed = next(entry for entry in SEEDS if entry[0] == args.figure_seed)
        figure(Path(args.figure), (ROOT / "seeds" / f"{stem}.txt").read_text(encoding="utf-8"), seed, width, height)
    sys.exit(1 if misses else 0)


def machine() -> str:
    """Cores and load average, said beside every figure: on a shared machine the neighbours' work shows in times."""
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else ["?"] * 3
    return f"{os.cpu_count()} cores, load average {' '.join(load)}"


def print_head(head: str) -> None:
    print(head)
    print("-" * len(head))


def stack_costs(models: list[str], cases, width: int, height: int) -> None:
    """Print, per segmenter, what it adds to each case's stack matting, before and after it ran only where needed."""
    import multiprocessing

    print(f"Segmenter cost per stack (midground + foreground, matte_rgba, {width}x{height}); {machine()}; "
          f"wall seconds (process CPU seconds)")
    context = multiprocessing.get_context("spawn")  # a fresh process per model: its own peak memory
    for model in models:
        shown = model
        if model == "isnet-shaped":  # built here, so that building it does not count in the model's memory
            from isnet_shaped import build_isnet_shaped

            home = Path(os.environ.get("U2NET_HOME") or tempfile.mkdtemp(prefix="bench_u2net_"))
            os.environ["U2NET_HOME"] = str(home)
            model, count = build_isnet_shaped(home / "models" / "isnet_shaped.onnx")
            model = str(model)
            megabytes = Path(model).stat().st_size / 1e6
            shown = f"isnet-shaped (IS-Net, random weights, {count:,} parameters, {megabytes:.0f} MB)"
        with context.Pool(1) as pool:
            report = pool.apply(_stack_cost, (model, cases, width, height))
        print(f"\n{shown}: rembg session {report['session']}, input {report['input']}, loaded in "
              f"{report['load']:.2f} s")
        print_head(f"{'case':<8} {'offline':>13} {'segmenter/layer':>16} {'before':>14} {'after':>14} {'runs':>4} "
                   f"{'added':>6}")
        for row in report["rows"]:
            print(f"{row['case']:<8} {row['offline']:6.2f} ({row['offline_cpu']:5.2f}) "
                  f"{row['call']:8.2f} ({row['call_cpu']:5.2f}) {row['before']:6.2f} ({row['before_cpu']:5.2f}) "
                  f"{row['after']:6.2f} ({row['after_cpu']:5.2f}) {row['runs']:>4} "
                  f"{row['after'] - row['offline']:6.2f}")
        rows = report["rows"]
        idle = [r for r in rows if r["runs"] == 0]
        worst = max((r["after"] - r["offline"] for r in idle), default=0.0)
        mean = {k: statistics.mean(r[k] for r in rows) for k in ("offline", "before", "after")}
        print(f"mean per stack: offline {mean['offline']:.2f} s, before {mean['before']:.2f} s, "
              f"after {mean['after']:.2f} s; "
              f"{len(idle)} of {len(rows)} stacks ran no segmenter, adding at most {worst:.2f} s "
              f"(target <= 1 s: {'met' if worst <= 1.0 else 'MISSED'})")
        print(f"peak RSS of the process: {report['peak_after'] / 1e9:.2f} GB through the new rule's stacks, "
              f"{report['peak_before'] / 1e9:.2f} GB once the segmenter had run on every layer")


def _stack_cost(model: str, cases, width: int, height: int) -> dict:
    """One model's stack costs, in a process of its own (see ``stack_costs``)."""
    import resource

    sys.path.insert(0, str(ROOT))
    from rembg import remove

    from layers.matte import matte_rgba, new_matte_session
    from layers.matte_score import draft_cases

    t = time.perf_counter()
    session = new_matte_session(model)
    load = time.perf_counter() - t
    calls = []
    predict = session.predict
    session.predict = lambda *a, **k: calls.append(1) or predict(*a, **k)

    def timed(fn, runs: int = 1):
        walls, cpus = [], []
        for _ in range(runs):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        return statistics.median(walls), statistics.median(cpus)

    layers = {tag: draft_cases(prompt, seed, width=width, height=height) for tag, prompt, seed in cases}
    rows = []
    for tag, stack in layers.items():
        for case in stack:
            matte_rgba(case.rgb, case.prior)  # warm-up (numba, caches)
        offline = timed(lambda: [matte_rgba(c.rgb, c.prior) for c in stack], runs=2)
        calls.clear()
        after = timed(lambda: [matte_rgba(c.rgb, c.prior, session=session) for c in stack])
        rows.append({"case": tag, "offline": offline[0], "offline_cpu": offline[1], "after": after[0],
                     "after_cpu": after[1], "runs": len(calls)})
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    first = next(iter(layers.values()))[0]
    remove(first.rgb, session=session, only_mask=True)  # warm-up: onnxruntime's first run allocates
    for row, stack in zip(rows, layers.values()):
        per_layer = [timed(lambda c=c: remove(c.rgb, session=session, only_mask=True)) for c in stack]
        row["call"] = statistics.mean(p[0] for p in per_layer)
        row["call_cpu"] = statistics.mean(p[1] for p in per_layer)
        row["before"] = row["offline"] + sum(p[0] for p in per_layer)
        row["before_cpu"] = row["offline_cpu"] + sum(p[1] for p in per_layer)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    shape = session.inner_session.get_inputs()[0].shape
    return {"session": session.name(), "input": "x".join(map(str, shape[1:])), "load": load, "rows": rows,
            "peak_after": peak_after, "peak_before": peak_before}


def figure(out: Path, prompt: str, seed: int, width: int, height: int) -> None:
    """Composite, each layer over a checkerboard, and a parallax frame, closed-form (top) vs the default (bottom)."""
    import numpy as np
    from PIL import Image

    from layers.backends import get_backend
    from layers.matte import MatteSettings
    from layers.parallax import render_parallax_frames
    from layers.pipeline import GenerateOptions, build_stack
    import layers.pipeline as pipeline
    from layers.plan import plan_scene

    out.mkdir(parents=True, exist_ok=True)
    plan = plan_scene(prompt, seed, width=width, height=height)
    rows = []
    original = pipeline.matte_rgba
    for method in ("closed-form", MatteSettings().method):
        settings = MatteSettings(method=method)
        pipeline.matte_rgba = lambda image, prior, session=None, _s=settings: original(image, prior, session=session,
                                                                                      settings=_s)
        try:
            stack = build_stack(plan, get_backend("draft"), options=GenerateOptions(frames=8)).stack
        finally:
            pipeline.matte_rgba = original
        tiles = [stack.composite().convert("RGB")]
        for layer in stack.layers[1:]:
            tiles.append(over_checkerboard(layer.rgba))
        tiles.append(Image.fromarray(np.asarray(render_parallax_frames(stack, "sway", frames=8)[2])[..., :3]))
        rows.append(tiles)
        for name, tile in zip(("composite", "midground", "foreground", "parallax"), tiles):
            tile.save(out / f"{method}_{name}.png")
    w, h = rows[0][0].size
    sheet = Image.new("RGB", (w * len(rows[0]) // 2, h * len(rows) // 2), "white")
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            sheet.paste(tile.resize((w // 2, h // 2), Image.LANCZOS), (c * w // 2, r * h // 2))
    sheet.save(out / "sheet.png")
    print(f"figure: {out / 'sheet.png'} (top: closed-form, bottom: default matte; "
          "composite, midground, foreground, frame)")


def over_checkerboard(rgba, cell: int = 16):
    import numpy as np
    from PIL import Image

    w, h = rgba.size
    v, u = np.mgrid[0:h, 0:w]
    board = np.where(((u // cell + v // cell) % 2)[..., None] == 0, 200, 120).astype(np.uint8).repeat(3, axis=-1)
    base = Image.fromarray(board, "RGB").convert("RGBA")
    base.alpha_composite(rgba.convert("RGBA"))
    return base.convert("RGB")


if __name__ == "__main__":
    main()
