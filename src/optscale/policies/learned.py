"""``learned``: an optimal-stopping table fitted by empirical Bayes on a calibration pool (ours).

**State** after ``n`` samples of a problem: ``n``; the quantile bin ``b`` of the best score
so far (bin edges: quantiles of the best-so-far scores of the calibration pool); ``k``, how
many samples share the *leading* answer (the answer the selection rule would return now,
capped at ``agree_cap``); with ``consensus``, whether that answer is also the most
frequent one *and* holds the best-scored sample; and the quantile bin ``l`` of the returned
sample's length in tokens (``length_bins``; long answers are more often wrong, and long
problems cost more per further sample).

**Values.** Stopping in state ``s`` earns ``q(s) = P(the answer select returns now is
correct | s)``; every sample costs ``lambda`` per token. With ``t'`` the next sample's tokens
and ``s'`` the next state, backward induction from ``n_max`` gives (tokens already spent are
sunk and cancel)::

    W(s) = q(s)                                          if n = n_max
    W(s) = max(q(s), E[W(s') - lambda * t' | s])          otherwise; stop where q(s) >= E[...]

``q`` and the expectation are calibration averages over (problem, order) rows in state ``s``
(empirical transition frequencies), shrunk toward the pooled state one feature coarser
``(n, b, k, c, l) -> (n, b, k, c) -> (n, b, k) -> (n, b) -> (n)`` with ``shrink`` pseudo-rows::

    est(s) = (sum over rows in s + shrink * est(parent(s))) / (rows in s + shrink)

so a state seen a handful of times in calibration borrows the estimate of the states around
it instead of stopping (or sampling on) on a few lucky rows. ``--budget F`` bisects ``lambda``
(log scale) to the least value whose calibration mean tokens are at most ``F`` times those
of Best-of-``n_max``.

This is the classical finite-horizon optimal-stopping recursion (Chow, Robbins & Siegmund,
*Great Expectations: The Theory of Optimal Stopping*, 1971) with the value and transition
kernel estimated by empirical Bayes (Robbins, 1956) from a calibration pool, in the spirit of
learned stopping for Best-of-N sampling (e.g. the agreement- and score-aware rules of
arXiv 2509.21091 and 2510.01394). The fitted table is a small, versioned JSON file
(:data:`FORMAT`) holding its settings, the calibration pool's sha256 and statistics, and the
decision in every state; :func:`fit_table` writes it, ``--set table=FILE`` uses it.

**No report on calibration problems.** The table records the problems it was fitted on
(``calibration.problem_keys``: the sorted :func:`optscale.priors.problem_key` of each problem's
``(id, question)``, 16 hex digits each) and the policy refuses (:class:`InputError` at
``settings.table``) to replay or run on any of them, with the same check as the population
prior's (:func:`optscale.priors.check_unseen`): a table scored on its own calibration problems
looks better than it is. Fit on a separate calibration pool. Tables without that list (written
before it existed) are refused with a request to refit.

**Limits.** ``bins`` <= :data:`MAX_BINS`, ``agree_cap`` <= :data:`MAX_AGREE_CAP`,
``length_bins`` <= :data:`MAX_LENGTH_BINS`, and the table's size ``n_max x bins x (agree_cap + 1)
x C x L`` <= :data:`MAX_TABLE_CELLS`; fits and table files beyond them are refused.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_serializer, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..errors import InputError
from ..io import read_json, write_json
from ..priors import KEY_CHARS, check_unseen, problem_keys
from .base import ReplayBatch
from .common import PolicyBase, score_or_zero
from .episode import Step
from .selection import Selection

__all__ = ["FORMAT", "Learned", "StoppingTable", "file_sha256", "fit_table", "load_table", "table_states"]

#: Identifies the layout (and version) of a stopping-table file.
FORMAT = "optscale-stopping-table/1"

#: Defaults of the fit, chosen on calibration data of simulated pools (see benchmarks/policy_frontier.py).
DEFAULT_BINS = 8
DEFAULT_AGREE_CAP = 6
DEFAULT_SHRINK = 20.0
DEFAULT_LENGTH_BINS = 3

# Largest (rows x width x answers) block the state features work on at once.
_BLOCK = 4_000_000

#: Most quantile bins of the best score so far.
MAX_BINS = 256
#: Largest cap on the count of samples sharing the returned answer.
MAX_AGREE_CAP = 1024
#: Most quantile bins of the returned sample's tokens.
MAX_LENGTH_BINS = 64
#: Most cells ``n_max x bins x (agree_cap + 1) x C x L`` a table may have (its stop array, in bytes).
MAX_TABLE_CELLS = 2**24

#: What ``calibration.problem_keys`` holds, written into every table.
PROBLEM_KEY_TEXT = (f"first {KEY_CHARS} hex digits of the sha256 of the JSON pair [id, question] of each calibration "
                    "problem (optscale.priors.problem_key); the learned policy refuses to run on these problems")


def table_cells(n_max: int, bins: int, agree_cap: int, consensus: bool, length_bins: int) -> int:
    """Cells of a table's stop array (Python integers: no overflow)."""
    return int(n_max) * int(bins) * (int(agree_cap) + 1) * (2 if consensus else 1) * int(length_bins)


