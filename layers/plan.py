"""Scene planning: one dense prompt -> a ScenePlan of three layer prompts, back to front.

`plan_scene` reads a long scene description and decides what each depth layer is asked to show:

* **background**: architecture, rooms, landscape, sky (rendered as a complete painting);
* **midground**: the figures, characters, the subject (rendered as an isolated subject on a plain backdrop);
* **foreground**: debris, props and particles close to the lens (also rendered isolated).

The planner is pure Python and deterministic: the same prompt and seed give the same plan.

Rules, in the order they are applied
------------------------------------
1. **Checks.** `check_prompt` refuses an empty or blank prompt, one over `MAX_PROMPT_CHARS` characters and
   one with control characters other than newline, tab and carriage return (the message names the code
   point, e.g. ``U+0007``).
2. **Markdown.** ``**bold**``, ``__bold__``, ``*italic*``, backticks, ``[links](...)``, block quotes and
   list bullets are stripped. A heading (``## Foreground``) opens a *section*: every clause under it, up to
   the next heading, belongs to that layer. A label standing alone on its line (``Background:``) does the
   same up to the next blank line, label or heading. A label followed by text on its line
   (``**foreground**: shattered vases. A knight.``) works like the opening cue "In the foreground, ..."
   (rule 7). ``Style:`` / ``Lighting:`` / ``Medium:`` labels feed the shared style instead of a layer.
3. **Aspect ratio.** ``Aspect ratio 2:3``, ``framed in 2:3``, ``16:9``, ``1:1``, ``2.39:1``,
   ``portrait 3:4``, ``square format``, ``landscape format``, ``widescreen`` and similar are read and
   removed from the text. An explicit mention ("aspect", "ratio", "framed in", "... format") beats a bare
   ``W:H``; a bare one that reads as a time of day ("at 12:30", "9:45 pm") is left alone; an orientation
   word turns the ratio the right way round ("portrait 4:3" -> 3:4). A zero side or a ratio beyond 4:1
   raises `ValueError` naming it. No aspect means 2:3 portrait. The size is the multiple-of-64 pair that
   best matches the ratio at about 0.5 megapixels (`size_for_aspect`: 2:3 -> 512x768);
   `width`/`height` arguments override it.
4. **Clauses and phrases.** The text is cut into clauses at line breaks, sentence ends and ``;``, and each
   clause into phrases at ``:``, dashes and commas, never inside parentheses, brackets or paired quotes.
   A comma piece that cannot stand alone (it ends in an adjective, or has one content word and no scene
   noun: "a radiant,", "On the left,") joins the next piece, so "a radiant, intoxicating glow" and
   "On the left, the Dreamer" stay whole; a closing "..., and skin" joins the piece before it. A long
   phrase moves a long parenthetical into a phrase of its own that follows it into the same layer.
   Joining words at a phrase start ("and", "while", "simultaneously") are dropped.
5. **Shared style.** Lighting ("sunrise-gold rim light", "high-contrast chiaroscuro", "volumetric light"),
   colour grade and palette ("color grade", "cool blue shadow", "muted palette"), medium ("surreal
   illustration", "oil painting", "35mm film") and quality words ("masterpiece", "ultra-detailed",
   "cinematic", "extreme detail", "high fidelity") are cut out of the phrases; when only joining words
   are left around them ("rim light cutting through cool blue shadow") the whole phrase is one term.
   Terms are de-duplicated (one contained in a longer one is dropped) and joined into `ScenePlan.style`,
   lighting and colour first, quality last. A phrase that starts with "no"/"without" ("no empty space")
   becomes a negative term of the background (of every layer when it is about quality: "no text").
6. **Explicit position cues win.** A phrase that names its place is put there:
   foreground - "foreground", "in the foreground", "(foreground)", "in front", "at the front",
   "right against the lens", "close to the camera", "near the lens", "closest to the viewer";
   midground - "midground", "middle ground", "middle distance", "center stage", "at the center",
   "a little further back", "slightly further back";
   background - "background", "in the background", "behind them", "behind the figures", "far away",
   "far off", "in the distance", "on the horizon", "further back", "as a backdrop".
   When one phrase holds several cues the first one counts. The cue words are removed ("a windmill in the
   distance" -> "a windmill"), except a layer word used as an adjective ("sharp foreground texture").
   A phrase that is only a cue ("in the foreground,") passes its cue to the next phrase of its clause,
   or, when it ends the clause ("..., all in the foreground"), to the phrases before it.
7. **Cues lean what follows.** After a cue, the later phrases of its clause lean to its layer (+3 to that
   layer's score). A cue that opens its clause ("In the foreground, ...", "Center stage, ...") also leans
   the later clauses of its sentence (+2) and of the next sentences (+2, halved at each new sentence)
   until another opening cue. Leaning only adds to the score: a clause that clearly describes something
   else still goes where its words say.
8. **Otherwise the words decide.** Each phrase is scored against three word lists (architecture, rooms,
   landscape and sky words for the background; people, bodies, clothes, poses, animals and named
   characters such as "the Dreamer" for the midground; debris, particles, props, small objects and
   "scattered"/"spilled"/"corners" for the foreground) plus half its clause's mean score per phrase as
   context. A phrase naming a person or creature counts its midground score 1.5 times ("a monk praying in
   a temple" is the monk's). The highest score wins; ties go midground, then background, then foreground;
   a phrase that matches nothing goes to the leaning layer if there is one, else to the background.
9. **Priority.** Inside a layer: first the phrase that carries an opening cue (and every phrase of a
   heading or stand-alone label section); then the other cued phrases and the phrases of an opening cue's
   sentence that its layer's words describe; then the rest. Within each group by relevance: the score for
   the layer, a bonus for leaning there and a small one for appearing early.
10. **Token budget.** Each layer prompt is ``phrases, [framing,] style`` where framing is
    `SUBJECT_FRAMING` for the midground and foreground. It must fit `token_budget` tokens under
    `count_tokens` (default `count_tokens_approx`, which over-estimates CLIP's BPE), BOS/EOS included.
    The style first takes at most `STYLE_SHARE` of the budget; phrases are then added in priority order
    while they fit (a later, shorter phrase may fill a gap); left-over room takes back style terms.
    Every phrase or style term that does not fit is recorded in `LayerPlan.dropped`; when not even the
    first phrase fits, it is cut at a word boundary and the cut remainder is recorded. Nothing is dropped
    silently. If nothing fits at all, the style and then the framing give way; a budget too small for a
    single word raises `ValueError`.
11. **Never empty.** A layer no phrase landed in gets a placeholder made from the scene's inferred nouns
    ("vast interior architecture, hall"; "a figure" / "two figures"; "scattered debris and particles close
    to the lens, dust") and `LayerPlan.placeholder` is set.
12. **Scene facts.** `figures` (1..4): an explicit count ("two figures", "a pair of dancers", "both of
    them", "a trio") in the midground, else two or more named characters ("the Dreamer ... the Lover"),
    else a plural ("figures") in the midground -> 2, else an explicit count anywhere, else 1. `palette`:
    colour words (gold, carmine, teal, velvet blue, midnight, sunrise-gold, brass, ...) normalised to the
    names of `_COLOR_ALIASES` (the draft renderer holds their colours), ranked by how often they occur (weighted up inside style terms), first
    mention breaking ties. `light_direction`: "light from the left" / "lit from the right" / "light from
    above" first, then rim light or backlit -> "back", front light -> "front"; default "top".
13. **Seeds.** Each layer's seed is ``sha256(f"{seed}:{name}")`` reduced to 0..2**31-1 (`layer_seed`):
    stable across runs and machines, different per layer, changing with the scene seed.

Overrides: ``overrides={"midground": "a single dancer"}`` replaces that layer's phrases by the given text
(split the same way, kept in its order, style still appended, budget applied). `with_layer` does the same
to one layer of an existing plan (new prompt and/or seed, another counter) and leaves the others as they
are.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, Mapping

from . import plan_words

LAYER_NAMES: tuple[str, ...] = ("background", "midground", "foreground")
"""Layer names, back to front. One spelling everywhere."""

MAX_PROMPT_CHARS = 20_000
MAX_SIDE = 2048
MIN_SIDE = 64

TokenCounter = Callable[[str], int]
"""Counts the tokens of a text, BOS/EOS included (like a CLIP tokenizer's input_ids length)."""


@dataclass(frozen=True)
class LayerPlan:
    """One layer of the scene, as the renderer will see it."""

    name: str
    """One of LAYER_NAMES."""
    prompt: str
    """Full prompt for this layer: its own clauses first, then the shared style; within the token budget."""
    negative_prompt: str
    seed: int
    """Per-layer seed derived from the scene seed (or overridden)."""
    clauses: tuple[str, ...] = ()
    """The clauses of the scene prompt that were placed in this layer and kept, most important first."""
    dropped: tuple[str, ...] = ()
    """Clauses (or style words) that did not fit the token budget; never silently lost."""
    tokens: int = 0
    """Token count of `prompt` under the plan's token counter (BOS/EOS included)."""
    placeholder: bool = False
    """True when no clause of the prompt landed in this layer and `clauses` holds a made-up default."""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["clauses"] = list(self.clauses)
        d["dropped"] = list(self.dropped)
        return d


@dataclass(frozen=True)
class ScenePlan:
    """The whole scene: three layers back to front plus what they share."""

    prompt: str
    seed: int
    width: int
    height: int
    aspect: str
    """Aspect ratio as written, normalised "W:H" (e.g. "2:3")."""
    style: str
    """Shared style (lighting, colour grade, medium, quality words) added to every layer prompt."""
    figures: int
    """How many figures the midground holds (read from the prompt, e.g. "two figures" -> 2)."""
    layers: tuple[LayerPlan, ...]
    token_budget: int = 77
    light_direction: str = "top"
    """Where the key/rim light comes from: left, right, top, back, front (read from the prompt)."""
    palette: tuple[str, ...] = ()
    """Colour words found in the prompt, most prominent first (e.g. ("gold", "carmine", "velvet blue"))."""
    setting: str = ""
    """Where the background is: "indoor" (hall, chamber, archive), "outdoor" (hill, sky, forest) or "" (unsaid)."""

    def layer(self, name: str) -> LayerPlan:
        for lp in self.layers:
            if lp.name == name:
                return lp
        raise ValueError(f"unknown layer {name!r}; choose one of {', '.join(LAYER_NAMES)}")

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "aspect": self.aspect,
            "style": self.style,
            "figures": self.figures,
            "token_budget": self.token_budget,
            "light_direction": self.light_direction,
            "palette": list(self.palette),
            "setting": self.setting,
            "layers": [lp.to_dict() for lp in self.layers],
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "ScenePlan":
        layers = tuple(
            LayerPlan(
                name=x["name"], prompt=x["prompt"], negative_prompt=x["negative_prompt"], seed=int(x["seed"]),
                clauses=tuple(x.get("clauses", ())), dropped=tuple(x.get("dropped", ())), tokens=int(x.get("tokens", 0)),
                placeholder=bool(x.get("placeholder", False)),
            )
            for x in d["layers"]
        )
        return cls(
            prompt=d["prompt"], seed=int(d["seed"]), width=int(d["width"]), height=int(d["height"]),
            aspect=d["aspect"], style=d["style"], figures=int(d["figures"]), layers=layers,
            token_budget=int(d.get("token_budget", 77)), light_direction=d.get("light_direction", "top"),
            palette=tuple(d.get("palette", ())), setting=d.get("setting", ""),
        )


# ---------------------------------------------------------------------------------------------------------------
# Public constants

MAX_SEED = 2**63 - 1
"""Largest accepted scene seed (fits a signed 64-bit integer)."""
MAX_LAYER_SEED = 2**31 - 1
"""Per-layer seeds are in 0..MAX_LAYER_SEED (every generator accepts them)."""
MAX_ASPECT = 4.0
"""The longer side may be at most this many times the shorter one."""
MIN_TOKEN_BUDGET = 4
MAX_TOKEN_BUDGET = 100_000
STYLE_SHARE = 0.4
"""At most this share of the token budget goes to the shared style before the layer's own phrases."""

SUBJECT_FRAMING = "isolated on a plain backdrop"
"""Added after the phrases of the midground and foreground prompts: those layers are rendered as isolated
subjects on a plain backdrop so that matting can separate them. Renderers should not add it again."""

LIGHT_DIRECTIONS: tuple[str, ...] = ("left", "right", "top", "back", "front")


# ---------------------------------------------------------------------------------------------------------------
# Input checks


def check_prompt(prompt: str) -> str:
    """Check a scene prompt and return it without surrounding whitespace.

    Args:
        prompt: the scene description.

    Returns:
        The prompt, stripped.

    Raises:
        ValueError: not a string, empty or blank, longer than MAX_PROMPT_CHARS characters, or holding a
            control character other than newline, tab or carriage return (or a lone surrogate).
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be text, not {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS}")
    for ch in prompt:
        if ch in "\n\t\r":
            continue
        cat = unicodedata.category(ch)
        if cat == "Cc":
            raise ValueError(f"prompt contains the control character U+{ord(ch):04X}")
        if cat == "Cs":
            raise ValueError(f"prompt contains an unpaired surrogate U+{ord(ch):04X} (not valid text)")
    text = prompt.strip()
    if not text:
        raise ValueError("prompt is empty" if not prompt else "prompt is blank (empty apart from whitespace)")
    return text


def _check_int(value, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{what} {value} is out of range {lo}..{hi}")
    return value


def _check_side(value, what: str) -> int:
    _check_int(value, what, MIN_SIDE, MAX_SIDE)
    if value % 8:
        raise ValueError(f"{what} {value} is not a multiple of 8")
    return value


def _checked_counter(count_tokens: TokenCounter | None) -> TokenCounter:
    if count_tokens is None:
        return count_tokens_approx
    if not callable(count_tokens):
        raise ValueError(f"count_tokens must be a function of a text, not {count_tokens!r}")

    def count(text: str) -> int:
        n = count_tokens(text)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"count_tokens returned {n!r} for {text[:40]!r}; expected a count >= 0")
        return n

    return count


# ---------------------------------------------------------------------------------------------------------------
# Token counting

_LETTERS_RE = re.compile(r"[^\W\d_]+")
_NOT_SPACE_RE = re.compile(r"\S")


def count_tokens_approx(text: str) -> int:
    """Estimate how many CLIP tokens a text takes, BOS and EOS included.

    The estimate follows CLIP's pre-tokenisation (words, single digits, punctuation) and errs on the high
    side: an ASCII word of up to 4 letters counts 1 and every further letter 0.2 (rare words split into
    several BPE pieces; "balconies" is 3); a digit or ASCII punctuation mark counts 1 and a non-ASCII
    character as many as its UTF-8 bytes (the byte-level BPE never needs more). Measured against CLIP's
    own BPE on the example prompts it is about 18% high and never low for a whole layer prompt.

    Args:
        text: any text.

    Returns:
        The estimated token count, at least 2.
    """
    n = 0.0
    for word in _LETTERS_RE.findall(text):
        if word.isascii():
            n += _ascii_word_cost(len(word))
            continue
        ascii_letters = sum(1 for c in word if c.isascii())
        n += sum(len(c.encode("utf-8", "surrogatepass")) for c in word if not c.isascii())
        if ascii_letters:
            n += _ascii_word_cost(ascii_letters)
    rest = _LETTERS_RE.sub(" ", text)
    if rest.isascii():
        n += len(_NOT_SPACE_RE.findall(rest))  # digits and punctuation, one token each at most
    else:
        n += sum(len(c.encode("utf-8", "surrogatepass")) for c in _NOT_SPACE_RE.findall(rest))
    return 2 + math.ceil(n - 1e-9)


def _ascii_word_cost(length: int) -> float:
    return 1.0 if length <= 4 else 1.0 + 0.2 * (length - 4)


# ---------------------------------------------------------------------------------------------------------------
# Seeds


def layer_seed(seed: int, name: str) -> int:
    """The seed of one layer, derived from the scene seed with a stable hash.

    Args:
        seed: the scene seed.
        name: the layer name.

    Returns:
        An integer in 0..MAX_LAYER_SEED, the same on every run and machine.
    """
    digest = hashlib.sha256(f"{seed}:{name}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % (MAX_LAYER_SEED + 1)


# ---------------------------------------------------------------------------------------------------------------
# Aspect ratio and size

_NUM = r"\d{1,4}(?:\.\d{1,3})?"
_ORIENT = r"portrait|landscape|vertical|horizontal|upright|tall|wide"
_RATIO_WORDS = r"aspect(?:[ \t]+ratio)?|ratio|format|frame|framing|crop|orientation"
# An explicit mention names the ratio with a keyword before it ("Aspect ratio 2:3", "framed in 2:3") or after it
# ("16:9 format"); separators ":", "x", "×" and "/" are accepted there. A bare ratio only with ":" or "×".
_ASPECT_BEFORE_RE = re.compile(
    rf"(?:\b(?:in|with|at)[ \t]+(?:an?[ \t]+)?)?\b(?:aspect(?:[ \t]+ratio)?|ratio|framed|formatted|format|composed|"
    rf"cropped|shot|rendered|presented)(?:[ \t]+(?:of|in|at|as|to|is))?[ \t]*[:=]?[ \t]*(?:an?[ \t]+)?"
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
    found, _ = _find_aspect(_strip_inline_markdown(text).replace("\r", "\x00").replace("\n", "\x00"))
    return None if found is None else (found[0], found[1])


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


# ---------------------------------------------------------------------------------------------------------------
# Word lists

def _words(spec: str) -> list[str]:
    return spec.split()


_LEXICON_SPEC: dict[str, dict[float, str]] = {
    "background": {
        1.5: """architecture architectural building tower castle palace cathedral temple church chapel
            monastery mosque hall chamber interior room library archive planetarium observatory city
            cityscape skyline landscape mountain valley forest jungle ocean sea sky horizon desert canyon cave
            cavern ruin facade colonnade nave dome vault atrium rotunda corridor hallway courtyard garden
            street alley bridge skyscraper spire ziggurat pyramid amphitheater amphitheatre arena stadium
            scenery vista panorama backdrop environment setting distant far-off ballroom theater theatre
            museum gallery station harbor harbour village town lighthouse windmill barn farm castle kitchen
            bedroom studio office classroom church temple shrine pagoda market plaza square lobby attic
            basement cellar greenhouse warehouse factory ship harbor port dock pier mansion manor cabin""",
        1.0: """wall ceiling floor arch archway balcony column pillar buttress staircase stair stairway
            window door doorway portal gate scaffolding shelf shelve bookcase bookshelf cabinet chandelier
            curtain drape tile mosaic fresco mural brick beam rafter rib tier gallery orrery star planet
            moon sun cloud tree hill field river lake waterfall lagoon beach shore island house home hut
            cottage banner flag stage sign signage facade terrace roof rooftop battlement rampart fountain
            throne-room altar organ pipe sunset sunrise dawn dusk twilight aurora meadow cliff glacier
            sculpture statue tapestry skylight alcove niche crypt dungeon tunnel lantern-star""",
        0.5: """stone marble bureaucracy monumental towering vast immense upward overhead enormous colossal
            alphabet clockwork constellation track dressing-room world universe cosmos space""",
    },
    "midground": {
        1.5: """figure person people man woman men women girl boy child children kid human humanoid character
            protagonist hero heroine subject couple pair twin lover dreamer dancer athlete guardian warrior
            knight soldier king queen prince princess god goddess angel demon witch wizard mage priest monk
            nun saint sage traveler traveller wanderer pilgrim explorer astronaut robot android cyborg
            creature monster giant lady gentleman maiden bride groom mother father family crowd musician
            singer actor actress clown jester harlequin acrobat celebrant performer mourner baby infant
            animal cat dog fox wolf lion tiger horse deer stag bear owl raven crow eagle dragon unicorn
            whale serpent snake self portrait fisherman fishermen sailor farmer merchant scholar student teacher
            doctor nurse chef pirate ninja samurai viking elf dwarf orc fairy mermaid vampire ghost zombie cowboy
            detective scientist artist painter poet writer reader queen emperor empress soldier archer hunter
            shepherd beggar thief assassin gladiator samurai geisha ballerina violinist pianist drummer
            grandmother grandfather boyfriend girlfriend wife husband son daughter policeman firefighter
            skateboarder surfer rider horseman horsewoman swordsman swordswoman sorcerer sorceress oracle
            prophet shaman hermit nomad refugee worker miner blacksmith knight-errant rabbit hare mouse rat
            squirrel bird-woman cat-woman octopus jellyfish butterfly-woman kitten puppy cow sheep goat pig
            elephant giraffe zebra monkey ape gorilla panda koala penguin swan heron crane peacock parrot
            dolphin shark turtle frog lizard crocodile dinosaur phoenix griffin centaur minotaur sphinx golem
            automaton puppet marionette doll mannequin statue-like""",
        1.0: """body skin face head hair hand arm forearm finger fingertip shoulder chest torso ribcage leg
            foot feet heel ankle knee hip waist neck chin lip mouth cheek brow gaze stare posture pose
            stance anatomy silhouette limb sternum palm wrist spine breath smile expression nude naked bare
            bare-shouldered shirtless dressed wearing clothed costume coat dress gown robe cloak cape armor
            armour tunic veil laurel prosthetic vein tattoo wound stride stand standing sit sitting lean
            leaning kneel kneeling dancing hold holding held embrace embracing kiss kissing reaching asleep
            walking running flying gesture sweat tear""",
        0.5: """eye heart crown halo twin""",
        0.3: """they their them he his him she her herself himself themselves""",
    },
    "foreground": {
        1.5: """debris particle confetti shard dust mote ember spark petal ash crumb rubble fragment splinter
            droplet bubble bokeh litter clutter trinket prop clue scrap foreground""",
        1.0: """glass mask ticket letter envelope page paper ink feather leave leaf thorn coin key seal wax
            token chain link gear cog wire pin needle ribbon string sand hourglass dice card dossier folder
            stamp stamper tool instrument jewel jewelry jewellery gem bead pearl candle bottle cup goblet
            shell pebble twig origami butterfly moth insect firefly bee scattered spilled strewn occlude
            occludes lens tassel astrolabe incense smoke trinket medal handprint calligraphy scroll book
            tag quill compass lock padlock ring""",
        0.7: """parchment mirror fabric fold cloth floating bird corner""",
        0.5: """drifting suspended weightless edge bottom camera close nearby tiny spilling stacked pile heap
            fly haze mist fog glitter""",
        0.3: """thread velvet small miniature broken hovering lower near""",
    },
}

_LEXICON: dict[str, list[tuple[str, float]]] = {}
for _layer, _groups in _LEXICON_SPEC.items():
    for _weight, _spec in _groups.items():
        for _w in _words(_spec):
            _entries = _LEXICON.setdefault(_w, [])
            _same = [e for e in _entries if e[0] == _layer]
            if not _same:
                _entries.append((_layer, _weight))
            elif _same[0][1] < _weight:  # a word listed twice keeps its higher weight
                _entries[_entries.index(_same[0])] = (_layer, _weight)

_BIGRAMS: dict[str, list[tuple[str, float]]] = {
    "dust mote": [("foreground", 1.0)], "filing cabinet": [("background", 1.0)],
    "stage flat": [("background", 1.5)], "love letter": [("foreground", 1.0)],
    "theater mask": [("foreground", 0.5)], "theatre mask": [("foreground", 0.5)],
    "theater ticket": [("foreground", 0.5)], "street sign": [("background", 0.5)],
    "paper scrap": [("foreground", 0.5)], "broken glass": [("foreground", 0.5)],
    "glass shard": [("foreground", 0.5)], "star chart": [("foreground", 0.5)],
    "lower frame": [("foreground", 1.0)], "every corner": [("foreground", 0.5)],
    "floor tile": [("background", 0.5)], "cathedral rib": [("background", 0.5)],
    "human figure": [("midground", 0.5)], "city gate": [("background", 0.5)],
}

_OUTDOOR = set(_words("""landscape mountain valley forest jungle ocean sea sky horizon desert canyon city cityscape
    skyline street alley bridge garden meadow cliff glacier field hill river lake beach shore island village
    town sunset sunrise dawn dusk aurora"""))

_INDOOR = set(_words("""hall room chamber interior ceiling vault archive library palace cathedral church temple
    planetarium theater theatre ballroom corridor gallery museum attic cellar crypt nave balcony staircase stair
    office studio workshop observatory"""))


def _setting(text: str) -> str:
    """"indoor" or "outdoor" when the background's own words say so more one way than the other, else ""."""
    stems = [_stem(w) for w in _WORD_RE.findall(text.lower())]
    outdoor = sum(w in _OUTDOOR for w in stems)
    indoor = sum(w in _INDOOR for w in stems)
    return "outdoor" if outdoor > indoor else "indoor" if indoor > outdoor else ""


_STOPWORDS = set(_words("""a an the and or but yet while whereas of in on at to by for from with as into onto over
    under than then so is are was were be been being it its this that these those there their them they he she
    his her him we our you your i my me all each every some any both either neither no not only just very
    too also like such what which who whom whose where when how why if because though although until upon
    about above below between through during before after around across against along among off out up
    down near far here one everything everywhere something somewhere anything"""))

_LEADING_GLUE_RE = re.compile(r"^(?:(?:and|or|but|yet|while|whereas|plus|so|then|also|simultaneously)\b[\s,]*)+",
                              re.IGNORECASE)
_WORD_RE = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")


@functools.lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    w = word.lower()
    if w.endswith(("'s", "’s")):
        w = w[:-2]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("sses", "ches", "shes", "xes", "zes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is", "as", "os")):
        return w[:-1]
    return w


