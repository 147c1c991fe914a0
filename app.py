"""Layercake studio: the web app. Builds the page and wires it to a layers.studio.Studio; nothing else.

    python app.py --backend draft            # offline procedural preview, no weights
    python app.py --backend diffusers --model sd15 --share
"""
from __future__ import annotations

import os

# Set before gradio is imported: it reads the variable at import time, and this server makes no outbound calls.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse
import functools
import html
import logging
import math
import re
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import gradio as gr

from layers.backends import BACKEND_CHOICES
from layers.backends.diffusers import DECODERS
from layers.compose import CLOSED_FORM, DEFAULT_MATTE_MODEL
from layers.parallax import CAMERA_PATHS
from layers.webpage import viewer_markup
from layers.pipeline import GenerateOptions
from layers.plan import LAYER_NAMES, LayerPlan, ScenePlan, size_for_aspect
from layers.studio import Run, Studio, trim_memory

try:  # Hugging Face ZeroGPU lends a GPU per call to functions wrapped in spaces.GPU; elsewhere it is absent.
    import spaces
except ImportError:
    spaces = None

log = logging.getLogger("layercake.app")

ROOT = Path(__file__).resolve().parent
ASSETS = ROOT / "assets"
SEEDS = ROOT / "seeds"
ASPECTS = ("auto", "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "9:16", "16:9")
_DEFAULTS = GenerateOptions()
MATTE_CHOICES = [("auto (isnet-general-use with a plate)", "auto"), (DEFAULT_MATTE_MODEL, DEFAULT_MATTE_MODEL),
                 ("birefnet-general (finer, ~900 MB)", "birefnet-general"), ("u2net", "u2net"),
                 ("closed-form (offline)", CLOSED_FORM)]
"""Matte models offered in the studio; rembg weights are fetched on first use (unless HF_HUB_OFFLINE)."""
VIEWER_AMOUNT = 0.05
"""How far the nearest layer moves in the interactive viewer, as a fraction of the image width."""
GPU_SECONDS = 180
"""Longest a render may hold a ZeroGPU (three layers at full size)."""


@dataclass(frozen=True)
class Seed:
    """One example scene prompt from seeds/."""

    label: str
    text: str


def load_seeds(folder: Path = SEEDS) -> list[Seed]:
    """The example prompts, in file-name order.

    Args:
        folder: a folder of .txt files, one prompt each.

    Returns:
        Seeds labelled from their file names ("000_velvet_planetarium.txt" -> "Velvet planetarium").
    """
    seeds = []
    for path in sorted(Path(folder).glob("*.txt")):
        text = path.read_text(encoding="utf-8").strip()
        if text:
            label = re.sub(r"^\d+[_-]*", "", path.stem).replace("_", " ").replace("-", " ").strip().capitalize()
            seeds.append(Seed(label=label or path.stem, text=text))
    return seeds


def on_gpu(fn):
    """spaces.GPU(fn) on Hugging Face Spaces (ZeroGPU), fn itself everywhere else."""
    return spaces.GPU(duration=GPU_SECONDS)(fn) if spaces is not None else fn


def user_errors(fn):
    """Turn exceptions into gr.Error: a ValueError's message is for the user; anything else is logged, not shown.

    After each request, memory it freed is handed back to the system (layers.studio.trim_memory).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except ValueError as exc:  # bad input or an unavailable model: the message says what and why
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception:  # a bug: the traceback goes to the server log, never to the page
            ref = uuid.uuid4().hex[:8]
            log.exception("request failed (reference %s)", ref)
            raise gr.Error(f"Something went wrong on the server (reference {ref}); the details are in its log.",
                           print_exception=False) from None
        finally:
            trim_memory()  # the request's stack is garbage now: give its pages back

    return wrapper


# --- what the page shows -------------------------------------------------------------------------------------------

# Only what changes meaning inline; escaping "." or "-" would show backslashes in URLs.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~#])")


def md_escape(text: str) -> str:
    """User text shown verbatim inside Markdown."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def layer_text(layer: LayerPlan) -> str:
    """The layer's own part of its prompt (its clauses), which is what a user edits; the style is added back."""
    return ", ".join(layer.clauses) if layer.clauses else layer.prompt


def tokens_markdown(layer: LayerPlan, budget: int, *, estimated: bool = False) -> str:
    """Token count against the budget, and what did not fit (folded away: it can be long)."""
    approx = "≈" if estimated else ""
    text = f"**{approx}{layer.tokens} / {budget} tokens**" + (" (full)" if layer.tokens >= budget else "")
    if not layer.dropped:
        return text + " · nothing dropped"
    items = "".join(f"<li>{html.escape(d)}</li>" for d in layer.dropped)
    noun = "phrase" if len(layer.dropped) == 1 else "phrases"
    return (f"{text} · {len(layer.dropped)} {noun} did not fit\n\n"
            f"<details><summary>show what was dropped</summary><ul>{items}</ul></details>")


def plan_markdown(plan: ScenePlan) -> str:
    figures = f"{plan.figures} figure{'s' if plan.figures != 1 else ''}"
    parts = [f"**{plan.width} × {plan.height} px**", f"aspect {plan.aspect}", f"scene seed {plan.seed}", figures,
             f"light from the {plan.light_direction}"]
    if plan.palette:
        parts.append("palette: " + ", ".join(md_escape(c) for c in plan.palette))
    style = f"\n\nShared style, added to every layer: *{md_escape(plan.style)}*" if plan.style else ""
    return " · ".join(parts) + style


def notice_markdown(notices) -> str:
    # Notices are the app's own lines (not user text) and quote commands best shown as code: only HTML is escaped.
    return "\n\n".join(f"⚠️ {html.escape(n, quote=False)}" for n in notices)


def parallax_html(layers: list[dict], amount: float = VIEWER_AMOUNT) -> str:
    """The interactive viewer (layers.webpage.viewer_markup); assets/parallax.js moves it.

    Args:
        layers: back to front, as Studio.viewer_layers returns them.
        amount: how far the nearest layer moves, as a fraction of the width.

    Returns:
        HTML for the #parallax component.
    """
    return viewer_markup(layers, amount) if layers else EMPTY_VIEWER


def viewer_shower(studio: Studio):
    """The event handler both tabs use after a render: the run's interactive viewer and its downloads shown, or the
    empty viewer with the downloads hidden when there is no run."""
    def show_viewer(state: Optional[dict]):
        run_id = (state or {}).get("run_id")
        if not run_id:
            return EMPTY_VIEWER, gr.Column(visible=False)
        return parallax_html(studio.viewer_layers(studio.open_run(run_id))), gr.Column(visible=True)

    return show_viewer


EMPTY_VIEWER = ('<div class="lc-empty"><strong>Interactive parallax</strong><br>Generate a scene, then move the '
                'pointer over it: each layer follows at its own depth.</div>')


# --- the page ------------------------------------------------------------------------------------------------------

def _progress_reporter(progress):
    """A pipeline progress callback that drives a gr.Progress."""
    def report(fraction: float, text: str) -> None:
        progress(min(max(float(fraction), 0.0), 1.0), desc=text)
    return report


def build_demo(studio: Studio, *, max_concurrency: Optional[int] = None, seeds: Optional[list[Seed]] = None) \
        -> gr.Blocks:
    """The Layercake studio page, wired to `studio`.

    Args:
        studio: the model object (backend, output folders, limits).
        max_concurrency: renders running at once; default studio.concurrency (1 for a model on one GPU).
        seeds: example prompts; default the files in seeds/.

    Returns:
        The gr.Blocks, queued, not launched. Launch it with launch_options(studio, ...) for the limits and styling.
    """
    seeds = load_seeds() if seeds is None else seeds
    concurrency = max_concurrency or studio.concurrency

    with gr.Blocks(title="Layercake studio", delete_cache=(1800, int(studio.limits.max_age_hours * 3600))) as demo:
        with gr.Row(elem_id="lc-header"):
            gr.Markdown("# Layercake studio\nOne dense scene prompt in, a parallax-ready stack of **background**, "
                        "**midground** and **foreground** layers out: PSD, OpenRaster, ZIP and a parallax video. "
                        "Or start **from a picture** you already have.")
        notice = gr.Markdown(notice_markdown(studio.notices), elem_id="notice", elem_classes="lc-notice",
                             visible=bool(studio.notices), container=False)

        with gr.Tabs(elem_id="lc-tabs"):
            with gr.Tab("From a prompt", id="prompt"):
                build_prompt_tab(studio, concurrency, seeds)
            with gr.Tab("From a picture", id="picture"):
                build_picture_tab(studio, concurrency)
        # Notices can change after the page was built (a public link that could not be made).
        demo.load(lambda: gr.Markdown(notice_markdown(studio.notices), visible=bool(studio.notices)), None,
                  [notice], api_visibility="private", queue=False)

    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    explain_bad_payloads(demo)
    return demo


def build_prompt_tab(studio: Studio, concurrency: int, seeds: list[Seed]) -> None:
    """The "From a prompt" tab: plan, generate and regenerate layers of a scene prompt (inside a gr.Blocks)."""
    defaults = studio.options()  # the model's own: a few-step model renders in 4 steps, not 25

    def edited(state, texts) -> dict[str, str]:
        """Layer texts the user changed since they were last filled in (untouched ones are re-planned)."""
        before = (state or {}).get("texts", {})
        return {name: text.strip() for name, text in zip(LAYER_NAMES, texts)
                if text and text.strip() and text.strip() != before.get(name, "").strip()}

    def plan_outputs(plan: ScenePlan) -> list:
        return ([layer_text(plan.layer(n)) for n in LAYER_NAMES]
                + [tokens_markdown(plan.layer(n), plan.token_budget, estimated=studio.count_tokens is None)
                   for n in LAYER_NAMES]
                + [plan.layer(n).seed for n in LAYER_NAMES]
                + [plan_markdown(plan)])

    def state_of(plan: ScenePlan, run_id: Optional[str] = None) -> dict:
        return {"run_id": run_id, "texts": {n: layer_text(plan.layer(n)) for n in LAYER_NAMES},
                "seeds": {n: plan.layer(n).seed for n in LAYER_NAMES}}

    def run_outputs(run: Run) -> list:
        files = run.files
        plan = run.result.plan
        width, height = run.result.stack.size
        how = ("Served from the example cache" if run.cached
               else f"Rendered with the **{md_escape(studio.backend_name)}** backend")
        status = f"{how}: {width} × {height} px in {run.seconds:.1f} s · run `{run.run_id}`"
        for line in run.result.render_info.get("notices", []):  # a fallback the user should know about
            status += f"  \n{md_escape(line)}"
        state = state_of(plan, run.run_id)
        return [
            # Plain paths (not component updates), so API clients get files back.
            str(files["psd"]), str(files["ora"]), str(files["zip"]), str(files["mp4"]) if "mp4" in files else None,
            str(files["composite"]),
            str(files["mp4"]) if "mp4" in files else None,
            *[str(run.previews[f"layers/{n}"]) for n in LAYER_NAMES],
            [(str(run.previews[f"depth/{n}"]), f"{n} {run.result.stack[n].nearness:.2f}") for n in LAYER_NAMES],
            run.summary(),
            status,
            *plan_outputs(plan),
            state,
            state,
            str(files["glb"]) if "glb" in files else None,
            str(files["html"]) if "html" in files else None,
            str(files["plate"]) if "plate" in files else None,
        ]

    @user_errors
    def plan(prompt: str, seed: int = 0, width: int = 0, height: int = 0, background_prompt: str = "",
             midground_prompt: str = "", foreground_prompt: str = "", plan_state: Optional[dict] = None):
        """Split a scene prompt into background, midground and foreground prompts (no rendering).

        Returns the three layer prompts, their token counts and dropped clauses, the per-layer seeds, a summary and
        the whole plan as JSON. Layer prompts given here replace that layer's planned clauses.
        """
        overrides = edited(plan_state, (background_prompt, midground_prompt, foreground_prompt))
        scene = studio.plan(prompt, seed=_whole(seed, "seed"), width=_whole(width, "width"),
                            height=_whole(height, "height"), overrides=overrides)
        return [*plan_outputs(scene), scene.to_dict(), state_of(scene)]

    @on_gpu
    @user_errors
    def generate(prompt: str, seed: int = 0, width: int = 0, height: int = 0, background_prompt: str = "",
                 midground_prompt: str = "", foreground_prompt: str = "", steps: int = defaults.steps,
                 guidance: float = defaults.guidance, background_strength: float = defaults.strengths[0],
                 midground_strength: float = defaults.strengths[1],
                 foreground_strength: float = defaults.strengths[2], depth_source: str = "scaffold",
                 reference_image: Optional[str] = None, depth_map: Optional[str] = None,
                 parallax: str = defaults.parallax, plan_state: Optional[dict] = None, composition: str = "auto",
                 matte_model: str = "auto", progress=gr.Progress()):
        """Render a scene prompt into a background / midground / foreground stack.

        composition: "plate" (one whole-scene render cut into layers; model mode), "scaffold", or "auto" (plate
        with a model, scaffold in draft mode). matte_model: a rembg model name, "closed-form", or "auto".

        Returns the PSD, ORA, ZIP and MP4 files first, then the composite, the video, each layer over a
        checkerboard, the depth maps, a JSON summary (with run_id, for /regenerate_layer), a status line, the
        plan (layer prompts, token counts, seeds), then stack.glb and parallax.html, and last the plate (None in the
        scaffold composition).
        """
        options = studio.options(
            steps=_whole(steps, "steps", defaults.steps), guidance=_real(guidance, "guidance", defaults.guidance),
            strengths=(_real(background_strength, "background_strength", defaults.strengths[0]),
                       _real(midground_strength, "midground_strength", defaults.strengths[1]),
                       _real(foreground_strength, "foreground_strength", defaults.strengths[2])),
            parallax=parallax or defaults.parallax,
            composition=None if composition in (None, "", "auto") else composition,
            matte_model=None if matte_model in (None, "", "auto") else matte_model)
        overrides = edited(plan_state, (background_prompt, midground_prompt, foreground_prompt))
        run = studio.generate(prompt, seed=_whole(seed, "seed"), width=_whole(width, "width"),
                              height=_whole(height, "height"), options=options, depth_source=depth_source or "scaffold",
                              reference=reference_image, depth_map=depth_map, overrides=overrides,
                              progress=_progress_reporter(progress))
        return run_outputs(run)

    @on_gpu
    @user_errors
    def regenerate_layer(layer: str = "foreground", seed: int = -1, prompt: str = "", run_id: str = "",
                         run_state: Optional[dict] = None, progress=gr.Progress()):
        """Re-render one layer of the last result (or of run_id); the other layers stay pixel-identical.

        seed -1 picks a fresh seed (or keeps the old one when a new prompt is given); prompt "" keeps the layer's
        prompt. Returns the same outputs as /generate.
        """
        seed = _whole(seed, "seed")
        run = studio.regenerate(run_id or (run_state or {}).get("run_id") or "", layer,
                                seed=None if seed is None or seed < 0 else seed, prompt=prompt or None,
                                progress=_progress_reporter(progress))
        return run_outputs(run)

    def regenerate_from_card(name: str):
        @on_gpu
        @user_errors
        def regenerate_card(text: str, seed: int, run_state: Optional[dict] = None, progress=gr.Progress()):
            state = run_state or {}
            # Unchanged fields keep the layer as it was; both unchanged means "roll a new seed".
            new_prompt = text.strip() if text and text.strip() != state.get("texts", {}).get(name, "") else None
            seed = _whole(seed, "seed")
            new_seed = seed if seed is not None and seed != state.get("seeds", {}).get(name) else None
            run = studio.regenerate(state.get("run_id") or "", name, seed=new_seed, prompt=new_prompt,
                                    progress=_progress_reporter(progress))
            return run_outputs(run)
        return regenerate_card

    show_viewer = viewer_shower(studio)

    def pick_aspect(aspect: str):
        if aspect == "auto":
            return 0, 0
        aw, ah = (int(x) for x in aspect.split(":"))
        width, height = size_for_aspect(aw, ah)
        return width, height

    def pick_depth_source(source: str):
        return gr.File(visible=source == "reference"), gr.File(visible=source == "map")

    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=340, elem_id="lc-inputs"):
            prompt = gr.Textbox(label="Scene prompt", lines=8, max_lines=16, elem_id="prompt",
                                placeholder="Describe the whole scene: what is far, what stands in the middle, "
                                            "what is close to the viewer, the light and the style...")
            with gr.Row():
                plan_btn = gr.Button("Plan layers", variant="secondary", elem_id="plan-btn")
                gen_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
            if seeds:
                first = gr.Examples([[seeds[0].text]], inputs=[prompt], label="Example · click to render "
                                    "(cached after its first run)", example_labels=[seeds[0].label])
                if len(seeds) > 1:
                    gr.Examples([[s.text] for s in seeds[1:]], inputs=[prompt],
                                label="More examples · click, then Generate",
                                example_labels=[s.label for s in seeds[1:]])
            with gr.Accordion("Settings", open=True, elem_id="settings"):
                with gr.Row():
                    aspect = gr.Dropdown(ASPECTS, value="auto", label="Aspect", min_width=100,
                                         info="auto = as written in the prompt")
                    width = gr.Number(0, label="Width", precision=0, minimum=0, maximum=2048, step=64,
                                      min_width=90, info="px, 0 = auto")
                    height = gr.Number(0, label="Height", precision=0, minimum=0, maximum=2048, step=64,
                                       min_width=90, info="px, 0 = auto")
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=2**31 - 1, min_width=90)
                draft_note = " (the draft backend ignores it)" if studio.is_draft else ""
                with gr.Row():
                    steps = gr.Slider(1, 150, value=defaults.steps, step=1, label="Steps",
                                      info="denoising steps per layer" + draft_note)
                    guidance = gr.Slider(0, 30, value=defaults.guidance, step=0.5, label="Guidance",
                                         info="how literally the prompt is followed" + draft_note)
                gr.Markdown("ControlNet strength per layer: how strictly each layer follows its depth map"
                            + draft_note, elem_classes="lc-small")
                with gr.Row():
                    strengths = [gr.Slider(0, 2, value=defaults.strengths[i], step=0.05, label=name.capitalize(),
                                           min_width=110) for i, name in enumerate(LAYER_NAMES)]
                depth_source = gr.Radio([("Scaffold from the plan", "scaffold"), ("Reference image", "reference"),
                                         ("Depth map (white = near)", "map")], value="scaffold",
                                        label="Depth source")
                reference = gr.File(label="Reference image (its depth is estimated)", file_types=["image"],
                                    type="filepath", visible=False, height=120)
                depth_file = gr.File(label="Depth map (grayscale, 8 or 16 bit, white = near)",
                                     file_types=["image"], type="filepath", visible=False, height=120)
                parallax = gr.Radio(list(CAMERA_PATHS), value=defaults.parallax, label="Parallax video path")
                with gr.Row():
                    composition = gr.Radio(
                        [("Auto", "auto"), ("Plate: one picture, then layers", "plate"),
                         ("Scaffold: each layer on its own", "scaffold")],
                        value="auto", label="Composition", interactive=not studio.is_draft, elem_id="composition",
                        info="the draft backend composes on the scaffold" if studio.is_draft else
                        "auto = plate: the layers are cut from one whole-scene render, then harmonised")
                    matte_model = gr.Dropdown(MATTE_CHOICES, value="auto", label="Matte model",
                                              elem_id="matte-model", info="rembg weights download on first use")

        with gr.Column(scale=7, min_width=400, elem_id="lc-results"):
            viewer = gr.HTML(EMPTY_VIEWER, elem_id="parallax", js_on_load=(ASSETS / "parallax.js").read_text(),
                             min_height=200)
            status = gr.Markdown("", label="Status", elem_id="status", elem_classes="lc-small")
            # Hidden until there is something to download.
            with gr.Column(visible=False, elem_id="downloads-box") as downloads_box:
                with gr.Row(elem_id="downloads"):
                    downloads = [gr.DownloadButton(label, value=None, elem_id=f"dl-{kind}", size="md",
                                                   min_width=70)
                                 for kind, label in (("psd", "⬇ PSD"), ("ora", "⬇ ORA"), ("zip", "⬇ ZIP"),
                                                     ("mp4", "⬇ MP4"))]
                    # Returned after every older output, so clients that index outputs by position keep working.
                    scene_downloads = [gr.DownloadButton(label, value=None, elem_id=f"dl-{kind}", size="md",
                                                         min_width=70)
                                       for kind, label in (("glb", "⬇ GLB"), ("html", "⬇ HTML"))]
                gr.Markdown("PSD and ORA open as layers in Photoshop, Krita and GIMP; the ZIP holds the PNG "
                            "layers, 16-bit depth maps, a composite + depth JPEG pair and manifest.json; the GLB "
                            "is a glTF scene of depth cards with its camera (Blender, three.js); the HTML is "
                            "this viewer in one file.", elem_classes="lc-small lc-center")
            with gr.Tabs():
                with gr.Tab("Composite"):
                    composite = gr.Image(label="Composite", type="filepath", interactive=False, height=520,
                                         elem_id="composite", buttons=["download", "fullscreen"])
                with gr.Tab("Video"):
                    video = gr.Video(label="Parallax video", interactive=False, autoplay=True, loop=True,
                                     height=520, elem_id="video")
                with gr.Tab("Plate"):
                    plate_view = gr.Image(label="Plate: the whole-scene render the layers were cut from",
                                          type="filepath", interactive=False, height=520, elem_id="plate",
                                          buttons=["download", "fullscreen"])
                with gr.Tab("Depth maps"):
                    depth_gallery = gr.Gallery(label="Depth maps the layers were conditioned on (bright = near)",
                                               columns=3, rows=1, height="auto", object_fit="contain",
                                               elem_id="depth-maps", interactive=False)
                with gr.Tab("Details"):
                    details = gr.JSON(label="Run summary", elem_id="details")

    gr.Markdown("## Layers", elem_id="layers-title")
    plan_summary = gr.Markdown("Press **Plan layers** to see how the prompt is split, or **Generate**.",
                               label="Plan summary", elem_id="plan-summary", elem_classes="lc-small")
    layer_images, layer_boxes, layer_tokens, layer_seeds, regen_buttons = [], [], [], [], []
    with gr.Row(equal_height=False, elem_id="layer-cards"):
        for name in LAYER_NAMES:
            with gr.Column(min_width=260, elem_classes="lc-card", elem_id=f"card-{name}"):
                layer_images.append(gr.Image(label=name.capitalize(), type="filepath", interactive=False,
                                             height=340, placeholder="checkerboard = transparent",
                                             elem_id=f"layer-{name}", buttons=["fullscreen"]))
                layer_boxes.append(gr.Textbox("", label=f"{name.capitalize()} prompt", lines=3, max_lines=8,
                                              elem_id=f"prompt-{name}",
                                              info="edit to replace this layer's part of the scene"))
                layer_tokens.append(gr.Markdown("", label=f"{name.capitalize()} tokens",
                                                elem_classes="lc-small lc-tokens", elem_id=f"tokens-{name}"))
                with gr.Row(equal_height=True):
                    layer_seeds.append(gr.Number(None, label=f"{name.capitalize()} seed", precision=0, minimum=0,
                                                 maximum=2**31 - 1, min_width=170, scale=1,
                                                 elem_id=f"seed-{name}"))
                    regen_buttons.append(gr.Button(f"Regenerate {name}", size="md", min_width=120, scale=1,
                                                   elem_id=f"regen-{name}"))

    run_state = gr.State(None)
    plan_state = gr.State(None)
    # Hidden inputs of the /regenerate_layer API endpoint (the cards have buttons of their own).
    with gr.Row(visible=False):
        api_layer = gr.Dropdown(list(LAYER_NAMES), value="foreground", label="layer")
        api_seed = gr.Number(-1, label="seed", precision=0)
        api_prompt = gr.Textbox("", label="prompt")
        api_run_id = gr.Textbox("", label="run_id")
        api_regenerate = gr.Button("regenerate")

    plan_view = [*layer_boxes, *layer_tokens, *layer_seeds, plan_summary]
    results = [*downloads, composite, video, *layer_images, depth_gallery, details, status, *plan_view,
               run_state, plan_state, *scene_downloads, plate_view]
    generate_inputs = [prompt, seed, width, height, *layer_boxes, steps, guidance, *strengths, depth_source,
                       reference, depth_file, parallax, plan_state, composition, matte_model]
    render = dict(outputs=results, concurrency_id="render", concurrency_limit=concurrency,
                  show_progress_on=[viewer, composite])

    plan_btn.click(plan, [prompt, seed, width, height, *layer_boxes, plan_state],
                   [*plan_view, details, plan_state], api_name="plan", concurrency_id="plan",
                   concurrency_limit=4, show_progress_on=[plan_summary])
    gen_btn.click(generate, generate_inputs, api_name="generate", **render) \
        .success(show_viewer, [run_state], [viewer, downloads_box], api_visibility="private", queue=False)
    if seeds:
        first.load_input_event.success(generate, generate_inputs, api_visibility="private", **render) \
            .success(show_viewer, [run_state], [viewer, downloads_box], api_visibility="private", queue=False)
    api_regenerate.click(regenerate_layer, [api_layer, api_seed, api_prompt, api_run_id, run_state],
                         api_name="regenerate_layer", **render) \
        .success(show_viewer, [run_state], [viewer, downloads_box], api_visibility="private", queue=False)
    for i, name in enumerate(LAYER_NAMES):
        regen_buttons[i].click(regenerate_from_card(name), [layer_boxes[i], layer_seeds[i], run_state],
                               api_visibility="private", **{**render, "show_progress_on": [layer_images[i]]}) \
            .success(show_viewer, [run_state], [viewer, downloads_box], api_visibility="private", queue=False)

    aspect.change(pick_aspect, [aspect], [width, height], api_visibility="private", queue=False)
    depth_source.change(pick_depth_source, [depth_source], [reference, depth_file], api_visibility="private",
                        queue=False)
    reference.upload(lambda: "reference", None, [depth_source], api_visibility="private", queue=False)
    depth_file.upload(lambda: "map", None, [depth_source], api_visibility="private", queue=False)



