"""parallax.html opened from file:// in Chromium with the network blocked: no request leaves the file, the near
layer moves more than the far one (per pixel with WebGL, as flat cards without), reduced motion keeps it still."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from layers.stack import LayerStack, StackLayer
from layers.webpage import export_html, viewer_layers
from readers import launch_chromium, psnr

W, H = 240, 360
NAMES = ("задник", "中景", "前景 ✨")
BLUE, GREEN, RED = (30, 60, 230), (30, 200, 60), (230, 30, 30)


def square(img: np.ndarray, cx: int, cy: int, half: int, colour) -> None:
    img[cy - half: cy + half, cx - half: cx + half, :3] = colour
    img[cy - half: cy + half, cx - half: cx + half, 3] = 255


def marker_stack() -> LayerStack:
    """A grey opaque background (far at the top, near at the bottom) with a blue marker near the top and one near
    the bottom; a green square on the midground, a red one on the foreground."""
    rng = np.random.default_rng(3)
    bg = np.zeros((H, W, 4), np.uint8)
    bg[..., :3] = (110 + rng.integers(0, 30, (H, W, 1))).astype(np.uint8)
    bg[..., 3] = 255
    square(bg, 40, 40, 12, BLUE)
    square(bg, 40, H - 40, 12, BLUE)
    mg = np.zeros((H, W, 4), np.uint8)
    square(mg, 180, 120, 16, GREEN)
    fg = np.zeros((H, W, 4), np.uint8)
    square(fg, 160, 250, 20, RED)
    ramp = np.broadcast_to(np.linspace(0.0, 0.6, H, dtype=np.float32)[:, None], (H, W)).copy()
    depths = [ramp, np.full((H, W), 0.6, np.float32), np.full((H, W), 0.9, np.float32)]
    return LayerStack([StackLayer(name, Image.fromarray(a, "RGBA"), d, n) for name, a, d, n in
                       zip(NAMES, (bg, mg, fg), depths, (0.2, 0.6, 0.9))])


@pytest.fixture(scope="module")
def page_file(tmp_path_factory):
    return export_html(marker_stack(), tmp_path_factory.mktemp("html") / "parallax.html")


@pytest.fixture(scope="module")
def browser():
    with launch_chromium() as b:
        yield b


def centroid(shot: np.ndarray, colour, rows=slice(None)) -> np.ndarray:
    part = shot[rows]
    mask = np.abs(part.astype(np.int16) - np.asarray(colour, np.int16)).max(axis=-1) < 40
    assert mask.sum() > 20, f"marker {colour} not found"
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def open_offline(browser, page_file, init_script=None, **context_options):
    """The page from file:// with every request that is not the file itself aborted and recorded."""
    context = browser.new_context(viewport={"width": 360, "height": 520}, **context_options)
    if init_script:
        context.add_init_script(init_script)
    requests, errors = [], []
    url = page_file.resolve().as_uri()
    context.route("**/*", lambda route: route.continue_() if route.request.url == url else route.abort())
    page = context.new_page()
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="load")
    return context, page, requests, errors, url


def shot(page) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.locator(".lc-stage").screenshot())).convert("RGB"))


def move_to(page, fx: float, fy: float = 0.5) -> None:
    box = page.locator(".lc-stage").bounding_box()
    page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy, steps=6)
    # The view eases towards the pointer: wait until it has arrived (it stays at 0 with reduced motion).
    page.wait_for_function("([x, y]) => { const s = document.querySelector('.lc-stage'); return s.dataset.still || "
                           "(Math.abs(s.dataset.x - x) < 0.004 && Math.abs(s.dataset.y - y) < 0.004); }",
                           arg=[2 * fx - 1, 2 * fy - 1], timeout=15000)
    page.wait_for_timeout(150)


def marker_shifts(page) -> dict[str, float]:
    move_to(page, 0.5)
    before = shot(page)
    move_to(page, 0.97)
    after = shot(page)
    half = before.shape[0] // 2
    return {
        "far top": abs(centroid(after, BLUE, slice(0, half))[0] - centroid(before, BLUE, slice(0, half))[0]),
        "far bottom": abs(centroid(after, BLUE, slice(half, None))[0] - centroid(before, BLUE, slice(half, None))[0]),
        "middle": abs(centroid(after, GREEN)[0] - centroid(before, GREEN)[0]),
        "near": abs(centroid(after, RED)[0] - centroid(before, RED)[0]),
    }


