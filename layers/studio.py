"""The studio's model object: the backend loaded once, one output folder per request, limits and clean-up.

The web app (app.py) only builds widgets and wires them to a `Studio`; everything that touches files, limits or
the pipeline lives here, without gradio, so it can be used and tested on its own.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from . import folders
from .backends import Backend, resolve_backend
from .images import PIXEL_LIMIT_RANGE, fit_pixels, open_image, pixel_limit, sample_nearest, work_limit
from .pipeline import (DEPTH_SOURCES, OUTPUT_NAMES, PLATE_FILES, GenerateOptions, Progress, StackResult, generate,
                       load_result, regenerate_layer, write_outputs)
from .plan import LAYER_NAMES, ScenePlan, check_prompt, plan_scene
from .webpage import viewer_layers

log = logging.getLogger(__name__)

DRAFT_NOTICE = "Draft mode: procedural layout preview, no model weights loaded."
"""Shown on the page whenever the draft backend renders."""


_RUN_ID = re.compile(r"^(?:example-)?[0-9a-f]{32}$")
_EXAMPLE_PREFIX = "example-"
_DEPTH_RETRY_S = 600.0


@dataclass(frozen=True)
class StudioLimits:
    """Limits that keep one shared server healthy. Each can be set with an environment variable (see from_env)."""

    max_upload_mb: float = 20.0
    """Largest upload the web server accepts, in MB (0.1..1024). LAYERCAKE_MAX_UPLOAD_MB."""
    max_upload_pixels: int = field(default_factory=pixel_limit)
    """Largest uploaded image, width x height (1..178 956 970). LAYERCAKE_MAX_UPLOAD_PIXELS (read by
    layers.images.pixel_limit, the one limit every image loader uses)."""
    max_work_pixels: int = field(default_factory=work_limit)
    """Largest picture a /decompose upload is worked on at (1..178 956 970): a larger one is scaled down first and
    the run says so, which bounds one request's memory. LAYERCAKE_MAX_WORK_PIXELS (default 8 MP)."""
    max_runs: int = 200
    """How many result folders are kept; the oldest go first (1..100 000). LAYERCAKE_MAX_RUNS."""
    max_age_hours: float = 24.0
    """Result folders older than this are removed (0.01..8760). LAYERCAKE_MAX_AGE_HOURS."""
    viewer_side: int = 768
    """Longest side of the images embedded in the interactive viewer, in pixels (64..4096)."""
    max_sessions: int = 64
    """Browser tabs and API clients whose page state (the last run, edited prompts) the web server keeps, the
    least recently used forgotten first (1..10 000). Each costs the server about 0.4 MB whether it comes back or
    not (the web framework keeps a copy of every widget's settings per session; its own bound is 10 000, about
    4 GB). LAYERCAKE_MAX_SESSIONS."""

    def __post_init__(self):
        checks = [
            ("max_upload_mb", self.max_upload_mb, 0.1, 1024),
            ("max_upload_pixels", self.max_upload_pixels, *PIXEL_LIMIT_RANGE),
            ("max_work_pixels", self.max_work_pixels, *PIXEL_LIMIT_RANGE),
            ("max_runs", self.max_runs, 1, 100_000),
            ("max_age_hours", self.max_age_hours, 0.01, 8760),
            ("viewer_side", self.viewer_side, 64, 4096),
            ("max_sessions", self.max_sessions, 1, 10_000),
        ]
        for name, value, lo, hi in checks:
            if not lo <= value <= hi:
                raise ValueError(f"{name} must be {lo}..{hi}, got {value}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "StudioLimits":
        """Limits from LAYERCAKE_MAX_UPLOAD_MB, LAYERCAKE_MAX_UPLOAD_PIXELS, LAYERCAKE_MAX_WORK_PIXELS,
        LAYERCAKE_MAX_RUNS, LAYERCAKE_MAX_AGE_HOURS and LAYERCAKE_MAX_SESSIONS.

        Args:
            env: the environment to read (default os.environ); unset variables keep the defaults.

        Returns:
            The StudioLimits.

        Raises:
            ValueError: a variable is not a number or is out of range.
        """
        kwargs = {"max_upload_pixels": pixel_limit(env), "max_work_pixels": work_limit(env)}
        for field_name, var, kind in (("max_upload_mb", "LAYERCAKE_MAX_UPLOAD_MB", float),
                                      ("max_runs", "LAYERCAKE_MAX_RUNS", int),
                                      ("max_sessions", "LAYERCAKE_MAX_SESSIONS", int),
                                      ("max_age_hours", "LAYERCAKE_MAX_AGE_HOURS", float)):
            text = env.get(var, "").strip()
            if text:
                try:
                    kwargs[field_name] = kind(float(text)) if kind is int else kind(text)
                except ValueError:
                    raise ValueError(f"{var} must be a number, got {text!r}") from None
        return cls(**kwargs)


@dataclass(frozen=True)
class Run:
    """One finished request: its own folder of outputs and the stack they were written from."""

    run_id: str
    """Folder name under the studio's runs folder; also what /regenerate_layer accepts."""
    folder: Path
    result: StackResult
    files: dict[str, Path]
    """Paths by kind, as returned by pipeline.write_outputs (composite, psd, ora, zip, mp4, manifest, layers/...)."""
    previews: dict[str, Path] = field(default_factory=dict)
    """Display images: "layers/<name>" (RGBA over a checkerboard) and "depth/<name>" (colour-mapped)."""
    cached: bool = False
    """True when served from the example cache instead of rendered for this request."""
    seconds: float = 0.0
    """Wall time this request took."""

    def summary(self) -> dict:
        """A small JSON-able description for the page and API clients (no file paths)."""
        plan = self.result.plan
        width, height = self.result.stack.size
        if plan is None:  # decomposed from a picture
            split = self.result.render_info.get("decompose", {})
            return {"run_id": self.run_id, "source": "picture", "backend": self.result.render_info.get("backend"),
                    "width": width, "height": height, "depth_source": self.result.depth_source,
                    "thresholds": split.get("thresholds"), "fill": split.get("fill"),
                    "notices": split.get("notices", []), "parallax": self.result.options.parallax,
                    "seconds": round(self.seconds, 3),
                    "layers": [{"name": layer.name, "nearness": round(layer.nearness, 4),
                                "alpha_coverage": round(float(layer.alpha.mean()), 4)} for layer in self.result.stack],
                    "timings": {k: round(v, 3) for k, v in self.result.timings.items()}}
        return {
            "run_id": self.run_id,
            "backend": self.result.render_info.get("backend"),
            "model": self.result.render_info.get("model"),
            "width": width,
            "height": height,
            "aspect": plan.aspect,
            "seed": plan.seed,
            "depth_source": self.result.depth_source,
            "parallax": self.result.options.parallax,
            "cached": self.cached,
            "seconds": round(self.seconds, 3),
            "layers": [
                {"name": layer.name, "seed": plan.layer(layer.name).seed, "tokens": plan.layer(layer.name).tokens,
                 "nearness": round(layer.nearness, 4), "dropped": list(plan.layer(layer.name).dropped)}
                for layer in self.result.stack
            ],
            "timings": {k: round(v, 3) for k, v in self.result.timings.items()},
            "composition": self.result.render_info.get("composition", "scaffold"),
            "notices": list(self.result.render_info.get("notices", [])),
        }


class Studio:
    """What the web app talks to: one backend (loaded once), an output root, limits and the example cache."""

    def __init__(self, backend: Backend, *, output_root="outputs", limits: StudioLimits = StudioLimits(),
                 notices: Sequence[str] = (), cached_prompts: Sequence[str] = (), concurrency: Optional[int] = None,
                 depth_model: Optional[str] = None):
        """Wrap a backend.

        Args:
            backend: the renderer every request uses.
            output_root: folder for results (created); each request gets its own subfolder under runs/.
            limits: upload and clean-up limits.
            notices: lines to show on the page (e.g. why "auto" fell back to draft).
            cached_prompts: prompts whose result with default settings (seed 0, size from the prompt, default
                options, scaffold depth) is kept after its first run and served to later requests.
            concurrency: how many requests render at once; default 1 for a model on one GPU, 2 for draft.
            depth_model: the depth estimator used for reference images (hub id or local folder); None = the
                default of layers.estimate.

        Raises:
            ValueError: concurrency out of 1..64 or the output root cannot be created.
        """
        self.backend = backend
        self.limits = limits
        self.output_root = Path(output_root).resolve()
        self.runs_root = self.output_root / "runs"
        try:
            self.runs_root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot create output folder {self.runs_root}: {exc.strerror or exc}") from None
        default = 2 if self.is_draft else 1
        self.concurrency = default if concurrency is None else int(concurrency)
        if not 1 <= self.concurrency <= 64:
            raise ValueError(f"concurrency must be 1..64, got {concurrency}")
        self._notices: list[str] = []
        if self.is_draft:
            self._notices.append(DRAFT_NOTICE)
        for text in notices:
            self.add_notice(text)
        self.cached_prompts = frozenset(p.strip() for p in cached_prompts if p.strip())
        self.depth_model = depth_model
        self._lock = threading.Lock()
        self._example_locks: dict[str, threading.Lock] = {}
        self._depth_unavailable: Optional[tuple[float, str]] = None
        removed = folders.clean_stale(self.runs_root)  # a crashed server's half-written folders, right away
        if removed:
            log.info("removed %d staging folder(s) left by a stopped server", len(removed))
        # The cut's compiled kernels take 40-90 s the first time after installing: paid while the studio comes up,
        # not by its first request (which waits for it if it comes sooner, as it would have anyway).
        self.warmed = threading.Event()
        threading.Thread(target=self._warm_up, name="layercake-warm-up", daemon=True).start()

    def _warm_up(self) -> None:
        from .decompose import warm_up

        try:
            log.info("compiled kernels ready in %.1f s", warm_up())
        except Exception:  # noqa: BLE001 - a request that needs them compiles them itself, and says what failed
            log.exception("warming up the compiled kernels failed")
        finally:
            self.warmed.set()

    @classmethod
    def create(cls, backend: str = "auto", *, model: Optional[str] = None, controlnet: Optional[str] = None,
               decoder: Optional[str] = None, output_root="outputs", limits: Optional[StudioLimits] = None,
               cached_prompts: Sequence[str] = (), concurrency: Optional[int] = None,
               depth_model: Optional[str] = None) -> "Studio":
        """Load a backend by name and wrap it.

        Args:
            backend: "auto" (diffusers when its weights load, else draft), "draft" or "diffusers".
            model, controlnet: diffusers model and ControlNet (a preset name, hub id or local folder).
            decoder: "full" or "tiny" (see DiffusersBackend); None: tiny for the CPU preset, else full.
            output_root: folder for results.
            limits: default from the environment (StudioLimits.from_env).
            cached_prompts: see Studio.
            concurrency: see Studio.
            depth_model: see Studio.

        Returns:
            The Studio.

        Raises:
            ValueError: unknown backend, or "diffusers" asked for and its weights cannot be loaded.
        """
        options = {k: v for k, v in (("model", model), ("controlnet", controlnet), ("decoder", decoder)) if v}
        loaded, notice = resolve_backend(backend, **options)
        return cls(loaded, output_root=output_root, limits=limits or StudioLimits.from_env(),
                   notices=[notice] if notice else [], cached_prompts=cached_prompts, concurrency=concurrency,
                   depth_model=depth_model)

    # --- what the page shows ------------------------------------------------------------------------------------

    @property
    def backend_name(self) -> str:
        return str(getattr(self.backend, "name", type(self.backend).__name__))

    @property
    def is_draft(self) -> bool:
        return self.backend_name == "draft"

    @property
    def notices(self) -> tuple[str, ...]:
        """Lines the page shows above everything (draft mode, failed public link, ...)."""
        return tuple(self._notices)

    def add_notice(self, text: str) -> None:
        """Add a line for the page; a line already there (or one saying the same as the draft notice) is not repeated."""
        text = text.strip()
        if not text or text in self._notices:
            return
        if self.is_draft and text.startswith(DRAFT_NOTICE.rstrip(".")):
            # resolve_backend's fallback notice already starts with the draft line: keep its reason only.
            self._notices = [n for n in self._notices if n != DRAFT_NOTICE]
        self._notices.append(text)

    def options(self, **given) -> GenerateOptions:
        """Generate options with this studio's model's own defaults (a few-step model: 4 steps, guidance 8, ...)
        wherever `given` says nothing; ValueError for a bad value."""
        return GenerateOptions.for_backend(self.backend, **given)

    @property
    def max_steps(self) -> int:
        """The most steps the Steps slider offers: GenerateOptions' 150, or fewer where the model's scheduler runs
        fewer (LCM: 50)."""
        return min(150, int(getattr(self.backend, "max_steps", 150)))

    @property
    def count_tokens(self):
        """The backend's tokenizer-based counter when it has one (else the plan's estimate is used)."""
        return getattr(self.backend, "count_tokens", None)

    @property
    def token_budget(self) -> int:
        """Tokens a layer prompt may take with this backend (77 for one CLIP window), as pipeline.generate uses."""
        return int(getattr(self.backend, "token_budget", 77))

    # --- requests -----------------------------------------------------------------------------------------------

    def plan(self, prompt: str, *, seed: int = 0, width: Optional[int] = None, height: Optional[int] = None,
             overrides: Optional[Mapping[str, str]] = None) -> ScenePlan:
        """Plan a scene prompt (no rendering).

        Args:
            prompt: the scene prompt.
            seed: the scene seed.
            width, height: output size in pixels; None (or 0) = from the aspect written in the prompt.
            overrides: layer name -> the layer's own prompt text, replacing its planned clauses.

        Returns:
            The ScenePlan.

        Raises:
            ValueError: a bad prompt, seed or size.
        """
        check_prompt(prompt)
        width, height = _size(width, height)
        return plan_scene(prompt, _seed(seed), width=width, height=height, overrides=_overrides(overrides),
                          count_tokens=self.count_tokens, token_budget=self.token_budget)

    def generate(self, prompt: str, *, seed: int = 0, width: Optional[int] = None, height: Optional[int] = None,
                 options: Optional[GenerateOptions] = None, depth_source: str = "scaffold",
                 reference=None, depth_map=None, overrides: Optional[Mapping[str, str]] = None,
                 fill: Optional[str] = None, progress: Optional[Progress] = None) -> Run:
        """Render a scene into a new folder of its own.

        Args:
            prompt: the scene prompt.
            seed: the scene seed.
            width, height: output size; None (or 0) = from the prompt's aspect.
            options: rendering and export settings; None: the model's defaults (``options()``).
            depth_source: "scaffold", "reference" (estimate depth from `reference`) or "map" (use `depth_map`).
            reference: path of an uploaded reference image (used when depth_source is "reference").
            depth_map: path of an uploaded depth map, white = near (used when depth_source is "map").
            overrides: layer name -> the layer's own prompt text.
            fill: "texture" or "smooth", replacing ``options.fill`` (the plate's layers completed behind the
                nearer ones); None = the options' own.
            progress: called with (fraction, description).

        Returns:
            The Run (folder, files, previews).

        Raises:
            ValueError: bad input of any kind (the message names it), or a backend/model problem.
        """
        t0 = time.perf_counter()
        check_prompt(prompt)
        options = options if options is not None else self.options()
        if fill is not None:
            options = dataclasses.replace(options, fill=fill)
        if depth_source not in DEPTH_SOURCES:
            raise ValueError(f"unknown depth source {depth_source!r}; choose one of {', '.join(DEPTH_SOURCES)}")
        width, height = _size(width, height)
        seed = _seed(seed)
        overrides = _overrides(overrides)
        depth = None
        if depth_source != "scaffold":
            # The plan fixes the output size the map is resized to.
            planned = plan_scene(prompt, seed, width=width, height=height, overrides=overrides,
                                 count_tokens=self.count_tokens, token_budget=self.token_budget)
            depth = self._load_depth(depth_source, reference, depth_map, (planned.width, planned.height))
        elif self._cacheable(prompt, seed, width, options, overrides):
            return self._cached_example(prompt, seed, width, height, options, progress, t0)

        if self.depth_model and options.depth_model is None:  # the studio's estimator also reads the plate's depth
            options = dataclasses.replace(options, depth_model=self.depth_model)
        run_id = uuid.uuid4().hex
        folder = self.runs_root / run_id
        self.cleanup()
        result = generate(prompt, self.backend, seed=seed, width=width, height=height, options=options,
                          depth_map=depth, depth_source=None if depth is None else depth_source,
                          overrides=overrides or None, progress=progress)
        return self._finish(run_id, folder, result, progress, t0)

    def decompose(self, image, *, depth_map=None, layers="3", seed: int = 0, unknown_zero: bool = False,
                  options: GenerateOptions = GenerateOptions(displacement=1.0), fill: Optional[str] = None,
                  progress: Optional[Progress] = None) -> Run:
        """Split an uploaded picture into depth layers (filled behind) in a new folder of its own.

        Args:
            image: path of the uploaded picture.
            depth_map: path of its depth map (image, white = near, or .npy); None estimates it from the picture.
            layers: "2".."6" or "auto".
            unknown_zero: 0 in the depth map means unknown (filled from the nearest known depth), not far.
            seed: seed of model-mode inpainting.
            options: export settings (parallax path, per-pixel displacement) and the fill.
            fill: "texture" or "smooth", replacing ``options.fill``: how hidden parts are filled offline (model
                mode: the inpaint's start and fallback); None = the options' own.
            progress: called with (fraction, description).

        Returns:
            The Run.

        Raises:
            ValueError: a missing, unreadable or unsuitable picture or depth map, a bad layer count, or no depth
            estimator when no depth map is given.
        """
        from .decompose import check_layer_count, check_picture, load_depth, prepare_depth
        from .pipeline import decompose_picture

        t0 = time.perf_counter()
        if not image:
            raise ValueError("upload a picture to decompose")
        count = check_layer_count(layers)
        if fill is not None:
            options = dataclasses.replace(options, fill=fill)
        picture = check_picture(open_image(image, max_pixels=self.limits.max_upload_pixels, what="image"))
        # Worked on at a bounded size, whatever the fill: memory grows with the pixels at every step.
        full, budget = picture.size, self.limits.max_work_pixels
        picture, scaled = fit_pixels(picture, budget)
        first = [scaled] if scaled else []
        if depth_map:
            depth, source = load_depth(depth_map, max_pixels=self.limits.max_upload_pixels), "map"
            dh, dw = depth.shape[:2]
            if (scaled or dw * dh > budget) and dw * dh > picture.width * picture.height:
                # Sampled, not blended: a 0 that means "unknown" stays 0, and only the small map is allocated.
                depth = sample_nearest(depth, picture.size)
                if (dw, dh) != full:
                    first.append(f"depth map is {dw}x{dh}, the image {full[0]}x{full[1]}: depth map resized")
        else:
            try:
                depth, source = self._estimate_depth(picture), "reference"
            except ValueError as exc:
                raise ValueError(f"no depth map: upload one (white = near), or make the estimator available "
                                 f"({exc})") from None
        depth, notices = prepare_depth(depth, picture.size, unknown_zero=bool(unknown_zero) and source == "map")
        notices = first + notices
        backend = self.backend if callable(getattr(self.backend, "repaint", None)) else None
        run_id = uuid.uuid4().hex
        self.cleanup()
        result = decompose_picture(picture, depth, backend, layers="auto" if count is None else count,
                                   seed=_seed(seed), options=options, depth_source=source, progress=progress)
        result.render_info["decompose"]["notices"] = notices + result.render_info["decompose"]["notices"]
        return self._finish(run_id, self.runs_root / run_id, result, progress, t0)

    def regenerate(self, run_id: str, layer: str, *, seed: Optional[int] = None, prompt: Optional[str] = None,
                   progress: Optional[Progress] = None) -> Run:
        """Re-render one layer of an earlier result into a new folder; the other layers stay pixel-identical.

        Args:
            run_id: the earlier Run's id.
            layer: background, midground or foreground.
            seed: the layer's new seed; None = keep it when the prompt changes, else derive a fresh one.
            prompt: the layer's new prompt text; None or blank = keep it.
            progress: called with (fraction, description).

        Returns:
            A new Run; the earlier one is left as it was.

        Raises:
            ValueError: unknown or expired run, unknown layer, bad seed or prompt.
        """
        t0 = time.perf_counter()
        if layer not in LAYER_NAMES:
            raise ValueError(f"unknown layer {layer!r}; choose one of {', '.join(LAYER_NAMES)}")
        source = self._run_folder(run_id)
        prompt = prompt.strip() if prompt else None
        if prompt is not None:
            check_prompt(prompt)
        if seed is not None:
            seed = _seed(seed)
        result = load_result(source)
        new_id = uuid.uuid4().hex
        self.cleanup()
        new = regenerate_layer(result, layer, self.backend, seed=seed, prompt=prompt, progress=progress)
        return self._finish(new_id, self.runs_root / new_id, new, progress, t0)

    def open_run(self, run_id: str) -> Run:
        """Load a finished run back from its folder.

        Raises:
            ValueError: the id is malformed, unknown or expired.
        """
        folder = self._run_folder(run_id)
        result = load_result(folder)
        return Run(run_id=run_id, folder=folder, result=result, files=_files_in(folder, result),
                   previews=_write_previews(folder, result), cached=run_id.startswith(_EXAMPLE_PREFIX))

    def viewer_layers(self, run: Run) -> list[dict]:
        """The layers of a run as small data URIs for the interactive parallax viewer, each with its depth map.

        Args:
            run: a finished Run.

        Returns:
            Back to front: {"name", "nearness", "uri", "depth_uri", "width", "height"} per layer (WebP with alpha,
            longest side at most limits.viewer_side; the depth map, white = near, drives per-pixel parallax).
        """
        return viewer_layers(run.result.stack, max_side=self.limits.viewer_side, fmt="webp")

    def cleanup(self, now: Optional[float] = None) -> list[str]:
        """Remove result folders older than limits.max_age_hours, and the oldest beyond limits.max_runs.

        Cached examples are kept. Staging folders of stopped runs (layers.folders.clean_stale) are removed too.

        Args:
            now: the current time (seconds since the epoch); default time.time().

        Returns:
            The names of the removed folders.
        """
        now = time.time() if now is None else now
        max_age = self.limits.max_age_hours * 3600.0
        removed = []
        with self._lock:
            runs = []
            for entry in os.scandir(self.runs_root):
                if not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue  # removed meanwhile by another process
                if _RUN_ID.match(entry.name) and not entry.name.startswith(_EXAMPLE_PREFIX):
                    runs.append((mtime, entry.name))
            runs.sort(reverse=True)  # newest first
            doomed = [name for i, (mtime, name) in enumerate(runs)
                      if i >= self.limits.max_runs or now - mtime > max_age]
            for name in doomed:
                shutil.rmtree(self.runs_root / name, ignore_errors=True)
                removed.append(name)
            removed += folders.clean_stale(self.runs_root, now=now)
        if removed:
            log.info("removed %d old result folder(s)", len(removed))
        return removed

    # --- internals ------------------------------------------------------------------------------------------------

    def _load_depth(self, source: str, reference, depth_map, size: tuple[int, int]) -> np.ndarray:
        if source == "reference":
            if not reference:
                raise ValueError("depth source 'reference' needs a reference image upload")
            image = open_image(reference, max_pixels=self.limits.max_upload_pixels, what="reference image")
            depth = self._estimate_depth(image.convert("RGB"))
            return np.asarray(Image.fromarray(depth.astype(np.float32), "F").resize(size, Image.Resampling.BILINEAR),
                              dtype=np.float32).clip(0.0, 1.0)
        if not depth_map:
            raise ValueError("depth source 'map' needs a depth map upload")
        image = open_image(depth_map, max_pixels=self.limits.max_upload_pixels, what="depth map")
        from .depth import load_depth_map

        return load_depth_map(image, size=size)

    def _estimate_depth(self, image: Image.Image) -> np.ndarray:
        from .backends.base import ModelUnavailableError
        from .estimate import estimate_depth  # imports torch and loads a model: only when asked for

        # Finding out that the weights are unreachable can take the hub client a minute of retries: after a
        # failure, later requests get the same answer at once for a while instead of each waiting again.
        if self._depth_unavailable and time.monotonic() - self._depth_unavailable[0] < _DEPTH_RETRY_S:
            raise ValueError(self._depth_unavailable[1])
        try:
            if self.depth_model:
                return estimate_depth(image, model=self.depth_model)
            return estimate_depth(image)
        except ModelUnavailableError as exc:
            self._depth_unavailable = (time.monotonic(), f"depth from a reference image is not available: {exc}")
            raise ValueError(self._depth_unavailable[1]) from None

    def _cacheable(self, prompt: str, seed: int, width: Optional[int], options: GenerateOptions,
                   overrides: Mapping[str, str]) -> bool:
        # Only the example exactly as offered (default settings) is cached: one folder per example, never evicted.
        return (prompt.strip() in self.cached_prompts and not overrides and seed == 0 and width is None
                and options == self.options())

    def _cached_example(self, prompt, seed, width, height, options, progress, t0) -> Run:
        identity = json.dumps([prompt.strip(), seed, width, height, options.to_dict(), self.backend_name,
                               repr(sorted(getattr(self.backend, "model_info", {}).items()))],
                              sort_keys=True, default=str)
        run_id = _EXAMPLE_PREFIX + hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32]
        with self._lock:
            lock = self._example_locks.setdefault(run_id, threading.Lock())
        with lock:  # the first request renders; the ones arriving meanwhile wait for it
            folder = self.runs_root / run_id
            if (folder / OUTPUT_NAMES["manifest"]).is_file():
                if progress:
                    progress(1.0, "cached example")
                run = self.open_run(run_id)
                return Run(run_id=run.run_id, folder=run.folder, result=run.result, files=run.files,
                           previews=run.previews, cached=True, seconds=time.perf_counter() - t0)
            result = generate(prompt, self.backend, seed=seed, width=width, height=height, options=options,
                              progress=progress)
            return self._finish(run_id, folder, result, progress, t0)

    def _finish(self, run_id: str, folder: Path, result: StackResult, progress, t0: float) -> Run:
        files = write_outputs(result, folder, progress=progress)
        previews = _write_previews(folder, result)
        return Run(run_id=run_id, folder=folder, result=result, files=files, previews=previews,
                   seconds=time.perf_counter() - t0)

    def _run_folder(self, run_id: str) -> Path:
        run_id = (run_id or "").strip()
        if not run_id:
            raise ValueError("nothing to regenerate yet: generate a scene first (or pass its run_id)")
        if not _RUN_ID.match(run_id):
            raise ValueError(f"not a run id: {run_id[:80]!r}")
        folder = self.runs_root / run_id
        if not (folder / OUTPUT_NAMES["manifest"]).is_file():
            raise ValueError(f"result {run_id} is no longer available (old results are cleaned up); generate again")
        return folder