def build_picture_tab(studio: Studio, concurrency: int) -> None:
    """The "From a picture" tab: split an uploaded picture into depth layers, filled behind (inside a gr.Blocks)."""

    @on_gpu
    @user_errors
    def decompose(image: Optional[str] = None, depth_map: Optional[str] = None, depth_source: str = "map",
                  layers: str = "3", parallax: str = _DEFAULTS.parallax, seed: int = 0, unknown_zero: bool = False,
                  progress=gr.Progress()):
        """Split a picture into depth layers (3 by default: background, midground, foreground), with what the
        nearer layers hide filled in (colour and depth), soft matted edges and per-pixel parallax.

        depth_source "map" uses depth_map (white = near: an 8/16-bit image, or .npy); "estimate" estimates it from
        the picture; unknown_zero reads 0 in the depth map as unknown (filled from the nearest known depth)
        instead of far. layers is "2".."6" or "auto". Returns the PSD, ORA, ZIP and MP4, the composite, the video,
        the layers over a checkerboard, the depth maps (completed behind occluders), a JSON summary (thresholds,
        notices, run_id), a status line, the run state, then stack.glb and parallax.html.
        """
        if depth_source not in ("map", "estimate"):
            raise ValueError(f"depth_source must be 'map' or 'estimate', got {depth_source!r}")
        if depth_source == "map" and not depth_map:
            raise ValueError("depth source 'map' needs a depth map upload (or choose 'estimate')")
        options = GenerateOptions(parallax=parallax or _DEFAULTS.parallax, displacement=1.0)
        run = studio.decompose(image, depth_map=depth_map if depth_source == "map" else None,
                               layers=layers or "3", seed=_whole(seed, "seed", 0), options=options,
                               unknown_zero=bool(unknown_zero),
                               progress=_progress_reporter(progress))
        files = run.files
        names = run.result.stack.names
        width, height = run.result.stack.size
        notices = run.result.render_info["decompose"]["notices"]
        status = (f"{len(names)} layers from a {width} × {height} px picture in {run.seconds:.1f} s · run "
                  f"`{run.run_id}`" + "".join(f"\n\n⚠️ {html.escape(n, quote=False)}" for n in notices))
        return [str(files["psd"]), str(files["ora"]), str(files["zip"]), str(files["mp4"]),
                str(files["composite"]), str(files["mp4"]),
                [(str(run.previews[f"layers/{n}"]), n) for n in names],
                [(str(run.previews[f"depth/{n}"]), f"{n} {run.result.stack[n].nearness:.2f}") for n in names],
                run.summary(), status, {"run_id": run.run_id},
                str(files["glb"]) if "glb" in files else None, str(files["html"]) if "html" in files else None]

    show_viewer = viewer_shower(studio)

    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=340, elem_id="pic-inputs"):
            image = gr.File(label="Picture (8-bit RGB or greyscale)", file_types=["image"], type="filepath",
                            elem_id="pic-image", height=140)
            depth_source = gr.Radio([("Depth map (white = near)", "map"), ("Estimate from the picture", "estimate")],
                                    value="map", label="Depth source", elem_id="pic-depth-source")
            depth_file = gr.File(label="Depth map: 8/16-bit image (white = near) or .npy; a disparity map works",
                                 file_types=["image", ".npy"], type="filepath", elem_id="pic-depth", height=120)
            unknown_zero = gr.Checkbox(False, label="0 in the depth map = unknown (stereo / Middlebury disparity)",
                                       info="filled from the nearest known depth; unticked, 0 is the farthest",
                                       elem_id="pic-unknown-zero")
            with gr.Row():
                layers = gr.Dropdown(["auto", "2", "3", "4", "5", "6"], value="3", label="Layers", min_width=100,
                                     info="auto = split at the depth histogram's valleys")
                seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=2**31 - 1, min_width=90,
                                 info="model-mode inpainting")
            parallax = gr.Radio(list(CAMERA_PATHS), value=_DEFAULTS.parallax, label="Parallax video path")
            go = gr.Button("Decompose", variant="primary", elem_id="decompose-btn")
        with gr.Column(scale=7, min_width=400, elem_id="pic-results"):
            viewer = gr.HTML(EMPTY_VIEWER, elem_id="pic-parallax", js_on_load=(ASSETS / "parallax.js").read_text(),
                             min_height=200)
            status = gr.Markdown("", label="Status", elem_id="pic-status", elem_classes="lc-small")
            with gr.Column(visible=False, elem_id="pic-downloads-box") as downloads_box:
                with gr.Row():
                    downloads = [gr.DownloadButton(label, value=None, elem_id=f"pic-dl-{kind}", size="md",
                                                   min_width=70)
                                 for kind, label in (("psd", "⬇ PSD"), ("ora", "⬇ ORA"), ("zip", "⬇ ZIP"),
                                                     ("mp4", "⬇ MP4"), ("glb", "⬇ GLB"), ("html", "⬇ HTML"))]
            with gr.Tabs():
                with gr.Tab("Composite"):
                    composite = gr.Image(label="Composite", type="filepath", interactive=False, height=480,
                                         elem_id="pic-composite")
                with gr.Tab("Video"):
                    video = gr.Video(label="Parallax video", interactive=False, autoplay=True, loop=True,
                                     height=480, elem_id="pic-video")
                with gr.Tab("Layers"):
                    layer_gallery = gr.Gallery(label="Layers (checkerboard = transparent)", columns=3,
                                               height="auto", object_fit="contain", elem_id="pic-layers",
                                               interactive=False)
                with gr.Tab("Depth maps"):
                    depth_gallery = gr.Gallery(label="Each layer's depth, completed behind what hides it "
                                               "(bright = near)", columns=3, height="auto", object_fit="contain",
                                               elem_id="pic-depth-maps", interactive=False)
                with gr.Tab("Details"):
                    details = gr.JSON(label="Run summary", elem_id="pic-details")
    state = gr.State(None)
    go.click(decompose, [image, depth_file, depth_source, layers, parallax, seed, unknown_zero],
             [*downloads[:4], composite, video, layer_gallery, depth_gallery, details, status, state, *downloads[4:]],
             api_name="decompose", concurrency_id="render", concurrency_limit=concurrency,
             show_progress_on=[viewer, composite]) \
        .success(show_viewer, [state], [viewer, downloads_box], api_visibility="private", queue=False)
    depth_file.upload(lambda: "map", None, [depth_source], api_visibility="private", queue=False)


