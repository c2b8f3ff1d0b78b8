"""Answer extraction, vote keys and math-verify grading."""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
import time

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from optscale.answers import (
    extract_answer,
    extract_boxed,
    extract_final_number,
    grade,
    grade_many,
    normalize_answer,
)
from optscale.errors import InputError

# The package's ``grade`` function hides its ``grade`` module, which holds the cache.
grade_module = importlib.import_module("optscale.answers.grade")

# --- extract_boxed ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"first \boxed{1}, then \boxed{2}", "2"),
        (r"\boxed {3}", "3"),
        (r"\fbox{4}", "4"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{\left\{ 1 \right\}}", r"\left\{ 1 \right\}"),
        (r"\boxed{\boxed{5}} end", r"\boxed{5}"),
        (r"\boxed{}", ""),
        ("no box here", None),
        (r"\boxed{\frac{1}{2}", None),
        (r"\boxed{1} and a truncated \boxed{\frac{1}{", None),
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


LATEXISH = st.text(alphabet=list("{}\\boxed fracx=0123456789.,-$#^"), max_size=40)
# Text with no backslash: it opens no box and escapes no brace, whatever braces it holds.
PLAIN = st.text(alphabet=list("{}abx=0123456789.,-+$#^ "), max_size=12)
OPENERS = st.sampled_from(["\\boxed{", "\\boxed {", "\\fbox{"])
# Balanced box content: plain pieces, escaped braces and commands, nested groups and nested boxes.
ATOMS = st.text(alphabet=list("abx=0123456789.,-+/^ "), max_size=6) | st.sampled_from(
    ["\\{", "\\}", "\\frac", "\\left\\{", "\\right\\}", "\\\\", "\\sqrt", "\\pi"])
CONTENT = st.recursive(
    ATOMS,
    lambda inner: st.lists(inner, max_size=4).map("".join)
    | st.tuples(st.sampled_from(["{", "\\boxed{", "\\fbox{"]), inner).map(lambda t: f"{t[0]}{t[1]}}}"),
    max_leaves=12,
)


@st.composite
def boxed_texts(draw) -> tuple[str, str, str]:
    """``(head, content, tail)``: closed boxes and text, then the opening of a final box around ``content``.

    ``head + content + "}" + tail`` is a response whose final answer is ``content``: ``tail`` holds
    no box (stray braces at most).
    """
    earlier = draw(st.lists(st.tuples(PLAIN, OPENERS, CONTENT), max_size=2))
    head = "".join(f"{text}{opener}{content}}}" for text, opener, content in earlier) + draw(PLAIN) + draw(OPENERS)
    return head, draw(CONTENT), draw(PLAIN)


@given(boxed_texts())
def test_extract_boxed_returns_the_last_boxs_whole_content(parts: tuple[str, str, str]) -> None:
    head, content, tail = parts
    assert extract_boxed(f"{head}{content}}}{tail}") == content
    assert extract_boxed(f"{head}{content}") is None  # the final box never closes: a truncated answer


def _check_balanced_content_or_none(text: str) -> bool:
    """The property below; whether its assertions ran (a box was found)."""
    content = extract_boxed(text)
    if content is None:
        return False
    assert content + "}" in text
    assert extract_boxed(rf"\boxed{{{content}}}") == content  # the content is balanced
    return True


BOXED_OR_NOT = LATEXISH | boxed_texts().map(lambda parts: "{}{}}}{}".format(*parts))


@given(BOXED_OR_NOT)
def test_extract_boxed_returns_balanced_content_or_none(text: str) -> None:
    event("a box" if _check_balanced_content_or_none(text) else "no box")


def test_the_balanced_content_property_reaches_its_assertions() -> None:
    reached = []

    @settings(max_examples=100, derandomize=True, database=None)
    @given(BOXED_OR_NOT)
    def run(text: str) -> None:
        reached.append(_check_balanced_content_or_none(text))

    run()
    assert sum(reached) >= len(reached) / 4, f"{sum(reached)} of {len(reached)} examples held a box"


@given(BOXED_OR_NOT)
def test_extractors_and_normalizer_never_raise(text: str) -> None:
    for value in (extract_answer(text), extract_final_number(text), normalize_answer(text)):
        assert value is None or isinstance(value, str)
    assert normalize_answer(text) != ""


# --- extract_final_number --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Natalia sold 48 + 24 = 72 clips.\n#### 1,234", "1234"),
        ("#### -5", "-5"),
        ("5 apples, 3 pears\n#### 8\nthanks 9", "8"),
        ("It costs $18.", "18"),
        ("It is 18.00 dollars", "18.00"),
        ("The temperature drops to -3.5 degrees", "-3.5"),
        ("Read pages 10-12", "12"),
        ("1,234,567 people", "1234567"),
        ("The total is 5-3=2.", "2"),
        ("#### seventy", None),
        ("no digits", None),
        ("H2O", None),
    ],
)
def test_extract_final_number(text: str, expected: str | None) -> None:
    assert extract_final_number(text) == expected


