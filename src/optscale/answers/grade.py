"""Grade an extracted answer against the gold answer with math-verify, in a separate process.

``math_verify.verify(gold, target)`` is asymmetric (assignments such as ``x=3`` and relations
such as ``1 < x < 2`` are only simplified on the gold side), so the gold answer always goes
first.

A hostile answer (a tower of exponents, a huge factorial) can keep sympy busy for minutes,
inside C code that no signal interrupts; math-verify's own limits work only in a main thread
and, when they fire, quietly answer "wrong". So grading runs in one small persistent worker
process without math-verify's limits, and the caller waits at most :data:`TIMEOUT_SECONDS`
for each answer; a worker that overruns is killed and a fresh one starts on the next call. A timeout is
logged, counted in :data:`COUNTS`, and reported as ``status="timeout"`` by
:func:`grade_detail`; :func:`grade` counts it as wrong. So is an answer on which math-verify
raises (``status="error"``, with the exception in :attr:`Grade.detail`): the warning names the
place the caller gave (``where``: a pool's ``file:line samples[j]``, a problem id); after
:data:`ERRORS_LOGGED` of them, further ones are only counted. :func:`grade_async` grades without
blocking an event loop. math-verify (and sympy) are imported only in the worker, so neither
the CLI nor the caller pays for them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import multiprocessing
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from ..errors import InputError

__all__ = ["COUNTS", "ERRORS_LOGGED", "Grade", "TIMEOUT_SECONDS", "grade", "grade_async", "grade_detail",
           "grade_many", "grading_problems"]

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 5.0
"""Longest wait for one answer's verdict, startup of the worker excluded."""
STARTUP_SECONDS = 120.0
"""Longest wait for a fresh worker to import math-verify."""

#: How many answers were graded, and how many ran out of time or crashed the grader (per process).
COUNTS: collections.Counter[str] = collections.Counter()
#: Grader errors logged one by one per process; the ones after are counted in :data:`COUNTS` only.
ERRORS_LOGGED = 10

_BOXED_PREFIXES = ("\\boxed", "\\fbox")


@dataclass(frozen=True, slots=True)
class Grade:
    """A verdict: ``correct`` and how it was reached (``"timeout"`` and ``"error"`` count as wrong)."""

    correct: bool
    status: Literal["ok", "no_answer", "timeout", "error"] = "ok"
    detail: str | None = field(default=None, compare=False)  # what went wrong, for "error"


def _boxed(answer: str) -> str:
    """Wrap in ``\\boxed{}`` so math-verify's LaTeX extraction sees the whole answer."""
    stripped = answer.strip()
    if stripped.startswith(_BOXED_PREFIXES):
        return stripped
    return f"\\boxed{{{stripped}}}"


def _verify(gold: str, prediction: str) -> Grade:
    """math-verify on one pair in this process, with no time limit (the worker's caller has one)."""
    from math_verify import parse, verify

    try:
        gold_parsed = parse(_boxed(gold), parsing_timeout=None)
        prediction_parsed = parse(_boxed(prediction), parsing_timeout=None)
        if not gold_parsed or not prediction_parsed:
            return Grade(False)
        return Grade(bool(verify(gold_parsed, prediction_parsed, timeout_seconds=None)))
    except Exception as exc:
        # A grader crash on one odd answer must not stop a whole pool: it counts as wrong, and the caller logs it.
        return Grade(False, "error", f"{type(exc).__name__}: {exc}"[:200])


def _serve(conn) -> None:
    """The worker: import math-verify, say so, then answer ``(gold, prediction)`` requests.

    It ignores SIGINT: Ctrl-C reaches the whole process group, and the parent, which handles
    it, stops the worker; a KeyboardInterrupt here would only print a traceback of its own.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import math_verify  # noqa: F401

    # It warns on every call that its limits are off: here that is the design.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    conn.send("ready")
    while True:
        try:
            gold, prediction = conn.recv()
        except EOFError:
            return
        conn.send(_verify(gold, prediction))


def _context():
    """``forkserver`` where there is one (restarts after a kill are cheap), else ``spawn``;
    never ``fork``, which is unsafe in a process with threads."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["math_verify"])
        return ctx
    return multiprocessing.get_context("spawn")


