"""Position cues: the phrases that name a layer ("in the foreground", "far away") and cutting them out (rule 6)."""
from __future__ import annotations

import re

from .words import LOCATIVE_ADVERBS, LOCATIVE_LEADS


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
    (rf"^\W*(?:(?:{'|'.join(LOCATIVE_ADVERBS)})\s+)?(?:{'|'.join(LOCATIVE_LEADS)})"
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
