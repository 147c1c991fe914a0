"""The studio's "From a picture" tab: an uploaded picture split into depth layers, filled behind."""
from __future__ import annotations

import html
from typing import Optional

import gradio as gr

from layers.parallax import CAMERA_PATHS
from layers.pipeline import GenerateOptions
from layers.studio import Studio
from ui.shared import (download_buttons, on_gpu, parallax_viewer, progress_reporter, user_errors,
                       viewer_shower, whole_number)

_DEFAULTS = GenerateOptions()


def build_picture_tab(studio: Studio, concurrency: int) -> None:
    """The "From a picture" tab: split an uploaded picture into depth layers, filled behind (inside a gr.Blocks)."""

    @on_gpu
    @user_errors
    def decompose(image: Optional[str] = None, depth_map: Optional[str] = None, depth_source: str = "map",
                  layers: str = "3", parallax: str = _DEFAULTS.parallax, seed: int = 0, unknown_zero: bool = False,
                  fill: str = _DEFAULTS.fill, progress=gr.Progress()):
        """Split a picture into depth layers (3 by default: background, midground, foreground), with what the
        nearer layers hide filled in (colour and depth), soft matted edges and per-pixel parallax.

        depth_source "map" uses depth_map (white = near: an 8/16-bit image, or .npy); "estimate" estimates it from
        the picture; unknown_zero reads 0 in the depth map as unknown (filled from the nearest known depth)
        instead of far. layers is "2".."6" or "auto". fill "texture" (default) continues the visible texture into
        what nearer layers hide; "smooth" blends the surrounding colours (offline; a model repaints them). Returns the PSD, ORA, ZIP and MP4, the composite, the video,
        the layers over a checkerboard, the depth maps (completed behind occluders), a JSON summary (thresholds,
        notices, run_id), a status line, the run state, then stack.glb and parallax.html.
        """
        if depth_source not in ("map", "estimate"):
            raise ValueError(f"depth_source must be 'map' or 'estimate', got {depth_source!r}")
        if depth_source == "map" and not depth_map:
            raise ValueError("depth source 'map' needs a depth map upload (or choose 'estimate')")
        options = GenerateOptions(parallax=parallax or _DEFAULTS.parallax, displacement=1.0)
        run = studio.decompose(image, depth_map=depth_map if depth_source == "map" else None,
                               layers=layers or "3", seed=whole_number(seed, "seed", 0), options=options,
                               unknown_zero=bool(unknown_zero), fill=fill or _DEFAULTS.fill,
                               progress=progress_reporter(progress))
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
            fill = gr.Radio([("Texture: continue what shows", "texture"), ("Smooth: blend the colours around", "smooth")],
                            value=_DEFAULTS.fill, label="Hidden parts", elem_id="pic-fill",
                            info="what a nearer layer hides, seen when it moves away or is hidden in the PSD")
            go = gr.Button("Decompose", variant="primary", elem_id="decompose-btn")
        with gr.Column(scale=7, min_width=400, elem_id="pic-results"):
            viewer = parallax_viewer("pic-parallax")
            status = gr.Markdown("", label="Status", elem_id="pic-status", elem_classes="lc-small")
            with gr.Column(visible=False, elem_id="pic-downloads-box") as downloads_box:
                with gr.Row():
                    downloads = download_buttons(("psd", "ora", "zip", "mp4", "glb", "html"), "pic-dl-")
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
    go.click(decompose, [image, depth_file, depth_source, layers, parallax, seed, unknown_zero, fill],
             [*downloads[:4], composite, video, layer_gallery, depth_gallery, details, status, state, *downloads[4:]],
             api_name="decompose", concurrency_id="render", concurrency_limit=concurrency,
             show_progress_on=[viewer, composite]) \
        .success(show_viewer, [state], [viewer, downloads_box], api_visibility="private", queue=False)
    depth_file.upload(lambda: "map", None, [depth_source], api_visibility="private", queue=False)