def _size_error(n_max: int, bins: int, agree_cap: int, consensus: bool, length_bins: int) -> str | None:
    cells = table_cells(n_max, bins, agree_cap, consensus, length_bins)
    if cells <= MAX_TABLE_CELLS:
        return None
    return (f"n_max x bins x (agree_cap + 1) x {2 if consensus else 1} x length_bins = {n_max} x {bins} x "
            f"{agree_cap + 1} x {2 if consensus else 1} x {length_bins} = {cells} table cells, more than the limit "
            f"{MAX_TABLE_CELLS}; use fewer bins, a smaller agree_cap or fewer length bins")


# -- the state ---------------------------------------------------------------------------------
def table_states(score: np.ndarray, code: np.ndarray, tokens: np.ndarray, width: int, edges: np.ndarray,
                 agree_cap: int, consensus: bool, length_edges: np.ndarray, rule: Selection | str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """State index and returned position after each prefix ``1..width`` of every row.

    ``score``, ``code`` and ``tokens`` are ``(B, N)`` with ``N >= width``. The state index is
    ``((b * (agree_cap + 1) + k) * C + c) * L + l`` (``C`` = 2 with ``consensus``, else 1;
    ``L = len(length_edges) + 1``); the position is the sample ``select(rule)`` returns after
    that prefix (-1: none). One vectorised implementation serves the fit, the replay and the
    live episode (a batch of one row).
    """
    rule = Selection(rule)
    score = score_or_zero(score)
    rows = score.shape[0]
    states = np.empty((rows, width), dtype=np.int32)
    chosen = np.empty((rows, width), dtype=np.int64)
    kinds = max(int(code[:, :width].max(initial=-1)) + 1, 1)
    step = max(1, _BLOCK // (width * max(kinds, width)))
    for lo in range(0, rows, step):
        part = slice(lo, lo + step)
        s, c = _prefix_states(score[part, :width], code[part, :width], tokens[part, :width], kinds, edges, agree_cap,
                              consensus, length_edges, rule)
        states[part], chosen[part] = s, c
    return states, chosen


def _prefix_states(score, code, tokens, kinds, edges, cap, consensus, length_edges, rule):
    b, w = score.shape
    pos = np.arange(w)
    rows = np.arange(b)[:, None]
    # Best-scored sample so far (earliest on ties), as Best-of-N selects it.
    run_max = np.maximum.accumulate(score, axis=1)
    prev = np.concatenate([np.full((b, 1), -np.inf), run_max[:, :-1]], axis=1)
    best = np.maximum.accumulate(np.where(score > prev, pos, 0), axis=1)
    best_code = code[rows, best]
    bins = np.searchsorted(edges, run_max, side="right") if len(edges) else np.zeros((b, w), dtype=np.int64)
    onehot = code[:, :, None] == np.arange(kinds)
    tally = np.cumsum(onehot, axis=1, dtype=np.int32)
    top = tally.max(axis=2)
    if rule is Selection.BEST:
        lead = best_code
        chosen = best
    else:
        # The vote's winner after each prefix: largest total weight, ties to the answer seen first.
        weight = tally if rule is Selection.MAJORITY else np.cumsum(np.where(onehot, score[:, :, None], 0.0), axis=1)
        present = tally > 0
        first = np.where(onehot.any(axis=1), onehot.argmax(axis=1), w)[:, None, :]
        wmax = np.where(present, weight, -np.inf).max(axis=2, keepdims=True)
        first_lead = np.where(present & (weight >= wmax), first, w).min(axis=2)
        lead = np.where(first_lead < w, code[rows, np.minimum(first_lead, w - 1)], -1)
        # Its highest-scoring sample so far (earliest on ties), as the vote returns it.
        mine = code[:, :, None] == np.maximum(lead, 0)[:, None, :]  # (b, sample, prefix)
        masked = np.where(mine & (pos[:, None] <= pos[None, :])[None], score[:, :, None], -np.inf)
        chosen = np.where(lead >= 0, masked.argmax(axis=1), -1)
    count = np.where(lead >= 0, np.take_along_axis(tally, np.maximum(lead, 0)[:, :, None], axis=2)[..., 0], 0)
    state = bins * (cap + 1) + np.minimum(count, cap)
    if consensus:
        agree = (lead >= 0) & (count == top) & (lead == best_code)
        state = state * 2 + agree
    if len(length_edges):
        length = np.where(chosen >= 0, tokens[rows, np.maximum(chosen, 0)], 0.0)
        state = state * (len(length_edges) + 1) + np.searchsorted(length_edges, length, side="right")
    return state, chosen


# -- the table ---------------------------------------------------------------------------------
def _increasing(values) -> bool:
    return (isinstance(values, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                             and math.isfinite(x) for x in values)
            and all(a < b for a, b in zip(values, values[1:])))


@dataclass(frozen=True, eq=False)
class StoppingTable:
    """A fitted stopping table: settings, provenance and the stop decision in every state.

    ``stop`` has shape ``(n_max, bins, agree_cap + 1, C, L)`` (``C`` = 2 with ``consensus``,
    else 1; ``L = len(length_edges) + 1``); entry ``[n - 1, b, k, c, l]`` says whether to stop
    after ``n`` samples in state ``(b, k, c, l)``.
    """

    n_max: int
    select: str
    lam: float
    edges: np.ndarray
    agree_cap: int
    consensus: bool
    length_edges: np.ndarray
    shrink: float
    stop: np.ndarray
    budget: float | None = None
    cost: str = "tokens"
    calibration: dict = field(default_factory=dict)
    fitted: dict = field(default_factory=dict)
    #: :func:`optscale.priors.problem_keys` of the calibration problems (see the module doc).
    fitted_on: frozenset[str] = field(default_factory=frozenset)
    #: Refuse the calibration problems (:meth:`check_problems`); only a benchmark that scores a table
    #: in-sample on purpose (to choose among tables on calibration data) turns it off.
    strict: bool = True
    #: The file it was read from, if any.
    path: str | None = None

    @property
    def bins(self) -> int:
        return len(self.edges) + 1

    @property
    def uses_scores(self) -> bool:
        return len(self.edges) > 0 or self.consensus or self.select != Selection.MAJORITY.value

    def states(self, score: np.ndarray, code: np.ndarray, tokens: np.ndarray, width: int
               ) -> tuple[np.ndarray, np.ndarray]:
        return table_states(score, code, tokens, width, self.edges, self.agree_cap, self.consensus,
                            self.length_edges, self.select)

    def stops(self, states: np.ndarray) -> np.ndarray:
        """Stop decisions for a ``(B, width)`` array of state indices (column j: after j + 1 samples)."""
        flat = self.stop.reshape(self.n_max, -1)
        return flat[np.arange(states.shape[1])[None, :], states]

    def check_problems(self, ids, questions) -> None:
        """Refuse (:class:`InputError` at ``settings.table``) problems this table was fitted on."""
        if self.strict:
            check_unseen(self.fitted_on, ids, questions, f"stopping table {self.path or self.label()}",
                         "settings.table", "fit the table on a separate calibration pool (`optscale policy fit` on "
                         "problems you do not report on) and replay or run it on the others")

    def label(self) -> str:
        sha = self.calibration.get("sha256") or ""
        return f"table(n_max={self.n_max}, select={self.select}, lambda={self.lam:.3g}" + (
            f", calibration {sha[:12]})" if sha else ")")

    def to_json(self) -> dict:
        """The JSON document: format, settings, calibration, fitted statistics, legend, decisions."""
        chars = np.where(self.stop, "S", "C")
        columns = ("other", "consensus") if self.consensus else ("any",)
        decisions = [
            {"n": n + 1, "bin": b, "length": m,
             **{name: "".join(chars[n, b, :, c, m]) for c, name in enumerate(columns)}}
            for n in range(self.n_max) for b in range(self.bins) for m in range(len(self.length_edges) + 1)
        ]
        return {
            "format": FORMAT,
            "settings": {
                "n_max": self.n_max, "select": self.select, "lambda": self.lam, "budget": self.budget,
                "cost": self.cost, "bins": self.bins, "edges": [float(e) for e in self.edges],
                "agree_cap": self.agree_cap, "consensus": self.consensus,
                "length_bins": len(self.length_edges) + 1, "length_edges": [float(e) for e in self.length_edges],
                "shrink": self.shrink,
            },
            "calibration": {**self.calibration, "problem_key": PROBLEM_KEY_TEXT,
                            "problem_keys": sorted(self.fitted_on)},
            "fitted": self.fitted,
            "legend": ("decisions[i] is the state after n samples whose best score so far lies in bin `bin` (bin b: "
                       "edges[b-1] < best <= edges[b]) and whose returned sample's tokens lie in bin `length` (of "
                       "length_edges, alike); character k of each string is for k samples sharing the answer select "
                       "returns (the last: agree_cap or more): S stop, C continue; `consensus`: that answer is also "
                       "the most frequent and holds the best-scored sample, `other`: it is not"),
            "decisions": decisions,
        }

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_json())

    @classmethod
    def from_json(cls, data: Any, where: str) -> StoppingTable:
        """Validate a parsed table; errors name ``where field <key>``."""
        if not isinstance(data, dict):
            raise InputError("not a stopping table (expected a JSON object)", where)
        if data.get("format") != FORMAT:
            raise InputError(f"expected format {FORMAT!r} (a table written by `policy fit`), got "
                             f"{data.get('format')!r}", f"{where} field format")
        s = data.get("settings")
        if not isinstance(s, dict):
            raise InputError("missing or not an object", f"{where} field settings")

        def get(key, kind, test, text):
            value = s.get(key)
            ok = isinstance(value, kind) and not isinstance(value, bool) if kind is not bool else isinstance(value, bool)
            if not ok or not test(value):
                raise InputError(f"must be {text}, got {value!r}", f"{where} field settings.{key}")
            return value

        number = (int, float)
        from .common import N_MAX_LIMIT

        n_max = get("n_max", int, lambda v: 1 <= v <= N_MAX_LIMIT, f"an integer from 1 to {N_MAX_LIMIT}")
        select = get("select", str, lambda v: v in {e.value for e in Selection},
                     "one of " + ", ".join(e.value for e in Selection))
        lam = get("lambda", number, lambda v: math.isfinite(v) and v >= 0, "a number >= 0")
        cap = get("agree_cap", int, lambda v: 1 <= v <= MAX_AGREE_CAP, f"an integer from 1 to {MAX_AGREE_CAP}")
        consensus = get("consensus", bool, lambda v: True, "true or false")
        shrink = get("shrink", number, lambda v: math.isfinite(v) and v >= 0, "a number >= 0")
        edges = get("edges", list, lambda v: len(v) < MAX_BINS and _increasing(v),
                    f"a list of at most {MAX_BINS - 1} increasing numbers")
        bins = get("bins", int, lambda v: v == len(edges) + 1, f"len(edges) + 1 = {len(edges) + 1}")
        length_edges = get("length_edges", list, lambda v: len(v) < MAX_LENGTH_BINS and _increasing(v),
                           f"a list of at most {MAX_LENGTH_BINS - 1} increasing numbers")
        lengths = get("length_bins", int, lambda v: v == len(length_edges) + 1,
                      f"len(length_edges) + 1 = {len(length_edges) + 1}")
        too_big = _size_error(n_max, bins, cap, consensus, lengths)
        if too_big:
            raise InputError(too_big, f"{where} field settings")
        budget = s.get("budget")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, number)):
            raise InputError(f"must be a number or null, got {budget!r}", f"{where} field settings.budget")
        cost = get("cost", str, lambda v: v in ("tokens", "samples"), "tokens or samples")
        calibration = data.get("calibration")
        if not isinstance(calibration, dict):
            raise InputError("missing or not an object", f"{where} field calibration")
        keys = calibration.get("problem_keys")
        if keys is None:
            raise InputError("missing: the table does not record the problems it was fitted on, so nothing can stop "
                             "it from being reported on them (a table written by an older optscale); refit it with "
                             "`optscale policy fit`", f"{where} field calibration.problem_keys")
        hexdigits = set("0123456789abcdef")
        if not (isinstance(keys, list) and keys and all(
                isinstance(k, str) and len(k) == KEY_CHARS and not set(k) - hexdigits for k in keys)):
            raise InputError(f"must be a non-empty list of {KEY_CHARS}-digit lowercase hex strings (the problems the "
                             "table was fitted on)", f"{where} field calibration.problem_keys")
        calibration = {k: v for k, v in calibration.items() if k not in ("problem_key", "problem_keys")}
        columns = ("other", "consensus") if consensus else ("any",)
        rows = data.get("decisions")
        states = n_max * bins * lengths
        if not isinstance(rows, list) or len(rows) != states:
            raise InputError(f"must list n_max x bins x length_bins = {states} states, got "
                             f"{len(rows) if isinstance(rows, list) else type(rows).__name__}", f"{where} field decisions")
        stop = np.zeros((n_max, bins, cap + 1, len(columns), lengths), dtype=bool)
        seen = np.zeros((n_max, bins, lengths), dtype=bool)
        for i, row in enumerate(rows):
            place = f"{where} field decisions[{i}]"
            if not isinstance(row, dict):
                raise InputError("must be an object", place)
            index = []
            for key, top in (("n", n_max), ("bin", bins - 1), ("length", lengths - 1)):
                low = 1 if key == "n" else 0
                value = row.get(key)
                if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= top):
                    raise InputError(f"{key} must be an integer from {low} to {top}, got {value!r}", place)
                index.append(value - low)
            if seen[tuple(index)]:
                raise InputError(f"state n={row['n']} bin={row['bin']} length={row['length']} is listed twice", place)
            seen[tuple(index)] = True
            n, b, m = index
            for c, name in enumerate(columns):
                text = row.get(name)
                if not isinstance(text, str) or len(text) != cap + 1 or set(text) - {"S", "C"}:
                    shown = repr(text) if not isinstance(text, str) or len(text) <= 60 else \
                        f"{text[:60]!r}... ({len(text)} characters)"
                    raise InputError(f"{name} must be {cap + 1} characters S or C, got {shown}", place)
                stop[n, b, :, c, m] = [ch == "S" for ch in text]
        stop[n_max - 1] = True
        return cls(n_max=n_max, select=select, lam=float(lam), edges=np.array(edges, dtype=float), agree_cap=cap,
                   consensus=consensus, length_edges=np.array(length_edges, dtype=float), shrink=float(shrink),
                   stop=stop, budget=budget, cost=cost, calibration=calibration,
                   fitted=dict(data.get("fitted") or {}), fitted_on=frozenset(keys), path=where)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (the calibration pool's identity in a table)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=16)
def _cached_table(path: str, mtime: float, size: int) -> StoppingTable:
    return StoppingTable.from_json(read_json(path), path)


def load_table(path: str | Path) -> StoppingTable:
    """Read and validate a table file (cached until the file changes)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        raise InputError("stopping table not found", str(p)) from None
    return _cached_table(str(p), st.st_mtime, st.st_size)


# -- the fit -----------------------------------------------------------------------------------
@dataclass
class _Calibration:
    """What the fit needs of a calibration batch, computed once: states, outcomes, costs."""

    states: np.ndarray  #: (rows, n_max) state index after each prefix
    correct: np.ndarray  #: (rows, n_max) whether the returned sample is correct after each prefix
    cost: np.ndarray  #: (rows, n_max) cost of each sample (0 beyond the row's samples)
    available: np.ndarray  #: (rows,)
    shape: tuple[int, ...]  #: size of each feature: (bins, agree_cap + 1, consensus columns, length bins)

    def replay(self, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Samples used, correctness and cost per row under a stop table ``(n_max, states)``."""
        rows, width = self.states.shape
        hit = stop[np.arange(width)[None, :], self.states]
        hit[:, -1] = True
        hit |= np.arange(1, width + 1)[None, :] >= self.available[:, None]
        n = hit.argmax(axis=1) + 1
        spent = np.cumsum(self.cost, axis=1)[np.arange(rows), n - 1]
        return n, self.correct[np.arange(rows), n - 1], spent


def _shrunk(values: np.ndarray, keys: np.ndarray, shape: tuple[int, ...], shrink: float) -> np.ndarray:
    """Per-state means of ``values`` grouped by full state ``keys``, each level (one more feature of
    ``shape``) shrunk toward the level above it, from ``n`` alone down to the full state."""
    est = np.array([values.mean()])  # n only
    for m, size in enumerate(shape):
        if size == 1:
            continue
        key = keys // int(np.prod(shape[m + 1:], dtype=np.int64))
        total = np.bincount(key, values, minlength=est.size * size)
        count = np.bincount(key, minlength=est.size * size)
        parent = np.repeat(est, size)
        est = np.where(count > 0, (total + shrink * parent) / np.maximum(count + shrink, 1e-300), parent)
    return est


def _prepare(batch: ReplayBatch, n_max: int, rule: Selection, bins: int, agree_cap: int, consensus: bool,
             length_bins: int) -> tuple[_Calibration, np.ndarray, np.ndarray, str]:
    score = score_or_zero(batch.flat("score"))
    code, correct, tokens = batch.flat("answer"), batch.flat("correct"), batch.flat("tokens")
    available = np.minimum(batch.flat_available(), n_max)
    if int(batch.available.max()) < n_max:
        raise InputError(f"the calibration pool has at most {int(batch.available.max())} samples per problem; "
                         f"fit for an n_max it reaches", "n_max")
    inside = np.arange(n_max)[None, :] < available[:, None]
    if rule is not Selection.BEST and not (code[:, :n_max][inside] >= 0).any():
        raise InputError(f"no sample of {batch.source} has an extracted answer, so select={rule.value} (a vote over "
                         "answers) never returns one and there is nothing to fit; give a pool with answers",
                         f"{batch.source} field samples[].answer")
    edges = np.zeros(0)
    if bins > 1 and batch.has_scores:
        best = np.maximum.accumulate(score[:, :n_max], axis=1)[inside]
        edges = np.unique(np.round(np.quantile(best, np.arange(1, bins) / bins), 6))
        edges = edges[edges < best.max()]
    if not batch.has_scores:
        consensus = False
    cost_name = "tokens" if tokens[:, :n_max][inside].sum() > 0 else "samples"
    cost = np.where(inside, tokens[:, :n_max] if cost_name == "tokens" else 1.0, 0.0)
    length_edges = np.zeros(0)
    if length_bins > 1 and cost_name == "tokens":
        _, chosen = table_states(score, code, tokens, n_max, edges, agree_cap, consensus, length_edges, rule)
        length = np.take_along_axis(tokens[:, :n_max], np.maximum(chosen, 0), axis=1)[inside & (chosen >= 0)]
        if length.size:
            length_edges = np.unique(np.round(np.quantile(length, np.arange(1, length_bins) / length_bins), 3))
            length_edges = length_edges[length_edges < length.max()]
    states, chosen = table_states(score, code, tokens, n_max, edges, agree_cap, consensus, length_edges, rule)
    right = np.take_along_axis(correct[:, :n_max], np.maximum(chosen, 0), axis=1) & (chosen >= 0)
    shape = (len(edges) + 1, agree_cap + 1, 2 if consensus else 1, len(length_edges) + 1)
    return _Calibration(states, right, cost, available, shape), edges, length_edges, cost_name


def _q_values(cal: _Calibration, shrink: float) -> np.ndarray:
    """P(correct | state) after each n, shrunk toward coarser states: ``(n_max, states)``."""
    width = cal.states.shape[1]
    out = []
    for j in range(width):
        live = cal.available > j
        out.append(_shrunk(cal.correct[live, j].astype(float), cal.states[live, j], cal.shape, shrink))
    return np.array(out)


def _induction(cal: _Calibration, q: np.ndarray, lam: float, shrink: float) -> np.ndarray:
    """Backward induction: the stop decision ``(n_max, states)`` for cost ``lam`` per unit."""
    width = q.shape[0]
    stop = np.ones_like(q, dtype=bool)
    value = q[width - 1]
    for j in range(width - 2, -1, -1):
        go = cal.available > j + 1
        if go.any():
            after = value[cal.states[go, j + 1]] - lam * cal.cost[go, j + 1]
            cont = _shrunk(after, cal.states[go, j], cal.shape, shrink)
        else:
            cont = np.full(q.shape[1], -np.inf)
        stop[j] = q[j] >= cont
        value = np.maximum(q[j], cont)
    return stop


def fit_table(
    batch: ReplayBatch,
    n_max: int,
    select: Selection | str = Selection.BEST,
    lam: float | None = None,
    budget: float | None = None,
    bins: int = DEFAULT_BINS,
    agree_cap: int = DEFAULT_AGREE_CAP,
    consensus: bool = True,
    length_bins: int = DEFAULT_LENGTH_BINS,
    shrink: float = DEFAULT_SHRINK,
    source: dict | None = None,
    strict: bool = True,
) -> StoppingTable:
    """Fit a stopping table on a calibration batch (every problem, every order of it).

    Give exactly one of ``lam`` (cost per token, >= 0) or ``budget`` (a share of
    Best-of-``n_max``'s mean tokens in (0, 1]: ``lam`` is bisected so that the calibration
    mean tokens are at most that share). ``source`` (pool name, sha256) goes into the
    table's ``calibration`` section; the table records ``batch``'s problems and refuses to be
    applied to them unless ``strict`` is False (for a benchmark choosing among tables on their
    own calibration data). Errors name the argument (``n_max``, ``select``, ``lam``,
    ``budget``, ``bins``, ``agree_cap``, ``length_bins``, ``shrink``); the limits are
    :data:`MAX_BINS`, :data:`MAX_AGREE_CAP`, :data:`MAX_LENGTH_BINS` and :data:`MAX_TABLE_CELLS`.
    """
    from .common import N_MAX_LIMIT

    def integer(value, name, low, high):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
            raise InputError(f"must be an integer from {low} to {high}, got {value!r}", name)
        return int(value)

    n_max, bins = integer(n_max, "n_max", 1, N_MAX_LIMIT), integer(bins, "bins", 1, MAX_BINS)
    agree_cap = integer(agree_cap, "agree_cap", 1, MAX_AGREE_CAP)
    try:
        rule = Selection(getattr(select, "value", select))
    except ValueError:
        raise InputError(f"must be one of {', '.join(e.value for e in Selection)}, got {select!r}", "select") from None
    if (lam is None) == (budget is None):
        raise InputError("give exactly one of lam (cost per token) and budget (share of BoN's tokens)", "budget")
    if lam is not None and not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
        raise InputError(f"must be a number >= 0, got {lam!r}", "lam")
    if budget is not None and not (isinstance(budget, (int, float)) and 0 < budget <= 1):
        raise InputError(f"must be a share of Best-of-N's tokens in (0, 1], got {budget!r}", "budget")
    if not (isinstance(shrink, (int, float)) and math.isfinite(shrink) and shrink >= 0):
        raise InputError(f"must be a number >= 0, got {shrink!r}", "shrink")
    if not batch.has_scores and rule is not Selection.MAJORITY:
        raise InputError(f"select={rule.value} needs sample scores and {batch.source} has none; use "
                         "select=majority", "select")
    length_bins = integer(length_bins, "length_bins", 1, MAX_LENGTH_BINS)
    too_big = _size_error(n_max, bins, agree_cap, bool(consensus), length_bins)
    if too_big:
        raise InputError(too_big, "agree_cap" if agree_cap > DEFAULT_AGREE_CAP else "bins" if bins > DEFAULT_BINS
                         else "length_bins" if length_bins > DEFAULT_LENGTH_BINS else "n_max")
    cal, edges, length_edges, cost_name = _prepare(batch, n_max, rule, bins, agree_cap, consensus, length_bins)
    consensus = cal.shape[2] == 2
    q = _q_values(cal, shrink)
    bon_cost = cal.cost.sum(axis=1).mean()
    if budget is not None:
        lam = _bisect(cal, q, shrink, budget * bon_cost, budget)
    stop = _induction(cal, q, float(lam), shrink)
    n, right, spent = cal.replay(stop)
    p, r, _ = batch.shape
    inside = np.arange(batch.shape[2])[None, :] < batch.available[:, None]
    calibration = {
        **(source or {}),
        "problems": p, "samples": int(batch.available.sum()), "orders": r,
        "mean_accuracy": float(batch.correct[:, 0][inside].mean()),
        "mean_tokens": float(batch.tokens[:, 0][inside].mean()),
        "fixed_n_max_accuracy": float(cal.correct[np.arange(cal.correct.shape[0]), cal.available - 1].mean()),
        f"fixed_n_max_{cost_name}": float(bon_cost),
    }
    fitted = {"accuracy": float(right.mean()), "mean_samples": float(n.mean()), f"mean_{cost_name}": float(spent.mean()),
              "share_of_bon": float(spent.mean() / bon_cost) if bon_cost > 0 else 1.0,
              "note": "in-sample, on the calibration pool itself"}
    stop = stop.reshape(n_max, *cal.shape)
    return StoppingTable(n_max=n_max, select=rule.value, lam=float(lam), edges=edges, agree_cap=agree_cap,
                         consensus=consensus, length_edges=length_edges, shrink=float(shrink), stop=stop,
                         budget=budget, cost=cost_name, calibration=calibration, fitted=fitted,
                         fitted_on=problem_keys(batch.ids, batch.questions), strict=bool(strict))


def _bisect(cal: _Calibration, q: np.ndarray, shrink: float, target: float, budget: float) -> float:
    """The least cost per unit (log-scale bisection) whose calibration mean cost is at most ``target``."""
    def spent(lam: float) -> float:
        return float(cal.replay(_induction(cal, q, lam, shrink))[2].mean())

    if spent(0.0) <= target:
        return 0.0
    floor = float(cal.cost[:, 0].mean())
    if floor > target * (1 + 1e-12):
        share = floor / max(cal.cost.sum(axis=1).mean(), 1e-300)
        raise InputError(f"{budget} is below what one sample per problem costs ({share:.3f} of Best-of-N's); "
                         f"give at least that", "budget")
    unit = float(cal.cost[cal.cost > 0].min())
    hi = 1.0 / unit
    while spent(hi) > target:
        hi *= 4.0
    lo = hi / 4.0 if spent(hi / 4.0) > target else 0.0
    lo = lo or hi * 1e-9
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        if spent(mid) <= target:
            hi = mid
        else:
            lo = mid
        if hi / lo < 1.001:
            break
    return hi


# -- the policy --------------------------------------------------------------------------------
class Learned(PolicyBase):
    """Optimal stopping by a table fitted on calibration data (``optscale policy fit``): stop when
    P(correct now) >= E[value after one more sample] - lambda x its tokens."""

    name: ClassVar[str] = "learned"
    label: ClassVar[str] = "Learned stopping table"  # row name in report tables
    table: Any = Field(None, validate_default=True,
                       description="stopping table: a JSON file written by `optscale policy fit`, or a StoppingTable; "
                                   "select defaults to the table's")

    @model_validator(mode="before")
    @classmethod
    def _read_table_once(cls, data):
        """Read a table file once, here: the policy keeps the object it checked (a later change of
        the file does not reach it), and ``select`` defaults to the table's."""
        if isinstance(data, dict) and data.get("table") is not None:
            try:
                table = _as_table(data["table"])
            except (InputError, TypeError):
                return data  # reported, located, by the table's own validator
            data = {**data, "table": table}
            if "select" not in data:
                data["select"] = table.select
        return data

    @field_validator("table")
    @classmethod
    def _check_table(cls, value, info):
        if value is None:
            raise PydanticCustomError("table", "learned needs a stopping table: fit one with `optscale policy fit` "
                                               "and pass its JSON file")
        try:
            table = _as_table(value)
        except InputError as exc:
            raise PydanticCustomError("table", "{message}", {"message": str(exc)}) from None
        except TypeError as exc:
            raise PydanticCustomError("table", "{message}", {"message": str(exc)}) from None
        n_max, rule = info.data.get("n_max"), info.data.get("select")
        if n_max is not None and table.n_max != n_max:
            raise PydanticCustomError("table", "{message}", {"message": (
                f"{_where(value)} was fitted for n_max {table.n_max}, not {n_max}; fit a table for this n_max")})
        if rule is not None and table.select != Selection(rule).value:
            raise PydanticCustomError("table", "{message}", {"message": (
                f"{_where(value)} was fitted for select={table.select}, not {Selection(rule).value}; fit a table "
                "for this selection rule or leave select unset")})
        return table

    @field_serializer("table")
    def _table_text(self, value):
        return value.path if value.path is not None else value.label()

    def stopping_table(self) -> StoppingTable:
        """The table read and checked when the policy was built (never read again)."""
        return self.table

    def episode_context(self, problem) -> dict:
        self.table.check_problems([problem.id], [problem.question])
        return {}

    def requires_scores(self) -> bool:
        return self.stopping_table().uses_scores

    def initial_plan(self) -> int:
        return 1

    def decide(self, episode) -> Step:
        table = self.stopping_table()
        score, code = episode.arrays()
        states, _ = table.states(score, code, np.array([episode.tokens], dtype=float), episode.n)
        if episode.n < self.n_max and not table.stops(states)[0, -1]:
            return Step(False, episode.n + 1)
        return Step(True, episode.n, "table")

    def replay_stops(self, batch):
        table = self.stopping_table()
        table.check_problems(batch.ids, batch.questions)
        width = min(self.n_max, batch.shape[2])
        states, _ = table.states(batch.flat("score"), batch.flat("answer"), batch.flat("tokens"), width)
        hit = table.stops(states)
        n_used = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, self.n_max)
        return n_used, {}


def _as_table(value) -> StoppingTable:
    if isinstance(value, StoppingTable):
        return value
    if isinstance(value, (str, Path)):
        return load_table(value)
    raise TypeError("table must be a stopping-table file path or a StoppingTable")


def _where(value) -> str:
    if isinstance(value, StoppingTable) and value.path is not None:
        return value.path
    return str(value) if isinstance(value, (str, Path)) else "the table"
