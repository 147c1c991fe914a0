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
    ("text.png", "depth map text.png is not an image"),
    ("bomb.png", "depth map bomb.png is too large: 400 MP, more than the limit of 40 MP "
                 "(set LAYERCAKE_MAX_UPLOAD_PIXELS to change it)"),
    ("big.png", "depth map big.png is too large: 8000x6000 pixels (48 MP), more than the limit of 40 MP "
                "(set LAYERCAKE_MAX_UPLOAD_PIXELS to change it)"),
    ("cut.png", "cut.png could not be read"),
])
def test_bad_images_are_refused_with_a_reason(folder, name, message):
    with pytest.raises(ValueError) as info:
        open_image(folder / name, what="depth map")
    assert message in str(info.value)


def test_a_folder_is_not_an_image(folder):
    with pytest.raises(ValueError, match="is not a file"):
        open_image(folder)


def test_bad_images_add_no_warning_lines(folder, recwarn):
    """Pillow's DecompressionBombWarning (over 89 MP) must not add lines to the one-line refusal."""
    Image.new("1", (10_000, 9_500)).save(folder / "warn.png")  # 95 MP: Pillow warns, our limit refuses
    with pytest.raises(ValueError, match="95 MP"):
        open_image(folder / "warn.png", what="depth map")
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_the_environment_limit_is_the_one_every_loader_uses(folder, monkeypatch):
    """LAYERCAKE_MAX_UPLOAD_PIXELS raised lets a 48 MP map through every loader; lowered, it refuses 1200 px."""
    from layers.depth import load_depth_map

    monkeypatch.setenv("LAYERCAKE_MAX_UPLOAD_PIXELS", "60000000")
    assert load_depth_map(folder / "big.png", size=(64, 48)).shape == (48, 64)
    assert open_image(folder / "big.png").size == (8000, 6000)
    monkeypatch.setenv("LAYERCAKE_MAX_UPLOAD_PIXELS", "1000")
    with pytest.raises(ValueError) as info:
        load_depth_map(folder / "ok.png")
    assert str(info.value) == ("depth map ok.png is too large: 40x30 pixels (0.0012 MP), more than the limit of "
                               "0.001 MP (set LAYERCAKE_MAX_UPLOAD_PIXELS to change it)")
    monkeypatch.setenv("LAYERCAKE_MAX_UPLOAD_PIXELS", "500000000")
    with pytest.raises(ValueError, match="LAYERCAKE_MAX_UPLOAD_PIXELS must be a whole number of pixels"):
        open_image(folder / "ok.png")
