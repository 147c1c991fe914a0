"""Command line: python -m layers plan | generate | decompose | regenerate | batch.

Bad input ends with one line naming the problem and exit code 2, before anything is written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for `cat` or `grep` whose reader went away, so `set -o pipefail` scripts
see a closed pipe the same way from every tool."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake on one line (no usage dump) with exit code 2."""

    def error(self, message):
        raise _BadInput(f"{message} (see {self.prog} --help)")


class _BadInput(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    from .backends import BACKEND_CHOICES
    from .backends.auto import CPU_PRESET
    from .backends.diffusers import DECODERS, PRESETS
    from .executors import EXECUTORS
    from .fill import FILLS
    from .parallax import CAMERA_PATHS
    from .plan import LAYER_NAMES

    parser = _Parser(prog="python -m layers", description="Turn a dense scene prompt into a parallax-ready "
                     "stack of image layers (background, midground, foreground).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def prompt_args(p):
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--prompt", help="the scene prompt")
        src.add_argument("--prompt-file", type=Path, help="a UTF-8 text file holding the scene prompt")
        p.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
        p.add_argument("--width", type=int, help="output width in pixels (default: from the prompt's aspect ratio)")
        p.add_argument("--height", type=int, help="output height in pixels")
        for name in LAYER_NAMES:
            p.add_argument(f"--{name}-prompt", dest=f"{name}_prompt", metavar="TEXT",
                           help=f"replace the {name} layer's planned prompt (the shared style is still added)")

    def backend_args(p, default):
        p.add_argument("--backend", choices=BACKEND_CHOICES, default=default,
                       help="auto = diffusers with a GPU or weights already downloaded, else draft "
                            f"(default %(default)s); diffusers without a GPU defaults to --model {CPU_PRESET}")
        p.add_argument("--model", help=f"diffusers preset ({', '.join(PRESETS)}), hub id or local pipeline folder")
        p.add_argument("--controlnet", help="depth ControlNet hub id or local folder")
        p.add_argument("--device", help="diffusers device: cuda, cuda:1, cpu (default: cuda when there)")
        p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), help="diffusers weights dtype")
        p.add_argument("--decoder", choices=DECODERS,
                       help="latents to pictures: full = the model's VAE, tiny = TAESD (default: tiny for the CPU "
                            "presets, full otherwise)")

    def fill_arg(p, what, default="texture"):
        p.add_argument("--fill", choices=FILLS, default=None,
                       help=f"{what}: texture = patches of the layer's own visible pixels, smooth = a blend of them "
                            f"(default: {default})")

    def export_args(p):
        p.add_argument("--formats", default="all", metavar="LIST",
                       help="exports to write, comma-separated: psd,ora,zip,mp4,glb,html (default: all)")
        p.add_argument("--glb-relief", action="store_true",
                       help="stack.glb cards become grids displaced by each layer's depth map")

    p = sub.add_parser("plan", help="print the layer plan of a prompt")
    prompt_args(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")

    p = sub.add_parser("generate", help="render a layer stack and write every output")
    prompt_args(p)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    backend_args(p, "auto")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--strength", type=float, nargs=3, metavar=("BG", "MG", "FG"),
                   help="ControlNet strength per layer (default 0.6 1.0 1.0)")
    p.add_argument("--parallax", choices=CAMERA_PATHS, default="sway", help="camera path of parallax.mp4")
    p.add_argument("--frames", type=int, default=60, help="frames in parallax.mp4 (default 60)")
    depth = p.add_mutually_exclusive_group()
    depth.add_argument("--depth-map", type=Path, help="use this depth map (white = near) instead of the scaffold")
    depth.add_argument("--reference", type=Path, help="estimate the depth map from this reference image")
    p.add_argument("--thresholds", type=float, nargs=2, metavar=("FAR", "NEAR"),
                   help="nearness splitting a depth map into background|midground|foreground (default 0.35 0.65)")
    p.add_argument("--depth-model", help="depth estimator for --reference and the plate (hub id or local folder)")
    p.add_argument("--matte-model", help="rembg model name, .onnx under U2NET_HOME, or closed-form (default: "
                   "isnet-general-use with a plate, fetched on first use; closed-form on the scaffold)")
    p.add_argument("--composition", choices=("plate", "scaffold"),
                   help="plate: one whole-scene render cut into layers (default in model mode); scaffold: each "
                        "layer rendered on the plan's scaffold (draft mode, a depth map or reference)")
    p.add_argument("--plate-hint", type=float, help="ControlNet strength of the scaffold on the plate (default 0.3)")
    p.add_argument("--layer-denoise", type=float,
                   help="how far midground and foreground are re-noised from the plate (default 0.55)")
    p.add_argument("--fill-denoise", type=float,
                   help="plate: how far the background is re-noised where nearer layers hide it (default 1; 0.75 "
                        "with the few-step preset: from the fill's colours)")
    p.add_argument("--control-end", type=float,
                   help="plate: fraction of the plate's and layers' steps the ControlNet guides (default 1; 0.5 "
                        "with the few-step preset)")
    p.add_argument("--no-harmonize", action="store_true", help="plate: skip the harmonising pass over the composite")
    fill_arg(p, "plate: how each layer is completed behind the nearer ones, the start of the background's inpaint")
    p.add_argument("--no-video", action="store_true", help="skip parallax.mp4")
    export_args(p)
    p.add_argument("--displacement", type=float, default=0.0,
                   help="parallax.mp4: 0 = flat cards (default) .. 1 = each pixel moves by its own depth")

    p = sub.add_parser("decompose", help="split a picture into depth layers, fill what they hide, write every output")
    p.add_argument("--image", type=Path, required=True, help="the picture (8-bit RGB or greyscale)")
    depth = p.add_mutually_exclusive_group()
    depth.add_argument("--depth-map", type=Path,
                       help="its depth map: 8/16-bit PNG (white = near) or .npy (large = near); a disparity map works")
    depth.add_argument("--depth-model", help="estimate the depth with this model (hub id or local folder) "
                       "when no --depth-map is given (default: Depth Anything V2 small)")
    p.add_argument("--unknown-zero", action="store_true",
                   help="0 in the depth map means unknown (as stereo matchers and Middlebury disparity PNGs store "
                   "it): filled from the nearest known depth; default: 0 is the farthest value")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--layers", type=_layer_count, default=3, help="2..6, or auto (split at the depth "
                   "histogram's deepest valleys); default 3")
    backend_args(p, "auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the texture fill and of model-mode inpainting "
                   "(default 0)")
    fill_arg(p, "how hidden parts are filled offline (model mode: the start of the inpaint, and its fallback)")
    p.add_argument("--parallax", choices=CAMERA_PATHS, default="sway", help="camera path of parallax.mp4")
    p.add_argument("--frames", type=int, default=60, help="frames in parallax.mp4 (default 60)")
    p.add_argument("--flat", action="store_true", help="parallax.mp4 with flat cards instead of per-pixel depth")
    p.add_argument("--matte-model", help="rembg model name or .onnx under U2NET_HOME (default: closed-form matting)")
    p.add_argument("--no-video", action="store_true", help="skip parallax.mp4")
    export_args(p)

    p = sub.add_parser("regenerate", help="re-render one layer of a stack; the others stay identical")
    p.add_argument("--from", dest="source", type=Path, required=True,
                   help="a folder written by generate or decompose")
    p.add_argument("--layer", required=True, help=f"the layer's name ({', '.join(LAYER_NAMES)}, or a "
                   "decomposed stack's own names)")
    p.add_argument("--seed", type=int, help="the layer's new seed (default: a fresh one)")
    p.add_argument("--prompt", help="the layer's new prompt")
    fill_arg(p, "fill the layer's hidden part again offline with this fill (a picture's or a plate's layers)",
             "the stack's own; a decomposed picture's layer is repainted in model mode, refilled otherwise")
    backend_args(p, None)

    p = sub.add_parser("batch", help="make a stack for every job of a job file; a rerun skips finished jobs")
    p.add_argument("jobs", type=Path, help="a folder of .txt prompts, or a .jsonl / .csv job file")
    p.add_argument("--out", required=True, help="output folder, or an fsspec URL: one stack folder per job")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local processes (default) or Ray actors")
    p.add_argument("--workers", type=int, help="local: processes (default 1); ray: actors (default one per GPU)")
    p.add_argument("--ray-address", help="Ray cluster address, or auto (default: a Ray started on this machine)")
    backend_args(p, "auto")
    p.add_argument("--depth-model", help="depth estimator for picture jobs without a depth map (hub id or folder)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--strength", type=float, nargs=3, metavar=("BG", "MG", "FG"), help="ControlNet strength per layer")
    p.add_argument("--parallax", choices=CAMERA_PATHS, default="sway", help="camera path of parallax.mp4")
    p.add_argument("--frames", type=int, default=60, help="frames in parallax.mp4 (default 60)")
    p.add_argument("--matte-model", help="rembg model name or .onnx under U2NET_HOME (default: offline matting)")
    fill_arg(p, "how hidden parts are filled (picture jobs, and plate-composed text jobs); a job's own fill wins")
    p.add_argument("--no-video", action="store_true", help="skip parallax.mp4")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line. Returns the exit code."""
    from .models import add_load_listener, remove_load_listener

    add_load_listener(_say_downloads)
    try:
        args = build_parser().parse_args(argv)
        code = {"plan": _cmd_plan, "generate": _cmd_generate, "decompose": _cmd_decompose,
                "regenerate": _cmd_regenerate, "batch": _cmd_batch}[args.command](args)
        sys.stdout.flush()  # a closed pipe shows up here, not at exit
        return code
    except BrokenPipeError:
        # The reader has gone (`... | head`): end quietly, as the standard tools do. Python flushes stdout again
        # at exit; pointing it at /dev/null keeps that from printing a second error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    except (_BadInput, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so in one line; LAYERCAKE_DEBUG=1 shows the traceback
        if os.environ.get("LAYERCAKE_DEBUG"):
            raise
        print(f"error: internal failure: {type(exc).__name__}: {exc} (set LAYERCAKE_DEBUG=1 for details)",
              file=sys.stderr)
        return EXIT_FAILURE
    finally:
        remove_load_listener(_say_downloads)


def _say_downloads(line: str) -> None:
    """A model download starts (minutes on a first run): say which, before huggingface_hub's progress bars."""
    if line.startswith("downloading"):
        print(f"layercake: {line}", file=sys.stderr, flush=True)