@functools.lru_cache(maxsize=65536)
def _lookup(word: str) -> list[tuple[str, float]]:
    w = word.lower()
    if w in _LEXICON:
        return _LEXICON[w]
    return _LEXICON.get(_stem(w), [])


def _tokens(text: str) -> list[str]:
    """Lower-case word tokens; hyphenated words split into their parts."""
    return [w.lower() for w in _WORD_RE.findall(text)]


def _content_words(text: str) -> list[str]:
    return [w for w in _tokens(text) if w not in _STOPWORDS]


def _score(text: str, names: frozenset[str] = frozenset()) -> dict[str, float]:
    """How strongly a text describes each layer."""
    scores = dict.fromkeys(LAYER_NAMES, 0.0)
    toks = _tokens(text)
    for w in toks:
        for layer, weight in _lookup(w):
            scores[layer] += weight
    for a, b in zip(toks, toks[1:]):
        for layer, weight in _BIGRAMS.get(f"{_stem(a)} {_stem(b)}", ()):
            scores[layer] += weight
    subject = any(weight >= 1.5 and layer == "midground" for w in toks for layer, weight in _lookup(w))
    if names:
        for m in _WORD_RE.finditer(text):
            if _stem(m.group()) in names and m.group()[:1].isupper():
                scores["midground"] += 1.5
                subject = True
    if subject:
        # "a hall with two figures", "a monk praying in a temple": the person is the subject, the place is
        # its setting (the background then gets a placeholder built from the scene's nouns).
        scores["midground"] *= 1.5
    return scores


