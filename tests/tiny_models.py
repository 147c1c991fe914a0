"""Tiny, randomly initialised models in the real on-disk formats, built offline for the tests.

Each builder writes a folder that the library loads exactly as it loads a user's `--model DIR`:
a diffusers pipeline folder (model_index.json + one subfolder per component, its depth ControlNet in
`controlnet/`), or a transformers depth-estimation folder (config.json + preprocessor_config.json).
Weights are random, so the images are noise-like, but every code path (tokenizer, text encoders,
ControlNet, UNet, VAE, scheduler, depth head, processors) is the real one.

Usage: python tests/tiny_models.py OUTDIR   (writes OUTDIR/sd15, OUTDIR/sdxl, OUTDIR/depth_anything, OUTDIR/dpt)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

# One vocabulary size for every tiny text encoder: larger than the byte-level tokenizer below.
TINY_VOCAB_SIZE = 1000
TEXT_HIDDEN = 32


def _bytes_to_unicode() -> list[str]:
    # The printable stand-in for each byte that CLIP's byte-level BPE uses (same table as GPT-2).
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_clip_tokenizer(folder: str | Path):
    """Write a byte-level CLIP tokenizer (vocab.json + merges.txt) that encodes any text, and load it.

    Every byte has a token (and a word-final `</w>` variant), plus a few merges, so no text needs <unk>;
    ids 0 and 1 are BOS and EOS, which the tiny text encoders use too. Text costs about one token per
    character, which makes prompts longer than CLIP's 77 tokens easy to write in tests.

    Args:
        folder: where to write the tokenizer files.

    Returns:
        transformers.CLIPTokenizer loaded from `folder`, model_max_length 77.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    merges = []
    for a, b in [("t", "h"), ("th", "e</w>"), ("a", "n"), ("o", "n</w>")]:
        merges.append(f"{a} {b}")
        vocab.setdefault(a + b, len(vocab))
    if len(vocab) > TINY_VOCAB_SIZE:
        raise ValueError(f"tiny vocabulary has {len(vocab)} entries, more than {TINY_VOCAB_SIZE}")
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def _text_config(**extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=TEXT_HIDDEN, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=TINY_VOCAB_SIZE, projection_dim=TEXT_HIDDEN,
        max_position_embeddings=77, **extra,
    )


def _tiny_vae():
    from diffusers import AutoencoderKL

    # Four blocks give the real VAE's 8x downscale, so control images and latents line up as in SD.
    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16), in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4, layers_per_block=1, norm_num_groups=8, sample_size=64,
    )


def _wake_controlnet(controlnet) -> None:
    """Give the ControlNet a conditioning path that carries the control image through to its outputs.

    A fresh ControlNet adds exactly zero to the UNet (its output convs start at zero, as in training), and
    with default init its control-image encoder passes almost nothing of the image on, so a random-weight test
    model would ignore both its control image and its strength. Trained ControlNets do not: here the encoder
    gets variance-preserving weights and the zero convs random ones.
    """
    import torch

    gen = torch.Generator().manual_seed(1)

    def redraw(conv, gain):
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (gain / conv.weight[0].numel()) ** 0.5)
        conv.bias.zero_()

    with torch.no_grad():
        for module in controlnet.controlnet_cond_embedding.modules():
            if isinstance(module, torch.nn.Conv2d):
                redraw(module, 2.0)  # He init: the SiLU chain keeps the image's signal
        controlnet.controlnet_cond_embedding.conv_out.weight.mul_(8.0)  # on the scale of the latent features
        for module in [controlnet.controlnet_mid_block, *controlnet.controlnet_down_blocks]:
            redraw(module, 1.0)


def build_sd15(out: str | Path, *, few_step: bool = False) -> Path:
    """Save a tiny SD1.5-family depth-ControlNet pipeline (StableDiffusionControlNetPipeline) in `out`.

    Args:
        out: folder to write (model_index.json, unet/, controlnet/, vae/, text_encoder/, tokenizer/, scheduler/).
        few_step: build it like an LCM-distilled model instead: a UNet with a guidance embedding
            (time_cond_proj_dim) and an LCMScheduler.

    Returns:
        The folder.
    """
    import torch
    from diffusers import (ControlNetModel, DPMSolverMultistepScheduler, LCMScheduler,
                           StableDiffusionControlNetPipeline, UNet2DConditionModel)
    from transformers import CLIPTextModel

    out = Path(out)
    torch.manual_seed(0)
    tokenizer = write_clip_tokenizer(out.parent / f".{out.name}-tokenizer")
    text_encoder = CLIPTextModel(_text_config())
    common = dict(
        block_out_channels=(16, 32), layers_per_block=1, in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=TEXT_HIDDEN, attention_head_dim=4, norm_num_groups=8,
    )
    unet = UNet2DConditionModel(sample_size=8, out_channels=4, up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                time_cond_proj_dim=8 if few_step else None, **common)
    # Three stride-2 convs (four entries) bring the full-size control image down to latent size, as in SD.
    controlnet = ControlNetModel(conditioning_embedding_out_channels=(8, 8, 16, 16), **common)
    _wake_controlnet(controlnet)
    if few_step:
        scheduler = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    else:
        scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = StableDiffusionControlNetPipeline(
        vae=_tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out))
    return out


