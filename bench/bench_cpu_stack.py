"""CPU time of whole few-step stacks at full size: what `--backend diffusers` costs without a GPU, preset by preset.

Usage: python bench/bench_cpu_stack.py              (full size: 512x768, 3 layers; minutes)
       python bench/bench_cpu_stack.py --dry-run    (tiny configs at 96x64: checks the code in seconds)

No hub access: the UNets (SD1.5's, and LCM-Dreamshaper's, which adds a guidance embedding), the SD1.5 depth
ControlNet, both decoders (TAESD, which the CPU presets take, and the SD1.5 VAE of `--decoder full`) and the CLIP-L
text encoder are built from their published configs (bench_diffusers_gpu.py) with random weights, on the CPU in the
dtype the CPU presets use there (bfloat16 where the CPU computes it natively, else float32; --dtype to choose); speed
does not depend on weight values. A LoRA preset (hyper-sd15) is timed on its base architecture: its LoRA is fused
into the UNet's weights at load and the adapter layers are dropped (loading.py `_fuse_lora`), so a step costs
exactly what the base model's costs; what the preset changes is the scheduler (swapped in as the preset does, through
`DiffusersBackend.from_pipeline(preset=...)`), the steps, the guidance and eta. The UNet, text encoder and ControlNet
of SD1.5 and LCM-Dreamshaper have the same architecture except LCM's guidance embedding; they share one ControlNet,
text encoder and decoder here.

A stack is what `python -m layers generate --backend diffusers` renders on a CPU with the preset's own defaults (the
plate composition: plan, the plate, its depth estimate (Depth Anything V2 Small, random weights) and decomposition,
the background inpainted and the midground and foreground repainted from the plate, matting (the offline matte),
the harmonising pass, composite), cold for the first stack of the process (as a user's first is), warm after. The
default runs, in one process: hyper-sd15 at its 1 step (cold), lcm-sd15 at its 4 steps, hyper-sd15 at 2 and at 4
steps. `--runs` takes others: PRESET@STEPS, + "scaffold" (three layers in one call), "full" (the SD1.5 VAE) and/or
"guided" (the ControlNet through every step and the background's hidden part from noise).

Reported per stack: wall seconds and seconds per stage; the process's CPU time (what the load of a shared machine
changes least: CPU seconds / threads is a lower bound of the wall time); the picture-steps the UNet ran (one
picture through one denoising step, the unit a stack's cost grows with); the longest gap between two progress
updates; and the machine while it ran: the host's steal (vmstat's `st`, from /proc/stat) on average and at worst
over 2-second windows, the CPU time other processes took, and the load average before and after. Also the one-time
download each preset costs (float32 safetensors = 4 bytes per parameter of the files from_pretrained fetches; the
LoRA file as the hub lists it). Target: the fastest preset's stack <= 45 s on 2 idle cores.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_diffusers_gpu import SD15_UNET, TAESD, build_pipeline, count_full_size_params, tiny  # noqa: E402
from stack_timing import build_depth_anything_small, run_stack  # noqa: E402

SEED_PROMPT = Path(__file__).resolve().parent.parent / "seeds" / "002_velvet_planetarium.txt"
"""The default prompt: one of the dense example prompts the product is made for. The bench's tokenizer is the tests'
byte-level one (about one token per character), so the plate's whole prompt fills the 16 chunks the backend allows;
CLIP's own tokenizer makes 10-12 of it, so the text encoding and the cross-attention are timed on the high side."""
DEFAULT_RUNS = "hyper-sd15@1,lcm-sd15@4,hyper-sd15@2,hyper-sd15@4"
ARCHITECTURES = {"hyper-sd15": "sd15 unet", "lcm-sd15": "lcm unet"}
"""The UNet each CPU preset runs (its count in count_full_size_params)."""
DOWNLOADED = ("clip-l text", "taesd", "sd15 depth controlnet")
"""What every CPU preset downloads besides its UNet, with the tiny decoder (the model's own VAE is not fetched)."""
LORA_FILE_GB = {"hyper-sd15": 0.269}
"""The LoRA file a preset fetches besides: Hyper-SD15-1step-lora.safetensors is listed at 269 MB on the hub."""
TARGET_SECONDS = 45