def _max_weight(text: str) -> float:
    return max((wt for w in _tokens(text) for _, wt in _lookup(w)), default=0.0)


# ---------------------------------------------------------------------------------------------------------------
# Position cues

_LAYER_WORD = {
    "foreground": r"fore[\s-]?ground",
    "midground": r"(?:mid[\s-]?ground|middle[\s-]?ground)",
    "background": r"back[\s-]?ground",
}
_PREP = r"(?:in|into|at|to|on|within)\s+(?:the\s+)?(?:very\s+|extreme\s+|immediate\s+|near\s+|far\s+|distant\s+|deep\s+)?"
_CAMERA = r"(?:the\s+)?(?:camera|lens|viewer|spectator|picture\s+plane)(?:\s+lens)?"
# (pattern, layer, removable): removable cues are cut out of the phrase once they have placed it.
_CUE_SPECS: list[tuple[str, str, bool]] = [
    (rf"\(\s*(?:in\s+(?:the\s+)?)?{_LAYER_WORD['foreground']}\s*\)", "foreground", True),
    (rf"\(\s*(?:in\s+(?:the\s+)?)?{_LAYER_WORD['midground']}\s*\)", "midground", True),
    (rf"\(\s*(?:in\s+(?:the\s+)?)?{_LAYER_WORD['background']}\s*\)", "background", True),
    (rf"\b{_PREP}{_LAYER_WORD['foreground']}\b", "foreground", True),
    (rf"\b{_PREP}{_LAYER_WORD['midground']}\b", "midground", True),
    (rf"\b{_PREP}{_LAYER_WORD['background']}\b", "background", True),
    (r"\b(?:in|at)\s+the\s+(?:middle|mid)[\s-]distance\b", "midground", True),
    (r"\bmid[\s-]distance\b", "midground", True),
    (r"\b(?:at\s+|on\s+|in\s+)?cent(?:er|re)[\s-]stage\b", "midground", True),
    (r"\b(?:at|in)\s+the\s+(?:very\s+|dead\s+)?cent(?:er|re)\s+of\s+(?:the\s+)?(?:frame|scene|composition|image|picture|shot)\b",
     "midground", True),
    (r"\b(?:at|in)\s+the\s+(?:very\s+|dead\s+)?cent(?:er|re)\b(?=\s*(?:[,:;—–]|$))", "midground", True),
    (r"\b(?:a\s+(?:little|bit|touch)|slightly|just|somewhat|a\s+step)\s+(?:further|farther)\s+back\b", "midground", True),
    (rf"\b(?:right\s+|just\s+|pressed\s+|squarely\s+|up\s+)?(?:against|close\s+to|near|next\s+to|touching|"
     rf"(?:right\s+)?in\s+front\s+of|closest\s+to|nearest(?:\s+to)?)\s+{_CAMERA}\b", "foreground", True),
    (r"\b(?:in|at)\s+the\s+(?:very\s+)?front\b(?!\s+of)", "foreground", True),
    (r"\bin\s+front\b(?!\s+of)", "foreground", True),
    (r"\bbehind\s+(?:them|him|her|it|everything|all\s+(?:of\s+)?this|the\s+(?:figures?|subjects?|characters?|pair|"
     r"couple|people|man|woman|men|women|protagonists?|heroe?s?|heroine|dancers?|lovers?|scene))\b", "background", True),
    (r"\b(?:far|farther|further)\s+(?:away|off|behind)\b", "background", True),
    (r"\b(?:in|at|to)\s+the\s+(?:far\s+)?(?:distance|back)\b", "background", True),
    (r"\bon\s+the\s+(?:far\s+|distant\s+)?horizon\b", "background", True),
    (r"\b(?:much\s+|far\s+)?(?:further|farther)\s+back\b", "background", True),
    (r"\bas\s+(?:a|the)\s+backdrop\b", "background", True),
    # A leading "Far beyond the gate," says where the rest is and is not itself something to draw.
    # (The phrase is cut at its comma already: up to four words after the preposition and nothing else.)
    (rf"^\W*(?:(?:{'|'.join(plan_words.LOCATIVE_ADVERBS)})\s+)?(?:{'|'.join(plan_words.LOCATIVE_LEADS)})"
     rf"(?:\s+[\w'’-]+){{1,4}}(?=\s*(?:,|$))", "background", True),
    # A bare layer word ("sharp foreground texture", "foreground:") places the phrase but stays in it,
    # except when it is followed by a colon or dash (a label).
    (rf"\b{_LAYER_WORD['foreground']}\b", "foreground", False),
    (rf"\b{_LAYER_WORD['midground']}\b", "midground", False),
    (rf"\b{_LAYER_WORD['background']}\b", "background", False),
]
_CUE_RES = [(re.compile(p, re.IGNORECASE), layer, removable) for p, layer, removable in _CUE_SPECS]
_LABEL_TAIL_RE = re.compile(r"^\s*[:—–-]")


def _find_cue(text: str) -> tuple[str, int, int, bool] | None:
    """The first position cue in a text: (layer, start, end, removable)."""
    best = None
    for rx, layer, removable in _CUE_RES:
        m = rx.search(text)
        if m and (best is None or m.start() < best[1] or (m.start() == best[1] and m.end() > best[2])):
            best = (layer, m.start(), m.end(), removable or bool(_LABEL_TAIL_RE.match(text[m.end():])))
    return best


_ONLY_LAYER_WORD_RE = re.compile(
    r"^\W*(?:the\s+)?(?:very\s+|extreme\s+|far\s+)?(?:fore|mid|middle|back)[\s-]?ground(?:\s+(?:layer|plane|elements|details))?\W*$",
    re.IGNORECASE)


def _remove_cues(text: str) -> str:
    if _ONLY_LAYER_WORD_RE.match(text):
        return ""
    for rx, _, removable in _CUE_RES:
        if removable:
            text = rx.sub(" ", text)
        else:
            text = re.sub(rx.pattern + r"\s*[:—–-]", " ", text, flags=re.IGNORECASE)
    return text


# ---------------------------------------------------------------------------------------------------------------
# Style, palette, light

