"""Pull the final answer out of a model's response and turn it into a vote key.

Majority voting and grading need one short answer per sample. Reasoning models think at
length before answering, so only the text after the last ``</think>`` counts, and within it
the last ``\\boxed{...}`` (MATH style) or the last number (GSM8K style). Everything here is
plain string scanning: cheap enough to run on every sample of a large pool.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Literal

from ..errors import InputError

__all__ = ["extract_boxed", "extract_final_number", "extract_answer", "normalize_answer"]

AnswerStyle = Literal["boxed", "number", "auto"]

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_THINK_END = "</think>"
_GSM8K_MARKER = "####"
# A sign counts only where it cannot be a minus between two terms ("10-12" is a range).
_NUMBER = re.compile(
    r"(?<![\w.)\]}])-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])"
    r"|(?<![\w.)\]}])-?\.\d+"
)
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d*)?")
_SIMPLE_FRACTION = re.compile(r"(-?\d+)/(\d+)")
_SHORT_FRAC = re.compile(r"\\frac(\d)(\d)")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textrm|mbox|mathrm)\s*\{([^{}]*)\}")
_TRAILING_UNIT = re.compile(r"^(.*?\S)\s*\\(?:text|textrm|mbox|mathrm)\s*\{[^{}]*\}$", re.S)
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_SPACING = re.compile(r"\\[!,;: ]")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°")
_LEADING_VARIABLE = re.compile(r"^[A-Za-z]=(?=[^=])")


def _matching_brace(text: str, open_at: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_at``; escaped braces (``\\{``) don't count."""
    depth = 0
    i = open_at
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last top-level ``\\boxed{...}`` / ``\\fbox{...}``.

    None when there is no box or the last one never closes (a truncated response has no
    final answer; an earlier box is usually an intermediate result). A box nested in
    another box belongs to the outer one.
    """
    content: str | None = None
    resume = 0
    for match in _BOX_OPEN.finditer(text):
        if match.start() < resume:
            continue
        close = _matching_brace(text, match.end() - 1)
        if close is None:
            return None
        content = text[match.end() : close]
        resume = close + 1
    return content


def extract_final_number(text: str) -> str | None:
    """GSM8K-style answer: the number after the last ``####``, else the last number.

    The number keeps its literal digits ("18.00" stays) but loses thousands separators and
    a ``$``, so "$1,234" gives "1234". None when there is no number, or when the ``####``
    marker is followed by none (the text before it is working, not an answer).
    """
    marker = text.rfind(_GSM8K_MARKER)
    if marker >= 0:
        match = _NUMBER.search(text, marker + len(_GSM8K_MARKER))
    else:
        matches = list(_NUMBER.finditer(text))
        match = matches[-1] if matches else None
    if match is None:
        return None
    return re.sub(r"[,$]", "", match.group(0))


def extract_answer(text: str | None, style: AnswerStyle = "auto") -> str | None:
    """The final answer of a response, or None when it gives none.

    Only text after the last ``</think>`` is searched when the tag is present. ``"auto"``
    uses the box when the response opens one (even an unclosed one, which yields None rather
    than some stray number) and the final number otherwise. An empty box is no answer.
    """
    if style not in ("boxed", "number", "auto"):
        message = f"unknown answer style {style!r}; use boxed, number or auto"
        raise InputError(message, where="style")
    if text is None:
        return None
    think_end = text.rfind(_THINK_END)
    if think_end >= 0:
        text = text[think_end + len(_THINK_END) :]
    if style == "number" or (style == "auto" and _BOX_OPEN.search(text) is None):
        return extract_final_number(text)
    boxed = extract_boxed(text)
    if boxed is None:
        return None
    return boxed.strip() or None


def _canonical_number(text: str) -> str | None:
    """ "18.0" -> "18", "1,234" -> "1234", ".5" -> "0.5"; None when ``text`` is not a number."""
    if not _PLAIN_NUMBER.fullmatch(text) or not any(c.isdigit() for c in text):
        return None
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def normalize_answer(ans: str | None) -> str | None:
    """A canonical vote key: answers that differ only in notation get the same key.

    This is a cheap, deterministic rewrite, not a proof of equality (use
    :func:`optscale.answers.grade` for that). None and blank answers stay None so that "no
    answer" can never win a vote.
    """
    if ans is None:
        return None
    text = ans.strip()
    boxed = extract_boxed(text)
    if boxed is not None:
        text = boxed
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = _SHORT_FRAC.sub(r"\\frac{\1}{\2}", text)
    text = _LEFT_RIGHT.sub("", text)
    text = _SPACING.sub("", text)
    text = text.replace("\\$", "").replace("$", "").replace("\\%", "%")
    text = _DEGREES.sub("", text).strip()
    unit = _TRAILING_UNIT.match(text)
    if unit is not None:
        text = unit.group(1)
    text = _TEXT_CMD.sub(r"\1", text)
    text = re.sub(r"\s+", "", text)
    text = _LEADING_VARIABLE.sub("", text)
    text = text.rstrip(".")
    number = _canonical_number(text)
    if number is not None:
        return number
    fraction = _SIMPLE_FRACTION.fullmatch(text)
    if fraction is not None:
        return f"\\frac{{{fraction.group(1)}}}{{{fraction.group(2)}}}"
    return text or None