def trim_memory() -> None:
    """Hand memory freed by a finished request back to the system (glibc keeps freed heap pages otherwise).

    A stack is a few hundred MB of arrays that are freed when the request ends; without this, a server's resident
    size stays at its largest request's for good. A no-op where the C library has no malloc_trim.
    """
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes
        import ctypes.util

        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


# --- display images -------------------------------------------------------------------------------------------

def checkerboard(size: tuple[int, int], cell: int = 16, colors=((236, 236, 236), (200, 200, 200))) -> Image.Image:
    """An RGB checkerboard, the usual stand-in for "transparent".

    Args:
        size: (width, height).
        cell: square size in pixels.
        colors: the two RGB colours.

    Returns:
        The RGB image.
    """
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    odd = ((xx // cell + yy // cell) % 2).astype(bool)
    out = np.empty((height, width, 3), np.uint8)
    out[~odd] = colors[0]
    out[odd] = colors[1]
    return Image.fromarray(out, "RGB")


def over_checkerboard(rgba: Image.Image, cell: int = 16) -> Image.Image:
    """An RGBA layer composited over a checkerboard, so its transparent parts are visible as such."""
    board = checkerboard(rgba.size, cell).convert("RGBA")
    board.alpha_composite(rgba.convert("RGBA"))
    return board.convert("RGB")


# Stops of a perceptual dark-to-bright ramp (close to "magma"): far = dark violet, near = pale yellow.
_RAMP = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                  [250, 193, 39], [252, 253, 191]], np.float32)