# --- extract_answer --------------------------------------------------------------------------


def test_extract_answer_looks_after_think() -> None:
    assert extract_answer(r"<think>maybe \boxed{3}</think>The answer is \boxed{4}.") == "4"
    assert extract_answer(r"<think>maybe \boxed{3}</think> so 4") == "4"
    assert extract_answer("<think>the answer is 7</think>") is None


def test_extract_answer_styles() -> None:
    text = r"We get \boxed{\frac{1}{2}} after 3 steps"
    assert extract_answer(text, "auto") == r"\frac{1}{2}"
    assert extract_answer(text, "boxed") == r"\frac{1}{2}"
    assert extract_answer(text, "number") == "3"
    assert extract_answer("about 42 of them", "auto") == "42"
    assert extract_answer("about 42 of them", "boxed") is None


def test_extract_answer_no_answer_cases() -> None:
    assert extract_answer(None) is None
    assert extract_answer(r"\boxed{ }") is None
    # A truncated box is no answer, not the number inside it.
    assert extract_answer(r"so \boxed{\frac{1}{2") is None


def test_extract_answer_rejects_unknown_style() -> None:
    with pytest.raises(InputError, match="style"):
        extract_answer("1", "latex")  # type: ignore[arg-type]


# --- normalize_answer ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variants", "key"),
    [
        (["18", " 18 ", "18.0", "18.00", "$18$", r"\$18", "18.", "1\\!8"], "18"),
        (["1,234", r"1\,234", "1234"], "1234"),
        (
            [
                r"\frac{1}{2}",
                r"\dfrac{1}{2}",
                r"\tfrac{1}{2}",
                r"\frac12",
                "1/2",
                r"\boxed{\frac12}",
            ],
            r"\frac{1}{2}",
        ),
        ([r"10\text{ cm}", "10", r"10 \mbox{cm}"], "10"),
        (["90^\\circ", "90^{\\circ}", "90°", "90"], "90"),
        (["x=3", "x = 3", "3"], "3"),
        ([r"\left( 1, 2 \right)", "(1, 2)", "(1,2)"], "(1,2)"),
        ([r"\text{Monday}", "Monday"], "Monday"),
        (["-0.0", "0"], "0"),
    ],
)
def test_normalize_answer_merges_notations(variants: list[str], key: str) -> None:
    assert {normalize_answer(v) for v in variants} == {key}


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("(0,1]", "(0,1)"),
        ("2", "3"),
        ("18", "1.8"),
        (r"\frac{1}{2}", r"\frac{1}{3}"),
        ("1,2", "12"),
    ],
)
def test_normalize_answer_keeps_different_answers_apart(a: str, b: str) -> None:
    assert normalize_answer(a) != normalize_answer(b)


@pytest.mark.parametrize("blank", [None, "", "   ", "$ $", "."])
def test_normalize_answer_keeps_no_answer_as_none(blank: str | None) -> None:
    assert normalize_answer(blank) is None


def test_normalize_answer_is_idempotent() -> None:
    for answer in [r"\dfrac{1}{2}", "18.0", r"10\text{ cm}", r"\left[2, 5\right)", "x=3"]:
        key = normalize_answer(answer)
        assert normalize_answer(key) == key


# --- grade -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gold", "prediction"),
    [
        (r"\frac{1}{2}", "0.5"),
        (r"\frac{1}{2}", "1/2"),
        (r"\frac{1}{2}", r"\dfrac{1}{2}"),
        (r"\boxed{\frac{1}{2}}", r"\frac12"),
        ("10", r"10\text{ cm}"),
        ("[2,5)", "[2,5)"),
        ("90^\\circ", "90"),
        ("3", "x=3"),
        ("1234", "1,234"),
        ("18", "18.00"),
        (r"\{1,2\}", r"\{2,1\}"),
        (r"(3, \frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)"),
        ("x^2+2x+1", "(x+1)^2"),
        (r"2\sqrt{3}", r"\sqrt{12}"),
    ],
)
def test_grade_accepts_equal_answers(gold: str, prediction: str) -> None:
    assert grade(gold, prediction) is True