def explain_bad_payloads(demo: gr.Blocks) -> gr.Blocks:
    """Give an API client a one-line reason for a payload gradio cannot even hand to our functions.

    Gradio checks and converts the raw values (count, numbers, choices) before calling a function; what it refuses
    there reaches the client as `{"error": null}` and a traceback in the log. Here it becomes a gr.Error naming
    the input and the value.
    """
    original = demo.preprocess_data

    async def preprocess_data(block_fn, inputs, state, *args, **kwargs):
        names = _input_names(block_fn)
        given = inputs if isinstance(inputs, list) else []
        if 0 < len(given) < len(block_fn.inputs) and _optional_from(block_fn) <= len(given):
            # A client written before the last inputs were added: they take their widgets' defaults.
            inputs = given = given + [getattr(c, "value", None) for c in block_fn.inputs[len(given):]]
        if len(given) < len(block_fn.inputs):
            missing = ", ".join(names[len(given):])
            raise gr.Error(f"{len(block_fn.inputs)} input values are needed, got {len(given)}; missing: {missing}",
                           print_exception=False)
        try:
            return await original(block_fn, inputs, state, *args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            name, value, reason = _first_refused(block_fn, names, given, exc)
            log.info("refused a payload: %s %r: %s", name, value, reason)
            raise gr.Error(f"{name} {_short(value)} is not accepted: {reason}", print_exception=False) from None

    demo.preprocess_data = preprocess_data
    return demo


def _optional_from(block_fn) -> int:
    """How many leading inputs an API call must send: the rest are parameters with a default."""
    import inspect

    try:
        params = list(inspect.signature(block_fn.fn).parameters.values())[:len(block_fn.inputs)]
    except (TypeError, ValueError):
        return len(block_fn.inputs)
    required = [i for i, p in enumerate(params) if p.default is inspect.Parameter.empty]
    return (required[-1] + 1) if required else 0


def _input_names(block_fn) -> list[str]:
    """The API names of an event's inputs: its function's parameter names (a component's label otherwise)."""
    import inspect

    try:
        params = list(inspect.signature(block_fn.fn).parameters)
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else (getattr(c, "label", None) or f"input {i + 1}")
            for i, c in enumerate(block_fn.inputs)]


