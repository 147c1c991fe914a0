"""The studio's "From a prompt" tab: a scene prompt planned into layers, rendered, and each layer regenerated."""
from __future__ import annotations

import html
from typing import Optional

import gradio as gr

from layers.compose import CLOSED_FORM, DEFAULT_MATTE_MODEL
from layers.parallax import CAMERA_PATHS
from layers.plan import LAYER_NAMES, LayerPlan, ScenePlan, size_for_aspect
from layers.studio import Run, Studio
from ui.shared import (Seed, download_buttons, md_escape, on_gpu, parallax_viewer, progress_reporter, real_number,
                       user_errors, viewer_shower, whole_number)

ASPECTS = ("auto", "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "9:16", "16:9")
MATTE_CHOICES = [("auto (isnet-general-use with a plate)", "auto"), (DEFAULT_MATTE_MODEL, DEFAULT_MATTE_MODEL),
                 ("birefnet-general (finer, ~900 MB)", "birefnet-general"), ("u2net", "u2net"),
                 ("closed-form (offline)", CLOSED_FORM)]
"""Matte models offered in the studio; rembg weights are fetched on first use (unless HF_HUB_OFFLINE)."""


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
        scene = studio.plan(prompt, seed=whole_number(seed, "seed"), width=whole_number(width, "width"),
                            height=whole_number(height, "height"), overrides=overrides)
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
            steps=whole_number(steps, "steps", defaults.steps),
            guidance=real_number(guidance, "guidance", defaults.guidance),
            strengths=(real_number(background_strength, "background_strength", defaults.strengths[0]),
                       real_number(midground_strength, "midground_strength", defaults.strengths[1]),
                       real_number(foreground_strength, "foreground_strength", defaults.strengths[2])),
            parallax=parallax or defaults.parallax,
            composition=None if composition in (None, "", "auto") else composition,
            matte_model=None if matte_model in (None, "", "auto") else matte_model)
        overrides = edited(plan_state, (background_prompt, midground_prompt, foreground_prompt))
        run = studio.generate(prompt, seed=whole_number(seed, "seed"), width=whole_number(width, "width"),
                              height=whole_number(height, "height"), options=options,
                              depth_source=depth_source or "scaffold", reference=reference_image,
                              depth_map=depth_map, overrides=overrides, progress=progress_reporter(progress))
        return run_outputs(run)

    @on_gpu
    @user_errors
    def regenerate_layer(layer: str = "foreground", seed: int = -1, prompt: str = "", run_id: str = "",
                         run_state: Optional[dict] = None, progress=gr.Progress()):
        """Re-render one layer of the last result (or of run_id); the other layers stay pixel-identical.

        seed -1 picks a fresh seed (or keeps the old one when a new prompt is given); prompt "" keeps the layer's
        prompt. Returns the same outputs as /generate.
        """
        seed = whole_number(seed, "seed")
        run = studio.regenerate(run_id or (run_state or {}).get("run_id") or "", layer,
                                seed=None if seed is None or seed < 0 else seed, prompt=prompt or None,
                                progress=progress_reporter(progress))
        return run_outputs(run)

    def regenerate_from_card(name: str):
        @on_gpu
        @user_errors
        def regenerate_card(text: str, seed: int, run_state: Optional[dict] = None, progress=gr.Progress()):
            state = run_state or {}
            # Unchanged fields keep the layer as it was; both unchanged means "roll a new seed".
            new_prompt = text.strip() if text and text.strip() != state.get("texts", {}).get(name, "") else None
            seed = whole_number(seed, "seed")
            new_seed = seed if seed is not None and seed != state.get("seeds", {}).get(name) else None
            run = studio.regenerate(state.get("run_id") or "", name, seed=new_seed, prompt=new_prompt,
                                    progress=progress_reporter(progress))
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
                    steps = gr.Slider(1, studio.max_steps, value=defaults.steps, step=1, label="Steps",
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
            viewer = parallax_viewer("parallax")
            status = gr.Markdown("", label="Status", elem_id="status", elem_classes="lc-small")
            # Hidden until there is something to download.
            with gr.Column(visible=False, elem_id="downloads-box") as downloads_box:
                with gr.Row(elem_id="downloads"):
                    downloads = download_buttons(("psd", "ora", "zip", "mp4"), "dl-")
                    # Returned after every older output, so clients that index outputs by position keep working.
                    scene_downloads = download_buttons(("glb", "html"), "dl-")
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