class _Worker:
    """One grading process, started on first use and replaced after a timeout."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process = None
        self._conn = None

    def _start(self) -> None:
        ctx = _context()
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_serve, args=(child,), name="optscale-grader", daemon=True)
        process.start()
        child.close()
        if not parent.poll(STARTUP_SECONDS) or parent.recv() != "ready":
            process.kill()
            raise RuntimeError(f"the grading process did not start within {STARTUP_SECONDS:.0f} s")
        self._process, self._conn = process, parent

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
            self._conn.close()
        self._process = self._conn = None

    def grade(self, gold: str, prediction: str, timeout: float) -> Grade:
        with self._lock:
            try:
                if self._process is None or not self._process.is_alive():
                    self.stop()
                    self._start()
                self._conn.send((gold, prediction))
                if self._conn.poll(timeout):
                    return self._conn.recv()
            except (OSError, EOFError, RuntimeError) as exc:
                self.stop()
                return Grade(False, "error", f"the grading process failed: {exc}")
            self.stop()
            return Grade(False, "timeout")


_worker = _Worker()


@lru_cache(maxsize=65536)
def _grade_cached(gold: str, prediction: str, timeout: float) -> Grade:
    result = _worker.grade(gold, prediction, timeout)
    COUNTS["graded"] += 1
    if result.status in ("timeout", "error"):
        COUNTS[result.status + "s"] += 1
    return result


def _log_failure(result: Grade, gold: str, prediction: str, timeout: float, where: str | None) -> None:
    """Warn about a verdict that counts as wrong because grading failed (errors: the first few only)."""
    place = f"{where}: " if where else ""
    if result.status == "timeout":
        log.warning("%sgrading %r against gold %r took over %.1f s: counted as wrong (status 'timeout')",
                    place, prediction[:80], gold[:80], timeout)
        return
    if COUNTS["errors"] > ERRORS_LOGGED:
        return
    log.warning("%sgrading %r against gold %r failed (%s): counted as wrong (status 'error')%s", place,
                prediction[:80], gold[:80], result.detail,
                "; further grading errors are counted, not logged" if COUNTS["errors"] == ERRORS_LOGGED else "")


def grade_detail(gold: str, prediction: str | None, timeout: float | None = None, where: str | None = None) -> Grade:
    """Whether ``prediction`` is mathematically equal to ``gold``, and how that was decided.

    A missing or blank prediction (or gold) is wrong with ``status="no_answer"``. Verdicts,
    timeouts included (they say so), are cached per ``(gold, prediction)`` pair because pools
    repeat the same answers many times and a hostile answer should cost its time once. A
    timeout or a grader error is logged (naming ``where``, the answer's place) when the pair is
    first graded, and counted in :data:`COUNTS`.
    """
    if prediction is None or not prediction.strip() or not gold.strip():
        return Grade(False, "no_answer")
    seconds = TIMEOUT_SECONDS if timeout is None else float(timeout)
    before = _grade_cached.cache_info().misses
    result = _grade_cached(gold, prediction, seconds)
    if result.status in ("timeout", "error") and _grade_cached.cache_info().misses > before:
        _log_failure(result, gold, prediction, seconds, where)
    return result


def grade(gold: str, prediction: str | None, where: str | None = None) -> bool:
    """Whether ``prediction`` is mathematically equal to ``gold`` (gold first; never raises)."""
    return grade_detail(gold, prediction, where=where).correct


async def grade_async(gold: str, prediction: str | None, timeout: float | None = None,
                      where: str | None = None) -> Grade:
    """:func:`grade_detail` without blocking the event loop (the wait happens in a thread)."""
    return await asyncio.to_thread(grade_detail, gold, prediction, timeout, where)


def grading_problems(since: collections.Counter[str] | None = None) -> dict[str, int]:
    """Answers whose grading timed out or failed (both counted as wrong) in this process, or since the
    copy ``since`` of :data:`COUNTS` was taken: ``{"timeouts": n, "errors": n}``."""
    since = since or collections.Counter()
    return {key: COUNTS[key] - since[key] for key in ("timeouts", "errors")}


def grade_many(golds: Sequence[str], predictions: Sequence[str | None]) -> list[bool]:
    """:func:`grade` applied pairwise; both sequences must have the same length."""
    if len(golds) != len(predictions):
        raise InputError(
            f"{len(golds)} gold answers but {len(predictions)} predictions", where="grade_many"
        )
    return [grade(gold, prediction) for gold, prediction in zip(golds, predictions, strict=True)]