def test_offline_page_with_webgl_moves_near_more_than_far_per_pixel(browser, page_file):
    context, page, requests, errors, url = open_offline(browser, page_file)
    page.wait_for_function("document.querySelector('.lc-stage').dataset.mode === 'webgl'", timeout=20000)
    shifts = marker_shifts(page)
    assert shifts["near"] > shifts["middle"] > shifts["far bottom"] > shifts["far top"] >= 0, shifts
    # Per pixel: the background's own depth map moves its near bottom more than its far top.
    assert shifts["far bottom"] - shifts["far top"] > 1.0, shifts
    assert page.locator(".lc-names").inner_text().endswith(" · ".join(NAMES))
    assert requests == [url], f"requests besides the file: {requests}"
    assert not errors, errors
    context.close()


def test_without_webgl_the_flat_cards_move_near_more_than_far(browser, page_file):
    # A browser without WebGL: no context of that kind can be made.
    no_webgl = ("const get = HTMLCanvasElement.prototype.getContext; HTMLCanvasElement.prototype.getContext = "
                "function (kind, ...rest) { return /webgl/.test(kind) ? null : get.call(this, kind, ...rest); };")
    context, page, requests, errors, url = open_offline(browser, page_file, init_script=no_webgl)
    page.wait_for_function("document.querySelector('.lc-stage').dataset.mode === 'flat'", timeout=20000)
    shifts = marker_shifts(page)
    assert shifts["near"] > shifts["middle"] > shifts["far top"], shifts
    assert abs(shifts["far bottom"] - shifts["far top"]) < 1.0, "a flat card moves as a whole"
    assert page.locator("canvas").count() == 0
    assert requests == [url] and not errors, (requests, errors)
    context.close()


def test_reduced_motion_shows_the_still_composite(browser, page_file):
    context, page, requests, errors, url = open_offline(browser, page_file, reduced_motion="reduce")
    page.wait_for_function("document.querySelector('.lc-stage').dataset.mode === 'webgl'", timeout=20000)
    move_to(page, 0.5)
    centre = shot(page)
    move_to(page, 0.97, 0.9)
    corner = shot(page)
    assert np.array_equal(centre, corner), "nothing moves with reduced motion"
    composite = np.asarray(marker_stack().composite().resize(centre.shape[1::-1], Image.Resampling.BILINEAR))
    assert psnr(centre, composite) > 25.0, psnr(centre, composite)
    assert requests == [url]
    context.close()


def test_the_page_works_inside_an_iframe(browser, page_file):
    host = page_file.parent / "host.html"
    host.write_text('<!doctype html><p>My portfolio</p><iframe src="parallax.html" title="parallax" '
                    'style="width:300px;height:450px;border:0"></iframe>', encoding="utf-8")
    context = browser.new_context(viewport={"width": 360, "height": 520})
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file://")
                  else route.abort())
    page = context.new_page()
    page.goto(host.as_uri(), wait_until="load")
    frame = page.frame_locator("iframe")
    stage = frame.locator(".lc-stage")
    stage.wait_for()
    box = page.locator("iframe").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.4, steps=4)
    page.mouse.move(box["x"] + box["width"] * 0.95, box["y"] + box["height"] * 0.4, steps=6)
    page.wait_for_timeout(1000)
    assert float(stage.get_attribute("data-x")) > 0.5, "the viewer follows the pointer inside the iframe"
    context.close()


def test_the_page_embeds_every_layer_and_its_depth_map(page_file):
    text = page_file.read_text(encoding="utf-8")
    assert text.count('<img class="lc-plane" src="data:image/png;base64,') == 3
    assert text.count('data-depth-map="data:image/png;base64,') == 3
    assert "http://" not in text and "https://" not in text and "<link" not in text
    assert all(name in text for name in NAMES)


def test_viewer_depth_follows_the_content_around_it():
    layers = viewer_layers(marker_stack())

    depth = np.asarray(Image.open(io.BytesIO(base64.b64decode(layers[1]["depth_uri"].split(",", 1)[1]))))
    # Next to the green square (transparent there) the viewer's depth is the square's, so it moves with it.
    assert depth[120, 180 + 16 + 4] == depth[120, 180] == round(0.6 * 255)


def test_bad_paths_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\.html"):
        export_html(marker_stack(), tmp_path / "parallax.htm")
    with pytest.raises(ValueError, match="amount"):
        export_html(marker_stack(), tmp_path / "parallax.html", amount=2.0)
    assert list(tmp_path.iterdir()) == []
