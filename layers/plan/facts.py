"""Scene facts read from the whole text: figure count, palette, light direction and setting (rule 12)."""
from __future__ import annotations

import re

from .scoring import _WORD_RE, _stem
from .style import _COLOR_RE_TEXT
from .words import _COLOR_ALIASES, _INDOOR, _LEXICON, _NUMBER_WORDS, _OUTDOOR


def _setting(text: str) -> str:
    """"indoor" or "outdoor" when the background's own words say so more one way than the other, else ""."""
    stems = [_stem(w) for w in _WORD_RE.findall(text.lower())]
    outdoor = sum(w in _OUTDOOR for w in stems)
    indoor = sum(w in _INDOOR for w in stems)
    return "outdoor" if outdoor > indoor else "indoor" if indoor > outdoor else ""


_COLOR_FIND_RE = re.compile(rf"(?<!\w)(?:at\s+|past\s+|after\s+|before\s+|until\s+|till\s+)?({_COLOR_RE_TEXT})(?![\w])",
                            re.IGNORECASE)


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
