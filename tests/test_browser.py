"""The studio page in a real browser: Debian's Chromium driven by Python Playwright (never `playwright install`).

Opens the page, fills the prompt, generates, waits for the composite, the layers and the download buttons, moves
the mouse (and a finger) across #parallax and checks that the view changes, downloads the PSD through the browser,
regenerates one layer, and keeps screenshots in test-artifacts/.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_app import ROOT, running_server

CHROMIUM = os.environ.get("LAYERCAKE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
PROMPT = ("In the background, a ruined castle on a misty hill under a dawn sky. In the midground, a red-cloaked "
          "traveller holding a lantern on the forest path. In the foreground, ferns, mossy stones and fallen leaves. "
          "Soft golden light, aspect ratio 2:3.")


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium` "
                    f"(the README's test command does) or set LAYERCAKE_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # --share: no public link can be made from here, and the page must say so.
    with running_server(tmp_path_factory.mktemp("browser") / "outputs", "--share") as srv:
        yield srv


def shot(locator) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB"), dtype=np.int16)


def plane_transforms(page) -> list[str]:
    return page.eval_on_selector_all("#parallax .lc-plane", "els => els.map(e => e.style.transform)")


def test_generate_in_the_browser_then_explore_the_parallax(browser, server, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1360, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    # Gradio keeps a heartbeat request open, so "networkidle" never comes: wait for the page's own elements.
    page.goto(server.url, wait_until="load")
    notice = page.locator("#notice")
    notice.wait_for(timeout=30000)
    assert "Draft mode: procedural layout preview, no model weights loaded" in notice.inner_text()
    # --share was asked for and no public link can be made from here: the terminal and the page say so.
    assert "No public link could be made" in server.log(), server.log()[-2000:]
    page.wait_for_function("document.querySelector('#notice').innerText.includes('No public link')",
                           timeout=15000)

    page.get_by_label("Scene prompt").fill(PROMPT)
    page.get_by_role("button", name="Generate", exact=True).click()

    # Results: composite, the three layers over a checkerboard, downloads, and the interactive viewer.
    page.locator("#composite img").wait_for(timeout=90000)
    for name in ("background", "midground", "foreground"):
        page.locator(f"#layer-{name} img").wait_for(timeout=30000)
    page.wait_for_function("document.querySelectorAll('#parallax img.lc-plane').length === 3", timeout=30000)
    page.wait_for_function("""() => Array.from(document.querySelectorAll('#parallax img.lc-plane'))
                               .every(i => i.complete && i.naturalWidth > 0)""", timeout=15000)
    # Every stack gets per-pixel parallax: each layer carries its depth map, and WebGL draws with them.
    page.wait_for_function("document.querySelector('#parallax .lc-stage').dataset.mode === 'webgl'", timeout=15000)
    assert page.eval_on_selector_all("#parallax .lc-plane", "els => els.every(e => e.dataset.depthMap)")
    psd_button = page.locator("#dl-psd")
    psd_button.wait_for(timeout=30000)
    page.wait_for_function("!document.querySelector('#dl-psd').hasAttribute('disabled') && "
                           "!(document.querySelector('#dl-psd button') || {}).disabled", timeout=30000)
    assert "tokens" in page.locator("#tokens-foreground").inner_text()
    assert page.locator("#prompt-midground textarea").input_value().strip()
    page.wait_for_timeout(400)
    page.screenshot(path=str(ARTIFACTS / "studio_after_generate.png"), full_page=True)

    # Move the mouse across the viewer: the layers must move, nearer ones more.
    stage = page.locator("#parallax .lc-stage")
    stage.scroll_into_view_if_needed()
    box = stage.bounding_box()
    cy = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.08, cy, steps=8)
    page.wait_for_timeout(900)
    left, left_t = shot(stage), plane_transforms(page)
    stage.screenshot(path=str(ARTIFACTS / "parallax_left.png"))
    page.mouse.move(box["x"] + box["width"] * 0.92, cy, steps=16)
    page.wait_for_timeout(900)
    right, right_t = shot(stage), plane_transforms(page)
    stage.screenshot(path=str(ARTIFACTS / "parallax_right.png"))
    assert left_t != right_t, (left_t, right_t)
    changed = np.abs(left - right).max(axis=2) > 24
    assert changed.mean() > 0.05, f"only {changed.mean():.1%} of the viewer changed"

    def shift_x(transform: str) -> float:
        return float(transform.split("translate3d(")[1].split("%")[0])

    shifts = [abs(shift_x(r) - shift_x(l)) for l, r in zip(left_t, right_t)]
    assert shifts[0] < shifts[1] < shifts[2], f"nearer layers move more: {shifts}"

    # Download the PSD through the browser and open it.
    with page.expect_download() as info:
        psd_button.click()
    dest = tmp_path / info.value.suggested_filename
    info.value.save_as(dest)
    from psd_tools import PSDImage

    assert [layer.name for layer in PSDImage.open(dest) if layer.visible] == ["background", "midground", "foreground"]
    for kind in ("ora", "zip", "mp4", "glb", "html"):
        assert page.locator(f"#dl-{kind}").is_visible()

    # Regenerate the foreground only: its preview changes, the background's stays the same file.
    bg_src = page.locator("#layer-background img").get_attribute("src")
    fg_src = page.locator("#layer-foreground img").get_attribute("src")
    page.locator("#regen-foreground").click()
    page.wait_for_function("src => { const i = document.querySelector('#layer-foreground img'); "
                           "return i && i.getAttribute('src') !== src; }", arg=fg_src, timeout=60000)
    assert page.locator("#layer-background img").get_attribute("src") == bg_src
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "studio_after_regenerate.png"), full_page=True)
    assert not [e for e in errors if "favicon" not in e], errors
    context.close()


def test_the_viewer_follows_a_finger(browser, server):
    context = browser.new_context(viewport={"width": 420, "height": 900}, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.goto(server.url, wait_until="load")
    page.get_by_label("Scene prompt").fill("a desert, a camel, cactus flowers close up")
    page.get_by_role("button", name="Generate", exact=True).click()
    page.wait_for_function("document.querySelectorAll('#parallax img.lc-plane').length === 3", timeout=90000)
    stage = page.locator("#parallax .lc-stage")
    stage.scroll_into_view_if_needed()
    box = stage.bounding_box()
    cdp = context.new_cdp_session(page)
    y = box["y"] + box["height"] / 2

    def touch(kind: str, x: float) -> None:
        points = [] if kind == "touchEnd" else [{"x": x, "y": y}]
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

    touch("touchStart", box["x"] + box["width"] * 0.1)
    page.wait_for_timeout(700)
    before = plane_transforms(page)
    touch("touchMove", box["x"] + box["width"] * 0.5)
    touch("touchMove", box["x"] + box["width"] * 0.9)
    page.wait_for_timeout(700)
    after = plane_transforms(page)
    touch("touchEnd", 0)
    assert before != after, (before, after)
    stage.screenshot(path=str(ARTIFACTS / "parallax_touch.png"))
    for name in ("background", "midground", "foreground"):  # lazy images load once scrolled to
        page.locator(f"#layer-{name}").scroll_into_view_if_needed()
        page.locator(f"#layer-{name} img").wait_for(timeout=30000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "studio_mobile.png"), full_page=True)
    context.close()