def _first_refused(block_fn, names, values, exc) -> tuple[str, object, str]:
    """Which input gradio refused, found by converting each plain (non-file, non-state) value on its own."""
    for name, component, value in zip(names, block_fn.inputs, values):
        if isinstance(component, (gr.File, gr.State)):
            continue
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        try:
            component.preprocess(value)
        except Exception as err:  # noqa: BLE001 - any refusal is the answer we are looking for
            if isinstance(component, (gr.Number, gr.Slider)) and not numeric:
                return name, value, "it must be a number"
            return name, value, _one_line(err)
    return "a value", None, _one_line(exc)


def _one_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text[:200]


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _whole(value, name: str, default: Optional[int] = None) -> Optional[int]:
    """A whole number from a widget or API value (None or "" -> default)."""
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def _real(value, name: str, default: float) -> float:
    """A number from a widget or API value (None or "" -> default)."""
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


# --- launching -----------------------------------------------------------------------------------------------------

def parse_auth(text: Optional[str]) -> Optional[tuple[str, str]]:
    """ "user:password" -> (user, password); None or "" -> None.

    Raises:
        ValueError: no colon, or an empty user or password.
    """
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ValueError("auth must look like user:password")
    return user, password


def launch_options(studio: Studio, *, host: Optional[str] = None, port: Optional[int] = None, share: bool = False,
                   auth: Optional[tuple[str, str]] = None) -> dict:
    """Keyword arguments for demo.launch(): limits, served folders, styling.

    Only the studio's output folder is added to what gradio serves; uploads are capped in size.
    """
    return dict(
        server_name=host, server_port=port, share=share, auth=auth,
        auth_message="This Layercake studio is private: sign in." if auth else None,
        max_file_size=int(studio.limits.max_upload_mb * 1024 * 1024),
        allowed_paths=[str(studio.output_root)],
        css_paths=[ASSETS / "studio.css"],
        theme=gr.themes.Soft(primary_hue="orange", secondary_hue="amber", neutral_hue="slate",
                             # System fonts only: the page must not reach out to a font service.
                             font=["system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"],
                             font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]),
        footer_links=["api", "settings"],
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Layercake studio: the web app.")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default=os.environ.get("LAYERCAKE_BACKEND", "auto"),
                        help="auto: diffusers with a GPU or weights already downloaded, else draft (default: %(default)s)")
    parser.add_argument("--model", default=os.environ.get("LAYERCAKE_MODEL"),
                        help="diffusers model: preset name, hub id or local folder")
    parser.add_argument("--controlnet", default=os.environ.get("LAYERCAKE_CONTROLNET"),
                        help="depth ControlNet: hub id or local folder")
    parser.add_argument("--decoder", choices=DECODERS, default=os.environ.get("LAYERCAKE_DECODER"),
                        help="latents to pictures: full = the model's VAE, tiny = TAESD (default: tiny for the CPU "
                             "preset, full otherwise)")
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1, or GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860, or GRADIO_SERVER_PORT)")
    parser.add_argument("--share", action="store_true", help="ask for a public gradio.live link")
    parser.add_argument("--auth", default=os.environ.get("LAYERCAKE_AUTH"), metavar="USER:PASSWORD",
                        help="require this login (or set LAYERCAKE_AUTH)")
    parser.add_argument("--max-concurrency", type=int, default=None,
                        help="renders at once (default 1 with a model on one GPU, 2 for draft)")
    parser.add_argument("--depth-model", default=os.environ.get("LAYERCAKE_DEPTH_MODEL"),
                        help="depth estimator for reference images: hub id or local folder")
    parser.add_argument("--output-dir", default=os.environ.get("LAYERCAKE_OUTPUT_DIR", str(ROOT / "outputs")),
                        help="where results are written (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        args.auth = parse_auth(args.auth)
    except ValueError as exc:
        parser.error(str(exc))
    if args.max_concurrency is not None and not 1 <= args.max_concurrency <= 64:
        parser.error(f"--max-concurrency must be 1..64, got {args.max_concurrency}")
    return args


def _loading_page(args):
    """While a model loads (minutes on a first run: a download), a page on the studio's address says so."""
    from layers.backends.auto import choose
    from layers.loading_page import LoadingPage

    options = {k: v for k, v in (("model", args.model), ("controlnet", args.controlnet), ("decoder", args.decoder))
               if v}
    if choose(args.backend, options)[0] != "diffusers":
        return None
    host = args.host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port = args.port or int(os.environ.get("GRADIO_SERVER_PORT") or 7860)
    try:
        page = LoadingPage(host, port).start()
    except OSError as exc:  # the port is taken: gradio will say so itself when it launches
        logging.getLogger(__name__).info("no loading page on %s:%s (%s)", host, port, exc)
        return None
    print(f"layercake: loading the model; http://{host}:{port} shows its progress until the studio opens",
          flush=True)
    return page


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own health checks, one line per request
    args = parse_args(argv)
    seeds = load_seeds()
    waiting = _loading_page(args)
    try:
        studio = Studio.create(args.backend, model=args.model, controlnet=args.controlnet, decoder=args.decoder,
                               output_root=args.output_dir,
                               cached_prompts=[seeds[0].text] if seeds else [], concurrency=args.max_concurrency,
                               depth_model=args.depth_model)
    except ValueError as exc:
        if waiting:
            waiting.stop()
        sys.exit(f"layercake: {exc}")
    for line in studio.notices:
        print(f"layercake: {line}", flush=True)
    demo = build_demo(studio, seeds=seeds)
    if waiting:
        waiting.stop()  # the studio takes the port over; the waiting page reloads into it
    _, local_url, share_url = demo.launch(**launch_options(studio, host=args.host, port=args.port, share=args.share,
                                                            auth=args.auth), prevent_thread_lock=True)
    if args.share:
        if share_url:
            print(f"layercake: public link {share_url}", flush=True)
        else:
            message = (f"No public link could be made (the share server cannot be reached from here); "
                       f"serving locally only at {local_url}")
            print(f"layercake: {message}", file=sys.stderr, flush=True)
            studio.add_notice(message)
    demo.block_thread()


if __name__ == "__main__":
    main()
