"""Make the README's picture from a real draft run: composite, the three layers over a checkerboard, a parallax frame.

Usage: .venv/bin/python scripts/readme_picture.py OUT_DIR_OF_A_GENERATE_RUN assets/readme/seed002_draft.png
"""
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw


def checker(size, cell=16):
    w, h = size
    grid = (np.indices((h, w)) // cell).sum(0) % 2
    return Image.fromarray(np.where(grid[..., None], 205, 150).repeat(3, -1).astype(np.uint8))


def main(src: Path, dest: Path) -> None:
    composite = Image.open(src / "composite.png").convert("RGB")
    tiles = [("composite", composite)]
    for name in ("background", "midground", "foreground"):
        layer = Image.open(src / "layers" / f"{name}.png").convert("RGBA")
        board = checker(layer.size)
        board.paste(layer, (0, 0), layer)
        tiles.append((name, board))
    frame = iio.imread(src / "parallax.mp4", index=15)
    tiles.append(("parallax frame", Image.fromarray(frame).resize(composite.size)))
    w, h = composite.size
    scale = 0.5
    tw, th = int(w * scale), int(h * scale)
    sheet = Image.new("RGB", (tw * len(tiles) + 8 * (len(tiles) + 1), th + 36), (24, 22, 30))
    draw = ImageDraw.Draw(sheet)
    for i, (label, img) in enumerate(tiles):
        x = 8 + i * (tw + 8)
        sheet.paste(img.resize((tw, th), Image.LANCZOS), (x, 8))
        draw.text((x, th + 14), label, fill=(235, 225, 200))
    dest.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(dest, optimize=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