def colorize_depth(depth: np.ndarray) -> Image.Image:
    """A depth map (float32 (H, W) in [0, 1], 1 = near) as an RGB image, near = bright."""
    d = np.clip(np.nan_to_num(depth.astype(np.float32)), 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(d).astype(np.int32).clip(0, len(_RAMP) - 2)
    t = (d - lo)[..., None]
    rgb = _RAMP[lo] * (1.0 - t) + _RAMP[lo + 1] * t
    return Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), "RGB")


def _write_previews(folder: Path, result: StackResult) -> dict[str, Path]:
    previews_dir = folder / "preview"
    previews_dir.mkdir(exist_ok=True)
    out = {}
    for layer in result.stack:
        for key, name, make in ((f"layers/{layer.name}", f"{layer.name}.jpg", lambda: over_checkerboard(layer.rgba)),
                                (f"depth/{layer.name}", f"depth_{layer.name}.png",
                                 lambda: colorize_depth(result.depths[layer.name].control))):
            path = previews_dir / name
            if not path.is_file():
                tmp = previews_dir / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
                image = make()
                image.save(tmp, "JPEG" if name.endswith(".jpg") else "PNG", quality=90)
                os.replace(tmp, path)
            out[key] = path
    return out


def _files_in(folder: Path, result: StackResult) -> dict[str, Path]:
    files = {key: folder / name for key, name in {**OUTPUT_NAMES, **PLATE_FILES}.items() if (folder / name).is_file()}
    for layer in result.stack:
        for sub in ("layers", "depth", "priors"):
            files[f"{sub}/{layer.name}"] = folder / sub / f"{layer.name}.png"
    return files