_COLOR_ALIASES: dict[str, str] = {
    "gold": "gold", "golden": "gold", "gilded": "gold", "gilt": "gold", "sunrise gold": "sunrise gold",
    "amber": "amber", "yellow": "yellow", "ochre": "ochre", "orange": "orange", "copper": "copper",
    "bronze": "bronze", "brass": "brass", "rust": "rust", "red": "red", "carmine": "carmine",
    "crimson": "crimson", "scarlet": "scarlet", "vermilion": "vermilion", "vermillion": "vermilion",
    "ruby": "ruby", "burgundy": "burgundy", "maroon": "maroon", "pink": "pink", "magenta": "magenta",
    "fuchsia": "magenta", "purple": "purple", "violet": "violet", "lavender": "lavender", "indigo": "indigo",
    "blue": "blue", "velvet blue": "velvet blue", "midnight blue": "midnight blue", "midnight": "midnight blue",
    "navy": "navy", "cobalt": "cobalt", "azure": "azure", "sapphire": "sapphire", "sky blue": "sky blue",
    "cyan": "cyan", "teal": "teal", "turquoise": "turquoise", "green": "green", "emerald": "emerald",
    "jade": "jade", "olive": "olive", "silver": "silver", "silvery": "silver", "chrome": "chrome",
    "white": "white", "ivory": "ivory", "black": "black", "ebony": "ebony", "grey": "grey", "gray": "grey",
    "brown": "brown", "sepia": "sepia", "umber": "umber",
}
_COLOR_RE_TEXT = "|".join(
    sorted((re.escape(k).replace(r"\ ", r"[\s-]") for k in _COLOR_ALIASES), key=len, reverse=True))
_COLOR_FIND_RE = re.compile(rf"(?<!\w)(?:at\s+|past\s+|after\s+|before\s+|until\s+|till\s+)?({_COLOR_RE_TEXT})(?![\w])",
                            re.IGNORECASE)
_LIGHT_ADJ = (r"(?:warm|cool|cold|hot|soft|hard|harsh|bold|deep|bright|pale|dim|saturated|muted|electric|neon|glowing|"
              r"radiant|rich|vivid|vibrant|subtle|faint|strong|dramatic|sunrise|sunset|dawn|dusk|moonlit|icy|fiery)")
_COLORISH = rf"(?:(?:{_LIGHT_ADJ})[\s-]+){{0,2}}(?:{_COLOR_RE_TEXT})|{_LIGHT_ADJ}"
_COLOR_PAIR = rf"(?:{_COLORISH})(?:\s*(?:,|and|&)\s*(?:{_COLORISH}))*"
"""One colour, or a run of them ("neon cyan and rust"): a grade or palette keeps all of its colours."""
_ATMOSPHERE_PREP = rf"(?:{'|'.join(plan_words.ATMOSPHERE_PREPOSITIONS)})\s+(?:the\s+)?"
_ATMOSPHERE = (rf"(?:{_ATMOSPHERE_PREP})?(?:(?:{'|'.join(plan_words.ATMOSPHERE_ADJECTIVES)})[\s-]+){{0,2}}"
               rf"(?:{'|'.join(plan_words.ATMOSPHERE_NOUNS)})\b")
_ATMOSPHERE_PREP_RE = re.compile(rf"^{_ATMOSPHERE_PREP}", re.IGNORECASE)
_STYLE_SPECS: list[tuple[str, int]] = [
    # lighting (0)
    (rf"(?:(?:{_LIGHT_ADJ}|{_COLOR_RE_TEXT})[\s-]+){{0,3}}rim[\s-]?(?:light(?:ing|s)?|lit)\b", 0),
    (rf"(?:(?:{_LIGHT_ADJ}|{_COLOR_RE_TEXT})[\s-]+){{0,2}}(?:back[\s-]?lit|back[\s-]?light(?:ing)?|top[\s-]?lit|"
     rf"side[\s-]?lit|under[\s-]?lit)\b", 0),
    (r"(?:(?:high|low)[\s-]contrast\s+|dramatic\s+|soft\s+|deep\s+)?chiaroscuro\b", 0),
    # light and air the whole scene shares: "under moonlight", "soft fog"
    (_ATMOSPHERE, 0),
    (r"volumetric\s+(?:light(?:ing)?|fog|rays|haze|god\s+rays)\b", 0),
    (r"god[\s-]?rays\b", 0),
    (r"lens\s+flares?\b", 0),
    (r"(?:cinematic|dramatic|studio|moody|natural|ambient|diffused?|neon|candle|golden[\s-]hour|rembrandt|split|"
     r"three[\s-]point|low[\s-]key|high[\s-]key|soft|hard|harsh)\s+light(?:ing)?\b", 0),
    (rf"(?:{_COLORISH})(?:\s*(?:and|&)\s*(?:{_COLORISH}))*\s+(?:light(?:ing)?|glow|highlights?|tones?|hues?|"
     rf"shadows?|gleams?)\b", 0),
    (r"(?:golden|blue|magic)\s+hour\b", 0),
    (r"(?:high|low)[\s-]contrast\b", 0),
    (r"(?:low|high)[\s-]key\b", 0),
    # colour grade and palette (1)
    (rf"(?:(?:{_COLOR_PAIR}|teal\s+and\s+orange|cinematic|filmic|film|warm|cool)[\s-]+)?colou?r[\s-]?grad(?:e|ed|ing)\b", 1),
    (rf"(?:(?:{_COLOR_PAIR}|pastel|earthy|monochrome|monochromatic|limited|jewel[\s-]toned?)\s+)?(?:colou?r\s+)?palette\b", 1),
    (r"teal\s+and\s+orange\b", 1),
    (r"(?:de)?saturated\s+colou?rs?\b", 1),
    (r"film\s+grain\b", 1),
    (r"sepia\s+tones?\b", 1),
    # medium (2)
    (r"(?:(?:surreal|digital|fantasy|editorial|botanical|vintage|detailed|ink|book|concept|fine|gothic|baroque|"
     r"whimsical|storybook|children's)\s+)?illustration\b", 2),
    (r"(?:oil|acrylic|watercolou?r|gouache|digital|matte|baroque|renaissance|tempera|ink|fantasy|surreal|"
     r"romantic|impressionist|expressionist|academic)\s+painting\b", 2),
    (r"watercolou?r\b", 2),
    (r"gouache\b", 2),
    (r"(?:digital|concept|fine|pixel|line|vector|fantasy)\s+art\b", 2),
    (r"(?:35|50|85)\s?mm(?:\s+(?:film|lens|photo(?:graph)?))?\b", 2),
    (r"film\s+still\b", 2),
    (r"(?:analog|analogue|film|studio|fashion|editorial|cinematic)\s+photo(?:graph|graphy)?\b", 2),
    (r"photo[\s-]?real(?:istic|ism)?\b", 2),
    (r"hyper[\s-]?real(?:istic|ism)?\b", 2),
    (r"(?:3d|octane|cgi)\s+render\b", 2),
    (r"unreal\s+engine(?:\s+\d)?\b", 2),
    (r"(?:anime|manga)(?:\s+style)?\b", 2),
    (r"comic[\s-]book(?:\s+style)?\b", 2),
    (r"(?:copper[\s-]?plate\s+)?(?:engraving|etching|lithograph|woodcut|linocut)\b", 2),
    (r"(?:charcoal|pencil|ink)\s+(?:drawing|sketch)\b", 2),
    (r"art\s+nouveau\b", 2),
    (r"ukiyo[\s-]?e\b", 2),
    (r"surrealis[mt]\b", 2),
    # quality (3)
    (r"masterpiece(?:\s+(?:finish|quality))?\b", 3),
    (r"best\s+quality\b", 3),
    (r"high(?:est)?\s+quality\b", 3),
    (r"(?:ultra|hyper|highly|extremely|insanely|very)[\s-]?detailed\b", 3),
    (r"intricate(?:ly)?\s+detail(?:s|ed)?\b", 3),
    (r"(?:extreme|exquisite|meticulous|fine|rich|incredible)\s+detail(?:s|ed)?\b", 3),
    (r"(?:4|8|16)k(?:\s+(?:resolution|uhd))?\b", 3),
    (r"uhd\b", 3),
    (r"hdr\b", 3),
    (r"sharp\s+focus\b", 3),
    (r"high[\s-]fidelity\b", 3),
    (r"high[\s-]resolution\b", 3),
    (r"(?:gallery|museum)[\s-]quality\b", 3),
    (r"award[\s-]winning\b", 3),
    (r"trending\s+on\s+artstation\b", 3),
    (r"cinematic(?:\s+(?:composition|look|still|shot|framing|feel|quality|atmosphere|mood))?\b", 3),
    (r"epic\s+composition\b", 3),
]
_STYLE_RES = [(re.compile(r"(?<![\w-])" + p, re.IGNORECASE), cat) for p, cat in _STYLE_SPECS]
# Every style pattern contains one of these; phrases without any skip the full set of patterns.
_STYLE_HINT_RE = re.compile(
    r"light|lit\b|chiaroscuro|volumetric|rays|flare|hour|contrast|key|grad|palette|teal|saturat|grain|sepia|"
    r"illustrat|painting|watercolo|gouache|art\b|\dk\b|mm\b|film|photo|real|render|engine|anime|manga|comic|"
    r"engrav|etching|lithograph|woodcut|linocut|drawing|sketch|nouveau|ukiyo|surreal|masterpiece|quality|detail|"
    r"uhd|hdr|focus|fidelity|resolution|award|artstation|cinematic|composition|glow|highlight|tone|hue|shadow|"
    rf"gleam|{'|'.join(plan_words.ATMOSPHERE_NOUNS)}", re.IGNORECASE)

_LIGHT_FROM_RE = re.compile(
    r"\b(?:light|lit|lighting|illuminated|sunlight|sun|moonlight|glow|rays?|beams?|lamp(?:light)?|spotlight|"
    r"key\s+light|window\s+light)\b[^.;\n]{0,40}?\bfrom\s+(?:the\s+)?(?:upper\s+|top\s+|far\s+)?"
    r"(left|right|above|top|overhead|behind|back|front|camera)\b",
    re.IGNORECASE,
)
_LIGHT_SIDE_RE = re.compile(r"\b(left|right)[\s-](?:side[\s-])?(?:lit|light(?:ing)?)\b", re.IGNORECASE)
_LIGHT_BACK_RE = re.compile(r"\b(?:back[\s-]?lit|back[\s-]?light(?:ing)?|rim[\s-]?(?:light|lit)|contre[\s-]jour|"
                            r"silhouetted\s+against)", re.IGNORECASE)
_LIGHT_FRONT_RE = re.compile(r"\b(?:front[\s-]?lit|frontal\s+light(?:ing)?|front\s+light(?:ing)?|"
                             r"(?:on[\s-]camera\s+)?flash\s+photography)", re.IGNORECASE)
_LIGHT_TOP_RE = re.compile(r"\b(?:top[\s-]?lit|overhead\s+light(?:ing)?|skylight|light\s+from\s+above)",
                           re.IGNORECASE)
_DIRECTION_WORDS = {"left": "left", "right": "right", "above": "top", "top": "top", "overhead": "top",
                    "behind": "back", "back": "back", "front": "front", "camera": "front"}


def _light_direction(text: str) -> str:
    m = _LIGHT_FROM_RE.search(text) or _LIGHT_SIDE_RE.search(text)
    if m:
        return _DIRECTION_WORDS[m.group(1).lower()]
    for rx, direction in ((_LIGHT_BACK_RE, "back"), (_LIGHT_FRONT_RE, "front"), (_LIGHT_TOP_RE, "top")):
        if rx.search(text):
            return direction
    return "top"


