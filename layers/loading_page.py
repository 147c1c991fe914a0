"""A page that says the model is loading, served on the studio's address until the studio itself is ready.

The studio's page can only be built once its model has loaded, which on a first run includes a download of
several GB. Meanwhile this small server answers on the same host and port with a page that shows the latest load
line ("downloading model ..."), the megabytes in the Hugging Face cache so far and the time elapsed; the page polls
for news every second and reloads itself into the studio once the studio answers. No gradio here: it must be up
in a moment, before the libraries that load the model are imported.
"""
from __future__ import annotations

import html
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

from .models import add_load_listener, hub_cache, remove_load_listener

STATUS_PATH = "/__layercake_loading"

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Layercake: loading the model</title>
<style>body{{font:16px system-ui,sans-serif;max-width:40em;margin:4em auto;color:#334}}
#s{{font-family:ui-monospace,monospace;white-space:pre-wrap}}</style></head><body>
<h1>Layercake is loading its model</h1><p id="s">{status}</p>
<p>This page opens the studio by itself when the model is ready.</p>
<script>
async function tick() {{
  try {{
    const r = await fetch("{path}", {{cache: "no-store"}});
    if (!r.ok) {{ location.reload(); return; }}
    document.getElementById("s").textContent = await r.text();
  }} catch (e) {{}}
  setTimeout(tick, 1000);
}}
setTimeout(tick, 1000);
</script></body></html>"""


def _cache_megabytes(root: Path) -> float:
    total = 0
    try:
        for path in root.glob("models--*/blobs/*"):
            total += path.stat().st_size
    except OSError:
        pass
    return total / 1e6


class LoadingPage:
    """Serve the "loading the model" page on (host, port) until stop().

    Args:
        host: address to listen on (the studio's).
        port: the studio's port.
    """

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.line = "starting"
        self._started = time.monotonic()
        self._cache = Path(hub_cache())
        self._cache_at_start = _cache_megabytes(self._cache)
        self._server: Optional[ThreadingHTTPServer] = None

    def status(self) -> str:
        """The text the page shows: the latest load line, the download so far and the time elapsed."""
        grown = _cache_megabytes(self._cache) - self._cache_at_start
        fetched = f"; {grown:,.0f} MB downloaded so far" if grown >= 1 else ""
        return f"{self.line}{fetched} ({time.monotonic() - self._started:.0f} s)"

    def _hear(self, line: str) -> None:
        self.line = line

    def start(self) -> "LoadingPage":
        """Start serving in a background thread. Raises OSError when the port is taken."""
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                status = page.status()
                body = (status if self.path == STATUS_PATH else
                        _PAGE.format(status=html.escape(status), path=STATUS_PATH)).encode("utf-8")
                kind = "text/plain" if self.path == STATUS_PATH else "text/html"
                self.send_response(200)
                self.send_header("Content-Type", f"{kind}; charset=utf-8")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # one line per poll would drown the terminal's progress bars
                pass

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        add_load_listener(self._hear)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="loading-page").start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port for the studio."""
        remove_load_listener(self._hear)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


__all__ = ["LoadingPage", "STATUS_PATH"]
