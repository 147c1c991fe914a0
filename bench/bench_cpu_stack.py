"""CPU time of a whole few-step (lcm-sd15) stack at full size: what `--backend diffusers` costs without a GPU.

Usage: python bench/bench_cpu_stack.py              (full size: 512x768, 4 steps, 3 layers; minutes)
       python bench/bench_cpu_stack.py --dry-run    (tiny configs at 96x64: checks the code in seconds)

No hub access: the LCM-distilled SD1.5 UNet, the SD1.5 depth ControlNet, both decoders (TAESD, which the CPU preset
takes, and the SD1.5 VAE of `--decoder full`) and the CLIP-L text encoder are built from their published configs
(bench_diffusers_gpu.py) with random weights, on the CPU in the dtype the CPU default preset uses there
(bfloat16 where the CPU computes it natively, else float32; --dtype to choose);
speed does not depend on weight values. The stack is what `python -m layers generate --backend diffusers`
renders on a CPU with the model's own defaults: plan, the plate (4 steps), its depth estimate and decomposition, the
background inpainted and the midground and foreground repainted from the plate, matting, the harmonising pass,
composite. The default runs, in one process: that stack cold, as a user's first is (no warm-up); the same with the
ControlNet through every step and the background's hidden part from noise (what the plate composition did before
the preset took control_end 0.5 and fill_denoise 0.75; warm by then, which favours it); the scaffold composition
(three layers in one 4-step call). `--runs plate+full` adds the full SD1.5 VAE.

Reported: seconds per stage and in all; the process's CPU time (what the load of a shared machine does not change;
CPU seconds / threads is a lower bound of the wall time: measured quiet, ~12 % of the two cores' time stays idle
while a step runs, in the waits between an operation's parallel parts); the longest gap between two progress updates
(how long the progress bar stands still); the download the preset costs (float32 safetensors = 4 bytes per parameter
of the files from_pretrained fetches: UNet, text encoder, decoder, ControlNet; the safety checker is not fetched);
the load average before and after (the figure is inflated on a shared machine). Target: <= 90 s on 2 cores.
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

SEED_PROMPT = Path(__file__).resolve().parent.parent / "seeds" / "002_velvet_planetarium.txt"
"""The default prompt: one of the dense example prompts the product is made for. The bench's tokenizer is the tests'
byte-level one (about one token per character), so the plate's whole prompt fills the 16 chunks the backend allows;
CLIP's own tokenizer makes 10-12 of it, so the text encoding and the cross-attention are timed on the high side."""
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
    ap.add_argument("--prompt-file", type=Path, default=SEED_PROMPT, help="the scene prompt (default: seed 002)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), help="default: what the CPU default preset uses here")
    ap.add_argument("--runs", default="plate+tiny,plate+tiny+guided,scaffold+tiny",
                    help="stacks to time, in order, as COMPOSITION+DECODER[+guided]: plate (what generate does with "
                         "a model) or scaffold; tiny (TAESD, the CPU preset's) or full (the SD1.5 VAE); +guided: the "
                         "ControlNet through every step and the background's hidden part from noise (control_end 1, "
                         "fill_denoise 1) instead of the preset's 0.5 and 0.75")
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
    estimator = build_depth_anything_small(Path(tempfile.mkdtemp(prefix="bench_cpu_da_")), small=args.dry_run)
    prompt = args.prompt_file.read_text(encoding="utf-8").strip()
    for run in args.runs.split(","):
        composition, decoder, *guided = run.split("+")
        pipe.vae = decoders[decoder]
        backend = DiffusersBackend.from_pipeline(pipe, model="random lcm-sd15")
        given = {"control_end": 1.0, "fill_denoise": 1.0} if guided == ["guided"] else {}
        # What `generate --backend diffusers` takes on a CPU: the few-step model's own defaults.
        options = GenerateOptions.for_backend(backend, steps=args.steps, video=False, composition=composition,
                                              depth_model=str(estimator), matte_model="closed-form", **given)
        what = f"{dtype}, {composition}, {decoder} decoder, {args.steps} steps"
        if composition == "plate":
            what += (f", ControlNet over {options.control_end:g} of the steps, background fill re-noised "
                     f"{options.fill_denoise:g}")
        print(f"\n{what} ({backend.model_info['memory_format']} UNet):", flush=True)
        run_stack(backend, options, w, h, what, prompt)
    print(f"load average after {loadavg()} (a shared machine inflates the figure); target <= 90 s")


def build_depth_anything_small(folder: Path, small: bool) -> Path:
    """Depth Anything V2 Small (the plate's default estimator) from its published config, random weights, saved in
    `folder` with its image processor, to load the user's way (a folder). small: the tests' tiny one, for --dry-run."""
    from tiny_models import build_depth_anything
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
    DepthAnythingForDepthEstimation(cfg).eval().save_pretrained(str(folder))
    DPTImageProcessorPil(size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
                         resample=3, do_pad=False).save_pretrained(str(folder))
    return folder


def run_stack(backend, options, w: int, h: int, what: str, prompt: str) -> None:
    """One whole stack with `backend`, timed, with its progress log and the longest gap in it."""
    import torch

    from layers.pipeline import build_stack
    from layers.plan import plan_scene

    stamps: list[tuple[float, str]] = []

    def progress(fraction: float, text: str) -> None:
        stamps.append((time.perf_counter(), text))
        print(f"  {stamps[-1][0] - start:7.1f} s  {fraction:4.0%}  {text}", flush=True)

    start, cpu_start = time.perf_counter(), time.process_time()
    plan = plan_scene(prompt, seed=1, width=w, height=h, count_tokens=backend.count_tokens,
                      token_budget=backend.token_budget)
    result = build_stack(plan, backend, options=options, progress=progress)
    result.stack.composite()
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    times = [start] + [s for s, _ in stamps] + [start + total]
    gaps = [(b - a, stamps[i - 1][1] if i else "start") for i, (a, b) in enumerate(zip(times, times[1:]))]
    longest, after = max(gaps)
    print(f"whole stack {w}x{h}, {what}, 3 layers ({result.render_info.get('composition')} composition): "
          f"{total:.1f} s")
    print("stages: " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
    for notice in result.render_info.get("notices", []):
        print(f"notice: {notice}")
    threads = torch.get_num_threads()
    print(f"process CPU time: {cpu:.1f} s over {threads} threads ({cpu / threads:.0f} s if every thread were busy "
          f"all the time; a load-independent figure on a shared machine, and a lower bound of the wall time)")
    print(f"longest gap between progress updates: {longest:.1f} s (after '{after}')", flush=True)

if __name__ == "__main__":
    main()
