"""GPU speed of the diffusers backend with full-size SD1.5 and SDXL depth-ControlNet pipelines.

Usage: python bench/bench_diffusers_gpu.py [--only sd15,sdxl] [--stacks PRESETS] [--steps 25] [--repeat 2]
                                          [--json out.json]
       python bench/bench_diffusers_gpu.py --dry-run     (CPU: checks the model building and the timing code)

No hub access is needed: the UNet, ControlNet, VAE and text encoders are built from their published configs
(written out below) with random weights, in float16 on the GPU; speed does not depend on weight values. The
tokenizer is the byte-level one of the tests (it only has to produce ids; about one token per character, so a
dense prompt fills the backend's prompt chunks and the text encoding is timed on the high side).

Cases, per family (--only; SD1.5 at 512x768, SDXL at 832x1216, 25 steps, guidance 6 / 5):
  one image            the backend rendering one layer
  stack batched        three layers, per-layer strengths (0.6, 1.0, 1.0), one pipeline call
  stack one by one     the same three layers, three calls
  diffusers 1 image    StableDiffusion(XL)ControlNetPipeline called directly with a prompt string
  diffusers batch 3    the pipeline called directly with three prompts / control images / generators
Whole stacks (--stacks; every preset by default, at its family's size): what `generate --backend diffusers
--preset P` renders with the preset's own defaults (steps, guidance, scheduler, eta, ControlNet end, background
fill), in the default plate composition: plan, the plate, its depth estimate and decomposition, the background
inpainted and the midground and foreground repainted, matting, the harmonising pass and the composite; the first
stack cold, then the median of --repeat warm ones, with the picture-steps the UNet ran and the seconds per stage.
Reported: wall seconds, denoising it/s and ms per step (from step-callback timestamps, so text encoding and
VAE decoding are excluded), peak GPU memory. Targets: stack batched <= 1.6x one image; our ms/step within a
few % of diffusers' own at the same batch.

--dry-run builds every full-size component on the meta device (no memory) and prints its parameter count
next to the published one, then runs all cases with tiny versions of the same configs on the CPU.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
# The few-step stack mattes on the CPU (numba/OpenMP): its idle threads must sleep, not spin, or they slow
# torch down (see tests/conftest.py). Read when the OpenMP runtime loads: before importing torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# --- published configs (config.json of each component; fields at their defaults left out) ----------------------

SD15_UNET = dict(  # stable-diffusion-v1-5/stable-diffusion-v1-5, unet/
    act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], center_input_sample=False,
    cross_attention_dim=768,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, out_channels=4, sample_size=64,
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
)
SD15_CONTROLNET = dict(  # lllyasviel/control_v11f1p_sd15_depth
    act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280],
    conditioning_embedding_out_channels=[16, 32, 96, 256], controlnet_conditioning_channel_order="rgb",
    cross_attention_dim=768,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, only_cross_attention=False,
    resnet_time_scale_shift="default", upcast_attention=False, use_linear_projection=False,
)
LCM_UNET = dict(SD15_UNET, time_cond_proj_dim=256)  # SimianLuo/LCM_Dreamshaper_v7, unet/
VAE = dict(  # the SD1.5 VAE (SDXL's has the same architecture, scaling 0.13025, force_upcast)
    act_fn="silu", block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
    in_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=3, sample_size=512,
    up_block_types=["UpDecoderBlock2D"] * 4, scaling_factor=0.18215,
)
TAESD = dict(  # madebyollin/taesd: the tiny decoder (AutoencoderTiny) the CPU preset decodes with
    encoder_block_out_channels=[64, 64, 64, 64], decoder_block_out_channels=[64, 64, 64, 64], act_fn="relu",
    in_channels=3, out_channels=3, latent_channels=4, upsampling_scaling_factor=2, num_encoder_blocks=[1, 3, 3, 3],
    num_decoder_blocks=[3, 3, 3, 1], latent_magnitude=3, latent_shift=0.5, scaling_factor=1.0,
)
SDXL_VAE = dict(VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
SDXL_UNET = dict(  # stabilityai/stable-diffusion-xl-base-1.0, unet/
    act_fn="silu", addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], center_input_sample=False,
    cross_attention_dim=2048, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, out_channels=4,
    projection_class_embeddings_input_dim=2816, sample_size=128, transformer_layers_per_block=[1, 2, 10],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], use_linear_projection=True,
)
SDXL_CONTROLNET = dict(  # diffusers/controlnet-depth-sdxl-1.0
    act_fn="silu", addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280],
    conditioning_embedding_out_channels=[16, 32, 96, 256], controlnet_conditioning_channel_order="rgb",
    cross_attention_dim=2048, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, projection_class_embeddings_input_dim=2816,
    resnet_time_scale_shift="default", transformer_layers_per_block=[1, 2, 10], upcast_attention=False,
    use_linear_projection=True,
)
CLIP_L = dict(  # openai/clip-vit-large-patch14 text tower: SD1.5 text_encoder, SDXL text_encoder
    hidden_act="quick_gelu", hidden_size=768, intermediate_size=3072, max_position_embeddings=77,
    num_attention_heads=12, num_hidden_layers=12, projection_dim=768, vocab_size=49408, layer_norm_eps=1e-5,
)
CLIP_BIGG = dict(  # laion CLIP ViT-bigG/14 text tower: SDXL text_encoder_2 (with projection)
    hidden_act="gelu", hidden_size=1280, intermediate_size=5120, max_position_embeddings=77,
    num_attention_heads=20, num_hidden_layers=32, projection_dim=1280, vocab_size=49408, layer_norm_eps=1e-5,
)
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 steps_offset=1, timestep_spacing="leading")
PUBLISHED_PARAMS = {  # parameter counts of the released weights
    "sd15 unet": 859_520_964, "vae": 83_653_863, "clip-l text": 123_060_480, "sdxl unet": 2_567_463_684,
    "clip-bigG text+projection": 694_659_840,
}

FAMILIES = {
    "sd15": dict(unet=SD15_UNET, controlnet=SD15_CONTROLNET, vae=VAE, text=[CLIP_L], size=(512, 768), guidance=6.0),
    "sdxl": dict(unet=SDXL_UNET, controlnet=SDXL_CONTROLNET, vae=SDXL_VAE, text=[CLIP_L, CLIP_BIGG],
                 size=(832, 1216), guidance=5.0),
    "lcm": dict(unet=LCM_UNET, controlnet=SD15_CONTROLNET, vae=VAE, text=[CLIP_L], size=(512, 768), guidance=8.0),
}


def tiny(cfg: dict) -> dict:
    """The same architecture shrunk to run on a CPU in a second (for --dry-run)."""
    cfg = copy.deepcopy(cfg)
    if "hidden_size" in cfg:  # a text tower
        cfg.update(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                   projection_dim=32 if cfg["projection_dim"] == 1280 else 32, vocab_size=1000)
        return cfg
    if "decoder_block_out_channels" in cfg:  # the tiny decoder
        cfg.update(encoder_block_out_channels=[8] * 4, decoder_block_out_channels=[8] * 4,
                   num_encoder_blocks=[1] * 4, num_decoder_blocks=[1] * 4)
        return cfg
    n = len(cfg["block_out_channels"])
    if "latent_channels" in cfg:  # the VAE
        cfg.update(block_out_channels=[8, 16, 16, 16][:n], norm_num_groups=8, layers_per_block=1)
        return cfg
    cfg.update(block_out_channels=[16, 32, 32, 32][:n], norm_num_groups=8, layers_per_block=1)
    if "cross_attention_dim" in cfg:
        cfg["cross_attention_dim"] = 64 if cfg["cross_attention_dim"] == 2048 else 32
    if isinstance(cfg.get("attention_head_dim"), list):
        cfg["attention_head_dim"] = [2, 4, 4][:n]
    if "transformer_layers_per_block" in cfg:
        cfg["transformer_layers_per_block"] = [1] * n
    if "addition_time_embed_dim" in cfg:
        cfg.update(addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
                   addition_embed_type_num_heads=4)
    if "time_cond_proj_dim" in cfg:
        cfg["time_cond_proj_dim"] = 8
    if "conditioning_embedding_out_channels" in cfg:
        cfg["conditioning_embedding_out_channels"] = [8, 8, 16, 16]
    return cfg


def build_pipeline(family: str, device, dtype, tokenizer, small: bool, decoder: str = "full"):
    """A full (or tiny) ControlNet pipeline with random weights, on `device` in `dtype`, decoding with the
    family's VAE (decoder="full") or TAESD ("tiny")."""
    import torch
    from diffusers import (AutoencoderKL, AutoencoderTiny, ControlNetModel, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                           LCMScheduler, StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    spec = FAMILIES[family]
    shrink = tiny if small else (lambda c: c)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    from diffusers.utils import logging as diffusers_logging

    torch.manual_seed(0)
    with torch.device(device):  # initialise straight on the GPU: seconds instead of minutes on the CPU
        unet = UNet2DConditionModel(**shrink(spec["unet"]))
        controlnet = ControlNetModel(**shrink(spec["controlnet"]))
        vae = AutoencoderTiny(**shrink(TAESD)) if decoder == "tiny" else AutoencoderKL(**shrink(spec["vae"]))
        encoders = [CLIPTextModel(CLIPTextConfig(**shrink(spec["text"][0]), **ids))]
        if len(spec["text"]) > 1:
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**shrink(spec["text"][1]), **ids)))
    # diffusers suggests from_pretrained(dtype=...) for every .to(dtype); there are no weights to load here
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        for part in (unet, controlnet, vae, *encoders):
            part.to(dtype=dtype).eval()
    finally:
        diffusers_logging.set_verbosity(level)
    if family == "sdxl":
        pipe = StableDiffusionXLControlNetPipeline(
            vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1], tokenizer=tokenizer, tokenizer_2=tokenizer,
            unet=unet, controlnet=controlnet, scheduler=EulerDiscreteScheduler(**SCHEDULER),
            force_zeros_for_empty_prompt=True, add_watermarker=False)
    else:
        scheduler = (LCMScheduler(**SCHEDULER) if family == "lcm" else
                     DPMSolverMultistepScheduler(**SCHEDULER, algorithm_type="dpmsolver++", use_karras_sigmas=True))
        pipe = StableDiffusionControlNetPipeline(
            vae=vae, text_encoder=encoders[0], tokenizer=tokenizer, unet=unet, controlnet=controlnet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_full_size_params(report: bool = True) -> dict[str, int]:
    """Instantiate every full-size component on the meta device, compare with the published counts (when
    `report`), and return the counts by component."""
    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def n(model):
        return sum(p.numel() for p in model.parameters())

    with torch.device("meta"):
        counts = {
            "sd15 unet": n(UNet2DConditionModel(**SD15_UNET)),
            "sd15 depth controlnet": n(ControlNetModel(**SD15_CONTROLNET)),
            "lcm unet": n(UNet2DConditionModel(**LCM_UNET)),
            "vae": n(AutoencoderKL(**VAE)),
            "taesd": n(AutoencoderTiny(**TAESD)),
            "clip-l text": n(CLIPTextModel(CLIPTextConfig(**CLIP_L))),
            "sdxl unet": n(UNet2DConditionModel(**SDXL_UNET)),
            "sdxl depth controlnet": n(ControlNetModel(**SDXL_CONTROLNET)),
            "clip-bigG text+projection": n(CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG))),
        }
    if report:
        print(f"{'full-size component':<28}{'parameters':>16}{'published':>16}")
        for name, count in counts.items():
            ref = PUBLISHED_PARAMS.get(name)
            mark = "" if ref is None else ("  ok" if count == ref else "  DIFFERS")
            print(f"{name:<28}{count:>16,}{(f'{ref:,}' if ref else '-'):>16}{mark}")
    return counts


