"""Aspect ratio and size: the ratio a prompt asks for, the spans that asked for it, and the size it gives (rule 3)."""
from __future__ import annotations

import math
import re

from .segments import _segments
from .types import MAX_ASPECT, MAX_SIDE, MIN_SIDE


_NUM = r"\d{1,4}(?:\.\d{1,3})?"
_ORIENT = r"portrait|landscape|vertical|horizontal|upright|tall|wide"
_RATIO_WORDS = r"aspect(?:[ \t]+ratio)?|ratio|format|frame|framing|crop|orientation"
# An explicit mention names the ratio with a keyword before it ("Aspect ratio 2:3", "framed in 2:3") or after it
# ("16:9 format"); separators ":", "x", "×" and "/" are accepted there. A bare ratio only with ":" or "×".
# An optional ":" or "=" takes its spaces with it: two runs of spaces side by side would be tried split every way.
_ASPECT_BEFORE_RE = re.compile(
    rf"(?:\b(?:in|with|at)[ \t]+(?:an?[ \t]+)?)?\b(?:aspect(?:[ \t]+ratio)?|ratio|framed|formatted|format|composed|"
    rf"cropped|shot|rendered|presented)(?:[ \t]+(?:of|in|at|as|to|is))?[ \t]*(?:[:=][ \t]*)?(?:an?[ \t]+)?"
    rf"(?:(?P<o1>{_ORIENT})[ \t]+)?(?<![\w.:/])(?P<a>{_NUM})[ \t]*(?::|×|/|x)[ \t]*(?P<b>{_NUM})(?![\w:/]|\.\d)"
    rf"(?:[ \t]+(?P<o2>{_ORIENT}))?(?:[ \t]+(?:{_RATIO_WORDS})\b)?",
    re.IGNORECASE)
_ASPECT_AFTER_RE = re.compile(
    rf"(?:\b(?:in|at|with)[ \t]+(?:an?[ \t]+)?)?(?:\b(?P<o1>{_ORIENT})[ \t]+)?(?<![\w.:/])(?P<a>{_NUM})[ \t]*"
    rf"(?::|×|/|x)[ \t]*(?P<b>{_NUM})[ \t]+(?:(?P<o2>{_ORIENT})[ \t]+)?(?:{_RATIO_WORDS})\b",
    re.IGNORECASE)
_BARE_RATIO_RE = re.compile(
    rf"(?:\b(?P<o1>{_ORIENT})[ \t]+)?(?<![\w.:/])(?P<a>{_NUM})[ \t]*(?::|×)[ \t]*(?P<b>{_NUM})(?![\w:/]|\.\d)"
    rf"(?:[ \t]+(?P<o2>{_ORIENT})\b)?",
    re.IGNORECASE)
_ASPECT_WORD_RE = re.compile(
    r"\b(?:in[ \t]+)?(?:an?[ \t]+)?(?P<w>square|portrait|landscape|vertical|horizontal|widescreen|panoramic|cinemascope)"
    r"[ \t]+(?:format|aspect(?:[ \t]+ratio)?|ratio|frame|framing|crop|orientation|mode|canvas)\b"
    r"|\b(?P<w2>widescreen|cinemascope)\b",
    re.IGNORECASE)
_LONE_ASPECT_WORD_RE = re.compile(r"(?:^|(?<=[.;\x00]))[ \t]*(square|portrait|landscape|vertical|horizontal)[ \t]*(?=[.;\x00]|$)",
                                  re.IGNORECASE)
_WORD_ASPECTS = {
    "square": (1, 1), "portrait": (2, 3), "vertical": (2, 3), "landscape": (3, 2), "horizontal": (3, 2),
    "widescreen": (16, 9), "panoramic": (21, 9), "cinemascope": (239, 100),
}
_PORTRAIT_WORDS = {"portrait", "vertical", "upright", "tall"}
_LANDSCAPE_WORDS = {"landscape", "horizontal", "wide"}


def _ratio_numbers(a: str, b: str, text: str) -> tuple[int, int, str]:
    """Integers for a ratio written a:b (decimals scaled), and its normalised "W:H" text."""
    fa, fb = float(a), float(b)
    if fa <= 0 or fb <= 0:
        raise ValueError(f"aspect ratio {text!r} has a zero side")
    if max(fa / fb, fb / fa) > MAX_ASPECT:
        raise ValueError(f"aspect ratio {text!r} is too extreme (the limit is {MAX_ASPECT:g}:1)")
    if "." in a or "." in b:
        scale = 1000
        ia, ib = round(fa * scale), round(fb * scale)
        g = math.gcd(ia, ib)
        return ia // g, ib // g, f"{fa:g}:{fb:g}"
    ia, ib = int(a), int(b)
    g = math.gcd(ia, ib)
    return ia // g, ib // g, f"{ia // g}:{ib // g}"


def _orient(aw: int, ah: int, label: str, orientation: str | None) -> tuple[int, int, str]:
    o = (orientation or "").lower()
    if (o in _PORTRAIT_WORDS and aw > ah) or (o in _LANDSCAPE_WORDS and ah > aw):
        a, b = label.split(":")
        return ah, aw, f"{b}:{a}"
    return aw, ah, label


_TIME_BEFORE_RE = re.compile(r"(?:\b(?:at|showing|shows|reads|reading|around|past|until|till|by|from|to)[ \t]+)$",
                             re.IGNORECASE)
_TIME_AFTER_RE = re.compile(r"^[ \t]*(?:[ap]\.?m\b\.?|o['’]clock\b|hours?\b|h\b)", re.IGNORECASE)


