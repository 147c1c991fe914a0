"""One scene end to end: prompt -> plan -> depth -> render -> matte -> stack, and the files written from a stack.

Data flows one way. `generate` returns a `StackResult` (everything needed to export or regenerate a layer);
`write_outputs` turns it into files; `load_result` reads those files back so that one layer can be regenerated
later while the others stay byte-identical.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
from PIL import Image

from . import __version__, folders
from .backends import Backend, ModelUnavailableError, RenderRequest, RenderSettings
from .backends.base import scheduler_steps, step_text
from .compose import CLOSED_FORM, DEFAULT_MATTE_MODEL, compose_stack, load_estimator, recompose_layer
from .depth import DepthSettings, LayerDepth, build_depth_maps
from .depthpair import depth_pair_files
from .export import (export_ora, export_psd, export_zip, load_depth_png16, package_versions, png_encodings_kept,
                     save_depth_png16, save_png)
from .fill import check_fill
from .gltf import GlbSettings, export_glb
from .images import PIXEL_LIMIT_VAR, open_image, pixel_limit
from .manifest import inside, read_manifest
from .models import hub_offline
from .matte import download_line, matte_rgba, new_matte_session
from .parallax import iter_parallax_frames, write_video
from .plan import LAYER_NAMES, ScenePlan, plan_scene, with_layer
from .stack import LayerStack, StackLayer
from .options import DEPTH_SOURCES, EXPORT_FORMATS, GenerateOptions, Progress, StackResult
from .webpage import export_html

# Share of the progress bar each stage takes: rendering dominates with a real model.
_RENDER_SPAN = (0.02, 0.80)
_MATTE_SPAN = (0.80, 0.88)


def generate(prompt: str, backend: Backend, *, seed: int = 0, width: Optional[int] = None,
             height: Optional[int] = None, options: Optional[GenerateOptions] = None,
             depth_map: Optional[np.ndarray] = None, depth_source: Optional[str] = None,
             overrides: Optional[Mapping[str, str]] = None, progress: Optional[Progress] = None) -> StackResult:
    """Plan a prompt and render it into a layer stack.

    Args:
        prompt: the scene prompt.
        backend: a renderer (see layers.backends.resolve_backend).
        seed: scene seed; each layer gets its own seed derived from it.
        width, height: output size; default from the aspect ratio written in the prompt.
        options: rendering and export settings; None: the backend's defaults (GenerateOptions.for_backend).
        depth_map: a float32 (H, W) map in [0, 1], 1 = near, split into the three layers; None = procedural scaffold.
        depth_source: what depth_map is, for the manifest ("map" or "reference"); default "map" when one is given.
        overrides: layer name -> prompt text replacing that layer's planned clauses.
        progress: called with (fraction, description) as the work advances.

    Returns:
        The StackResult.
    """
    t = time.perf_counter()
    # A backend that conditions on several 77-token chunks says how long a prompt it takes in full.
    plan = plan_scene(prompt, seed, width=width, height=height, overrides=overrides,
                      count_tokens=getattr(backend, "count_tokens", None),
                      token_budget=getattr(backend, "token_budget", 77))
    planned = time.perf_counter() - t
    result = build_stack(plan, backend, options=options, depth_map=depth_map, depth_source=depth_source,
                         progress=progress)
    result.timings = {"plan": planned, **result.timings}
    return result


def build_stack(plan: ScenePlan, backend: Backend, *, options: Optional[GenerateOptions] = None,
                depth_map: Optional[np.ndarray] = None, depth_source: Optional[str] = None,
                progress: Optional[Progress] = None) -> StackResult:
    """Render a planned scene: depth maps, one render per layer, mattes, and the stack.

    Args:
        plan: the ScenePlan.
        backend: the renderer.
        options: rendering settings; None: the backend's defaults (GenerateOptions.for_backend).
        depth_map: optional float32 (H, W) map in [0, 1], 1 = near; None = procedural scaffold.
        depth_source: "map" or "reference" when depth_map is given (recorded in the manifest).
        progress: called with (fraction, description).

    Returns:
        The StackResult (timings in seconds per stage).
    """
    report = progress or (lambda fraction, text: None)
    options = options if options is not None else GenerateOptions.for_backend(backend)
    source = "scaffold" if depth_map is None else (depth_source or "map")
    if source not in DEPTH_SOURCES:
        raise ValueError(f"unknown depth source {source!r}; choose one of {', '.join(DEPTH_SOURCES)}")
    timings: dict[str, float] = {}
    composition, notices = _composition(options, backend, depth_map), []
    check_steps(options, backend, plate=composition == "plate")
    if composition == "plate":
        try:
            estimator = load_estimator(options.depth_model or _default_depth_model())
        except (ModelUnavailableError, ImportError, OSError) as exc:
            notices.append(f"Scaffold composition: the plate's depth cannot be estimated ({exc})")
        else:
            return _build_plate_stack(plan, backend, estimator, options, report)

    t = time.perf_counter()
    report(0.0, "building depth maps")
    # An estimated map is split exactly like a user's: the depth step only needs to know a map is given.
    depths = build_depth_maps(plan, depth_map=depth_map,
                              settings=DepthSettings(thresholds=options.thresholds,
                                                     source="scaffold" if depth_map is None else "map"))
    timings["depth"] = time.perf_counter() - t

    t = time.perf_counter()
    requests = [_request(plan, name, depths[name], options) for name in LAYER_NAMES]
    rendered = backend.render(requests, _render_settings(plan, options), progress=_render_progress(report))
    timings["render"] = time.perf_counter() - t

    t = time.perf_counter()
    layers = [_matte(name, image, depths[name], options, report)
              for name, image in zip(LAYER_NAMES, rendered.images)]
    timings["matte"] = time.perf_counter() - t
    report(_MATTE_SPAN[1], "stack ready")
    info = dict(rendered.info, composition="scaffold")
    if notices:
        info["notices"] = notices
    return StackResult(plan=plan, depths=depths, stack=LayerStack(layers), render_info=info,
                       options=options, depth_source=source, timings=timings)


def check_steps(options: GenerateOptions, backend: Backend, *, plate: bool) -> None:
    """Refuse, before any work, steps the backend's scheduler cannot run.

    Every pass runs at least one step whatever the denoise (`scheduler_steps`): a pass of the plate composition
    whose one step needs a schedule longer than the model's (a few-step scheduler's, 50 for LCM) is refused here,
    not after the plate.

    Raises:
        ValueError: naming the setting and the model's limit.
    """
    limit = getattr(backend, "max_steps", None)
    if limit is None:
        return
    if options.steps > limit:
        raise ValueError(f"steps {options.steps}: this model's scheduler runs at most {limit} steps")
    if not plate:
        return
    for name in ("layer_denoise", "fill_denoise", "harmonize"):
        denoise = float(getattr(options, name))
        needed = scheduler_steps(options.steps, denoise) if denoise > 0 else 0
        if needed > limit:
            raise ValueError(f"{name} {denoise:g} needs a schedule of {needed} steps to run one; this model's "
                             f"scheduler runs at most {limit}: raise it to at least {1 / limit:.3g}")


def _composition(options: GenerateOptions, backend: Backend, depth_map) -> str:
    can_repaint = callable(getattr(backend, "repaint", None))
    if options.composition is None:
        return "plate" if can_repaint and depth_map is None else "scaffold"
    if options.composition == "plate" and not can_repaint:
        raise ValueError(f"composition 'plate' needs a model backend (diffusers); the "
                         f"{getattr(backend, 'name', 'given')} backend composes on the scaffold")
    if options.composition == "plate" and depth_map is not None:
        raise ValueError("composition 'plate' estimates depth from its own plate; a given depth map or reference "
                         "image needs composition 'scaffold'")
    return options.composition


def _default_depth_model() -> str:
    from .estimate import DEFAULT_DEPTH_MODEL

    return DEFAULT_DEPTH_MODEL


def _plate_matting(options: GenerateOptions, report: Optional[Progress] = None) -> tuple[object, str, Optional[str]]:
    """(rembg session or None, the matte model used, a notice when it fell back to closed-form matting).

    A first use downloads the model (~170 MB for the default): the progress bar says so meanwhile."""
    model = options.matte_model or DEFAULT_MATTE_MODEL
    if model == CLOSED_FORM:
        return None, model, None
    allow = not hub_offline()
    try:
        line = download_line(model) if allow and report is not None else None
        if line is not None:
            report(0.01, line)
        return _matte_session(model, allow_download=allow), model, None
    except (ValueError, OSError) as exc:
        return None, CLOSED_FORM, f"Closed-form matting: rembg model {model!r} unavailable ({exc})"


def _build_plate_stack(plan: ScenePlan, backend: Backend, estimator, options: GenerateOptions,
                       report: Progress) -> StackResult:
    t = time.perf_counter()
    scaffold = build_depth_maps(plan, settings=DepthSettings(thresholds=options.thresholds, source="scaffold"))
    session, matte_model, notice = _plate_matting(options, report)
    timings = {"depth": time.perf_counter() - t}
    composed = compose_stack(plan, backend, scaffold, estimator, steps=options.steps, guidance=options.guidance,
                             strengths=options.strengths, settings=options.compose_settings(), session=session,
                             progress=report)
    timings.update(composed.timings)
    info = dict(composed.info, matte_model=matte_model,
                estimator=options.depth_model or _default_depth_model())
    if notice:
        info["notices"] = [notice]
    report(_MATTE_SPAN[1], "stack ready")
    return StackResult(plan=plan, depths=composed.depths, stack=composed.stack, render_info=info, options=options,
                       depth_source="plate", timings=timings, plate=composed.plate, plate_depth=composed.plate_depth)


def regenerate_layer(result: StackResult, layer: str, backend: Backend, *, seed: Optional[int] = None,
                     prompt: Optional[str] = None, fill: Optional[str] = None,
                     progress: Optional[Progress] = None) -> StackResult:
    """Re-render one layer with a new seed and/or prompt; every other layer stays exactly as it was.

    A layer of a decomposed picture has its hidden part filled again: repainted by a backend that can inpaint,
    else (or when ``fill`` is given) by the offline fill, the stack's own (``options.fill``) unless ``fill``
    says otherwise. A plate-composed stack cuts its plate again, with ``fill`` for this layer (default: its own).

    Args:
        result: the stack to change.
        layer: background, midground or foreground.
        backend: the renderer.
        seed: the layer's new seed; None with no prompt derives a fresh one from the old seed.
        prompt: the layer's new prompt text (the shared style is added and the budget applied again).
        fill: "texture" or "smooth": the offline fill to complete the layer with; None = the stack's own.
        progress: called with (fraction, description).

    Returns:
        A new StackResult; the other layers are the very same StackLayer objects.
    """
    if layer not in result.stack.names:
        raise ValueError(f"no layer named {layer!r}; this stack has {', '.join(result.stack.names)}")
    if result.plan is not None:
        check_steps(result.options, backend, plate=result.render_info.get("composition") == "plate")
    if fill is not None:
        check_fill(fill)
    if result.plan is None:
        return _refill_decomposed(result, layer, backend, seed=seed, prompt=prompt, fill=fill, progress=progress)
    if fill is not None and (result.render_info.get("composition") != "plate" or result.plate is None):
        raise ValueError("the fill applies to a picture's layers and to a plate's; this stack was rendered "
                         "on the scaffold, layer by layer, with nothing to fill")
    report = progress or (lambda fraction, text: None)
    old = result.plan.layer(layer)
    if seed is None and prompt is None:
        seed = (old.seed * 1_103_515_245 + 12_345) % 2**31
    plan = with_layer(result.plan, layer, prompt=prompt, seed=seed, count_tokens=getattr(backend, "count_tokens", None))
    depth = result.depths[layer]
    t = time.perf_counter()
    if result.render_info.get("composition") == "plate" and result.plate is not None:
        return _regenerate_plate_layer(result, plan, layer, backend, report, fill=fill)
    rendered = backend.render([_request(plan, layer, depth, result.options)], _render_settings(plan, result.options),
                              progress=_render_progress(report))
    new_layer = _matte(layer, rendered.images[0], depth, result.options, report)
    info = dict(result.render_info)
    info["regenerated"] = list(info.get("regenerated", [])) + [
        {"layer": layer, "seed": plan.layer(layer).seed, "prompt": plan.layer(layer).prompt,
         "backend": rendered.info.get("backend")}]
    report(_MATTE_SPAN[1], f"{layer} regenerated")
    return StackResult(plan=plan, depths=result.depths, stack=result.stack.replace(new_layer), render_info=info,
                       options=result.options, depth_source=result.depth_source,
                       timings={"regenerate": time.perf_counter() - t})


def decompose_picture(image: Image.Image, depth, backend: Optional[Backend] = None, *, layers=3, seed: int = 0,
                      options: GenerateOptions = GenerateOptions(displacement=1.0), depth_source: str = "map",
                      progress: Optional[Progress] = None) -> StackResult:
    """Split a picture into a layer stack (``decompose.decompose``) shaped like a rendered one, for export.

    Args:
        image: the picture.
        depth: its depth map (H, W), large = near (another size is resized, with a notice).
        backend: a backend that can repaint fills the hidden parts in model mode; None / others fill offline.
        layers: 2..6 or "auto".
        seed: seed of the texture fill or of the repainting (one per layer derived from it).
        options: export settings (parallax path, frames, per-pixel displacement, matte model) and the offline
            fill (``options.fill``).
        depth_source: "map" (given by the user) or "reference" (estimated from the picture).
        progress: called with (fraction, description).

    Returns:
        A StackResult with no plan; ``render_info["decompose"]`` holds thresholds, fill, seeds and notices.
    """
    from .decompose import DecomposeSettings, decompose

    if depth_source not in DEPTH_SOURCES[1:]:
        raise ValueError(f"depth source of a picture must be 'map' or 'reference', got {depth_source!r}")
    t = time.perf_counter()
    session = _given_matte_session(options)
    split = decompose(image, depth, layers=layers, session=session, backend=backend, seed=seed,
                      settings=DecomposeSettings(fill=options.fill),
                      progress=(lambda f, text: progress(0.9 * f, text)) if progress else None)
    depths = {layer.name: LayerDepth(name=layer.name, control=layer.depth, prior=split.visible[layer.name],
                                     nearness=layer.nearness) for layer in split.stack}
    seeds = split.info.get("seeds", {})
    info = {"backend": getattr(backend, "name", None) if split.info["fill"] == "repaint" else "offline",
            "decompose": {"seed": seed, "thresholds": list(split.thresholds), "layer_count": split.info["layer_count"],
                          "fill": split.info["fill"], "seeds": seeds, "notices": list(split.notices)}}
    return StackResult(plan=None, depths=depths, stack=split.stack, render_info=info, options=options,
                       depth_source=depth_source, timings={"decompose": time.perf_counter() - t})


def _refill_decomposed(result: StackResult, layer: str, backend: Backend, *, seed: Optional[int],
                       prompt: Optional[str], fill: Optional[str], progress: Optional[Progress]) -> StackResult:
    """Fill the hidden part of one layer of a decomposed picture again (repainted, or offline); every other layer
    stays exactly as it was."""
    from .decompose import refill_layer, repaint_layer

    if prompt is not None:
        raise ValueError("a layer of a decomposed picture has no prompt to change; give --seed only")
    split = dict(result.render_info.get("decompose") or {})
    seeds = dict(split.get("seeds", {}))
    if seed is None:
        seed = (int(seeds.get(layer, split.get("seed", 0))) * 1_103_515_245 + 12_345) % 2**31
    t = time.perf_counter()
    report = (lambda f, text: progress(0.9 * f, text)) if progress else None
    if fill is None and callable(getattr(backend, "repaint", None)):
        new_layer, info = repaint_layer(result.stack, layer, backend, seed=seed, progress=report)
        entry = {"layer": layer, "seed": seed, "backend": info.get("backend")}
    else:
        if fill is None and result.options.fill == "smooth":
            raise ValueError(f"the {layer} layer was filled smoothly, which has no seed to change: refill it with "
                             f"texture (--fill texture) or repaint it in model mode (--backend diffusers)")
        fill = fill or result.options.fill
        new_layer = refill_layer(result.stack, layer, fill=fill, seed=seed, progress=report)
        entry = {"layer": layer, "seed": seed, "fill": fill, "backend": "offline"}
    seeds[layer] = seed
    split["seeds"] = seeds
    render_info = dict(result.render_info, decompose=split)
    render_info["regenerated"] = list(render_info.get("regenerated", [])) + [entry]
    return StackResult(plan=None, depths=result.depths, stack=result.stack.replace(new_layer), render_info=render_info,
                       options=result.options, depth_source=result.depth_source,
                       timings={"regenerate": time.perf_counter() - t})


def _regenerate_plate_layer(result: StackResult, plan: ScenePlan, layer: str, backend: Backend,
                            report: Progress, fill: Optional[str] = None) -> StackResult:
    t = time.perf_counter()
    options = result.options
    session, _, _ = _plate_matting(options, report) if result.render_info.get("matte_model") != CLOSED_FORM \
        else (None, None, None)
    # Another fill cuts the plate for this layer only; the stack's own (options.fill) stays what its others had.
    settings = options.compose_settings() if fill is None else \
        dataclasses.replace(options.compose_settings(), fill=fill)
    new_layer, depth, facts = recompose_layer(
        plan, backend, result.plate, result.plate_depth, result.render_info["decompose"]["thresholds"],
        result.stack, layer, steps=options.steps, guidance=options.guidance,
        strength=options.strengths[LAYER_NAMES.index(layer)], settings=settings, session=session,
        progress=report)
    info = dict(result.render_info)
    info["regenerated"] = list(info.get("regenerated", [])) + [
        dict(facts, prompt=plan.layer(layer).prompt, fill=settings.fill, backend=getattr(backend, "name", None))]
    report(_MATTE_SPAN[1], f"{layer} regenerated")
    return StackResult(plan=plan, depths=dict(result.depths, **{layer: depth}), stack=result.stack.replace(new_layer),
                       render_info=info, options=options, depth_source=result.depth_source,
                       timings={"regenerate": time.perf_counter() - t}, plate=result.plate,
                       plate_depth=result.plate_depth)


def _request(plan: ScenePlan, name: str, depth: LayerDepth, options: GenerateOptions) -> RenderRequest:
    lp = plan.layer(name)
    return RenderRequest(name=name, prompt=lp.prompt, negative_prompt=lp.negative_prompt, control=depth.control,
                         prior=depth.prior, seed=lp.seed, strength=options.strengths[LAYER_NAMES.index(name)])


def _render_settings(plan: ScenePlan, options: GenerateOptions) -> RenderSettings:
    return RenderSettings(width=plan.width, height=plan.height, steps=options.steps, guidance=options.guidance,
                          light_direction=plan.light_direction, palette=plan.palette)


def _render_progress(report: Progress):
    lo, hi = _RENDER_SPAN

    def on_step(layer: str, step: int, total: int) -> None:
        # One by one, each layer owns a third of the span; a batch advances all three at once.
        done = step / max(total, 1)
        if layer in LAYER_NAMES:
            done = (LAYER_NAMES.index(layer) + done) / len(LAYER_NAMES)
        report(lo + (hi - lo) * done, f"{layer}: {step_text(step, total)}")

    return on_step


@functools.lru_cache(maxsize=4)
def _matte_session(model: str, allow_download: bool = False):
    return new_matte_session(model, allow_download=allow_download)


def _given_matte_session(options: GenerateOptions):
    """The rembg session the user asked for, or None for closed-form matting (no model, or "closed-form")."""
    return _matte_session(options.matte_model) if options.matte_model not in (None, CLOSED_FORM) else None


def _matte(name: str, image: Image.Image, depth: LayerDepth, options: GenerateOptions, report: Progress) -> StackLayer:
    if name == LAYER_NAMES[0]:
        rgba = image.convert("RGBA")  # the background is opaque and complete
    else:
        report(_MATTE_SPAN[0] + (_MATTE_SPAN[1] - _MATTE_SPAN[0]) * LAYER_NAMES.index(name) / 3, f"matting {name}")
        session = _given_matte_session(options)
        rgba = matte_rgba(image, depth.prior, session=session)
    return StackLayer(name=name, rgba=rgba, depth=depth.control, nearness=float(depth.nearness))


# --- files -----------------------------------------------------------------------------------------------------

OUTPUT_NAMES = {
    "composite": "composite.png",
    "psd": "stack.psd",
    "ora": "stack.ora",
    "zip": "stack.zip",
    "mp4": "parallax.mp4",
    "glb": "stack.glb",
    "html": "parallax.html",
    "manifest": "manifest.json",
}
PLATE_FILES = {"plate": "plate.png", "plate_depth": "depth/plate.png"}
"""Written beside the layers when the stack was cut from a plate."""

_OURS = frozenset({*OUTPUT_NAMES.values(), PLATE_FILES["plate"], "layers", "depth", "priors", "preview"})
"""Entries of an output folder that a new run writes (or the studio adds); anything else was put there by a user."""


def build_manifest(result: StackResult) -> dict:
    """Everything needed to reproduce the stack: prompt, plan, seeds, backend and models, sizes, depth, versions."""
    plan = result.plan
    width, height = result.stack.size
    split = result.render_info.get("decompose") or {}
    seeds = split.get("seeds", {})
    return {
        "layercake": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": "prompt" if plan is not None else "picture",
        "prompt": plan.prompt if plan is not None else None,
        "seed": plan.seed if plan is not None else split.get("seed"),
        "width": width,
        "height": height,
        "aspect": plan.aspect if plan is not None else None,
        "backend": result.render_info.get("backend"),
        "models": {k: v for k, v in result.render_info.items() if k in ("model", "controlnet", "family", "preset",
                                                                               "lora", "decoder", "decoder_model")},
        "render": result.render_info,
        "depth_source": result.depth_source,
        "composition": result.render_info.get("composition", "scaffold"),
        "notices": list(result.render_info.get("notices", [])),
        "options": result.options.to_dict(),
        "plan": plan.to_dict() if plan is not None else None,
        "thresholds": split.get("thresholds", list(result.options.thresholds)),
        "layers": [
            {
                "name": layer.name,
                "file": f"layers/{layer.name}.png",
                "depth_file": f"depth/{layer.name}.png",
                "prior_file": f"priors/{layer.name}.png",
                "nearness": round(layer.nearness, 6),
                "seed": plan.layer(layer.name).seed if plan is not None else seeds.get(layer.name),
                "prompt": plan.layer(layer.name).prompt if plan is not None else None,
                "negative_prompt": plan.layer(layer.name).negative_prompt if plan is not None else None,
                "dropped": list(plan.layer(layer.name).dropped) if plan is not None else [],
                "alpha_coverage": round(float(layer.alpha.mean()), 6),
            }
            for layer in result.stack
        ],
        "files": dict(OUTPUT_NAMES, **(PLATE_FILES if result.plate is not None else {})),
        "versions": package_versions(),
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
    }


def write_outputs(result: StackResult, out_dir, *, progress: Optional[Progress] = None) -> dict[str, Path]:
    """Write every output of a stack into `out_dir`, all or nothing.

    The new folder is built beside `out_dir` and swapped in whole (layers.folders.replace_folder): at every moment,
    even if the process is killed, `out_dir` is either the complete old folder or the complete new one. Files the
    user added to an earlier output folder are carried over; a non-empty folder that is not a Layercake output is
    refused. Staging folders left by killed runs are cleaned up first.

    Args:
        result: the stack.
        out_dir: the folder (created if missing, with the user's normal permissions).
        progress: called with (fraction, description).

    Returns:
        Paths by kind: composite, psd, ora, zip, mp4 (when options.video), manifest, and "layers/<name>",
        "depth/<name>", "priors/<name>".

    Raises:
        ValueError: the folder cannot be created or written, or holds other things than a Layercake output.
    """
    report = progress or (lambda fraction, text: None)
    out = Path(out_dir)
    target = check_output_folder(out)  # a link is followed: the folder it points to is replaced, the link kept
    folders.clean_stale(target.parent)
    try:
        staging = folders.staging_folder(target)
    except OSError as exc:
        raise ValueError(f"cannot write to output folder {out}: {exc.strerror or exc}") from None
    try:
        with png_encodings_kept():
            files = _write_all(result, staging, report)
        if target.is_dir():
            folders.carry_over(target, staging, _OURS)
        folders.replace_folder(staging, target)
    except OSError as exc:
        raise ValueError(f"cannot write to output folder {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report(1.0, "done")
    return {key: out / rel for key, rel in files.items()}


def check_output_folder(out) -> Path:
    """The folder a run may replace whole, links followed; ValueError unless it is new, empty or a Layercake output.

    A Layercake output is a folder whose manifest passes the schema (layers.manifest.read_manifest: every file it
    names inside the folder; one may be missing, a folder to redo) and whose own sub-folders hold only the files
    Layercake writes there. A
    replacement deletes those, so anything else in them (a web app's manifest.json with its own layers/ folder, a
    file the user put into layers/) refuses the folder; the user's files beside them are carried over.

    Returns:
        The resolved folder (layers.folders.resolve_target).

    Raises:
        ValueError: one line naming the folder and why it is refused, before any work.
    """
    target = folders.resolve_target(out)
    if not target.is_dir() or not any(target.iterdir()):
        return target
    if not (target / OUTPUT_NAMES["manifest"]).is_file():
        raise ValueError(f"output folder {out} already holds other files and is not a Layercake output; "
                         f"choose a new or empty folder")
    try:
        names = [entry.name for entry in read_manifest(target, need_files=False).layers]
    except ValueError as exc:
        raise ValueError(f"output folder {out} is not a Layercake output: {exc}; choose a new or empty folder") \
            from None
    foreign = _not_ours(target, names)
    if foreign:
        raise ValueError(f"output folder {out} holds {foreign}, which Layercake did not write and a new run would "
                         f"delete; move it out or choose a new or empty folder")
    return target


def _not_ours(folder: Path, names) -> Optional[str]:
    """The first entry under one of our names in `folder` that is not a file Layercake writes there, or None."""
    pngs = {f"{n}.png" for n in names}
    expected = {"layers": pngs, "priors": pngs, "depth": pngs | {Path(PLATE_FILES["plate_depth"]).name},
                "preview": {f"{n}.jpg" for n in names} | {f"depth_{n}.png" for n in names}}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name in expected:
            if entry.is_symlink() or not entry.is_dir():
                return entry.name
            for inner in sorted(os.scandir(entry.path), key=lambda e: e.name):
                # the studio writes previews through temporary names
                transient = entry.name == "preview" and inner.name.startswith(".") and inner.name.endswith(".tmp")
                if not transient and (inner.name not in expected[entry.name] or inner.is_dir(follow_symlinks=False)):
                    return f"{entry.name}/{inner.name}"
        elif entry.name in _OURS and entry.is_dir(follow_symlinks=False):
            return entry.name
    return None


def _write_all(result: StackResult, root: Path, report: Progress) -> dict[str, str]:
    stack = result.stack
    files: dict[str, str] = {}
    t = time.perf_counter()
    for sub in ("layers", "depth", "priors"):
        (root / sub).mkdir()
    for layer in stack:
        # save_png caches each encoding, so the ORA and ZIP below reuse these bytes instead of encoding again.
        save_png(layer.rgba, root / f"layers/{layer.name}.png")
        save_depth_png16(layer.depth, root / f"depth/{layer.name}.png")
        prior = result.depths[layer.name].prior
        save_png(Image.fromarray(np.clip(prior * 255.0 + 0.5, 0, 255).astype(np.uint8), "L"),
                 root / f"priors/{layer.name}.png")
        files.update({f"layers/{layer.name}": f"layers/{layer.name}.png", f"depth/{layer.name}": f"depth/{layer.name}.png",
                      f"priors/{layer.name}": f"priors/{layer.name}.png"})
    composite = stack.composite()
    save_png(composite, root / OUTPUT_NAMES["composite"])
    files["composite"] = OUTPUT_NAMES["composite"]
    if result.plate is not None:
        save_png(result.plate, root / PLATE_FILES["plate"])
        save_depth_png16(result.plate_depth, root / PLATE_FILES["plate_depth"])
        files.update(PLATE_FILES)
    timings = {"pngs": time.perf_counter() - t}

    manifest = build_manifest(result)
    steps = [("psd", lambda p: export_psd(stack, p, composite=composite)),
             ("ora", lambda p: export_ora(stack, p, composite=composite)),
             ("zip", lambda p: export_zip(stack, manifest, p, composite=composite,
                                          extras=depth_pair_files(stack, composite))),
             ("glb", lambda p: export_glb(stack, p, settings=GlbSettings(relief=result.options.glb_relief))),
             ("html", lambda p: export_html(stack, p, title=_page_title(result)))]
    if result.options.video:
        steps.append(("mp4", lambda p: _write_parallax(result, p)))
    steps = [(key, write) for key, write in steps if key in result.options.formats]
    for i, (key, write) in enumerate(steps):
        report(_MATTE_SPAN[1] + (0.99 - _MATTE_SPAN[1]) * i / len(steps), f"writing {OUTPUT_NAMES[key]}")
        t = time.perf_counter()
        write(root / OUTPUT_NAMES[key])
        timings[key] = time.perf_counter() - t
        files[key] = OUTPUT_NAMES[key]
    manifest["timings"].update({f"write_{k}": round(v, 4) for k, v in timings.items()})
    # The manifest goes last: its presence says the folder is complete.
    (root / OUTPUT_NAMES["manifest"]).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    files["manifest"] = OUTPUT_NAMES["manifest"]
    return files


def _page_title(result: StackResult) -> str:
    # A decomposed picture has no prompt to name the page after.
    what = result.plan.prompt[:80] if result.plan is not None else "A picture in layers"
    return f"{what} (Layercake parallax)"


def _write_parallax(result: StackResult, path: Path) -> None:
    # Streamed: ffmpeg encodes while later frames are still being rendered.
    frames = iter_parallax_frames(result.stack, result.options.parallax, frames=result.options.frames,
                                  displacement=result.options.displacement)
    write_video(frames, path, fps=result.options.fps)


def load_result(out_dir) -> StackResult:
    """Read a stack written by write_outputs back (to regenerate one of its layers).

    The folder may come from anyone: its manifest is checked whole first (layers.manifest.read_manifest: one
    schema, size and nesting limits, every file inside the folder), then each image's size is read from its header
    and must be the plan's before it is decoded.

    Args:
        out_dir: a folder holding manifest.json, layers/, depth/ and priors/.

    Returns:
        The StackResult, with layers loaded from their PNGs.

    Raises:
        ValueError: one line saying why the folder is not a complete, sound Layercake output.
    """
    out = Path(out_dir)
    checked = read_manifest(out)
    manifest = checked.data
    try:
        plan = ScenePlan.from_dict(manifest["plan"]) if manifest.get("plan") is not None else None
        # A manifest from before the texture fill: its layers were completed smoothly, and stay so when regenerated.
        options = GenerateOptions(**{"fill": "smooth", **manifest["options"]})
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{out} manifest does not describe a stack: {type(exc).__name__}: {exc}"[:300]) from None
    # A picture's stack has no plan; check_manifest made sure its manifest gives the size instead.
    size = (plan.width, plan.height) if plan is not None else (manifest["width"], manifest["height"])
    if size[0] * size[1] > pixel_limit():
        raise ValueError(f"{out} manifest size is {size[0]}x{size[1]}, more than the image limit "
                         f"({PIXEL_LIMIT_VAR})")
    depth_source = manifest.get("depth_source", "scaffold")
    if depth_source not in DEPTH_SOURCES + ("plate",):  # "plate": estimated from the stack's own plate
        raise ValueError(f"{out} manifest depth_source must be one of {', '.join(DEPTH_SOURCES)} or plate, "
                         f"got {depth_source!r}")
    depths, layers = {}, []
    for entry in checked.layers:
        name = entry.name  # one of our own layer names: checked, so paths built from it stay ours
        rgba = _read_layer_image(entry.image, size, f"{name} layer").convert("RGBA")
        control = load_depth_png16(_checked_size(entry.depth, size, f"{name} depth map"))
        prior = np.asarray(_read_layer_image(entry.prior, size, f"{name} prior").convert("L"),
                           dtype=np.float32) / 255.0
        depths[name] = LayerDepth(name=name, control=control, prior=prior, nearness=entry.nearness)
        layers.append(StackLayer(name=name, rgba=rgba, depth=control, nearness=entry.nearness))
    plate = plate_depth = None
    if (out / PLATE_FILES["plate"]).exists():  # a stack cut from a plate; our own names, checked like the layers
        base = out.resolve()
        plate = _read_layer_image(inside(base, PLATE_FILES["plate"], "plate"), size, "plate").convert("RGB")
        plate_depth = load_depth_png16(_checked_size(inside(base, PLATE_FILES["plate_depth"], "plate depth"), size,
                                                     "plate depth map"))
    return StackResult(plan=plan, depths=depths, stack=LayerStack(layers), render_info=manifest.get("render", {}),
                       options=options, depth_source=depth_source, plate=plate, plate_depth=plate_depth)


def _checked_size(path: Path, size: tuple[int, int], what: str) -> Path:
    """`path` once its header says it is `size` and within the pixel limit (nothing decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                found = img.size
    except Image.DecompressionBombError:
        found = None
    except (OSError, SyntaxError):
        raise ValueError(f"{what} {path.name} is not a readable image") from None
    if found is None or found[0] * found[1] > pixel_limit():
        open_image(path, what=what)  # refuses it, in the words every loader uses
    if found != size:
        raise ValueError(f"{what} {path.name} is {found[0]}x{found[1]}; the stack is {size[0]}x{size[1]}")
    return path


def _read_layer_image(path: Path, size: tuple[int, int], what: str) -> Image.Image:
    return open_image(_checked_size(path, size, what), what=what)