# --- input checks -----------------------------------------------------------------------------------------------

def _seed(seed) -> int:
    if seed is None:
        return 0
    try:
        value = int(seed)
    except (TypeError, ValueError):
        raise ValueError(f"seed must be a whole number, got {seed!r}") from None
    if value != seed and not isinstance(seed, str):
        raise ValueError(f"seed must be a whole number, got {seed!r}")
    if not 0 <= value < 2**31:
        raise ValueError(f"seed must be 0..{2**31 - 1}, got {value}")
    return value


def _size(width, height) -> tuple[Optional[int], Optional[int]]:
    w = int(width) if width else 0
    h = int(height) if height else 0
    if (w == 0) != (h == 0):
        raise ValueError(f"give both width and height (or neither), got {w}x{h}")
    return (w, h) if w else (None, None)


def _overrides(overrides: Optional[Mapping[str, str]]) -> dict[str, str]:
    out = {}
    for name, text in (overrides or {}).items():
        if name not in LAYER_NAMES:
            raise ValueError(f"unknown layer {name!r}; choose one of {', '.join(LAYER_NAMES)}")
        if text and text.strip():
            out[name] = text.strip()
    return out


__all__ = ["DEPTH_SOURCES", "DRAFT_NOTICE", "Run", "Studio", "StudioLimits", "checkerboard", "colorize_depth",
           "over_checkerboard", "trim_memory"]
