"""The words the draft reads: a prompt's colour words become a layer's palette, a light word a light vector."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np


# --------------------------------------------------------------------------------------------------------------
# Colours

COLOURS: dict[str, tuple[int, int, int]] = {
    # Warm metals and lights.
    "sunrise-gold": (255, 186, 84), "warm-gold": (240, 182, 76), "gold": (226, 176, 58), "amber": (250, 166, 40),
    "honey": (226, 164, 70), "brass": (192, 160, 72), "bronze": (168, 112, 52), "copper": (192, 108, 62),
    "orange": (238, 128, 40), "yellow": (238, 208, 64), "ochre": (200, 140, 50), "saffron": (244, 180, 40),
    # Reds.
    "carmine": (166, 14, 44), "crimson": (194, 22, 58), "scarlet": (226, 44, 30), "red": (200, 36, 36),
    "ruby": (160, 16, 52), "burgundy": (112, 18, 42), "wine": (116, 22, 46), "maroon": (112, 28, 32),
    "rose": (214, 92, 120), "pink": (236, 150, 180), "magenta": (198, 40, 150), "coral": (240, 120, 96),
    "rust": (170, 72, 34), "vermilion": (227, 66, 52),
    # Greens and cyans.
    "teal": (18, 128, 132), "turquoise": (44, 188, 178), "cyan": (40, 186, 218), "aqua": (70, 200, 210),
    "jade": (44, 150, 110), "emerald": (22, 140, 82), "green": (52, 140, 62), "olive": (120, 120, 50),
    # Blues and violets.
    "velvet blue": (46, 52, 132), "midnight blue": (24, 30, 84), "midnight": (26, 28, 72),
    "electric blue": (52, 122, 255), "cool blue": (72, 112, 182), "sapphire": (22, 52, 152),
    "cobalt": (10, 72, 170), "ultramarine": (30, 50, 170), "navy": (22, 32, 92), "azure": (52, 130, 220),
    "indigo": (52, 32, 122), "blue": (42, 82, 190), "violet": (132, 62, 200), "purple": (112, 42, 152),
    "lavender": (172, 152, 212), "plum": (120, 50, 100),
    # Neutrals.
    "ivory": (240, 234, 214), "cream": (242, 230, 200), "pearl": (234, 230, 220), "marble": (226, 222, 214),
    "white": (242, 242, 240), "silver": (190, 196, 206), "chrome": (204, 208, 218), "grey": (128, 128, 128),
    "gray": (128, 128, 128), "charcoal": (56, 56, 62), "black ink": (24, 24, 34), "ink": (26, 26, 38),
    "ebony": (36, 30, 30), "black": (20, 20, 26), "sepia": (112, 70, 30), "brown": (120, 80, 50),
    "umber": (100, 66, 40),
}
"""Colour words the draft understands -> sRGB."""

_ALIASES = {"golden": "gold", "sunrise gold": "sunrise-gold", "warm gold": "warm-gold", "cool-blue": "cool blue",
            "velvet-blue": "velvet blue", "midnight-blue": "midnight blue", "electric-blue": "electric blue",
            "black-ink": "black ink", "inky": "ink"}
_WORDS = sorted(set(COLOURS) | set(_ALIASES), key=len, reverse=True)
_COLOUR_RE = re.compile(
    r"(?<![a-z])(" + "|".join(re.escape(w).replace(r"\ ", r"[\s-]+").replace(r"\-", r"[\s-]+") for w in _WORDS)
    + r")(?![a-z])")

_DEFAULT_ACCENT = (236, 184, 92)      # candle gold
_DEFAULT_DEEP = (48, 58, 98)          # slate blue
_DEFAULT_CLOTH = (168, 74, 58)        # terracotta
_DEFAULT_CLOTH2 = (62, 74, 118)
_SKIN = (222, 170, 138)
_SKINS = np.array([_SKIN, (200, 144, 108), (156, 104, 76), (236, 214, 196), (118, 80, 58)], np.float32) / 255
_HAIRS = np.array([(52, 36, 30), (22, 20, 24), (118, 58, 30), (196, 164, 104), (150, 148, 146)], np.float32) / 255


def colour_words(text: str) -> list[str]:
    """Colour words of a text, in order of appearance, each once (canonical names of COLOURS).

    Args:
        text: any text; case does not matter, "sunrise-gold" and "sunrise gold" are the same word.

    Returns:
        Canonical colour names.
    """
    found: list[str] = []
    for m in _COLOUR_RE.finditer(text.lower()):
        word = re.sub(r"[\s-]+", " ", m.group(1))
        word = _ALIASES.get(word, _ALIASES.get(word.replace(" ", "-"), word))
        if word not in COLOURS:
            word = word.replace(" ", "-")
        if word in COLOURS and word not in found:
            found.append(word)
    return found


def _hsv(rgb: np.ndarray) -> tuple[float, float, float]:
    r, g, b = (float(c) for c in rgb)
    mx, mn = max(r, g, b), min(r, g, b)
    if mx - mn < 1e-6:
        return 0.0, 0.0, mx
    if mx == r:
        h = ((g - b) / (mx - mn)) % 6
    elif mx == g:
        h = (b - r) / (mx - mn) + 2
    else:
        h = (r - g) / (mx - mn) + 4
    return h * 60.0, (mx - mn) / mx, mx


@dataclass(frozen=True)
class _Palette:
    """The colours one layer is painted with (float RGB in [0, 1])."""

    names: tuple[str, ...]
    accent: np.ndarray      # warm light: rim light, glows, gilding
    deep: np.ndarray        # architecture, velvet
    cloth: np.ndarray       # main cloth of the figures
    cloth2: np.ndarray      # second cloth
    haze: np.ndarray        # atmospheric perspective


def _palette(prompt: str, palette: Sequence[str]) -> _Palette:
    names = colour_words(prompt)
    for word in palette:
        for name in colour_words(str(word)):
            if name not in names:
                names.append(name)
    cols = [np.array(COLOURS[n], np.float32) / 255.0 for n in names]
    hsv = [_hsv(c) for c in cols]
    chromatic = [c for c, (h, s, v) in zip(cols, hsv) if s > 0.25]
    warm = [c for c, (h, s, v) in zip(cols, hsv) if 15 <= h <= 65 and s > 0.35 and v > 0.55]
    # Deep, saturated colours (velvet, midnight, carmine) dress the architecture and the drapes; inks and
    # blacks are too dark, and golds and brass are metals and lights, not fabrics.
    deep = [c for c, (h, s, v) in zip(cols, hsv) if s > 0.4 and 0.2 < v < 0.76 and not 32 <= h <= 66]
    cool = [c for c, (h, s, v) in zip(cols, hsv) if 150 <= h <= 290 and s > 0.3]
    accent = warm[0] if warm else np.array(_DEFAULT_ACCENT, np.float32) / 255.0
    deep_c = deep[0] if deep else (cool[0] * 0.7 if cool else np.array(_DEFAULT_DEEP, np.float32) / 255.0)
    cloth = cols[0] if cols else np.array(_DEFAULT_CLOTH, np.float32) / 255.0
    others = [c for c in chromatic if float(np.abs(c - cloth).sum()) > 0.35]
    if others:
        cloth2 = others[0]
    elif cols:
        # One colour only: a darker shade of it, so the figure still reads as one costume.
        cloth2 = cloth * 0.55
    else:
        cloth2 = np.array(_DEFAULT_CLOTH2, np.float32) / 255.0
    cool_c = cool[0] if cool else np.array((0.55, 0.62, 0.78), np.float32)
    haze = np.clip(0.55 * np.array((0.70, 0.76, 0.88), np.float32) + 0.25 * cool_c + 0.2 * accent, 0, 1)
    return _Palette(tuple(names), accent.astype(np.float32), deep_c.astype(np.float32), cloth.astype(np.float32),
                    cloth2.astype(np.float32), haze.astype(np.float32))


# --------------------------------------------------------------------------------------------------------------
# Light

LIGHT_DIRECTIONS: tuple[str, ...] = ("top", "left", "right", "back", "front", "bottom")
"""Light directions the draft understands; combinations such as "top-left" or "upper right" work too."""

_LIGHT_WORDS = {"top": (0, -1, 0), "upper": (0, -1, 0), "above": (0, -1, 0), "overhead": (0, -1, 0),
                "bottom": (0, 1, 0), "lower": (0, 1, 0), "below": (0, 1, 0), "left": (-1, 0, 0),
                "right": (1, 0, 0), "back": (0, 0, -1), "behind": (0, 0, -1), "rim": (0, 0, -1),
                "front": (0, 0, 1), "frontal": (0, 0, 1)}


def light_vector(direction: str) -> np.ndarray:
    """A light direction word -> unit vector (x right, y down, z toward the viewer).

    Args:
        direction: "top", "left", "right", "back", "front", "bottom", or a combination ("top-left").

    Returns:
        float32 (3,) unit vector pointing from the scene toward the light.

    Raises:
        ValueError: no known direction word in `direction`.
    """
    words = re.findall(r"[a-z]+", str(direction).lower())
    vec = np.zeros(3, np.float32)
    known = False
    for w in words:
        if w in _LIGHT_WORDS:
            vec += np.array(_LIGHT_WORDS[w], np.float32)
            known = True
    if not known:
        raise ValueError(f"unknown light direction {direction!r}; use one of {', '.join(LIGHT_DIRECTIONS)}")
    if vec[2] == 0:
        vec[2] = 0.55                  # key lights sit a little in front of the scene
    if abs(vec[0]) + abs(vec[1]) == 0:
        vec[1] = -0.35                 # front and back lights still come slightly from above
    return (vec / np.linalg.norm(vec)).astype(np.float32)
