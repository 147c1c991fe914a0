"""A model download, against a small local hub: the terminal shows it, a dropped connection resumes, and once the
weights are in the cache the network is not asked again.

The local hub answers what huggingface_hub (2.x) asks when from_pretrained fetches a one-model repo: HEAD then GET
on /{repo}/resolve/{revision}/{file}, with the headers it reads (X-Repo-Commit, ETag, Content-Length; no Xet
headers, so the plain HTTP path runs) and `Range: bytes=N-` answered with 206. Every request is logged.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import socket
import struct
import sys
import termios
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from layers import models
from layers.backends.base import ModelUnavailableError
from layers.backends.diffusers import TINY_DECODERS, load_tiny_decoder

REPO = TINY_DECODERS["sd15"]  # madebyollin/taesd
COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
WEIGHTS = "diffusion_pytorch_model.safetensors"
PIECE = 8192
"""The hub client writes a download in pieces (10 MB) and resumes after the last whole piece it wrote; pieces this
small let the tiny weights (80 kB) stop half-way on a piece's end."""


class LocalHub:
    """A hub serving one repo from a folder, on 127.0.0.1. `requests` logs (method, path, Range header).

    `cut_next_gets[name] = [n, ...]`: each of the next GETs of `name` sends only the first n bytes of the body it
    announced, then drops the connection (n=None: answer 503 instead).
    """

    def __init__(self, repo: str, folder: Path):
        self.repo = repo
        self.files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        self.requests: list[tuple[str, str, str | None]] = []
        self.cut_next_gets: dict[str, list] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep the terminal to what the user would see
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True, name="local-hub")
        self.thread.start()

    def gets(self, name: str) -> list[str | None]:
        """The Range headers of the GETs of file `name`, in order (None: the whole file was asked)."""
        return [rng for method, path, rng in self.requests if method == "GET" and path.endswith("/" + name)]

    def _answer(self, h: BaseHTTPRequestHandler, body: bool):
        rng = h.headers.get("Range")
        self.requests.append((h.command, h.path, rng))
        m = re.fullmatch(rf"/{re.escape(self.repo)}/resolve/([^/]+)/(.+)", h.path.split("?")[0])
        data = self.files.get(m.group(2)) if m else None
        if data is None:
            h.send_response(404)
            h.send_header("X-Error-Code", "EntryNotFound" if m else "RepoNotFound")
            h.send_header("X-Repo-Commit", COMMIT)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        name = m.group(2)
        cuts = self.cut_next_gets.get(name) or []
        cut = cuts.pop(0) if body and cuts else -1
        if cut is None:  # the hub stops answering
            h.send_response(503)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng else 0
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(data) - start))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if name.endswith(".safetensors"):  # as the hub's file store sends it; the progress bar shows this name
            h.send_header("Content-Disposition", f"inline; filename*=UTF-8''{name}; filename=\"{name}\";")
        h.end_headers()
        if not body:
            return
        if cut >= 0:  # half a body, then the connection drops
            h.wfile.write(data[start:start + cut])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.wfile.write(data[start:])

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(monkeypatch, tmp_path, tiny_taesd_dir):
    """The tiny TAESD served as madebyollin/taesd; HF_ENDPOINT points at it; an empty HF cache; online."""
    import huggingface_hub.constants as hub_constants

    local = LocalHub(REPO, tiny_taesd_dir)
    monkeypatch.setenv("HF_ENDPOINT", local.url)
    # huggingface_hub reads HF_ENDPOINT once, at import, into these two: as a user's process does at its start.
    monkeypatch.setattr(hub_constants, "ENDPOINT", local.url)
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        local.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_TELEMETRY", hub_constants.HF_HUB_DISABLE_TELEMETRY)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(hub_constants, "DOWNLOAD_CHUNK_SIZE", PIECE)
    monkeypatch.setattr(models, "_LAST_LINE", "")
    yield local
    local.close()


class Terminal:
    """While entered, sys.stderr is a real pseudo-terminal, as at a user's shell; `.text` is what it showed.

    Entered inside the test itself: pytest puts its own capture back on sys.stderr for each phase of a test.
    """

    def __enter__(self):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows of 100 columns
        self.stream = os.fdopen(slave, "w", buffering=1, encoding="utf-8")
        self.shown = bytearray()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.saved, sys.stderr = sys.stderr, self.stream
        return self

    def _read(self):
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # the terminal closed
                return
            if not chunk:
                return
            self.shown.extend(chunk)

    def __exit__(self, *exc):
        sys.stderr = self.saved
        self.stream.close()
        self.reader.join(5)
        os.close(self.master)
        self.text = self.shown.decode("utf-8", "replace")


def load(local_only: bool = False):
    import torch

    return load_tiny_decoder("sd15", torch.float32, local_only=local_only)


def same_weights(vae, folder: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(folder / WEIGHTS))
    state = vae.state_dict()
    return saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)


def cached_file(tmp_path: Path, name: str) -> Path:
    return tmp_path / "hf_home" / "hub" / ("models--" + REPO.replace("/", "--")) / "snapshots" / COMMIT / name