class StepClock:
    """Timestamps of the step callbacks: the denoising loop's speed without text encoding and VAE decoding."""

    def __init__(self, sync):
        self.sync = sync
        self.stamps = []

    def __call__(self, *args):
        self.sync()
        self.stamps.append(time.perf_counter())
        return args[-1] if len(args) == 4 else None  # as callback_on_step_end: give the kwargs back

    def ms_per_step(self):
        s = self.stamps
        return 1000 * (s[-1] - s[0]) / (len(s) - 1) if len(s) > 1 else float("nan")


def ramps(w, h):
    import numpy as np

    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return [y / (h - 1), x / (w - 1), (x / (w - 1) + y / (h - 1)) / 2]


def bench_family(family, pipe, args, device, rows):
    import torch

    from layers.backends.base import RenderRequest, RenderSettings
    from layers.backends.diffusers import DiffusersBackend, _control_image

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    spec = FAMILIES[family]
    w, h = (96, 64) if args.dry_run else spec["size"]
    steps = args.steps if family != "lcm" else 4
    guidance = spec["guidance"]
    settings = RenderSettings(width=w, height=h, steps=steps, guidance=guidance)
    names = ("background", "midground", "foreground")
    prompts = ["ruined gothic nave at dusk, shafts of gold light, painterly",
               "two pilgrims in red cloaks, painterly", "broken pillars and ivy, painterly"]
    maps = ramps(w, h)
    reqs = [RenderRequest(name=n, prompt=p, negative_prompt="blurry, lowres", control=m, prior=m, seed=i + 1,
                          strength=s) for i, (n, p, m, s) in enumerate(zip(names, prompts, maps, (0.6, 1.0, 1.0)))]
    batched = DiffusersBackend.from_pipeline(pipe, model=f"random {family}", batch="batched")
    one_by_one = DiffusersBackend.from_pipeline(pipe, model=f"random {family}", batch="one_by_one")

    def measure(label, batch, fn):
        times, per_step, peaks = [], [], []
        for _ in range(args.repeat):
            clock = StepClock(sync)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            sync()
            t = time.perf_counter()
            fn(clock)
            sync()
            times.append(time.perf_counter() - t)
            per_step.append(clock.ms_per_step())
            peaks.append(torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan"))
        sec = statistics.median(times)
        ms = statistics.median(per_step)
        rows.append(dict(model=family, case=label, size=f"{w}x{h}", steps=steps, batch=batch, seconds=sec,
                         it_s=1000 / ms if ms == ms else float("nan"), ms_step=ms, peak_gib=max(peaks)))

    def direct(n, clock):
        pipe(prompt=prompts[:n] if n > 1 else prompts[0], negative_prompt=["blurry, lowres"] * n if n > 1 else
             "blurry, lowres", image=[_control_image(m, w, h) for m in maps[:n]] if n > 1 else
             _control_image(maps[0], w, h), height=h, width=w, num_inference_steps=steps, guidance_scale=guidance,
             controlnet_conditioning_scale=1.0, generator=[torch.Generator("cpu").manual_seed(i + 1) for i in range(n)],
             callback_on_step_end=clock)

    # warm-up: kernels, allocator, cuDNN autotuning
    batched.render(reqs, RenderSettings(width=w, height=h, steps=2, guidance=guidance))
    one_by_one.render(reqs[:1], RenderSettings(width=w, height=h, steps=2, guidance=guidance))
    direct(1, StepClock(sync))
    measure("one image", 1, lambda c: one_by_one.render(reqs[:1], settings, progress=c))
    measure("stack batched", 3, lambda c: batched.render(reqs, settings, progress=c))
    measure("stack one by one", "3x1", lambda c: one_by_one.render(reqs, settings, progress=c))
    measure("diffusers 1 image", 1, lambda c: direct(1, c))
    measure("diffusers batch 3", 3, lambda c: direct(3, c))


STACK_PRESETS = {"sd15": "sd15", "hyper-sd15": "sd15", "lcm-sd15": "lcm", "sdxl": "sdxl", "lightning-sdxl": "sdxl"}
"""The presets whose whole stack is timed, and the architecture each runs (a LoRA preset runs its base model's: the
LoRA is fused into the UNet's weights at load and its adapter dropped, so a step costs what the base model's does;
what the preset changes is the scheduler, swapped in by from_pipeline(preset=...), the steps, guidance and eta)."""
SEED_PROMPT = ROOT / "seeds" / "002_velvet_planetarium.txt"


def bench_preset_stacks(family, pipe, presets, args, rows):
    """Each preset's whole default stack, as `generate --backend diffusers --preset P` renders it on this device:
    plan, the plate, its depth estimate (Depth Anything V2 Small, random weights, on the same device) and
    decomposition, the background inpainted and the midground and foreground repainted from the plate, matting
    (closed-form: no segmenter weights can be fetched here), the harmonising pass and the composite. The first
    stack of each preset is reported apart (cold: kernels, cuDNN autotuning), then the median of `--repeat`."""
    from layers.backends.diffusers import DiffusersBackend
    from layers.pipeline import GenerateOptions
    from stack_timing import build_depth_anything_small, picture_steps, run_stack

    w, h = (96, 64) if args.dry_run else FAMILIES[family]["size"]
    estimator = build_depth_anything_small(Path(tempfile.mkdtemp(prefix="bench_gpu_da_")), small=args.dry_run)
    prompt = SEED_PROMPT.read_text(encoding="utf-8").strip()
    own_scheduler = pipe.scheduler
    for preset in presets:
        pipe.scheduler = own_scheduler  # a preset without a scheduler of its own keeps the model's
        backend = DiffusersBackend.from_pipeline(pipe, model=f"random {preset}", preset=preset)
        options = GenerateOptions.for_backend(backend, video=False, depth_model=str(estimator),
                                              matte_model="closed-form")
        steps = 2 if args.dry_run else options.steps
        if steps != options.steps:
            options = GenerateOptions.for_backend(backend, steps=steps, video=False, depth_model=str(estimator),
                                                  matte_model="closed-form")
        what = f"{preset}, {steps} steps, guidance {options.guidance:g}, {backend.model_info['scheduler']}"
        times = []
        for k in range(1 + args.repeat):
            print(f"\n{what} ({'cold' if k == 0 else 'warm'}):", flush=True)
            got = run_stack(backend, options, w, h, what, prompt)
            times.append(got)
        warm = sorted(times[1:], key=lambda r: r["wall"])[len(times[1:]) // 2]
        for label, r in (("whole stack, cold", times[0]), ("whole stack, warm", warm)):
            rows.append(dict(model=preset, case=label, size=f"{w}x{h}", steps=steps, batch=3, seconds=r["wall"],
                             it_s=float("nan"), ms_step=float("nan"), peak_gib=r.get("peak_gib", float("nan")),
                             note=f"{r['picture_steps']} picture-steps; {r['stages']}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="sd15,sdxl", help="families whose one-image / three-layer renders are timed "
                    "(sd15, sdxl; default %(default)s)")
    ap.add_argument("--stacks", default=",".join(STACK_PRESETS),
                    help="presets whose whole default stack is timed (default %(default)s)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny configs: check the building and timing code")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()

    import torch

    from tiny_models import write_clip_tokenizer

    if args.dry_run:
        device, dtype = torch.device("cpu"), torch.float32
        args.steps, args.repeat = 2, 1
        torch.set_num_threads(1)
        count_full_size_params()
    elif torch.cuda.is_available():
        device, dtype = torch.device("cuda"), getattr(torch, args.dtype)
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, {args.dtype}")
    else:
        sys.exit("no CUDA device: this benchmark needs a GPU (use --dry-run to check it on a CPU)")

    cases = [f.strip() for f in args.only.split(",") if f.strip()]
    stacks = [p.strip() for p in args.stacks.split(",") if p.strip()]
    for family in cases:
        if family not in ("sd15", "sdxl"):
            sys.exit(f"--only: unknown family {family!r}; choose from sd15, sdxl")
    for preset in stacks:
        if preset not in STACK_PRESETS:
            sys.exit(f"--stacks: unknown preset {preset!r}; choose from {', '.join(STACK_PRESETS)}")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_clip_tokenizer(Path(tmp) / "tokenizer")
        for family in [f for f in FAMILIES if f in cases or any(STACK_PRESETS[p] == f for p in stacks)]:
            t = time.perf_counter()
            pipe = build_pipeline(family, device, dtype, tokenizer, small=args.dry_run)
            print(f"{family}: built in {time.perf_counter() - t:.1f}s", flush=True)
            if family in cases:
                bench_family(family, pipe, args, device, rows)
            presets = [p for p in stacks if STACK_PRESETS[p] == family]
            if presets:
                bench_preset_stacks(family, pipe, presets, args, rows)
            del pipe
            if device.type == "cuda":
                torch.cuda.empty_cache()

    print(f"\n{'model':<15}{'case':<26}{'size':>10}{'steps':>6}{'batch':>6}{'seconds':>9}{'it/s':>7}{'ms/step':>9}"
          f"{'peak GiB':>9}{'x one':>7}")
    for r in rows:
        one = next((x["seconds"] for x in rows if x["model"] == r["model"] and x["case"] == "one image"
                    and not r["case"].startswith("whole stack")), None)
        ratio = f"{r['seconds'] / one:.2f}" if one else ""
        print(f"{r['model']:<15}{r['case']:<26}{r['size']:>10}{r['steps']:>6}{str(r['batch']):>6}{r['seconds']:>9.2f}"
              f"{r['it_s']:>7.2f}{r['ms_step']:>9.1f}{r['peak_gib']:>9.2f}{ratio:>7}")
        if r.get("note"):
            print(f"{'':<15}  {r['note']}")
    for fam in ("sd15", "sdxl"):
        get = {r["case"]: r for r in rows if r["model"] == fam}
        if "stack batched" in get and "diffusers batch 3" in get:
            ours, theirs = get["stack batched"]["ms_step"], get["diffusers batch 3"]["ms_step"]
            print(f"{fam}: batched stack {get['stack batched']['seconds'] / get['one image']['seconds']:.2f}x one "
                  f"image (target <= 1.6); ms/step ours {ours:.1f} vs diffusers {theirs:.1f} "
                  f"({100 * (ours / theirs - 1):+.1f}%)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
