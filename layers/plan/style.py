"""Shared style: lighting, colour grade, medium and quality terms, and "no ..." phrases, cut out of phrases (rule 5)."""
from __future__ import annotations

import bisect
import re

from .segments import _EDGE_PUNCT, _Phrase, _clean, _is_glue
from .words import (
    ATMOSPHERE_ADJECTIVES, ATMOSPHERE_NOUNS, ATMOSPHERE_PREPOSITIONS, TRAILING_PLACE_PREPOSITIONS, _COLOR_ALIASES,
)


_COLOR_RE_TEXT = "|".join(
    sorted((re.escape(k).replace(r"\ ", r"[\s-]") for k in _COLOR_ALIASES), key=len, reverse=True))


_LIGHT_ADJ = (r"(?:warm|cool|cold|hot|soft|hard|harsh|bold|deep|bright|pale|dim|saturated|muted|electric|neon|glowing|"
              r"radiant|rich|vivid|vibrant|subtle|faint|strong|dramatic|sunrise|sunset|dawn|dusk|moonlit|icy|fiery)")
COLOR_RUN = 16
"""A run of colours before a light, grade or palette word ("neon cyan and rust color grade") joins the style term
up to this many colours; of a longer run, the last COLOR_RUN do. The bound keeps the style patterns linear in the
length of the text."""
# One colour, read one way only (atomic): "sunrise gold" is a colour and also "sunrise" + "gold", and trying both
# readings in a run of them costs time exponential in its length. Another reading of the same words ends at the
# same place, or where neither the run nor the term it is part of could go on (no colour starts "and", "light",
# "colour", "palette"...), so no match is lost.
_COLORISH = rf"(?>(?:(?:{_LIGHT_ADJ})[\s-]+){{0,2}}(?:{_COLOR_RE_TEXT})|{_LIGHT_ADJ})"
_COLOR_PAIR = rf"(?:{_COLORISH})(?:\s*(?:,|and|&)\s*(?:{_COLORISH})){{0,{COLOR_RUN - 1}}}"
"""One colour, or a run of them ("neon cyan and rust"): a grade or palette keeps its colours (up to COLOR_RUN)."""
_ATMOSPHERE_PREP = rf"(?:{'|'.join(ATMOSPHERE_PREPOSITIONS)})\s+(?:the\s+)?"
_ATMOSPHERE = (rf"(?:{_ATMOSPHERE_PREP})?(?:(?:{'|'.join(ATMOSPHERE_ADJECTIVES)})[\s-]+){{0,2}}"
               rf"(?:{'|'.join(ATMOSPHERE_NOUNS)})\b")
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
    (rf"(?:{_COLORISH})(?:\s*(?:and|&)\s*(?:{_COLORISH})){{0,{COLOR_RUN - 1}}}\s+"
     rf"(?:light(?:ing)?|glow|highlights?|tones?|hues?|shadows?|gleams?)\b", 0),
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
    rf"gleam|{'|'.join(ATMOSPHERE_NOUNS)}", re.IGNORECASE)


_NEGATIVE_RE = re.compile(r"^(?:no|without|avoid(?:ing)?|free\s+of)\s+(.+)$", re.IGNORECASE)
_QUALITY_NEGATIVES = re.compile(r"\b(?:text|watermarks?|signatures?|logos?|blur(?:ry)?|noise|artifacts?|jpeg|"
                                r"lowres|low\s+quality|deformed|distorted|extra\s+(?:limbs|fingers)|cropped)\b",
                                re.IGNORECASE)


def _overlaps(spans: list[tuple[int, int, int]], start: int, end: int) -> bool:
    """Whether [start, end) overlaps one of `spans`, sorted and disjoint: only the last one starting before `end`
    can."""
    k = bisect.bisect_left(spans, (end,))
    return k > 0 and spans[k - 1][1] > start


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
                if m.end() > m.start() and not _overlaps(spans, m.start(), m.end()):
                    bisect.insort(spans, (m.start(), m.end(), cat))
        if spans:
            pieces, last = [], 0
            for s, e, _ in spans:
                pieces += [text[last:s], " "]
                last = e
            rest = _clean("".join(pieces) + text[last:])
            if rest and (_is_glue(rest) or (spans[0][0] == 0 and rest.split()[0].lower() in
                                            TRAILING_PLACE_PREPOSITIONS)):
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
    texts: dict[str, None] = {}
    for _, _, t in sorted(found):
        t = t.replace(",", " ").strip(_EDGE_PUNCT)
        t = _ATMOSPHERE_PREP_RE.sub("", re.sub(r"\s+", " ", t))
        if t:
            texts.setdefault(t)
    # One text holding them all, a line each (no term holds a line break): a term is dropped when it occurs,
    # standing as words, anywhere but on its own line.
    joined = "\n".join(texts)
    own, start = {}, 0
    for t in texts:
        own[t] = start
        start += len(t) + 1
    return [t for t in texts if not _contained(joined, t, own[t])]


def _contained(joined: str, term: str, own: int) -> bool:
    """Whether `term` occurs in `joined` as whole words ("gold" in "gold light", not in "golden") other than at
    `own`."""
    at = joined.find(term)
    while at >= 0:
        end = at + len(term)
        if at != own and not _continues_word(joined, at - 1) and not _continues_word(joined, end):
            return True
        at = joined.find(term, at + 1)
    return False


def _continues_word(text: str, i: int) -> bool:
    """Whether the character at i continues a word (a letter, digit, underscore or hyphen)."""
    return 0 <= i < len(text) and (text[i] == "-" or text[i].isalnum() or text[i] == "_")