def build_sdxl(out: str | Path) -> Path:
    """Save a tiny SDXL-family depth-ControlNet pipeline (StableDiffusionXLControlNetPipeline) in `out`.

    Two text encoders (the second with a projection, giving the pooled embedding), a UNet and a ControlNet
    with SDXL's "text_time" added conditioning, an Euler scheduler.

    Args:
        out: folder to write.

    Returns:
        The folder.
    """
    import torch
    from diffusers import (ControlNetModel, EulerDiscreteScheduler, StableDiffusionXLControlNetPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    out = Path(out)
    torch.manual_seed(0)
    tokenizer = write_clip_tokenizer(out.parent / f".{out.name}-tokenizer")
    common = dict(
        block_out_channels=(16, 32), layers_per_block=1, in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        # 6 size/crop ids * addition_time_embed_dim + the pooled text embedding of text encoder 2
        projection_class_embeddings_input_dim=6 * 8 + TEXT_HIDDEN,
        cross_attention_dim=2 * TEXT_HIDDEN,  # both encoders' hidden states side by side
        norm_num_groups=8,
    )
    unet = UNet2DConditionModel(sample_size=8, out_channels=4, up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                **common)
    controlnet = ControlNetModel(conditioning_embedding_out_channels=(8, 8, 16, 16), **common)
    _wake_controlnet(controlnet)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    pipe = StableDiffusionXLControlNetPipeline(
        vae=_tiny_vae(), text_encoder=CLIPTextModel(_text_config(hidden_act="gelu")),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(hidden_act="gelu")),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, controlnet=controlnet, scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(str(out))
    return out


def rescale_weights(model) -> None:
    """Re-draw conv/linear weights with variance 1/fan_in so a signal keeps its scale through the network.

    With transformers' default init (std 0.02) a random depth model outputs values around 1e-7, where
    float32 rounding, not the image, decides the ranking of pixels; tests of the depth convention need
    outputs that actually vary with the input.
    """
    import torch

    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d)):
                w = module.weight
                fan_in = w.shape[0] * w[0, 0].numel() if isinstance(module, torch.nn.ConvTranspose2d) else w[0].numel()
                w.copy_(torch.randn(w.shape, generator=gen) * (1.0 / fan_in) ** 0.5)


def build_depth_anything(out: str | Path, *, metric: bool = False) -> Path:
    """Save a tiny Depth Anything (DINOv2 backbone) depth estimator with its image processor in `out`.

    Args:
        out: folder to write.
        metric: build the metric variant (depth in metres, larger = farther) instead of the relative one
            (inverse depth, larger = nearer). Same seed, so both share their weights.

    Returns:
        The folder.
    """
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessorPil

    out = Path(out)
    torch.manual_seed(0)
    backbone = Dinov2Config(image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                            intermediate_size=37, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, patch_size=14,
                              neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
                              depth_estimation_type="metric" if metric else "relative")
    model = DepthAnythingForDepthEstimation(cfg).eval()
    rescale_weights(model)
    proc = DPTImageProcessorPil(size={"height": 28, "width": 28}, keep_aspect_ratio=True, ensure_multiple_of=14,
                                resample=3, do_pad=False)
    model.save_pretrained(str(out))
    proc.save_pretrained(str(out))
    return out


LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
"""The UNet layers the tiny LoRAs adapt: every attention projection, the transformer blocks' in/out projections
(1x1 convolutions in SD1.5, linear layers in SDXL) and feed-forward layers, as the few-step LoRAs do."""