def _prompt(args) -> str:
    from .plan import check_prompt, read_prompt_file

    text = read_prompt_file(args.prompt_file) if args.prompt_file is not None else args.prompt
    return check_prompt(text)


def _overrides(args) -> dict[str, str]:
    """Layer prompts given on the command line, checked like a scene prompt."""
    from .plan import LAYER_NAMES, check_prompt

    given = {name: getattr(args, f"{name}_prompt") for name in LAYER_NAMES}
    return {name: check_prompt(text) for name, text in given.items() if text is not None}


def _cmd_plan(args) -> int:
    from .plan import plan_scene

    plan = plan_scene(_prompt(args), args.seed, width=args.width, height=args.height, overrides=_overrides(args))
    if args.json:
        d = plan.to_dict()
        print(json.dumps(d, indent=2, ensure_ascii=False))
        return 0
    print(f"{plan.width}x{plan.height} ({plan.aspect}), seed {plan.seed}, figures {plan.figures}")
    print(f"style: {plan.style}")
    for lp in plan.layers:
        print(f"\n[{lp.name}] seed {lp.seed}, {lp.tokens} tokens")
        print(f"  prompt:   {lp.prompt}")
        print(f"  negative: {lp.negative_prompt}")
        for clause in lp.dropped:
            print(f"  dropped:  {clause}")
    return 0