def _palette(text: str, style_terms: list[str], limit: int = 6) -> tuple[str, ...]:
    weight: dict[str, float] = {}
    first: dict[str, int] = {}
    for m in _COLOR_FIND_RE.finditer(text):
        if m.group(0).lower().startswith(("at ", "past ", "after ", "before ", "until ", "till ")) \
                and m.group(1).lower() == "midnight":
            continue  # "at midnight" is a time, not a colour
        name = _COLOR_ALIASES[re.sub(r"[\s-]+", " ", m.group(1).lower())]
        weight[name] = weight.get(name, 0.0) + 1.0
        first.setdefault(name, m.start())
    for term in style_terms:
        for m in _COLOR_FIND_RE.finditer(term):
            name = _COLOR_ALIASES[re.sub(r"[\s-]+", " ", m.group(1).lower())]
            if name in weight:
                weight[name] += 2.0
    ranked = sorted(weight, key=lambda k: (-weight[k], first[k]))
    return tuple(ranked[:limit])


# ---------------------------------------------------------------------------------------------------------------
# Figures

_NUMBER_WORDS = {"one": 1, "a": 1, "an": 1, "single": 1, "lone": 1, "two": 2, "both": 2, "three": 3, "four": 4,
                 "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "several": 3, "many": 4}
_PEOPLE_PLURAL = (r"figures|people|persons|characters|women|men|girls|boys|children|kids|dancers|lovers|warriors|"
                  r"knights|friends|sisters|brothers|twins|humans|athletes|guardians|angels|souls|strangers|monks|"
                  r"nuns|priests|soldiers|heroes|gods|goddesses|travell?ers|musicians|performers|acrobats|"
                  r"celebrants|mourners|queens|kings|witches|dreamers|bodies|beings|creatures|silhouettes")
_COUNT_RE = re.compile(
    rf"\b(two|three|four|five|six|seven|eight|nine|ten|both|several|\d{{1,2}})\s+(?:[\w’'-]+\s+){{0,2}}?({_PEOPLE_PLURAL})\b",
    re.IGNORECASE)
_PAIR_RE = re.compile(
    rf"\b(?:a|the)\s+(?:pair|couple|duo)\s+of\s+(?:[\w’'-]+\s+){{0,2}}?(?:{_PEOPLE_PLURAL})\b|\b(?:a|the)\s+"
    r"(?:couple|duo)\b|\bboth\s+of\s+them\b|\bthey\s+both\b|\bthe\s+(?:twins|lovers)\b|\beach\s+other\b",
    re.IGNORECASE)
_TRIO_RE = re.compile(r"\b(?:a|the)\s+trio\b", re.IGNORECASE)
_QUARTET_RE = re.compile(r"\b(?:a|the)\s+quartet\b", re.IGNORECASE)
_PLURAL_RE = re.compile(rf"\b(?:{_PEOPLE_PLURAL})\b", re.IGNORECASE)
_NAME_RE = re.compile(r"(?<![.!?;:]\s)(?<=\s)the\s+([A-Z][a-z]{2,}(?:er|or|ess|ist|ian|ant|ent|ee|ic|ling))(?:['’]s)?\b")


def _named_characters(text: str) -> list[str]:
    """Capitalised role names used like proper names ("the Dreamer", "the Lover"), first mention first."""
    names: list[str] = []
    for m in _NAME_RE.finditer(text):
        w = m.group(1)
        stem = _stem(w)
        if any(layer != "midground" for layer, _ in _LEXICON.get(stem, [])):
            continue  # "the Tower" is architecture, not a character
        if stem not in names:
            names.append(stem)
    return names


def _explicit_count(text: str) -> int | None:
    m = _COUNT_RE.search(text)
    counts = []
    if m:
        word = m.group(1).lower()
        counts.append((m.start(), int(word) if word.isdigit() else _NUMBER_WORDS[word]))
    for rx, n in ((_PAIR_RE, 2), (_TRIO_RE, 3), (_QUARTET_RE, 4)):
        mm = rx.search(text)
        if mm:
            counts.append((mm.start(), n))
    if not counts:
        return None
    return min(counts)[1]


def _count_figures(midground_text: str, full_text: str, names: list[str]) -> int:
    n = _explicit_count(midground_text)
    if n is None and len(names) >= 2:
        n = len(names)
    if n is None and _PLURAL_RE.search(midground_text):
        n = 2
    if n is None:
        n = _explicit_count(full_text)
    return max(1, min(4, n or 1))


# ---------------------------------------------------------------------------------------------------------------
# Markdown, sections, clauses, phrases

_HEADING_RE = re.compile(r"^\s{0,3}#{1,6}\s*(.*?)\s*#*\s*$")
_BULLET_RE = re.compile(r"^\s*(?:[-*+•·]|\d{1,3}[.)])\s+")
_RULE_RE = re.compile(r"^\s*(?:[-*_=]\s*){3,}$")
_STYLE_LABEL = r"style|lighting|light|colou?rs?|colou?r\s+grade|colou?r\s+grading|palette|medium|quality|render(?:ing)?"
_LABEL_RE = re.compile(
    rf"^\s*(?:\*\*|__)?\s*(?:the\s+)?(?P<label>fore[\s-]?ground|back[\s-]?ground|mid[\s-]?ground|middle[\s-]?ground|"
    rf"{_STYLE_LABEL})(?:\s+(?:layer|plane|elements|details))?\s*(?:\*\*|__)?\s*(?:[:—–]|-\s|\*\*\s*[:—–])\s*(?:\*\*|__)?(?P<rest>.*)$",
    re.IGNORECASE)


def _label_layer(label: str) -> str:
    low = re.sub(r"[\s-]+", "", label.lower())
    if low.startswith("fore"):
        return "foreground"
    if low.startswith("back"):
        return "background"
    if low.startswith(("mid", "middle")):
        return "midground"
    return "style"


def _strip_inline_markdown(text: str) -> str:
    text = re.sub(r"!?\[([^\]\n]*)\]\([^)\n]*\)", r"\1", text)  # links and images keep their text
    text = text.replace("**", "").replace("__", "").replace("`", "")
    text = re.sub(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])", r"\1", text)
    return text.replace("*", " ")


@dataclass
class _Segment:
    text: str
    section: str | None  # a layer name, "style", or None


def _segments(prompt: str) -> list[_Segment]:
    """Lines with the section (heading or label) they belong to, markdown stripped."""
    out: list[_Segment] = []
    heading_section: str | None = None
    label_section: str | None = None
    for raw in prompt.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not raw.strip():
            label_section = None  # a blank line ends a stand-alone label's block
            continue
        if _RULE_RE.match(raw):
            continue
        h = _HEADING_RE.match(raw)
        if h:
            title = _strip_inline_markdown(h.group(1)).strip()
            lm = _LABEL_RE.match(title + ":")
            cue = _find_cue(title)
            if lm and not lm.group("rest").strip():
                heading_section = _label_layer(lm.group("label"))
            elif cue is not None and len(_content_words(_remove_cues(title))) <= 2:
                heading_section = cue[0]
            else:
                heading_section = None
                if title:
                    out.append(_Segment(title, None))
            label_section = None
            continue
        line = _BULLET_RE.sub("", raw)
        line = re.sub(r"^\s*>\s?", "", line)
        lm = _LABEL_RE.match(line)
        if lm:
            layer = _label_layer(lm.group("label"))
            rest = _strip_inline_markdown(lm.group("rest")).strip()
            if not rest:
                label_section = layer
                continue
            if layer == "style":
                out.append(_Segment(rest, "style"))
                continue
            # "Foreground: shards. A knight." - an inline label works like an opening cue ("In the
            # foreground, ..."), so the sentences after it on the line are placed by their words again.
        text = _strip_inline_markdown(line).strip()
        if text:
            out.append(_Segment(text, label_section or heading_section))
    return out


_OPENERS = {"(": ")", "[": "]", "{": "}", "“": "”", "«": "»"}
_CLOSERS = {v: k for k, v in _OPENERS.items()}


_BRACKET_CHARS_RE = re.compile(r'[()\[\]{}“”«»"]')


def _bracket_pairs(text: str) -> list[tuple[int, int]]:
    """(open, close) positions of the brackets that have a partner; a closer drops any opener left inside."""
    pairs: list[tuple[int, int]] = []
    stack: list[tuple[str, int]] = []
    for m in _BRACKET_CHARS_RE.finditer(text):
        i, ch = m.start(), m.group()
        if ch in _OPENERS:
            stack.append((ch, i))
        elif ch in _CLOSERS:
            for k in range(len(stack) - 1, -1, -1):
                if stack[k][0] == _CLOSERS[ch]:
                    pairs.append((stack[k][1], i))
                    del stack[k:]
                    break
    return pairs


def _depths(text: str) -> list[int]:
    """Bracket depth at each character; unmatched brackets and quotes count as plain characters."""
    if not _BRACKET_CHARS_RE.search(text):
        return [0] * len(text)
    pairs = _bracket_pairs(text)
    quotes = [m.start() for m in re.finditer('"', text)]
    if len(quotes) % 2 == 0:
        pairs.extend(zip(quotes[::2], quotes[1::2]))
    delta = [0] * (len(text) + 1)
    for a, b in pairs:
        delta[a + 1] += 1
        delta[b] -= 1
    depth, out = 0, []
    for d in delta[:-1]:
        depth += d
        out.append(depth)
    return out


_SPLIT_CHARS: dict[str, re.Pattern] = {}


def _split_at(text: str, is_cut: Callable[[str, int], int], chars: str) -> list[str]:
    """Split at the characters in `chars` where is_cut(text, i) gives a separator length (0: no cut),
    never inside brackets or paired quotes."""
    rx = _SPLIT_CHARS.get(chars)
    if rx is None:
        rx = _SPLIT_CHARS[chars] = re.compile(f"[{re.escape(chars)}]")
    parts, start = [], 0
    depth: list[int] | None = None
    for m in rx.finditer(text):
        i = m.start()
        if i < start:
            continue
        if depth is None:
            depth = _depths(text)
        if depth[i] == 0:
            n = is_cut(text, i)
            if n:
                parts.append(text[start:i])
                start = i + n
    parts.append(text[start:])
    return parts


_ABBREVIATIONS = ("e.g", "i.e", "vs", "mr", "mrs", "ms", "dr", "st", "etc", "approx", "no", "fig")
_SENTENCE_CHARS = ".!?…。！？"
_PHRASE_CHARS = ":—–-"


def _sentence_cut(text: str, i: int) -> int:
    ch = text[i]
    if ch in "!?…。！？" or ch == ";":
        return 1
    if ch == "." and (i + 1 == len(text) or text[i + 1].isspace()):
        before = re.search(r"([\w.]+)$", text[max(0, i - 12):i])
        if before and before.group(1).lower() in _ABBREVIATIONS:
            return 0
        return 1
    return 0