def build_lora(pipeline_dir: str | Path, out: str | Path, *, rank: int = 4, alpha: float = 2.0,
               seed: int = 0) -> Path:
    """Save a random LoRA for the UNet of the pipeline in `pipeline_dir` as one safetensors file, in the format of
    the hub's few-step LoRA files (Hyper-SD's, SDXL-Lightning's): kohya-style keys over diffusers' module names,
    ``lora_unet_<module path with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``. The fused change of a
    layer's weight is scale * alpha / rank * up @ down (`lora_deltas` reads it back).

    Args:
        pipeline_dir: a folder written by build_sd15 / build_sdxl.
        out: the file to write.
        rank, alpha: the LoRA's rank and alpha (alpha != rank, so the alpha / rank factor shows).
        seed: for the random factors.

    Returns:
        The file.
    """
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(str(Path(pipeline_dir) / "unet"))
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in unet.named_modules():
        if not name.endswith(LORA_TARGETS) or not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        out_features, in_features = module.weight.shape[:2]
        down = torch.randn(rank, in_features, generator=gen) * 0.2
        up = torch.randn(out_features, rank, generator=gen) * 0.2
        if module.weight.ndim == 4:  # a 1x1 convolution: its LoRA factors are 1x1 convolutions too
            down, up = down[:, :, None, None], up[:, :, None, None]
        key = "lora_unet_" + name.replace(".", "_")
        tensors.update({f"{key}.lora_down.weight": down.contiguous(), f"{key}.lora_up.weight": up.contiguous(),
                        f"{key}.alpha": torch.tensor(float(alpha))})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out))
    return out


def lora_deltas(lora_file: str | Path, unet, scale: float) -> dict:
    """{module name of `unet`: the change to its weight that fusing `lora_file` at `scale` makes}, from the math."""
    from safetensors.torch import load_file

    tensors = load_file(str(lora_file))
    names = {"lora_unet_" + name.replace(".", "_"): name for name, _ in unet.named_modules()}
    deltas = {}
    for key in {k.split(".")[0] for k in tensors}:
        down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
        rank = down.shape[0]
        delta = up.flatten(1) @ down.flatten(1) * (float(tensors[f"{key}.alpha"]) / rank) * scale
        deltas[names[key]] = delta.reshape(unet.get_submodule(names[key]).weight.shape)
    return deltas


REVISION = "0123456789abcdef0123456789abcdef01234567"


def put_in_hub_cache(hf_home: Path, repo_id: str, folder: Path) -> None:
    """Lay a saved model out as the hub client caches it: models--org--name/{refs/main, snapshots/<rev>/...}."""
    import shutil

    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)


def put_file_in_hub_cache(hf_home: Path, repo_id: str, name: str, file: Path) -> None:
    """Lay one file out as the hub client caches it, as `name` in repo `repo_id` (a LoRA in its hub repo)."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(file, Path(folder) / name)
        put_in_hub_cache(hf_home, repo_id, Path(folder))


def build_taesd(out: str | Path) -> Path:
    """Save a tiny AutoencoderTiny (TAESD's architecture: four stages, 8x up/down, 4 latent channels) in `out`.

    Args:
        out: folder to write (config.json, diffusion_pytorch_model.safetensors), as madebyollin/taesd ships.

    Returns:
        The folder.
    """
    import torch
    from diffusers import AutoencoderTiny

    out = Path(out)
    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                    num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)).save_pretrained(str(out))
    return out


def build_dpt(out: str | Path) -> Path:
    """Save a tiny DPT (ViT backbone) depth estimator with its image processor in `out`.

    Args:
        out: folder to write.

    Returns:
        The folder.
    """
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessorPil

    out = Path(out)
    torch.manual_seed(0)
    cfg = DPTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=4,
        backbone_out_indices=[0, 1, 2, 3], num_attention_heads=4, intermediate_size=37,
        is_hybrid=False, reassemble_factors=[4, 2, 1, 0.5], neck_hidden_sizes=[16, 16, 32, 32],
        fusion_hidden_size=16, head_hidden_size=8,
    )
    model = DPTForDepthEstimation(cfg).eval()
    rescale_weights(model)
    with torch.no_grad():  # lift the last conv above the head's final ReLU, or the whole map can be 0
        [c for c in model.head.modules() if isinstance(c, torch.nn.Conv2d)][-1].bias.fill_(2.0)
    proc = DPTImageProcessorPil(size={"height": 32, "width": 32}, keep_aspect_ratio=False, ensure_multiple_of=8,
                                do_pad=False)
    model.save_pretrained(str(out))
    proc.save_pretrained(str(out))
    return out


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny_models")
    for name, build in (("sd15", build_sd15), ("sdxl", build_sdxl), ("depth_anything", build_depth_anything),
                        ("dpt", build_dpt), ("taesd", build_taesd)):
        path = build(root / name)
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        print(f"{path}: {size / 1e6:.2f} MB")