def _check_out_dir(out: Path) -> None:
    """Refuse an output folder that cannot be written or replaced, before any work is done."""
    from .pipeline import check_output_folder

    check_output_folder(out)


def _options(args, backend):
    from .pipeline import GenerateOptions

    kw = {"parallax": args.parallax, "frames": args.frames, "video": not args.no_video}
    if args.strength:
        kw["strengths"] = tuple(args.strength)
    if args.thresholds:
        kw["thresholds"] = tuple(args.thresholds)
    if args.matte_model:
        kw["matte_model"] = args.matte_model
    kw["displacement"] = args.displacement
    for key in ("steps", "guidance", "composition", "plate_hint", "layer_denoise", "fill_denoise", "control_end",
                "depth_model", "fill"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    if args.no_harmonize:
        kw["harmonize"] = 0.0
    return GenerateOptions.for_backend(backend, **kw, **_export_options(args))


def _export_options(args) -> dict:
    kw = {"glb_relief": args.glb_relief}
    if args.formats.strip() != "all":
        kw["formats"] = tuple(f.strip().lower() for f in args.formats.split(",") if f.strip())
    return kw


def _cmd_generate(args) -> int:
    from .backends import resolve_backend
    from .pipeline import generate, write_outputs

    from .plan import plan_scene

    # Every input is checked before a model is loaded or a file written.
    prompt = _prompt(args)
    overrides = _overrides(args)
    plan = plan_scene(prompt, args.seed, width=args.width, height=args.height, overrides=overrides)
    _check_out_dir(args.out)
    _options(args, backend=None)  # every option checked now; the model's own defaults fill in after it loads
    depth_map, depth_source = None, None
    if args.depth_map is not None:
        from .depth import load_depth_map

        depth_map, depth_source = load_depth_map(args.depth_map, size=(plan.width, plan.height)), "map"
    elif args.reference is not None:
        from .estimate import DEFAULT_DEPTH_MODEL, estimate_depth
        from .images import open_image

        image = open_image(args.reference, what="reference image")
        depth_map = estimate_depth(image, model=args.depth_model or DEFAULT_DEPTH_MODEL)
        depth_source = "reference"

    backend, notice = resolve_backend(args.backend, **_model_options(args))
    if notice:
        print(notice, file=sys.stderr)
    options = _options(args, backend)

    t0 = time.perf_counter()
    with _ProgressBar() as bar:
        result = generate(prompt, backend, seed=args.seed, width=args.width, height=args.height, options=options,
                          depth_map=depth_map, depth_source=depth_source, overrides=overrides, progress=bar)
        files = write_outputs(result, args.out, progress=bar)
    for line in result.render_info.get("notices", []):
        print(line, file=sys.stderr)
    _summary(result, files, time.perf_counter() - t0)
    return 0


def _layer_count(text: str):
    from .decompose import MAX_LAYERS, MIN_LAYERS, check_layer_count

    try:
        count = check_layer_count(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {MIN_LAYERS}..{MAX_LAYERS} or auto, got {text!r}") from None
    return "auto" if count is None else count


def _cmd_decompose(args) -> int:
    from .backends import ModelUnavailableError, resolve_backend
    from .decompose import load_depth, load_picture, prepare_depth
    from .pipeline import GenerateOptions, decompose_picture, write_outputs

    # Every input is checked before a model is loaded or a file written.
    _check_out_dir(args.out)
    options = GenerateOptions(parallax=args.parallax, frames=args.frames, video=not args.no_video,
                              displacement=0.0 if args.flat else 1.0, matte_model=args.matte_model,
                              **({"fill": args.fill} if args.fill else {}), **_export_options(args))
    if args.unknown_zero and args.depth_map is None:
        raise ValueError("--unknown-zero applies to a given depth map: pass --depth-map D with it")
    image = load_picture(args.image)
    if args.depth_map is not None:
        depth, notices = prepare_depth(load_depth(args.depth_map), image.size, unknown_zero=args.unknown_zero)
        source = "map"
    else:
        from .estimate import DEFAULT_DEPTH_MODEL, estimate_depth

        model = args.depth_model or DEFAULT_DEPTH_MODEL
        try:
            depth = estimate_depth(image, model=model)
        except ModelUnavailableError as exc:
            raise ValueError(f"no depth map: pass --depth-map D (white = near), or fetch the depth model "
                             f"first ({exc})") from None
        depth, notices = prepare_depth(depth, image.size)
        source = "reference"
    for notice in notices:
        print(notice, file=sys.stderr)
    backend = None
    if args.backend != "draft":
        backend, notice = resolve_backend(args.backend, **_model_options(args))
        if notice:
            print("Offline fill: no inpainting model loaded" + notice[notice.find(" ("):], file=sys.stderr)
            backend = None
    t0 = time.perf_counter()
    with _ProgressBar() as bar:
        result = decompose_picture(image, depth, backend, layers=args.layers, seed=args.seed, options=options,
                                   depth_source=source, progress=bar)
        for notice in result.render_info["decompose"]["notices"]:
            print(notice, file=sys.stderr)
        files = write_outputs(result, args.out, progress=bar)
    _summary(result, files, time.perf_counter() - t0)
    return 0


def _cmd_regenerate(args) -> int:
    from .backends import resolve_backend
    from .pipeline import load_result, regenerate_layer, write_outputs

    if args.prompt is not None:
        from .plan import check_prompt

        check_prompt(args.prompt)
    result = load_result(args.source)
    _check_out_dir(args.source)
    name = args.backend or result.render_info.get("backend") or "auto"
    if result.plan is None and (name == "offline" or args.fill is not None):
        name = "draft"  # a picture's layer filled offline again: no model to load
    options = _model_options(args)
    if name == "diffusers" and not options:
        # The preset name, when there is one, brings back its scheduler too; a bare hub id would not.
        info = result.render_info
        options = {"model": info.get("preset") or info.get("model"), "controlnet": info.get("controlnet")}
        options = {k: _hub_name(k, v) for k, v in options.items() if v}
    backend, notice = resolve_backend(name, **options)
    if notice:
        print(notice, file=sys.stderr)
    t0 = time.perf_counter()
    with _ProgressBar() as bar:
        result = regenerate_layer(result, args.layer, backend, seed=args.seed, prompt=args.prompt, fill=args.fill,
                                  progress=bar)
        files = write_outputs(result, args.source, progress=bar)
    _summary(result, files, time.perf_counter() - t0)
    return 0


def _hub_name(key: str, value) -> str:
    """A model named by a received manifest: a preset or hub id only, never a folder on this machine.

    A manifest is not trusted to pick files to load; a local model is named on the command line (--model).
    """
    import re

    text = str(value)
    if (not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", text) or ".." in text
            or os.path.lexists(os.path.expanduser(text))):
        raise ValueError(f"the manifest's {key} {text[:200]!r} is not a preset or hub id; to use a local model, "
                         f"pass --{key}")
    return text


def _cmd_batch(args) -> int:
    from .batch import BatchSettings, check_out_dir, run_batch
    from .jobs import read_jobs

    # Only the options given travel to the workers: each fills in its own model's steps and guidance.
    options = {"parallax": args.parallax, "frames": args.frames, "video": not args.no_video}
    given = {"steps": args.steps, "guidance": args.guidance, "matte_model": args.matte_model,
             "strengths": tuple(args.strength) if args.strength else None, "fill": args.fill}
    options.update({k: v for k, v in given.items() if v is not None})
    settings = BatchSettings(executor=args.executor, workers=args.workers, backend=args.backend,
                             backend_options=tuple(sorted(_model_options(args).items())), options=options,
                             ray_address=args.ray_address, depth_model=args.depth_model)
    job_list = read_jobs(args.jobs)
    check_out_dir(args.out)
    with _BatchProgress(len(job_list.order)) as bar:
        summary = run_batch(job_list, args.out, settings, progress=bar)
    counts = summary.counts()
    print(", ".join(f"{n} {status}" for status, n in counts.items() if n) + f" in {summary.seconds:.1f} s -> "
          f"{args.out.rstrip('/')}/batch.csv")
    for o in summary.outcomes:
        if o.status in ("failed", "invalid"):
            print(f"  {o.job}" + (f" (line {o.line})" if o.line else "") + f": {o.status}: {o.reason}")
    return EXIT_FAILURE if counts["failed"] or counts["invalid"] else 0


def _model_options(args) -> dict:
    return {k: getattr(args, k) for k in ("model", "controlnet", "device", "dtype", "decoder") if getattr(args, k, None)}


def _summary(result, files, seconds: float) -> None:
    plan = result.plan
    out = files["manifest"].parent
    if plan is None:
        width, height = result.stack.size
        split = result.render_info["decompose"]
        print(f"{len(result.stack)} layers from a picture {width}x{height}, thresholds "
              f"{', '.join(f'{t:.3f}' for t in split['thresholds'])}, fill {split['fill']}, {seconds:.1f} s -> {out}")
        for layer in result.stack:
            print(f"  {layer.name:<12} nearness {layer.nearness:.2f}  alpha {layer.alpha.mean():.0%}")
        print("  files: " + ", ".join(sorted(str(p.relative_to(out)) for k, p in files.items() if "/" not in k)))
        return
    print(f"{result.render_info.get('backend', '?')} stack {plan.width}x{plan.height}, seed {plan.seed}, "
          f"{seconds:.1f} s -> {out}")
    for layer in result.stack:
        lp = plan.layer(layer.name)
        print(f"  {layer.name:<10} seed {lp.seed:<10} nearness {layer.nearness:.2f}  alpha {layer.alpha.mean():.0%}"
              f"  {lp.tokens} tokens" + (f", {len(lp.dropped)} dropped" if lp.dropped else ""))
    print("  files: " + ", ".join(sorted(str(p.relative_to(out)) for k, p in files.items() if "/" not in k)))


class _ProgressBar:
    """A tqdm bar on a terminal; silent otherwise (logs and pipes get only the summary)."""

    def __init__(self):
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=1000, bar_format="{l_bar}{bar}| {elapsed}", leave=False)

    def __call__(self, fraction: float, text: str) -> None:
        if self._bar is not None:
            self._bar.n = int(max(0.0, min(1.0, fraction)) * 1000)
            self._bar.set_description_str(text[:40], refresh=False)
            self._bar.refresh()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()
        return False


class _BatchProgress(_ProgressBar):
    """One tick per finished job: a tqdm bar on a terminal, a line per job otherwise."""

    def __init__(self, total: int):
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="job")

    def __call__(self, outcome, finished: int, total: int) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"{outcome.job[:24]} {outcome.status}", refresh=False)
            self._bar.update(finished - self._bar.n)
        else:
            print(f"[{finished}/{total}] {outcome.status} {outcome.job} {outcome.seconds:.1f} s", file=sys.stderr,
                  flush=True)
