"""The studio as its users meet it: a real server (python app.py) on 127.0.0.1, driven through gradio_client."""
from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEEDS = sorted((ROOT / "seeds").glob("*.txt"))
LAYERS = ("background", "midground", "foreground")
SMALL = dict(width=256, height=384)
TINY = dict(width=128, height=192)
# /generate returns the files first: PSD, ORA, ZIP, MP4, then composite, video, the three layer previews,
# the depth maps, the JSON summary, the status line and the plan view.
PSD, ORA, ZIP, MP4, COMPOSITE, VIDEO, LAYER_PREVIEWS, DEPTHS, SUMMARY = 0, 1, 2, 3, 4, 5, slice(6, 9), 9, 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """`python app.py --backend draft` in a subprocess on a random port, with its own output folder."""

    def __init__(self, output_dir: Path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.output_dir = Path(output_dir)
        self.log_path = self.output_dir.parent / f"server-{self.port}.log"
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, str(ROOT / "app.py"), "--backend", "draft", "--host", "127.0.0.1",
               "--port", str(self.port), "--output-dir", str(self.output_dir), *args]
        # HF_HUB_OFFLINE: no model hub here; a missing depth model must fail at once, not after retries.
        full_env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
                    "HF_HUB_OFFLINE": "1", **(env or {})}
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Seconds from start to the first HTTP answer of the page."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - self.started
            except urllib.error.HTTPError as exc:  # a login-protected page answers too
                if exc.code in (401, 403):
                    return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


