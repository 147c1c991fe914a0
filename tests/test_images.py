"""Opening user images: every refusal is a ValueError that names the file and the problem."""
from __future__ import annotations

import pytest
from PIL import Image

from layers.images import open_image


@pytest.fixture
def folder(tmp_path):
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "ok.png")
    Image.new("1", (20_000, 20_000)).save(tmp_path / "bomb.png")       # ~50 KB on disk, 400 MP decoded
    Image.new("1", (8_000, 6_000)).save(tmp_path / "big.png")          # 48 MP: over our limit, under Pillow's
    (tmp_path / "text.png").write_text("not a picture")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    return tmp_path


def test_a_good_image_is_loaded_and_the_file_closed(folder):
    img = open_image(folder / "ok.png")
    assert img.size == (40, 30) and img.getpixel((0, 0)) == (200, 10, 10)
    (folder / "ok.png").unlink()  # nothing holds the file open
    assert img.getpixel((5, 5)) == (200, 10, 10)


@pytest.mark.parametrize("name, message", [
    ("missing.png", "depth map not found"),
    ("text.png", "depth map is not an image: text.png"),
    ("bomb.png", "bomb.png is too large to open safely: 400 MP; the limit is 40 MP"),
    ("big.png", "big.png is 8000x6000 = 48 MP; the limit is 40 MP"),
    ("cut.png", "cut.png could not be read"),
])
def test_bad_images_are_refused_with_a_reason(folder, name, message):
    with pytest.raises(ValueError) as info:
        open_image(folder / name, what="depth map")
    assert message in str(info.value)


def test_a_folder_is_not_an_image(folder):
    with pytest.raises(ValueError, match="is not a file"):
        open_image(folder)


def test_an_open_image_is_checked_for_size_too():
    with pytest.raises(ValueError, match="limit is 1 MP"):
        open_image(Image.new("L", (2000, 1000)), max_pixels=1_000_000)