def _looks_like_time(text: str, m: re.Match) -> bool:
    """A bare "12:30" is a time of day, not an aspect ratio ("16:10" and "16:9" stay ratios)."""
    a, b = m.group("a"), m.group("b")
    if _TIME_BEFORE_RE.search(text[max(0, m.start() - 12):m.start()]) or _TIME_AFTER_RE.match(text[m.end():]):
        return True
    return len(b) == 2 and "." not in a + b and int(a) <= 24 and (int(a), int(b)) not in {(16, 10)}


def _find_aspect(text: str) -> tuple[tuple[int, int, str] | None, list[tuple[int, int]]]:
    """The aspect ratio a text asks for (or None) and the spans of text that asked for it.

    An explicit mention ("aspect ratio", "framed in", "... format") beats a bare "W:H"; the first of each
    kind counts. Only the ratio that is used is checked, so a stray "0:3" elsewhere is left alone.
    """
    explicit = sorted([m for rx in (_ASPECT_BEFORE_RE, _ASPECT_AFTER_RE) for m in rx.finditer(text)],
                      key=lambda m: (m.start(), -m.end()))
    spans: list[tuple[int, int]] = []
    chosen = None
    for m in explicit:
        if any(s < m.end() and m.start() < e for s, e in spans):
            continue
        spans.append(m.span())
        chosen = chosen or m
    if chosen is None:
        chosen = next((m for m in _BARE_RATIO_RE.finditer(text) if not _looks_like_time(text, m)), None)
        if chosen:
            spans.append(chosen.span())
    found = None
    if chosen is not None:
        aw, ah, label = _ratio_numbers(chosen.group("a"), chosen.group("b"), f"{chosen.group('a')}:{chosen.group('b')}")
        found = _orient(aw, ah, label, chosen.group("o1") or chosen.group("o2"))
    for m in list(_ASPECT_WORD_RE.finditer(text)) + list(_LONE_ASPECT_WORD_RE.finditer(text)):
        if any(s < m.end() and m.start() < e for s, e in spans):
            continue
        spans.append(m.span())
        if found is None:
            word = (m.group(1) if m.re is _LONE_ASPECT_WORD_RE else (m.group("w") or m.group("w2"))).lower()
            aw, ah = _WORD_ASPECTS[word]
            found = (aw, ah, "2.39:1" if word == "cinemascope" else f"{aw}:{ah}")
    return found, sorted(spans)


def parse_aspect(text: str) -> tuple[int, int] | None:
    """Read the aspect ratio a prompt asks for.

    Args:
        text: prompt text, e.g. "... Aspect ratio 2:3." or "square format".

    Returns:
        (width part, height part) reduced (e.g. (2, 3); "2.39:1" gives (239, 100)), or None if the text
        names no aspect.

    Raises:
        ValueError: the aspect has a zero side or is beyond MAX_ASPECT:1 (e.g. "0:3", "1:50").
    """
    found, _ = _find_aspect(joined_segments(_segments(text)))
    return None if found is None else (found[0], found[1])


def joined_segments(segments) -> str:
    """A prompt's segments as its aspect is read from them, so that plan_scene and parse_aspect read the same text
    (a markdown heading is no segment, and a ratio in one is not the scene's). NUL joins them: check_prompt keeps
    it out of the text, and no aspect pattern crosses it."""
    return "\x00".join(s.text for s in segments)


ASPECT_WEIGHT = 6.0


def size_for_aspect(aw: float, ah: float, megapixels: float = 0.5) -> tuple[int, int]:
    """The (width, height) in multiples of 64 that best matches an aspect ratio at about `megapixels`.

    Among all multiple-of-64 sizes up to MAX_SIDE it picks the one with the smallest
    ``relative area error + ASPECT_WEIGHT * relative aspect error`` (2:3 -> 512x768, 1:1 -> 704x704, 16:9 -> 896x512).

    Args:
        aw: width part of the ratio (> 0).
        ah: height part of the ratio (> 0).
        megapixels: target area in millions of pixels (0.05..4).

    Returns:
        (width, height) in pixels.

    Raises:
        ValueError: a non-positive side, a ratio beyond MAX_ASPECT:1, or megapixels out of range.
    """
    for v, what in ((aw, "aspect width"), (ah, "aspect height"), (megapixels, "megapixels")):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{what} must be a positive number, not {v!r}")
    if max(aw / ah, ah / aw) > MAX_ASPECT:
        raise ValueError(f"aspect ratio {aw:g}:{ah:g} is too extreme (the limit is {MAX_ASPECT:g}:1)")
    if not 0.05 <= megapixels <= 4:
        raise ValueError(f"megapixels {megapixels!r} is out of range 0.05..4")
    target_area = megapixels * 1e6
    target_ratio = aw / ah
    best, best_score = (MIN_SIDE, MIN_SIDE), math.inf
    for w in range(MIN_SIDE, MAX_SIDE + 1, 64):
        for h in {max(MIN_SIDE, min(MAX_SIDE, 64 * f(w / target_ratio / 64))) for f in (math.floor, math.ceil)}:
            score = abs(w * h - target_area) / target_area + ASPECT_WEIGHT * abs((w / h) / target_ratio - 1)
            if score < best_score - 1e-12 or (abs(score - best_score) <= 1e-12 and (w, h) < best):
                best, best_score = (w, h), score
    return best


def _aspect_label(w: int, h: int) -> str:
    g = math.gcd(w, h)
    return f"{w // g}:{h // g}"


def _cut_spans(text: str, spans: list[tuple[int, int]]) -> str:
    out, last = [], 0
    for s, e in spans:
        if s >= last:
            out.append(text[last:s])
            out.append(" ")
        last = max(last, e)
    out.append(text[last:])
    return "".join(out)