def _phrase_cut(text: str, i: int) -> int:
    ch = text[i]
    if ch == ":":
        return 0 if (0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit()) else 1
    if ch == "—":
        return 1
    if ch == "–":
        return 1 if 0 < i < len(text) - 1 and (text[i - 1].isspace() or text[i + 1].isspace()) else 0
    if ch == "-" and i > 0 and text[i - 1].isspace():  # " - " and " -- " used as dashes
        n = 2 if text.startswith("--", i) else 1
        return n if i + n == len(text) or text[i + n].isspace() else 0
    return 0


def _comma_cut(text: str, i: int) -> int:
    return 0 if (0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit()) else 1


_EDGE_PUNCT = " \t,;:.!?—–-_/\\|~·•…"


def _balance(text: str) -> str:
    """Drop brackets and quotes that have no partner, so a cut phrase never leaves one open."""
    if not _BRACKET_CHARS_RE.search(text):
        return text
    depth_pairs = {i for pair in _bracket_pairs(text) for i in pair}
    quotes = [i for i, ch in enumerate(text) if ch == '"']
    keep_quotes = set(quotes if len(quotes) % 2 == 0 else quotes[:-1])
    out = []
    for i, ch in enumerate(text):
        if (ch in _OPENERS or ch in _CLOSERS) and i not in depth_pairs:
            continue
        if ch == '"' and i not in keep_quotes:
            continue
        out.append(ch)
    return "".join(out)


def _clean(text: str) -> str:
    text = _balance(text)
    text = re.sub(r"\(\s*\)|\[\s*\]|“\s*”", " ", text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,;:.!?)\]”»])", r"\1", text)
    text = re.sub(r"([(\[“«])\s+", r"\1", text)
    text = text.strip(_EDGE_PUNCT)
    prev = None
    while prev != text:
        prev = text
        text = _LEADING_GLUE_RE.sub("", text).strip(_EDGE_PUNCT)
    return text


def _is_glue(text: str) -> bool:
    """True for leftovers with no content worth a prompt slot ("and", "cutting through", "")."""
    return len([w for w in _content_words(text) if len(w) > 1]) < 1 or (
        len(_content_words(text)) < 2 and _max_weight(text) == 0 and len(_tokens(text)) <= 2)


_ADJECTIVES = set(_words("""tiny small little big large huge giant vast minuscule miniature old young ancient dark bright
    deep dense thick thin long short tall soft hard warm cool cold hot wet dry rich pale sensual triumphant intimate
    frozen calm immovable single quiet loud strange weird eerie lush rough smooth sharp blunt heavy light gentle fierce
    wild serene silent lonely lone bare empty full broken shattered torn worn new faint subtle bold vivid stark
    crisp hazy misty golden silvery velvety glossy matte ornate delicate fragile massive enormous immense colossal
    monumental towering grand great mighty humble noble regal sacred holy ruined twisted tangled"""))
_NOUN_EXCEPTIONS = set(_words("""metal crystal music moment element garment relic servant festival pedestal signal
    animal mineral ritual journal canal medal rival arrival seed need bed shed sled reed steed thread bread head
    hundred""")) | {w for w in _LEXICON}
_ADJ_SUFFIXES = ("al", "ous", "ive", "ic", "ful", "less", "able", "ible", "ant", "ent", "ed", "ish", "ary")


def _adjective_like(word: str) -> bool:
    w = word.lower()
    last = w.rsplit("-", 1)[-1]
    if w in _ADJECTIVES or last in _ADJECTIVES or w in _COLOR_ALIASES or last in _COLOR_ALIASES:
        return True
    if w in _NOUN_EXCEPTIONS or _stem(w) in _NOUN_EXCEPTIONS or _stem(last) in _NOUN_EXCEPTIONS:
        return False
    if "-" in w:  # "heavy-eyed", "bare-shouldered", "half-slipped"
        return w.endswith(_ADJ_SUFFIXES)
    return len(w) >= 5 and w.endswith(_ADJ_SUFFIXES)


def _standalone(piece: str) -> bool:
    """Whether a comma piece can be a phrase of its own (not a lone adjective or a bare "on the left")."""
    toks = _WORD_RE.findall(piece)
    last = re.findall(r"[^\W\d_]+(?:[-'’][^\W\d_]+)*", piece)
    if not toks or (last and _adjective_like(last[-1])):
        return False
    return len(_content_words(piece)) >= 2 or _max_weight(piece) >= 1.0


def _parallel(a: str, b: str) -> bool:
    wa, wb = a.split(), b.split()
    return 2 <= len(wa) <= 3 and 2 <= len(wb) <= 3 and wa[0].lower() == wb[0].lower() and \
        wa[0].lower() not in ("a", "an", "the")


def _comma_pieces(text: str) -> list[str]:
    """Split at top-level commas; a piece that cannot stand alone ("a radiant,") joins the next one."""
    out: list[str] = []
    buf = ""
    for p in _split_at(text, _comma_cut, ","):
        buf = f"{buf},{p}" if buf else p
        if _standalone(buf):
            out.append(buf)
            buf = ""
    if buf:
        if out and _clean(buf) and not _standalone(buf) and len(_content_words(buf)) <= 2:
            out[-1] = f"{out[-1]},{buf}"
        else:
            out.append(buf)
    # "half celebrant, half shadow": short pieces built the same way read as one.
    merged: list[str] = []
    for piece in out:
        if merged and _parallel(merged[-1].rsplit(",", 1)[-1], piece):
            merged[-1] = f"{merged[-1]},{piece}"
        else:
            merged.append(piece)
    out = merged
    # A closing "..., and skin" is the tail of the list before it, not a subject of its own.
    if len(out) > 1 and re.search(r"(?:^|,)\s*(?:and|or)\s", out[-1]) and len(_content_words(out[-1])) <= 2:
        tail = out.pop()
        out[-1] = f"{out[-1]},{tail}"
    return out


_PAREN_RE = re.compile(r"\(([^()]*)\)|\[([^\[\]]*)\]")


@dataclass
class _Phrase:
    text: str
    index: int
    sentence: int
    clause: int
    part_of: int | None = None  # index of the phrase a parenthetical belongs to
    section: str | None = None
    cue: str | None = None
    cue_leading: bool = False
    cue_only: bool = False
    cue_bare: bool = False  # the cue is a layer word used as an adjective ("sharp foreground texture")
    layer: str = "background"
    tier: int = 1
    relevance: float = 0.0


def _split_phrases(segments: list[_Segment]) -> list[_Phrase]:
    """Lines -> sentences -> clauses (at ";") -> phrases (at ":", dashes and commas)."""
    phrases: list[_Phrase] = []
    sentence = 0
    clause_no = 0
    for seg in segments:
        for sent in _split_at(seg.text, _sentence_cut, _SENTENCE_CHARS):
            if not sent.strip(_EDGE_PUNCT):
                continue
            sentence += 1
            section = seg.section
            label = _LABEL_RE.match(sent)
            if label:  # "Lighting: soft fog" in the middle of a line labels its own sentence
                section, sent = _label_layer(label.group("label")), label.group("rest")
            for clause in _split_at(sent, _sentence_cut, ";"):
                if not clause.strip(_EDGE_PUNCT):
                    continue
                clause_no += 1
                for part in _split_at(clause, _phrase_cut, _PHRASE_CHARS):
                    for piece in _comma_pieces(part):
                        _add_phrase(phrases, piece, sentence, clause_no, section)
    return phrases


def _add_phrase(phrases: list[_Phrase], piece: str, sentence: int, clause: int, section: str | None) -> None:
    text = _clean(piece)
    if not text:
        return
    parentheticals: list[str] = []
    if len(text.split()) > 16:
        def pull(m: re.Match) -> str:
            inner = (m.group(1) if m.group(1) is not None else m.group(2)).strip()
            if len(inner.split()) >= 3:
                parentheticals.append(inner)
                return " "
            return m.group(0)

        main = _clean(_PAREN_RE.sub(pull, text))
        text = main or text
        if not main:
            parentheticals.clear()
    head = len(phrases)
    phrases.append(_Phrase(text, head, sentence, clause, section=section))
    for inner in parentheticals:
        pieces = _comma_pieces(inner) if len(inner.split()) > 10 else [inner]
        for p in pieces:
            p = _clean(p)
            if p:
                phrases.append(_Phrase(p, len(phrases), sentence, clause, part_of=head, section=section))


# ---------------------------------------------------------------------------------------------------------------
# Style and negative phrases

_NEGATIVE_RE = re.compile(r"^(?:no|without|avoid(?:ing)?|free\s+of)\s+(.+)$", re.IGNORECASE)
_QUALITY_NEGATIVES = re.compile(r"\b(?:text|watermarks?|signatures?|logos?|blur(?:ry)?|noise|artifacts?|jpeg|"
                                r"lowres|low\s+quality|deformed|distorted|extra\s+(?:limbs|fingers)|cropped)\b",
                                re.IGNORECASE)


def _extract_style(phrases: list[_Phrase]) -> tuple[list[tuple[int, int, str]], list[str], list[str], list[_Phrase]]:
    """Cut style terms and negative phrases out of the phrases.

    Returns (style terms as (category, order, text), background negatives, all-layer negatives, the rest).
    """
    terms: list[tuple[int, int, str]] = []
    neg_bg: list[str] = []
    neg_all: list[str] = []
    kept: list[_Phrase] = []
    order = 0
    for ph in phrases:
        if ph.section == "style":
            t = _clean(ph.text).lower()
            if t:
                terms.append((0, order, t))
                order += 1
            continue
        neg = _NEGATIVE_RE.match(ph.text)
        if neg and ph.cue is None:
            term = _clean(neg.group(1))
            if term:
                (neg_all if _QUALITY_NEGATIVES.search(term) else neg_bg).append(term)
            continue
        text = ph.text
        spans: list[tuple[int, int, int]] = []
        if not _STYLE_HINT_RE.search(text):
            kept.append(ph)
            continue
        for rx, cat in _STYLE_RES:
            for m in rx.finditer(text):
                if m.end() > m.start() and not any(s < m.end() and m.start() < e for s, e, _ in spans):
                    spans.append((m.start(), m.end(), cat))
        if spans:
            spans.sort()
            rest = text
            for s, e, _ in reversed(spans):
                rest = rest[:s] + " " + rest[e:]
            rest = _clean(rest)
            if rest and (_is_glue(rest) or (spans[0][0] == 0 and rest.split()[0].lower() in
                                            plan_words.TRAILING_PLACE_PREPOSITIONS)):
                # "rim light cutting through cool blue shadow", "mist over the pines": the words around the
                # style terms belong to them, so the whole phrase is one term and nothing is lost.
                spans, rest = [(0, len(text), spans[0][2])], ""
            for s, e, cat in spans:
                terms.append((cat, order, re.sub(r"\s+", " ", text[s:e]).strip().lower()))
                order += 1
            if not rest or _is_glue(rest):
                continue
            ph.text = rest
        kept.append(ph)
    return terms, neg_bg, neg_all, kept


def _style_terms(found: list[tuple[int, int, str]]) -> list[str]:
    """De-duplicated style terms, lighting and colour first, quality last; contained terms dropped."""
    texts: list[str] = []
    for _, _, t in sorted(found):
        t = t.replace(",", " ").strip(_EDGE_PUNCT)
        t = _ATMOSPHERE_PREP_RE.sub("", re.sub(r"\s+", " ", t))
        if t and t not in texts:
            texts.append(t)
    out = []
    for t in texts:
        if any(t != o and re.search(rf"(?<![\w-]){re.escape(t)}(?![\w-])", o) for o in texts):
            continue
        out.append(t)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Placement