@dataclass
class Run:
    preset: str
    steps: int
    composition: str = "plate"
    decoder: str = "tiny"
    guided: bool = False

    @classmethod
    def parse(cls, text: str) -> "Run":
        head, *extra = text.strip().split("+")
        preset, _, steps = head.partition("@")
        if preset not in ARCHITECTURES or not steps.isdigit():
            raise SystemExit(f"--runs: {text!r} is not PRESET@STEPS[+scaffold][+full][+guided] with PRESET one of "
                             f"{', '.join(ARCHITECTURES)}")
        unknown = set(extra) - {"scaffold", "full", "guided"}
        if unknown:
            raise SystemExit(f"--runs: unknown {', '.join(sorted(unknown))} in {text!r}")
        return cls(preset, int(steps), "scaffold" if "scaffold" in extra else "plate",
                   "full" if "full" in extra else "tiny", "guided" in extra)

    def label(self) -> str:
        extra = "".join(f", {x}" for x in (self.composition, f"{self.decoder} decoder"))
        return f"{self.preset}, {self.steps} step{'s' if self.steps != 1 else ''}{extra}"

    def given(self) -> dict:
        """+guided: the ControlNet through every step and the background's hidden part from noise, instead of the
        few-step presets' 0.5 and 0.75."""
        return {"control_end": 1.0, "fill_denoise": 1.0} if self.guided else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny configs at 96x64: check the code")
    ap.add_argument("--prompt-file", type=Path, default=SEED_PROMPT, help="the scene prompt (default: seed 002)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), help="default: what the CPU presets use here")
    ap.add_argument("--runs", default=DEFAULT_RUNS,
                    help="stacks to time, in order, as PRESET@STEPS[+scaffold][+full][+guided] (default %(default)s)")
    args = ap.parse_args()
    runs = [Run.parse(text) for text in args.runs.split(",")]

    import torch

    from diffusers import AutoencoderTiny, UNet2DConditionModel

    from layers.backends.auto import cpu_dtype
    from layers.backends.diffusers import PRESETS, DiffusersBackend
    from layers.pipeline import GenerateOptions
    from tiny_models import write_clip_tokenizer

    counts = count_full_size_params(report=False)
    for preset in dict.fromkeys(r.preset for r in runs):
        parts = (ARCHITECTURES[preset],) + DOWNLOADED
        params = sum(counts[k] for k in parts)
        lora = LORA_FILE_GB.get(preset, 0.0)
        print(f"{preset} download with the tiny decoder: {params:,} parameters x 4 bytes = {params * 4 / 1e9:.2f} GB"
              f"{f' + the LoRA file {lora:.2f} GB' if lora else ''} = {params * 4 / 1e9 + lora:.2f} GB "
              f"({', '.join(f'{k} {counts[k] / 1e6:.1f}M' for k in parts)})")
    dtype = args.dtype or cpu_dtype()
    print(f"cpu: {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, {dtype}",
          flush=True)

    w, h = (96, 64) if args.dry_run else (512, 768)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_clip_tokenizer(Path(tmp) / "tokenizer")
        lcm = build_pipeline("lcm", torch.device("cpu"), getattr(torch, dtype), tokenizer, small=args.dry_run)
    decoders = {"full": lcm.vae,
                "tiny": AutoencoderTiny(**(tiny(TAESD) if args.dry_run else TAESD)).to(getattr(torch, dtype)).eval()}
    pipes = {"lcm-sd15": lcm}
    if "hyper-sd15" in {r.preset for r in runs}:
        # SD1.5's own UNet (no guidance embedding) beside the same ControlNet, text encoder and decoders
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**(tiny(SD15_UNET) if args.dry_run else SD15_UNET)).to(getattr(torch, dtype))
        pipes["hyper-sd15"] = type(lcm)(**dict(lcm.components, unet=unet.eval()), requires_safety_checker=False)
    print(f"built the {'tiny' if args.dry_run else 'full-size'} pipelines and both decoders in "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    estimator = build_depth_anything_small(Path(tempfile.mkdtemp(prefix="bench_cpu_da_")), small=args.dry_run)
    prompt = args.prompt_file.read_text(encoding="utf-8").strip()
    rows = []
    for k, run in enumerate(runs):
        pipe = pipes[run.preset]
        pipe.vae = decoders[run.decoder]
        backend = DiffusersBackend.from_pipeline(pipe, model=f"random {run.preset}", preset=run.preset)
        # What `generate --backend diffusers` takes on a CPU: the preset's own defaults, at the steps asked.
        options = GenerateOptions.for_backend(backend, steps=run.steps, video=False, composition=run.composition,
                                              depth_model=str(estimator), matte_model="closed-form", **run.given())
        spec = PRESETS[run.preset]
        what = (f"{dtype}, {run.label()}, {backend.model_info['scheduler']}, guidance {options.guidance:g}"
                f"{f', eta {spec.eta:g}' if spec.eta is not None else ''}, ControlNet over {options.control_end:g} "
                f"of the steps, background fill re-noised {options.fill_denoise:g}")
        print(f"\n{what} ({'cold' if k == 0 else 'warm'}):", flush=True)
        rows.append(run_stack(backend, options, w, h, what, prompt) | {"run": run, "cold": k == 0})
    print("\n| preset | steps | wall | CPU time | picture-steps | stages (s) | longest wait | steal avg / max | "
          "other processes | load before → after |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        run = r["run"]
        variant = "".join(x for x, on in ((" (cold)", r["cold"]), (", scaffold", run.composition != "plate"),
                                          (", full VAE", run.decoder != "tiny"), (", guided", run.guided)) if on)
        print(f"| {run.preset}{variant} | {run.steps} | {r['wall']:.1f} s | {r['cpu']:.1f} CPU-s | "
              f"{r['picture_steps']} | {r['stages']} | {r['gap']:.1f} s | {r['steal']:.0f} / {r['steal_max']:.0f} % | "
              f"{r['others']:.0f} CPU-s | {r['load']} |")
    fastest = min((r for r in rows if r["run"].preset == "hyper-sd15"), key=lambda r: r["wall"], default=None)
    if fastest is not None and not args.dry_run:
        print(f"\nfastest hyper-sd15 stack: {fastest['wall']:.1f} s wall, target <= {TARGET_SECONDS} s on 2 idle cores "
              f"(steal averaged {fastest['steal']:.0f} % during it)")


if __name__ == "__main__":
    main()