def test_a_first_load_downloads_with_a_progress_bar_and_one_line_then_the_cache_serves(hub, tmp_path, tiny_taesd_dir):
    lines: list[str] = []
    models.add_load_listener(lines.append)
    try:
        with Terminal() as terminal:
            vae = load()
    finally:
        models.remove_load_listener(lines.append)
    screen = terminal.text

    assert same_weights(vae, tiny_taesd_dir)
    assert cached_file(tmp_path, WEIGHTS).read_bytes() == hub.files[WEIGHTS]
    downloading = [line for line in lines if line.startswith("downloading")]
    assert downloading == [f"downloading tiny decoder {REPO} from {hub.url} into {tmp_path / 'hf_home' / 'hub'} "
                           "(once; a dropped connection resumes)"]
    # huggingface_hub's bar as tqdm draws it on a terminal: the file, its size (bytes, scaled), the time spent and
    # left, the speed; e.g. "diffusion_pytorch_model.safetensors: 100%|███| 79.7k/79.7k [00:00<00:00, 129MB/s]"
    from tqdm import tqdm

    size = re.escape(tqdm.format_sizeof(len(hub.files[WEIGHTS])))
    bar = re.search(rf"\r{WEIGHTS}: 100%\|█+\| {size}/{size} \[\d\d:\d\d<\d\d:\d\d, +[\d.]+[kMG]?B/s\]", screen)
    assert bar, screen
    assert hub.gets(WEIGHTS) == [None] and hub.gets("config.json") == [None]

    asked = len(hub.requests)
    assert same_weights(load(), tiny_taesd_dir)  # online, and cached: the cache serves, the hub is not asked
    assert len(hub.requests) == asked


def test_a_connection_dropped_half_way_resumes_where_it_stopped(hub, tmp_path, tiny_taesd_dir, caplog):
    half = len(hub.files[WEIGHTS]) // 2 // PIECE * PIECE
    hub.cut_next_gets[WEIGHTS] = [half]

    vae = load()

    assert hub.gets(WEIGHTS) == [None, f"bytes={half}-"]  # the rest only, asked with a Range request
    assert cached_file(tmp_path, WEIGHTS).read_bytes() == hub.files[WEIGHTS]
    assert same_weights(vae, tiny_taesd_dir)
    assert any("Trying to resume download" in r.getMessage() for r in caplog.records)


def test_a_download_that_stops_for_good_fails_in_one_line_and_the_next_run_completes_it(hub, tmp_path,
                                                                                         tiny_taesd_dir):
    half = len(hub.files[WEIGHTS]) // 2 // PIECE * PIECE
    hub.cut_next_gets[WEIGHTS] = [half, None]  # half the weights, then the hub answers 503

    with pytest.raises(ModelUnavailableError) as failed:
        load()
    message = str(failed.value)
    assert "\n" not in message and REPO in message and "could not be downloaded" in message
    assert "hf download madebyollin/taesd" in message
    repo = tmp_path / "hf_home" / "hub" / ("models--" + REPO.replace("/", "--"))
    assert not list(repo.rglob("*.incomplete")), "no partial file may be left behind"
    assert cached_file(tmp_path, "config.json").is_file()

    hub.requests.clear()
    vae = load()
    # The file completed before the stop is kept; the weights are fetched whole. huggingface_hub 2.x starts an
    # unfinished file over in a new run (it deletes the partial one), which the README says.
    assert hub.gets("config.json") == [] and hub.gets(WEIGHTS) == [None]
    assert cached_file(tmp_path, WEIGHTS).read_bytes() == hub.files[WEIGHTS]
    assert same_weights(vae, tiny_taesd_dir)


def test_once_downloaded_hf_hub_offline_loads_from_the_cache_without_a_request(hub, monkeypatch, tiny_taesd_dir):
    import huggingface_hub.constants as hub_constants

    hub.cut_next_gets[WEIGHTS] = [PIECE * 3]
    load()
    assert hub.gets(WEIGHTS) == [None, f"bytes={PIECE * 3}-"]  # a resumed download
    asked = len(hub.requests)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    vae = load(local_only=models.hub_offline())
    assert same_weights(vae, tiny_taesd_dir)
    assert len(hub.requests) == asked


def test_a_first_cpu_run_says_what_it_downloads_then_renders_with_it(hub, tmp_path, tiny_sd15_dir, tiny_sd15_lora,
                                                                     monkeypatch, capsys):
    """`generate --backend diffusers` on a CPU with the preset's pipeline cached but not its tiny decoder: the
    terminal names the download (one line, then the hub client's bars), and the stack decodes with it."""
    import json

    from layers.backends import auto
    from layers.backends.auto import CPU_PRESET
    from layers.backends.diffusers import PRESETS
    from layers.cli import main
    from tiny_models import put_file_in_hub_cache, put_in_hub_cache

    monkeypatch.setattr(auto, "accelerator", lambda: None)
    hf_home = tmp_path / "hf_home"
    preset = PRESETS[CPU_PRESET]
    put_in_hub_cache(hf_home, preset.model, tiny_sd15_dir)
    put_in_hub_cache(hf_home, preset.controlnet, tiny_sd15_dir / "controlnet")
    put_file_in_hub_cache(hf_home, preset.lora.repo, preset.lora.file, tiny_sd15_lora)
    # the scaffold composition: the plate's estimator is another download, which this hub does not serve
    code = main(["generate", "--prompt", "a quiet harbour, a lighthouse, rocks", "--backend", "diffusers",
                 "--composition", "scaffold", "--width", "64", "--height", "96", "--no-video", "--formats", "zip",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 0, err
    said = [line for line in err.splitlines() if line.startswith("layercake: downloading")]
    assert said == [f"layercake: downloading tiny decoder {REPO} from {hub.url} into {hf_home / 'hub'} "
                    "(once; a dropped connection resumes)"]
    assert hub.gets(WEIGHTS) == [None]  # the pipeline, ControlNet and LoRA came from the cache: only TAESD was fetched
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["models"]["decoder"] == "tiny"