CARRY_IN_CLAUSE = 3.0
CARRY_ACROSS = 2.0
_TIE_ORDER = ("midground", "background", "foreground")


def _place(phrases: list[_Phrase], names: frozenset[str]) -> None:
    """Decide the layer, tier and relevance of every phrase (rules 6-9 of the module docstring)."""
    clause_text: dict[int, str] = {}
    clause_size: dict[int, int] = {}
    for ph in phrases:
        clause_text[ph.clause] = clause_text.get(ph.clause, "") + " " + ph.text
        clause_size[ph.clause] = clause_size.get(ph.clause, 0) + 1
    # Context: half the clause's mean score per phrase, a tie-breaker rather than a vote.
    clause_scores = {c: {k: v / clause_size[c] / 2 for k, v in _score(t, names).items()}
                     for c, t in clause_text.items()}

    by_clause: dict[int, list[_Phrase]] = {}
    for ph in phrases:
        if ph.part_of is None:
            by_clause.setdefault(ph.clause, []).append(ph)

    # Cues: find, remove, note whether the phrase was only a cue and whether the cue opens its clause.
    for ph in phrases:
        if ph.part_of is not None:
            continue
        cue = _find_cue(ph.text)
        if cue is None:
            continue
        layer, start, _, removable = cue
        ph.cue = layer
        ph.cue_bare = not removable
        siblings = by_clause[ph.clause]
        before = siblings[:siblings.index(ph)]
        words_before = len(ph.text[:start].split()) + sum(len(p.text.split()) for p in before)
        # "In the foreground, ...", "layer-cake depth: in the foreground, ..." and "...: in the midground a
        # figure strides" all open what follows them.
        ph.cue_leading = not ph.cue_bare and (
            (words_before <= 3 and all(p.cue is None for p in before)) or len(ph.text[:start].split()) <= 1)
        rest = _clean(_remove_cues(ph.text))
        if not _content_words(rest):
            ph.cue_only = True
        else:
            ph.text = rest

    # A cue-only phrase hands its cue to the next phrase of its clause, or back to the earlier ones.
    for ph in phrases:
        if not ph.cue_only:
            continue
        siblings = by_clause[ph.clause]
        k = siblings.index(ph)
        after = [p for p in siblings[k + 1:] if not p.cue_only]
        if after:
            if after[0].cue is None:
                after[0].cue = ph.cue
                after[0].cue_leading = ph.cue_leading
        else:
            for p in siblings[:k]:
                if p.cue is None:
                    p.cue = ph.cue
    live = [ph for ph in phrases if not ph.cue_only]

    n = max(1, len(live))
    by_index = {ph.index: ph for ph in live}
    section_cue: tuple[str, int, int] | None = None  # (layer, sentence, clause) of the last opening cue
    clause_cue: dict[int, str] = {}
    weak_clauses: set[int] = set()  # clauses whose only cue sits inside a phrase rather than opening the clause
    last_section: str | None = None
    for pos, ph in enumerate(live):
        if ph.section != last_section:
            section_cue, last_section = None, ph.section  # a heading or label starts afresh
        scores = _score(ph.text, names)
        context = clause_scores.get(ph.clause, {})
        for layer in LAYER_NAMES:
            scores[layer] += context.get(layer, 0.0)
        early = 0.5 * (1 - pos / n)
        # Long phrases collect more words from the lists; relevance is taken per ~4 content words so that
        # a compact phrase is not outranked by a rambling one.
        density = 1.0 / math.sqrt(max(1.0, len(_content_words(ph.text)) / 4.0))
        if ph.part_of is not None:
            parent = by_index.get(ph.part_of)
            if parent is not None:
                ph.layer, ph.tier, ph.relevance = parent.layer, max(parent.tier, 1), parent.relevance * 0.5
            else:
                ph.layer, ph.tier, ph.relevance = _best(scores, None), 2, 0.0
            continue
        if ph.cue is not None:
            ph.layer = ph.cue
            if ph.cue_bare and not ph.cue_leading:
                ph.tier, ph.relevance = 2, scores[ph.layer] * density + early
                continue
            ph.tier = 0 if ph.cue_leading else 1
            ph.relevance = scores[ph.layer] * density + 1.0 + early
            if ph.cue_leading:
                clause_cue[ph.clause] = ph.cue
                weak_clauses.discard(ph.clause)
                section_cue = (ph.cue, ph.sentence, ph.clause)
            else:
                # A cue inside or at the end of a phrase ("a ruined castle far behind") places that phrase;
                # the next items of a list are other things, so it leans them only weakly.
                clause_cue.setdefault(ph.clause, ph.cue)
                weak_clauses.add(ph.clause)
            continue
        if ph.section in LAYER_NAMES:
            ph.layer, ph.tier, ph.relevance = ph.section, 0, scores[ph.section] * density + early
            continue
        leaning, bonus, in_scope = None, 0.0, False
        if ph.clause in clause_cue:
            leaning = clause_cue[ph.clause]
            bonus = CARRY_IN_CLAUSE if ph.clause not in weak_clauses else CARRY_ACROSS * 0.5
            in_scope = section_cue is not None and section_cue[2] == ph.clause and section_cue[0] == leaning
        elif section_cue is not None:
            leaning = section_cue[0]
            if ph.sentence == section_cue[1]:
                bonus, in_scope = CARRY_ACROSS, True
            else:
                bonus = CARRY_ACROSS * 0.5 ** (ph.sentence - section_cue[1])
                if bonus < 0.2:
                    leaning, bonus = None, 0.0
        total = dict(scores)
        if leaning is not None:
            total[leaning] += bonus
        ph.layer = _best(total, leaning) if max(total.values()) > 0 else (leaning or "background")
        # The items listed after "In the foreground, ..." (same sentence) rank right after the cued phrase.
        ph.tier = 1 if in_scope and ph.layer == leaning and scores[leaning] > 0 else 2
        ph.relevance = scores[ph.layer] * density + (0.5 if ph.layer == leaning else 0.0) + early
        if ph.tier == 1 and section_cue is not None and ph.clause == section_cue[2]:
            ph.relevance += 1.0  # listed in the cue's own clause: closer to what the cue introduces
    phrases[:] = live


def _best(scores: dict[str, float], leaning: str | None) -> str:
    top = max(scores.values())
    tied = [layer for layer in LAYER_NAMES if scores[layer] >= top - 1e-9]
    if leaning in tied:
        return leaning
    return min(tied, key=_TIE_ORDER.index)


# ---------------------------------------------------------------------------------------------------------------
# Negative prompts and placeholders

_NEGATIVES: dict[str, tuple[str, ...]] = {
    "background": ("people", "person", "figure", "character", "face", "hands", "crowd", "foreground debris",
                   "objects close to the lens", "clutter in front", "text", "watermark", "blurry", "lowres"),
    "midground": ("background scenery", "landscape", "architecture", "room interior", "busy backdrop",
                  "foreground debris", "extra limbs", "deformed hands", "text", "watermark", "blurry", "lowres"),
    "foreground": ("background scenery", "landscape", "architecture", "room interior", "people", "figure", "face",
                   "busy backdrop", "text", "watermark", "blurry", "lowres"),
}


def _fit_terms(terms: list[str], budget: int, count: TokenCounter) -> tuple[list[str], list[str]]:
    """Greedy: the terms (in order) that fit the budget when joined with ", ", and the ones that did not."""
    kept, left = [], []
    for t in terms:
        if count(", ".join(kept + [t])) <= budget:
            kept.append(t)
        else:
            left.append(t)
    return kept, left


def _negative_prompt(name: str, user_bg: list[str], user_all: list[str], budget: int,
                     count: TokenCounter) -> tuple[str, list[str]]:
    user = list(user_all) + (list(user_bg) if name == "background" else [])
    terms: list[str] = []
    for t in user + list(_NEGATIVES[name]):
        if t.lower() not in (x.lower() for x in terms):
            terms.append(t)
    kept, left = _fit_terms(terms, budget, count)
    lost_user = [f"no {t}" for t in left if t in user]
    return ", ".join(kept), lost_user


def _placeholder(name: str, full_text: str, figures: int) -> str:
    """A default prompt for a layer no phrase landed in, made from the nouns of the scene."""
    if name == "midground":
        return "a figure" if figures == 1 else f"{['two', 'three', 'four'][figures - 2]} figures"
    found: list[str] = []
    previous = ""
    for m in _WORD_RE.finditer(full_text):
        w = m.group().lower()
        if any(layer == name and weight >= 1.0 for layer, weight in _lookup(w)) and w != name:
            if _stem(w) not in (_stem(f.split()[-1]) for f in found):
                # "a snowy valley": the word before a setting noun says what kind it is, unless it is a noun of
                # another layer or a function word
                qualified = previous and previous not in _STOPWORDS and not _lookup(previous)
                found.append(f"{previous} {w}" if qualified else w)
        previous = w
        if len(found) == 3:
            break
    if name == "background":
        outdoor = any(_stem(w) in _OUTDOOR for w in found)
        base = "vast open landscape" if outdoor else "vast interior architecture"
    else:
        base = "scattered debris and particles close to the lens"
    return ", ".join([base] + found)


# ---------------------------------------------------------------------------------------------------------------
# Budget


def _join(content: list[str], framing: str | None, style: list[str]) -> str:
    return ", ".join([*content, *([framing] if framing else []), *style])


_TRAILING_GLUE_RE = re.compile(
    r"(?:\s+(?:a|an|the|of|and|or|with|in|on|to|by|for|from|at|as|into|onto|its|their|his|her|that|which|while|like))+$",
    re.IGNORECASE)


def _truncate(phrase: str, fits: Callable[[str], bool]) -> tuple[str, str]:
    """The longest head of `phrase` (cut at a word boundary) that fits, and the cut remainder."""
    words = phrase.split()
    lo, hi = 0, len(words)
    while lo < hi:  # largest k with fits(words[:k])
        mid = (lo + hi + 1) // 2
        if fits(_clean(" ".join(words[:mid]))):
            lo = mid
        else:
            hi = mid - 1
    k = lo
    while k > 0:
        head = _clean(_TRAILING_GLUE_RE.sub("", " ".join(words[:k])))
        if head and fits(head):
            return head, " ".join(words[k:]).strip()
        k -= 1
    # Not even the first word fits: cut inside it, by characters.
    word = words[0] if words else ""
    lo, hi = 0, len(word)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(word[:mid]):
            lo = mid
        else:
            hi = mid - 1
    head = word[:lo]
    return head, phrase[len(head):].strip()


MAX_MISSES = 40
"""After this many phrases in a row that did not fit, the rest are recorded as dropped without trying."""


