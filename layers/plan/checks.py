"""Input checks: the scene prompt (text or file), seeds, sizes, the token counter and layer overrides (rule 1)."""
from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Mapping

from .tokens import count_tokens_approx
from .types import LAYER_NAMES, MAX_PROMPT_CHARS, MAX_SIDE, MIN_SIDE, TokenCounter


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


def read_prompt_file(path: Path) -> str:
    """Read a prompt file as strict UTF-8; ValueError naming the file otherwise."""
    from ..images import check_file

    check_file(path, "prompt file")  # a named pipe is said to be one, never read (it would block)
    limit = 4 * MAX_PROMPT_CHARS  # bytes: UTF-8 takes at most 4 per character
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # never more: a huge file is refused without being read
    except OSError as exc:
        raise ValueError(f"cannot read prompt file {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ValueError(f"prompt file {path} is {os.path.getsize(path)} bytes; a prompt is at most "
                         f"{MAX_PROMPT_CHARS} characters")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"prompt file {path} is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset "
                         f"{exc.start})") from None


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