@pytest.mark.parametrize(
    ("gold", "prediction"),
    [
        ("(0,1]", "(0,1)"),
        ("2", "3"),
        ("x=3", "y=3"),
        ("A", "B"),
    ],
)
def test_grade_rejects_different_answers(gold: str, prediction: str) -> None:
    assert grade(gold, prediction) is False


def test_grade_passes_gold_first() -> None:
    # math-verify only turns a relation into a set on the gold side: these two orders differ,
    # so the pair proves which argument is taken as the gold answer.
    assert grade("1 < x < 2", "(1,2)") is True
    assert grade("(1,2)", "1 < x < 2") is False


def test_grade_calls_verify_with_gold_then_prediction(monkeypatch: pytest.MonkeyPatch) -> None:
    import math_verify

    calls: list[tuple[object, object]] = []
    real_verify = math_verify.verify

    def spy(gold: object, target: object, **kwargs: object) -> bool:
        calls.append((gold, target))
        return real_verify(gold, target, **kwargs)

    monkeypatch.setattr(math_verify, "verify", spy)
    # What the grading process runs for each pair, here in-process so the spy sees it.
    assert grade_module._verify("7", "7.0") == grade_module.Grade(True)
    ((gold, target),) = calls
    assert "7" in [str(item) for item in gold]  # type: ignore[attr-defined]
    assert "7.0" in [str(item) for item in target]  # type: ignore[attr-defined]


@pytest.mark.parametrize("prediction", [None, "", "   "])
def test_grade_no_answer_is_wrong(prediction: str | None) -> None:
    assert grade("1", prediction) is False


def test_grade_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    import math_verify

    def broken(*args: object, **kwargs: object) -> bool:
        raise RuntimeError("grader bug")

    monkeypatch.setattr(math_verify, "verify", broken)
    assert grade_module._verify("1", "1") == grade_module.Grade(False, "error")


#: Seconds of sympy big-integer arithmetic (far beyond any limit here) that no signal interrupts.
HOSTILE = r"9^{9^{9^{9}}}"


def test_hostile_answer_times_out_in_the_worker_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    grade_module._grade_cached.cache_clear()
    assert grade("1/2", "0.5") is True  # the worker is up
    before = grade_module.COUNTS["timeouts"]
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="optscale.answers.grade"):
        result = grade_module.grade_detail("2", HOSTILE, timeout=1.0)
    assert time.monotonic() - start < 4
    assert result == grade_module.Grade(False, "timeout")
    assert grade_module.COUNTS["timeouts"] == before + 1
    assert any("timeout" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    # Cached as a timeout (not as a silent "wrong"), so the same answer costs its time once.
    hits = grade_module._grade_cached.cache_info().hits
    assert grade_module.grade_detail("2", HOSTILE, timeout=1.0).status == "timeout"
    assert grade_module._grade_cached.cache_info().hits == hits + 1
    # A fresh worker grades the next answer.
    assert grade(r"\frac{1}{3}", "1/3") is True


def test_grade_async_leaves_the_event_loop_free() -> None:
    grade_module._grade_cached.cache_clear()

    async def main() -> tuple[grade_module.Grade, int, grade_module.Grade]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        task = asyncio.create_task(ticker())
        slow = await grade_module.grade_async("3", "9^{9^{9^{8}}}", timeout=1.0)
        fast = await grade_module.grade_async("1/4", "0.25")
        task.cancel()
        return slow, ticks, fast

    slow, ticks, fast = asyncio.run(main())
    assert slow.status == "timeout" and fast == grade_module.Grade(True)
    assert ticks >= 20  # the loop kept running while the answer was graded


def test_grade_caches_pairs() -> None:
    grade_module._grade_cached.cache_clear()
    grade("5", "5")
    grade("5", "5")
    info = grade_module._grade_cached.cache_info()
    assert (info.hits, info.misses) == (1, 1)


def test_grade_works_outside_the_main_thread() -> None:
    grade_module._grade_cached.cache_clear()
    results: list[bool] = []
    worker = threading.Thread(target=lambda: results.append(grade(r"\frac{1}{4}", "0.25")))
    worker.start()
    worker.join()
    assert results == [True]


def test_grade_many() -> None:
    assert grade_many(["1", "2", "3"], ["1", "3", None]) == [True, False, False]
    with pytest.raises(InputError, match="2 gold answers but 1 predictions"):
        grade_many(["1", "2"], ["1"])
