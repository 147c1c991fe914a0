"""What both tabs of the studio share: the request wrappers, the interactive viewer, the download buttons, the
example prompts and the readers of numbers a widget or an API client sends."""
from __future__ import annotations

import functools
import html
import logging
import math
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import gradio as gr

from layers.studio import Studio, trim_memory
from layers.webpage import viewer_markup

try:  # Hugging Face ZeroGPU lends a GPU per call to functions wrapped in spaces.GPU; elsewhere it is absent.
    import spaces
except ImportError:
    spaces = None

log = logging.getLogger("layercake.app")

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
SEEDS = ROOT / "seeds"
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


def progress_reporter(progress):
    """A pipeline progress callback that drives a gr.Progress."""
    def report(fraction: float, text: str) -> None:
        progress(min(max(float(fraction), 0.0), 1.0), desc=text)
    return report


def whole_number(value, name: str, default: Optional[int] = None) -> Optional[int]:
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


def real_number(value, name: str, default: float) -> float:
    """A number from a widget or API value (None or "" -> default)."""
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


# --- what the page shows -------------------------------------------------------------------------------------------

# Only what changes meaning inline; escaping "." or "-" would show backslashes in URLs.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~#])")


def md_escape(text: str) -> str:
    """User text shown verbatim inside Markdown."""
    return _MD_SPECIAL.sub(r"\\\1", text)


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


def parallax_viewer(elem_id: str) -> gr.HTML:
    """The interactive parallax viewer, empty until a render; assets/parallax.js moves its layers."""
    return gr.HTML(EMPTY_VIEWER, elem_id=elem_id, js_on_load=(ASSETS / "parallax.js").read_text(),
                   min_height=200)


DOWNLOADS = {"psd": "⬇ PSD", "ora": "⬇ ORA", "zip": "⬇ ZIP", "mp4": "⬇ MP4", "glb": "⬇ GLB", "html": "⬇ HTML"}
"""The download buttons' labels, by the kind of file they hand out."""


def download_buttons(kinds: tuple[str, ...], elem_prefix: str) -> list[gr.DownloadButton]:
    """One download button per kind of file, empty until a render fills it (inside a gr.Row).

    Args:
        kinds: keys of DOWNLOADS, in the order the buttons appear (and the endpoint returns their files).
        elem_prefix: the buttons' elem_id is elem_prefix + kind ("dl-psd").
    """
    return [gr.DownloadButton(DOWNLOADS[kind], value=None, elem_id=f"{elem_prefix}{kind}", size="md", min_width=70)
            for kind in kinds]
