"""Segmenting: markdown, sections and labels, then clauses and phrases, never cut inside brackets (rules 2 and 4)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from .cues import _find_cue, _remove_cues
from .scoring import _content_words, _max_weight, _stem, _tokens
from .words import _ABBREVIATIONS, _ADJ_SUFFIXES, _ADJECTIVES, _COLOR_ALIASES, _NOUN_EXCEPTIONS


_LEADING_GLUE_RE = re.compile(r"^(?:(?:and|or|but|yet|while|whereas|plus|so|then|also|simultaneously)\b[\s,]*)+",
                              re.IGNORECASE)


_HEADING_RE = re.compile(r"^\s{0,3}#{1,6}\s*")
_BULLET_RE = re.compile(r"^\s*(?:[-*+•·]|\d{1,3}[.)])\s+")
_RULE_RE = re.compile(r"^\s*(?:[-*_=]\s*){3,}$")
_QUOTE_RE = re.compile(r"^\s*>\s?")
_STYLE_LABEL = r"style|lighting|light|colou?rs?|colou?r\s+grade|colou?r\s+grading|palette|medium|quality|render(?:ing)?"
_LABEL_RE = re.compile(
    rf"^\s*(?:(?:\*\*|__)\s*)?(?:the\s+)?"
    rf"(?P<label>fore[\s-]?ground|back[\s-]?ground|mid[\s-]?ground|middle[\s-]?ground|{_STYLE_LABEL})"
    rf"(?:\s+(?:layer|plane|elements|details))?\s*(?:(?:\*\*|__)\s*)?(?:[:—–]|-\s|\*\*\s*[:—–])\s*(?:\*\*|__)?"
    rf"(?P<rest>.*)$",
    re.IGNORECASE)
"""A label: "Foreground:", "**Lighting** -", "the background layer:". A marker takes its spaces with it, so two
runs of spaces never meet (they would be tried split every way, in time quadratic in their length)."""


def _label_layer(label: str) -> str:
    low = re.sub(r"[\s-]+", "", label.lower())
    if low.startswith("fore"):
        return "foreground"
    if low.startswith("back"):
        return "background"
    if low.startswith(("mid", "middle")):
        return "midground"
    return "style"


def _heading_title(line: str) -> str | None:
    """The text of a markdown heading line without its closing hashes, or None for another line."""
    h = _HEADING_RE.match(line)
    return None if h is None else line[h.end():].rstrip().rstrip("#").rstrip()


def _unlink(text: str) -> str:
    r"""Links and images keep their text: ``re.sub(r"!?\[([^\]\n]*)\]\([^)\n]*\)", r"\1", text)`` in linear time.

    The regex scans from every "[" to the next "]" or line end, so a long run of "[" costs quadratic time. Here
    the next "]", ")" and line end are found once each: when a link starting at one "[" fails, so does one
    starting at any later "[" before the same "]" (or, with no ")" left on the line, any on that line).
    """
    if "](" not in text:
        return text
    n = len(text)
    out: list[str] = []
    last = pos = 0
    close = paren = newline = -1

    def after(ch: str, start: int, known: int) -> int:
        """The first `ch` at or after `start` (n if none), reusing `known` when it still is."""
        return known if known >= start else text.find(ch, start) % (n + 1)

    while (s := text.find("[", pos)) >= 0:
        newline = after("\n", s, newline)
        close = after("]", s, close)
        if close >= newline:
            pos = newline + 1
            continue
        if close + 1 >= n or text[close + 1] != "(":
            pos = close + 1
            continue
        paren = after(")", close + 2, paren)
        if paren >= newline:
            pos = newline + 1
            continue
        start = s - 1 if s > last and text[s - 1] == "!" else s
        out += [text[last:start], text[s + 1:close]]
        last = pos = paren + 1
    out.append(text[last:])
    return "".join(out)


_ITALIC_RE = re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])")


def _strip_inline_markdown(text: str) -> str:
    text = _unlink(text)  # links and images keep their text
    text = text.replace("**", "").replace("__", "").replace("`", "")
    text = _ITALIC_RE.sub(r"\1", text)
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
        heading = _heading_title(raw)
        if heading is not None:
            title = _strip_inline_markdown(heading).strip()
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
        line = _QUOTE_RE.sub("", line)
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
    stack: list[int] = []  # positions of the open brackets, innermost last
    open_of: dict[str, list[int]] = {ch: [] for ch in _OPENERS}  # indexes into `stack`, per kind
    for m in _BRACKET_CHARS_RE.finditer(text):
        i, ch = m.start(), m.group()
        if ch in _OPENERS:
            open_of[ch].append(len(stack))
            stack.append(i)
        elif ch in _CLOSERS and open_of[_CLOSERS[ch]]:
            k = open_of[_CLOSERS[ch]][-1]
            pairs.append((stack[k], i))
            del stack[k:]
            for kept in open_of.values():
                while kept and kept[-1] >= k:
                    kept.pop()
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


_EMPTY_BRACKETS_RE = re.compile(r"\(\s*\)|\[\s*\]|“\s*”")
_SPACES_RE = re.compile(r"\s+")
_SPACE_BEFORE_CLOSER_RE = re.compile(r"\s+([,;:.!?)\]”»])")
_SPACE_AFTER_OPENER_RE = re.compile(r"([(\[“«])\s+")


def _clean(text: str) -> str:
    text = _balance(text)
    text = _EMPTY_BRACKETS_RE.sub(" ", text)
    text = _SPACES_RE.sub(" ", text)
    text = _SPACE_BEFORE_CLOSER_RE.sub(r"\1", text)
    text = _SPACE_AFTER_OPENER_RE.sub(r"\1", text)
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


_HYPHENATED_WORD_RE = re.compile(r"[^\W\d_]+(?:[-'’][^\W\d_]+)*")


def _standalone(piece: str) -> bool:
    """Whether a comma piece can be a phrase of its own (not a lone adjective or a bare "on the left")."""
    return _Standalone().add(piece)


class _Standalone:
    """`_standalone` of comma-joined parts, added one at a time: each part is read once.

    No word crosses a comma, so the words of "a,b" are those of "a" then those of "b": the last word, the
    content-word count and the largest lexicon weight of the joined text follow from its parts'.
    """

    def __init__(self) -> None:
        self.last_word: str | None = None
        self.content = 0
        self.weight = 0.0

    def add(self, part: str) -> bool:
        """Add one part; whether the parts so far, joined with commas, can stand alone."""
        words = _HYPHENATED_WORD_RE.findall(part)
        if words:
            self.last_word = words[-1]
            self.content += len(_content_words(part))
            self.weight = max(self.weight, _max_weight(part))
        if self.last_word is None or _adjective_like(self.last_word):
            return False
        return self.content >= 2 or self.weight >= 1.0


def _parallel(a: str, b: str) -> bool:
    wa, wb = a.split(), b.split()
    return 2 <= len(wa) <= 3 and 2 <= len(wb) <= 3 and wa[0].lower() == wb[0].lower() and \
        wa[0].lower() not in ("a", "an", "the")


def _comma_pieces(text: str) -> list[str]:
    """Split at top-level commas; a piece that cannot stand alone ("a radiant,") joins the next one."""
    out: list[str] = []
    parts: list[str] = []  # the piece being built; joined with commas it is never "" once it has two parts
    state = _Standalone()
    for p in _split_at(text, _comma_cut, ","):
        if parts in ([], [""]):
            parts, state = [p], _Standalone()
        else:
            parts.append(p)
        if state.add(p):
            out.append(",".join(parts))
            parts = []
    buf = ",".join(parts)
    if buf:
        if out and _clean(buf) and not _standalone(buf) and len(_content_words(buf)) <= 2:
            out[-1] = f"{out[-1]},{buf}"
        else:
            out.append(buf)
    # "half celebrant, half shadow": short pieces built the same way read as one.
    merged: list[list[str]] = []
    for piece in out:
        if merged and _parallel(merged[-1][-1].rsplit(",", 1)[-1], piece):
            merged[-1].append(piece)
        else:
            merged.append([piece])
    out = [",".join(m) for m in merged]
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
