"""Layercake studio: the web app. Parses the flags, assembles the page from ui/'s tabs, wires it to a
layers.studio.Studio and launches it; nothing else.

    python app.py --backend draft            # offline procedural preview, no weights
    python app.py --backend diffusers --model sd15 --share
"""
from __future__ import annotations

import os

# Set before gradio is imported: it reads the variable at import time, and this server makes no outbound calls.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse
import logging
import sys
from typing import Optional

import gradio as gr

from layers.backends import BACKEND_CHOICES
from layers.backends.diffusers import DECODERS
from layers.studio import Studio
from ui.payloads import explain_bad_payloads
from ui.picture_tab import build_picture_tab
from ui.prompt_tab import build_prompt_tab
from ui.shared import ASSETS, ROOT, Seed, load_seeds, notice_markdown


# --- the page ------------------------------------------------------------------------------------------------------

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
        # Each page visit and API client keeps its last run in session state: bounded, not 10,000 of them.
        state_session_capacity=studio.limits.max_sessions,
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