def _budget_layer(candidates: list[str], framing: str | None, style: list[str], budget: int,
                  count: TokenCounter) -> tuple[str, list[str], list[str], int]:
    """Fit one layer prompt: (prompt, kept phrases, dropped texts, tokens)."""
    def fits(content: list[str], fr: str | None, st: list[str]) -> bool:
        return count(_join(content, fr, st)) <= budget

    style_kept, _ = _fit_terms(style, max(1, int(budget * STYLE_SHARE)), count)
    for attempt_framing, attempt_style in ((framing, style_kept), (framing, []), (None, [])):
        kept: list[str] = []
        dropped: list[str] = []
        misses = 0
        for c in candidates:
            if misses >= MAX_MISSES:
                dropped.append(c)  # the prompt is full: stop counting, but keep the record
            elif fits(kept + [c], attempt_framing, attempt_style):
                kept.append(c)
                misses = 0
            elif not kept:
                head, rest = _truncate(c, lambda h: fits([h], attempt_framing, attempt_style))
                if head:
                    kept.append(head)
                    if rest:
                        dropped.append(rest)
                else:
                    dropped.append(c)
            else:
                dropped.append(c)
                misses += 1
        if kept:
            break
    else:
        raise ValueError(f"token budget {budget} is too small: not even one word of a layer prompt fits")
    final_style = list(attempt_style)
    for t in style:
        if t not in final_style and fits(kept, attempt_framing, _ordered(style, final_style + [t])):
            final_style = _ordered(style, final_style + [t])
    dropped.extend(t for t in style if t not in final_style)
    prompt = _join(kept, attempt_framing, final_style)
    return prompt, kept, dropped, count(prompt)


def _ordered(reference: list[str], subset: list[str]) -> list[str]:
    s = set(subset)
    return [t for t in reference if t in s]


# ---------------------------------------------------------------------------------------------------------------
# Planning


def _tidy(text: str) -> str:
    """A phrase that reads as a prompt: no leading conjunction or label, no trailing preposition, article or
    conjunction left where cue words and style terms were cut out."""
    prev = None
    while prev != text:
        prev = text
        text = _clean(_LABEL_LEFTOVER_RE.sub("", text))
        words = text.split()
        while words and words[-1].lower().strip(_EDGE_PUNCT) in plan_words.DANGLING_END_WORDS:
            words.pop()
        while words and words[0].lower().strip(_EDGE_PUNCT) in plan_words.DANGLING_START_WORDS:
            words.pop(0)
        text = _clean(" ".join(words))
    return text


_LABEL_LEFTOVER_RE = re.compile(rf"(?:^|(?<=,))\s*(?:{_STYLE_LABEL}|fore[\s-]?ground|back[\s-]?ground|mid[\s-]?ground)"
                                rf"\s*(?:[:—–]|$)", re.IGNORECASE)


def _candidates(phrases: list[_Phrase], name: str) -> list[str]:
    mine = [ph for ph in phrases if ph.layer == name]
    mine.sort(key=lambda ph: (ph.tier, -round(ph.relevance, 6), ph.index))
    out: list[str] = []
    seen: set[str] = set()
    for ph in mine:
        text = _tidy(ph.text)
        if text and text.lower() not in seen:
            seen.add(text.lower())
            out.append(text)
    return out


def _override_phrases(text: str) -> list[str]:
    out: list[str] = []
    for seg in _segments(text):
        for sent in _split_at(seg.text, _sentence_cut, _SENTENCE_CHARS + ";"):
            for part in _split_at(sent, _phrase_cut, _PHRASE_CHARS):
                for piece in _comma_pieces(part):
                    c = _clean(piece)
                    if c and c.lower() not in (o.lower() for o in out):
                        out.append(c)
    return out


def _check_overrides(overrides: Mapping[str, str] | None) -> dict[str, str]:
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"overrides must map layer names to prompts, not {type(overrides).__name__}")
    out = {}
    for name, text in overrides.items():
        if name not in LAYER_NAMES:
            raise ValueError(f"unknown layer {name!r} in overrides; choose one of {', '.join(LAYER_NAMES)}")
        try:
            out[name] = check_prompt(text)
        except ValueError as exc:
            raise ValueError(f"override for {name}: {exc}") from None
    return out


def plan_scene(prompt: str, seed: int = 0, *, width: int | None = None, height: int | None = None,
               token_budget: int = 77, count_tokens: TokenCounter | None = None,
               overrides: Mapping[str, str] | None = None) -> ScenePlan:
    """Plan a layered scene from one dense prompt.

    Args:
        prompt: the scene description (plain text or light markdown).
        seed: scene seed, 0..MAX_SEED; the layer seeds derive from it.
        width: image width in pixels (64..2048, a multiple of 8); default from the prompt's aspect.
        height: image height in pixels (64..2048, a multiple of 8); default from the prompt's aspect.
        token_budget: tokens each layer prompt may take, BOS/EOS included (77 for CLIP).
        count_tokens: token counter of the text encoder; default `count_tokens_approx`.
        overrides: layer name -> text that replaces that layer's own phrases.

    Returns:
        The ScenePlan: size, aspect, shared style, figure count, light direction, palette and the three
        layer plans back to front.

    Raises:
        ValueError: a bad prompt (see `check_prompt`), seed, size, aspect, budget, counter or override.
    """
    text = check_prompt(prompt)
    _check_int(seed, "seed", 0, MAX_SEED)
    if width is not None:
        _check_side(width, "width")
    if height is not None:
        _check_side(height, "height")
    _check_int(token_budget, "token budget", MIN_TOKEN_BUDGET, MAX_TOKEN_BUDGET)
    count = _checked_counter(count_tokens)
    layer_overrides = _check_overrides(overrides)

    segments = _segments(text)
    # The aspect is read from the whole text at once (it may sit anywhere) and cut out of every segment.
    # NUL joins the lines: check_prompt keeps it out of the text, and no aspect pattern crosses it.
    joined = "\x00".join(s.text for s in segments)
    found, spans = _find_aspect(joined)
    if spans:
        for seg, new in zip(segments, _cut_spans(joined, spans).split("\x00")):
            seg.text = new.strip()
        segments = [s for s in segments if _clean(s.text)]
    aw, ah, aspect = found if found is not None else (2, 3, "2:3")
    if width is not None and height is not None:
        w, h = width, height
        aspect = _aspect_label(w, h)
    elif width is not None:
        w = width
        h = max(MIN_SIDE, min(MAX_SIDE, 8 * round(width * ah / aw / 8)))  # the aspect asked for, to 8 px
    elif height is not None:
        h = height
        w = max(MIN_SIDE, min(MAX_SIDE, 8 * round(height * aw / ah / 8)))
    else:
        w, h = size_for_aspect(aw, ah)

    full = "\n".join(s.text for s in segments)
    names = _named_characters(full)
    name_set = frozenset(names)
    phrases = _split_phrases(segments)
    # Cues are found before style extraction so that "no ..." phrases with a cue stay in their layer.
    for ph in phrases:
        c = _find_cue(ph.text)
        ph.cue = c[0] if c else None
    found_terms, neg_bg, neg_all, phrases = _extract_style(phrases)
    for ph in phrases:
        ph.cue = None
    style = _style_terms(found_terms)
    _place(phrases, name_set)

    mid_text = layer_overrides.get("midground") or " ".join(ph.text for ph in phrases if ph.layer == "midground")
    figures = _count_figures(mid_text, full, names)
    if "midground" in layer_overrides:
        n = _explicit_count(layer_overrides["midground"])
        figures = max(1, min(4, n)) if n else figures

    layers = []
    for name in LAYER_NAMES:
        placeholder = False
        if name in layer_overrides:
            cands = _override_phrases(layer_overrides[name]) or [layer_overrides[name]]
        else:
            cands = _candidates(phrases, name)
        if not cands:
            # Nouns of explicitly placed phrases stay where the prompt put them.
            cands = [_placeholder(name, " ".join(ph.text for ph in phrases if ph.tier == 2), figures)]
            placeholder = True
        framing = SUBJECT_FRAMING if name != "background" else None
        prompt_text, kept, dropped, tokens = _budget_layer(cands, framing, style, token_budget, count)
        negative, lost = _negative_prompt(name, neg_bg, neg_all, token_budget, count)
        layers.append(LayerPlan(
            name=name, prompt=prompt_text, negative_prompt=negative, seed=layer_seed(seed, name),
            clauses=tuple(kept), dropped=tuple(dropped + lost), tokens=tokens, placeholder=placeholder,
        ))
    return ScenePlan(
        prompt=text, seed=seed, width=w, height=h, aspect=aspect, style=", ".join(style), figures=figures,
        layers=tuple(layers), token_budget=token_budget, light_direction=_light_direction(full),
        palette=_palette(full, style), setting=_setting(" ".join(layers[0].clauses)),
    )


def _cut_spans(text: str, spans: list[tuple[int, int]]) -> str:
    out, last = [], 0
    for s, e in spans:
        if s >= last:
            out.append(text[last:s])
            out.append(" ")
        last = max(last, e)
    out.append(text[last:])
    return "".join(out)


def with_layer(plan: ScenePlan, name: str, *, prompt: str | None = None, seed: int | None = None,
               count_tokens: TokenCounter | None = None) -> ScenePlan:
    """Re-plan one layer of a plan (new prompt and/or seed, or another token counter); the others stay.

    Args:
        plan: the plan to change.
        name: the layer to re-plan.
        prompt: new text for the layer's own phrases (the shared style is still appended and the budget
            applied); default: the layer's current phrases, with what was dropped tried again.
        seed: new seed for the layer (0..MAX_SEED); default: keep its seed.
        count_tokens: token counter for the re-budget; default `count_tokens_approx`.

    Returns:
        A new ScenePlan; only that layer (and, for a midground prompt naming a count, `figures`) differs.

    Raises:
        ValueError: unknown layer, bad prompt or seed.
    """
    if not isinstance(plan, ScenePlan):
        raise ValueError(f"plan must be a ScenePlan, not {type(plan).__name__}")
    old = plan.layer(name)
    count = _checked_counter(count_tokens)
    style = [t for t in plan.style.split(", ") if t] if plan.style else []
    figures = plan.figures
    placeholder = False
    if prompt is not None:
        try:
            new_text = check_prompt(prompt)
        except ValueError as exc:
            raise ValueError(f"prompt for {name}: {exc}") from None
        cands = _override_phrases(new_text) or [new_text]
        if name == "midground":
            n = _explicit_count(new_text)
            figures = max(1, min(4, n)) if n else figures
    else:
        cands = list(old.clauses) + [d for d in old.dropped if d not in style and not d.startswith("no ")]
        placeholder = old.placeholder
    new_seed = old.seed if seed is None else _check_int(seed, "seed", 0, MAX_SEED)
    framing = SUBJECT_FRAMING if name != "background" else None
    prompt_text, kept, dropped, tokens = _budget_layer(cands, framing, style, plan.token_budget, count)
    neg_terms = [t for t in old.negative_prompt.split(", ") if t]
    neg_kept, _ = _fit_terms(neg_terms, plan.token_budget, count)
    lost = [d for d in old.dropped if d.startswith("no ")]
    new_layer = LayerPlan(name=name, prompt=prompt_text, negative_prompt=", ".join(neg_kept), seed=new_seed,
                          clauses=tuple(kept), dropped=tuple(dropped + lost), tokens=tokens,
                          placeholder=placeholder)
    layers = tuple(new_layer if lp.name == name else lp for lp in plan.layers)
    return dataclasses.replace(plan, layers=layers, figures=figures)