@contextlib.contextmanager
def running_server(output_dir: Path, *args: str, env: dict | None = None):
    server = AppServer(output_dir, *args, env=env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


AUTH = ("maker", "s3cret-cake")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two servers started side by side: an open one, and one behind a login (LAYERCAKE_AUTH)."""
    open_one = AppServer(tmp_path_factory.mktemp("studio") / "outputs", env={"LAYERCAKE_MAX_UPLOAD_MB": "1"})
    locked = AppServer(tmp_path_factory.mktemp("locked") / "outputs", env={"LAYERCAKE_AUTH": ":".join(AUTH)})
    try:
        open_one.wait_ready()
        locked.wait_ready()
        yield open_one, locked
    finally:
        open_one.stop()
        locked.stop()


@pytest.fixture(scope="module")
def server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False)


@pytest.fixture(scope="module")
def generated(client):
    prompt = SEEDS[2].read_text(encoding="utf-8")
    t = time.perf_counter()
    result = client.predict(prompt=prompt, seed=3, **SMALL, api_name="/generate")
    return prompt, result, time.perf_counter() - t


def read_zip_layers(path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as z:
        return {name: np.asarray(Image.open(io.BytesIO(z.read(f"layers/{name}.png"))).convert("RGBA"))
                for name in LAYERS}


def manifest_of(zip_path) -> dict:
    with zipfile.ZipFile(zip_path) as z:
        return json.loads(z.read("manifest.json"))


def error_of(call) -> str:
    with pytest.raises(AppError) as info:
        call()
    return str(info.value)


# --- the API ------------------------------------------------------------------------------------------------------

def test_api_lists_plan_generate_and_regenerate_with_defaults(client):
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/plan", "/generate", "/regenerate_layer"} <= set(info)
    params = {p["parameter_name"]: p for p in info["/generate"]["parameters"]}
    assert "prompt" in params
    assert all(p["parameter_has_default"] for name, p in params.items() if name != "prompt"), params
    returns = [r["component"] for r in info["/generate"]["returns"]]
    assert returns[:4] == ["Downloadbutton"] * 4


def test_plan_splits_a_seed_into_three_editable_layer_prompts(client):
    prompt = SEEDS[0].read_text(encoding="utf-8")
    out = client.predict(prompt=prompt, seed=7, api_name="/plan")
    texts, tokens, seeds, summary, plan = out[0:3], out[3:6], out[6:9], out[9], out[10]
    assert all(t.strip() for t in texts), texts
    assert len(set(texts)) == 3, "each layer gets its own part of the scene"
    assert all("tokens" in t for t in tokens)
    assert [lp["name"] for lp in plan["layers"]] == list(LAYERS)
    assert [lp["seed"] for lp in plan["layers"]] == list(seeds)
    assert plan["seed"] == 7 and plan["width"] % 64 == 0 and plan["height"] % 64 == 0
    assert f"{plan['width']} × {plan['height']}" in summary
    for lp, t in zip(plan["layers"], tokens):
        assert lp["tokens"] <= plan["token_budget"]
        assert f"{lp['tokens']} / {plan['token_budget']} tokens" in t


def test_an_edited_layer_prompt_replaces_that_layer_only(client):
    prompt = SEEDS[1].read_text(encoding="utf-8")
    before = client.predict(prompt=prompt, api_name="/plan")
    after = client.predict(prompt=prompt, foreground_prompt="a brass telescope on a velvet cushion", api_name="/plan")
    assert "brass telescope" in after[2]
    assert after[0] == before[0] and after[1] == before[1]


def test_generate_returns_a_psd_with_the_three_named_layers(generated):
    from psd_tools import PSDImage

    prompt, out, _ = generated
    psd = PSDImage.open(out[PSD])
    visible = [layer.name for layer in psd if layer.visible and not layer.is_group()]
    assert visible == list(LAYERS), [layer.name for layer in psd]
    assert psd.size == (SMALL["width"], SMALL["height"])
    fg = np.asarray(next(layer for layer in psd if layer.name == "foreground").topil().convert("RGBA"))
    assert fg[..., 3].min() == 0 and fg[..., 3].max() == 255, "foreground is cut out: transparent and opaque parts"


def test_generate_returns_ora_zip_mp4_composite_and_previews(generated):
    prompt, out, _ = generated
    assert out[ORA].endswith(".ora") and zipfile.ZipFile(out[ORA]).read("mimetype") == b"image/openraster"
    manifest = manifest_of(out[ZIP])
    assert manifest["prompt"] == prompt and manifest["seed"] == 3
    assert Path(out[MP4]).read_bytes()[4:8] == b"ftyp", "an MP4 container"
    assert Image.open(out[COMPOSITE]).size == (SMALL["width"], SMALL["height"])
    for path in out[LAYER_PREVIEWS]:
        assert Image.open(path).size == (SMALL["width"], SMALL["height"])
    assert len(out[DEPTHS]) == 3
    summary = out[SUMMARY]
    assert summary["backend"] == "draft" and len(summary["run_id"]) == 32
    assert [layer["name"] for layer in summary["layers"]] == list(LAYERS)


def test_generate_returns_the_glb_and_the_web_page_after_every_older_output(generated):
    _, out, _ = generated
    # Clients index the outputs by position: the older ones keep theirs, then the GLB, the page and the plate
    # (None in draft mode, which composes on the scaffold).
    assert len(out) == 25
    assert out[PSD].endswith(".psd") and out[ZIP].endswith(".zip") and out[SUMMARY]["backend"] == "draft"
    glb, page = Path(out[-3]), Path(out[-2])
    assert out[-1] is None
    assert glb.suffix == ".glb" and glb.read_bytes()[:4] == b"glTF"
    assert page.suffix == ".html" and page.read_text(encoding="utf-8").count('<img class="lc-plane" src="data:') == 3


def test_regenerate_layer_changes_that_layer_and_keeps_the_others_identical(client, generated):
    _, out, _ = generated
    regen = client.predict(layer="foreground", run_id=out[SUMMARY]["run_id"], api_name="/regenerate_layer")
    old, new = read_zip_layers(out[ZIP]), read_zip_layers(regen[ZIP])
    assert np.array_equal(old["background"], new["background"])
    assert np.array_equal(old["midground"], new["midground"])
    assert not np.array_equal(old["foreground"], new["foreground"])
    assert regen[SUMMARY]["run_id"] != out[SUMMARY]["run_id"]
    # The earlier result is untouched: its files still hold the old foreground.
    assert np.array_equal(read_zip_layers(out[ZIP])["foreground"], old["foreground"])
    # Without run_id the session's last result is used, and a given seed is recorded.
    again = client.predict(layer="midground", seed=1234, api_name="/regenerate_layer")
    assert again[SUMMARY]["layers"][1]["seed"] == 1234
    assert np.array_equal(read_zip_layers(again[ZIP])["foreground"], new["foreground"])


def test_the_first_example_is_cached_after_its_first_run(client, server):
    prompt = SEEDS[0].read_text(encoding="utf-8")
    first = client.predict(prompt=prompt, api_name="/generate")
    t = time.perf_counter()
    second = Client(server.url, verbose=False).predict(prompt=prompt, api_name="/generate")
    assert first[SUMMARY]["cached"] is False, "the first request renders"
    cached_seconds = time.perf_counter() - t
    assert second[SUMMARY]["cached"] is True
    assert second[SUMMARY]["run_id"] == first[SUMMARY]["run_id"]
    assert cached_seconds < max(2.0, first[SUMMARY]["seconds"])
    # Other settings are rendered, not served from the cache.
    other = client.predict(prompt=prompt, seed=5, **TINY, api_name="/generate")
    assert other[SUMMARY]["cached"] is False


# --- many users at once ---------------------------------------------------------------------------------------------

def test_eight_concurrent_generates_each_get_their_own_files(server):
    jobs = [(f"a lighthouse on a cliff at dusk, a keeper with a lantern, gulls in the foreground, variant {i}", 100 + i)
            for i in range(8)]
    results, errors = {}, {}

    def call(i, prompt, seed):
        try:
            results[i] = Client(server.url, verbose=False).predict(prompt=prompt, seed=seed, **TINY,
                                                                   api_name="/generate")
        except Exception as exc:  # collected and reported below
            errors[i] = exc

    t = time.perf_counter()
    threads = [threading.Thread(target=call, args=(i, p, s)) for i, (p, s) in enumerate(jobs)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=150)
    elapsed = time.perf_counter() - t
    assert not errors, errors
    assert len(results) == 8 and elapsed < 150
    run_ids = {results[i][SUMMARY]["run_id"] for i in range(8)}
    assert len(run_ids) == 8
    assert len({results[i][PSD] for i in range(8)}) == 8
    for i, (prompt, seed) in enumerate(jobs):
        manifest = manifest_of(results[i][ZIP])
        assert manifest["prompt"] == prompt and manifest["seed"] == seed, f"request {i} got someone else's files"
        folder = server.output_dir / "runs" / results[i][SUMMARY]["run_id"]
        assert json.loads((folder / "manifest.json").read_text())["prompt"] == prompt


# --- bad input ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "notes.png").write_text("these are notes, not pixels")
    (folder / "notes.txt").write_text("plain text")
    Image.new("RGB", (96, 64), (90, 120, 160)).save(folder / "photo.jpg")
    (folder / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(1_500_000))  # over the 1 MB upload limit
    # 20000 x 20000 one-bit pixels compress to a few kilobytes: a cheap decompression bomb.
    Image.new("1", (20000, 20000)).save(folder / "huge.png", optimize=True)
    assert (folder / "huge.png").stat().st_size < 200_000
    return folder


@pytest.mark.parametrize("case", ["empty prompt", "blank prompt", "50000-char prompt", "not an image",
                                  "text file", "20000x20000 depth map", "odd size", "reference without upload",
                                  "reference without a depth model",
                                  "bad steps"])
def test_bad_input_gets_a_reason_and_the_server_keeps_serving(client, bad_files, case):
    good = "a quiet harbour, a rowing boat, ropes in the foreground"
    calls = {
        "empty prompt": (dict(prompt=""), ("prompt", "empty")),
        "blank prompt": (dict(prompt="   \n  "), ("prompt", "blank")),
        "50000-char prompt": (dict(prompt="castle, " * 6250), ("prompt", "20000")),
        "not an image": (dict(prompt=good, depth_source="reference",
                              reference_image=handle_file(str(bad_files / "notes.png"))),
                         ("reference image", "not an image")),
        "text file": (dict(prompt=good, depth_source="map", depth_map=handle_file(str(bad_files / "notes.txt"))),
                      ("invalid file type",)),
        "20000x20000 depth map": (dict(prompt=good, depth_source="map",
                                       depth_map=handle_file(str(bad_files / "huge.png"))),
                                  ("depth map", "huge.png", "too large")),
        "odd size": (dict(prompt=good, width=100000, height=64), ("100000",)),
        "reference without upload": (dict(prompt=good, depth_source="reference"), ("reference image",)),
        "reference without a depth model": (dict(prompt=good, depth_source="reference",
                                                 reference_image=handle_file(str(bad_files / "photo.jpg"))),
                                            ("depth", "not available", "huggingface-cli download")),
        "bad steps": (dict(prompt=good, steps=0), ("0", "minimum")),
    }
    kwargs, words = calls[case]
    t = time.perf_counter()
    message = error_of(lambda: client.predict(**kwargs, **SMALL if "width" not in kwargs else {},
                                              api_name="/generate"))
    assert time.perf_counter() - t < 30
    for word in words:
        assert word.lower() in message.lower(), message
    assert "Traceback" not in message and "File \"" not in message
    # ... and the next request is served.
    assert client.predict(prompt=good, api_name="/plan")[10]["layers"][0]["name"] == "background"


def test_uploads_over_the_size_limit_are_refused(server, client, bad_files):
    import httpx

    big = bad_files / "big.png"
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(prompt="a hill", depth_source="map", depth_map=handle_file(str(big)), api_name="/generate")
    # A client that does not check first is refused by the server itself.
    r = httpx.post(f"{server.url}gradio_api/upload", files={"files": ("big.png", big.read_bytes(), "image/png")},
                   timeout=30)
    assert r.status_code == 413, (r.status_code, r.text[:200])
    assert "1 MB" in r.text or "1048576" in r.text or "large" in r.text.lower(), r.text[:200]


def test_a_depth_map_upload_shapes_the_layers(client, tmp_path):
    # Left half far, right half near: the foreground layer must sit on the right.
    ramp = np.zeros((96, 64), np.uint8)
    ramp[:, 32:] = 255
    Image.fromarray(ramp, "L").save(tmp_path / "depth.png")
    out = client.predict(prompt="a wall, a statue, a vase", depth_source="map",
                         depth_map=handle_file(str(tmp_path / "depth.png")), **SMALL, api_name="/generate")
    fg = read_zip_layers(out[ZIP])["foreground"][..., 3].astype(float)
    half = SMALL["width"] // 2
    assert fg[:, half + 16:].mean() > 200 and fg[:, : half - 16].mean() < 50
    assert manifest_of(out[ZIP])["depth_source"] == "map"


# --- what is served -------------------------------------------------------------------------------------------------

def test_only_the_output_folder_is_served(server, generated):
    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(f"{server.url}gradio_api/file={path}", timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code

    run = server.output_dir / "runs" / generated[1][SUMMARY]["run_id"]
    assert status(str(run / "stack.psd")) == 200
    assert status(str(ROOT / "app.py")) in (403, 404)
    assert status("/etc/passwd") in (403, 404)
    assert status(str(server.output_dir / ".." / ".." / "app.py")) in (403, 404)


def test_draft_mode_is_announced_on_the_page(server):
    with urllib.request.urlopen(f"{server.url}config", timeout=10) as r:
        config = json.loads(r.read())
    texts = [c.get("props", {}).get("value") for c in config["components"]]
    assert any(isinstance(t, str) and "Draft mode: procedural layout preview, no model weights loaded" in t
               for t in texts)


# --- auth and share -------------------------------------------------------------------------------------------------

def test_with_auth_a_client_without_credentials_is_refused(servers):
    locked = servers[1]
    with pytest.raises(Exception) as info:
        Client(locked.url, verbose=False).predict(prompt="a hill", api_name="/plan")
    assert "credentials" in str(info.value).lower() or "login" in str(info.value).lower()
    with pytest.raises(ValueError):
        Client(locked.url, auth=(AUTH[0], "wrong"), verbose=False)
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(f"{locked.url}config", timeout=10)
    assert http.value.code == 401
    out = Client(locked.url, auth=AUTH, verbose=False).predict(prompt="a hill, a tree", api_name="/plan")
    assert out[10]["layers"][2]["name"] == "foreground"


# --- housekeeping (in-process: the Studio model object behind the page) ----------------------------------------------

def test_old_results_are_cleaned_up_and_the_cached_example_is_kept(tmp_path):
    import uuid

    from layers.backends import get_backend
    from layers.studio import Studio, StudioLimits

    studio = Studio(get_backend("draft"), output_root=tmp_path, limits=StudioLimits(max_runs=3, max_age_hours=1))
    now = time.time()

    def folder(name: str, age_s: float) -> Path:
        path = studio.runs_root / name
        path.mkdir()
        (path / "manifest.json").write_text("{}")
        os.utime(path, (now - age_s, now - age_s))
        return path

    runs = [folder(uuid.uuid4().hex, age) for age in (10, 20, 30, 40, 50)]
    expired = folder(uuid.uuid4().hex, 2 * 3600)
    example = folder("example-" + "ab" * 16, 30 * 24 * 3600)
    stale_staging = folder(f".{uuid.uuid4().hex}.{os.getpid()}-{'a' * 12}.tmp", 2 * 3600)
    fresh_staging = folder(f".{uuid.uuid4().hex}.{os.getpid()}-{'d' * 12}.tmp", 5)  # a request writing right now
    other = folder("notes", 9 * 3600)

    removed = studio.cleanup(now=now)
    left = {p.name for p in studio.runs_root.iterdir()}
    assert left == {runs[0].name, runs[1].name, runs[2].name, example.name, fresh_staging.name, other.name}
    assert set(removed) == {runs[3].name, runs[4].name, expired.name, stale_staging.name}
    with pytest.raises(ValueError, match="no longer available"):
        studio.open_run(runs[4].name)
    with pytest.raises(ValueError, match="not a run id"):
        studio.open_run("../../etc")


def test_limits_come_from_the_environment_and_are_checked():
    from layers.studio import StudioLimits

    limits = StudioLimits.from_env({"LAYERCAKE_MAX_UPLOAD_MB": "5", "LAYERCAKE_MAX_RUNS": "10",
                                    "LAYERCAKE_MAX_AGE_HOURS": "0.5", "LAYERCAKE_MAX_UPLOAD_PIXELS": "1000000"})
    assert (limits.max_upload_mb, limits.max_runs, limits.max_age_hours, limits.max_upload_pixels) == (5, 10, 0.5,
                                                                                                      1_000_000)
    with pytest.raises(ValueError, match="LAYERCAKE_MAX_RUNS"):
        StudioLimits.from_env({"LAYERCAKE_MAX_RUNS": "many"})
    with pytest.raises(ValueError, match="max_runs"):
        StudioLimits.from_env({"LAYERCAKE_MAX_RUNS": "0"})


def test_the_sessions_kept_are_a_studio_limit_from_the_environment():
    from layers.studio import StudioLimits

    assert StudioLimits().max_sessions == 64
    assert StudioLimits.from_env({"LAYERCAKE_MAX_SESSIONS": "8"}).max_sessions == 8
    with pytest.raises(ValueError, match="LAYERCAKE_MAX_SESSIONS"):
        StudioLimits.from_env({"LAYERCAKE_MAX_SESSIONS": "few"})
    with pytest.raises(ValueError, match="max_sessions"):
        StudioLimits(max_sessions=0)


def test_the_server_forgets_the_least_recent_session_beyond_its_bound(tmp_path):
    """Every page visit and API client is a session the web server keeps (about 0.4 MB each); beyond
    LAYERCAKE_MAX_SESSIONS the least recent is forgotten, and with it its last run: regenerating without a run id
    then says there is nothing to regenerate, instead of the server growing with every visitor."""
    with running_server(tmp_path / "out", env={"LAYERCAKE_MAX_SESSIONS": "2"}) as srv:
        a = Client(srv.url, verbose=False)
        a.predict(prompt="a lighthouse, a gull in the foreground", seed=3, width=128, height=192,
                  api_name="/generate")
        Client(srv.url, verbose=False).predict(prompt="a forest", api_name="/plan")
        kept = a.predict(layer="foreground", api_name="/regenerate_layer")   # two sessions: a is still known
        assert kept[SUMMARY]["run_id"]
        for _ in range(2):                                                   # two newer sessions push a out
            Client(srv.url, verbose=False).predict(prompt="a harbour", api_name="/plan")
        with pytest.raises(AppError, match="nothing to regenerate"):
            a.predict(layer="foreground", api_name="/regenerate_layer")


MALFORMED = {
    "seed 'abc'": (dict(seed="abc"), "seed 'abc' is not accepted: it must be a number"),
    "width 'Infinity'": (dict(width="Infinity", height=64), "width 'Infinity' is not accepted: it must be a number"),
    "width a list": (dict(width=[512, 512], height=64), "width [512, 512] is not accepted: it must be a number"),
    "steps out of range": (dict(steps=10**9), "Value 1000000000 is greater than maximum value 150"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_payload_gets_a_one_line_reason_through_gradio_client(client, case):
    kwargs, reason = MALFORMED[case]
    message = error_of(lambda: client.predict(prompt="a quiet harbour", **kwargs, api_name="/generate"))
    assert reason in message and "\n" not in message, message


def _raw_call(server, api: str, body: bytes) -> str:
    """POST /gradio_api/call/<api> as a plain HTTP client, then read the event stream: its last data line."""
    request = urllib.request.Request(f"{server.url}gradio_api/call/{api}", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            event_id = json.loads(r.read())["event_id"]
    except urllib.error.HTTPError as exc:  # refused before the queue: the body says why
        return f"HTTP {exc.code} {exc.read().decode()}"
    with urllib.request.urlopen(f"{server.url}gradio_api/call/{api}/{event_id}", timeout=120) as r:
        stream = r.read().decode()
    return [line for line in stream.splitlines() if line.startswith("data:")][-1]


@pytest.mark.parametrize("body, reason", [
    ({"data": []}, "19 input values are needed, got 0; missing: prompt, seed"),
    ({"data": ["a castle", "abc", *[None] * 15]}, "seed 'abc' is not accepted: it must be a number"),
    ({"data": ["a castle", 0, [1], 64, *[None] * 13]}, "width [1] is not accepted: it must be a number"),
    ({"data": "a castle"}, "Input should be a valid list"),
    ([1], "Input should be a valid dictionary"),
], ids=["no field", "seed abc", "width list", "data not a list", "body a list"])
def test_a_malformed_payload_gets_a_reason_over_raw_http_never_null(server, body, reason):
    answer = _raw_call(server, "generate", json.dumps(body).encode())
    assert reason in answer, answer
    assert '"error": null' not in answer and '"error":null' not in answer


def test_a_raw_http_client_that_sends_only_the_older_inputs_still_gets_a_stack(server):
    # The 17 values /generate took before composition and matte_model were added: they take their defaults.
    older = ["a castle on a hill, two knights, falling leaves", 1, 128, 192, "", "", "", 4, 6.0, 0.6, 1.0, 1.0,
             "scaffold", None, None, "sway", None]
    answer = json.loads(_raw_call(server, "generate", json.dumps({"data": older}).encode())[len("data:"):])
    assert isinstance(answer, list) and answer[0]["path"].endswith(".psd"), answer


def test_the_studio_compiles_the_cuts_kernels_while_it_comes_up(tmp_path):
    """A new studio warms the kernels every cut runs (pymatting's matting, the texture fill's PatchMatch) in the
    background, before any request: in a fresh process nothing has compiled them yet, and no stack is rendered."""
    code = "\n".join([
        "import sys",
        "from layers.backends.draft import DraftBackend",
        "from layers.fill import patchmatch",
        "from layers.studio import Studio",
        "assert 'pymatting' not in sys.modules and not patchmatch.patchmatch.signatures",
        f"studio = Studio(DraftBackend(), output_root={str(tmp_path)!r})",
        "assert studio.warmed.wait(600)",
        "print('pymatting' in sys.modules, bool(patchmatch.peel.signatures), bool(patchmatch.patchmatch.signatures))",
        "print(sorted(p.name for p in (studio.runs_root).iterdir()))",
    ])
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=700)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-2:] == ["True True True", "[]"]
