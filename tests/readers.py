"""Programs no one here wrote, opening our files: Khronos' glTF validator and three.js (npm, in tests/js/),
Blender (Debian's, headless) and Chromium (Debian's, through Python Playwright).

scripts/test.sh installs them when missing; a test that needs one fails (not skips) with how to install it.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

JS = Path(__file__).resolve().parent / "js"
NODE_MODULES = JS / "node_modules"
CHROMIUM = os.environ.get("LAYERCAKE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]

_VALIDATE = """
const fs = require("fs");
const validator = require(process.argv[1]);
validator.validateBytes(new Uint8Array(fs.readFileSync(process.argv[2])))
  .then((report) => process.stdout.write(JSON.stringify(report)))
  .catch((err) => { process.stderr.write(String(err)); process.exit(1); });
"""

_BLENDER = """
import json, sys
import numpy as np
np.bool = bool  # Blender 3.4's glTF importer still uses np.bool, gone from numpy 1.24
import bpy
found = {}
for path in sys.argv[sys.argv.index("--") + 1:]:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=path)
    found[path] = [{"name": o.name, "type": o.type, "location": list(o.location),
                    "vertices": len(o.data.vertices) if o.type == "MESH" else 0} for o in bpy.data.objects]
print("LAYERCAKE " + json.dumps(found))
"""


def need_npm_package(name: str) -> Path:
    folder = NODE_MODULES / name
    if not folder.is_dir():
        pytest.fail(f"npm package {name} missing: run `npm ci --prefix tests/js` (scripts/test.sh does)")
    return folder


def gltf_validate(path) -> dict:
    """The Khronos glTF-Validator's report on a .glb file (issues.numErrors, issues.messages...)."""
    validator = need_npm_package("gltf-validator")
    if shutil.which("node") is None:
        pytest.fail("node missing: install Node.js to run the glTF validator")
    done = subprocess.run(["node", "-e", _VALIDATE, str(validator), str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def blender_objects(*paths) -> dict[str, list[dict]]:
    """The objects Blender creates when it imports each .glb file (name, type, location, vertex count), by path."""
    blender = shutil.which("blender")
    if blender is None:
        pytest.fail("blender missing: `apt-get install -y blender python3-numpy` (scripts/test.sh does)")
    done = subprocess.run([blender, "-b", "--factory-startup", "--python-exit-code", "1", "--python-expr",
                           _BLENDER, "--", *map(str, paths)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("LAYERCAKE ")]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(lines[-1][len("LAYERCAKE "):])


@contextlib.contextmanager
def launch_chromium(*extra_args: str):
    """Debian's Chromium driven by Python Playwright (never `playwright install`)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: `apt-get install -y chromium` (scripts/test.sh does) "
                    f"or set LAYERCAKE_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS + list(extra_args))
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def serve_folder(folder):
    """A local HTTP server for one folder (ES modules do not load from file://); yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".glb": "model/gltf-binary"}

    def log_message(self, format, *args):
        pass


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images of the same shape."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)
