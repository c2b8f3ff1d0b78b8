"""The stopping-table file: what a fit writes and every policy reads, validated by pydantic."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ...errors import InputError
from ...io import read_json, write_json
from ...priors import KEY_CHARS, check_unseen, problem_key
from ..common import N_MAX_LIMIT
from ..selection import Selection
from .state import MAX_AGREE_CAP, MAX_BINS, MAX_LENGTH_BINS, MAX_MARGIN_CAP, _size_error, table_states

#: Identifies the layout (and version) of the stopping-table files ``policy fit`` writes.
FORMAT = "optscale-stopping-table/2"
#: Layouts still read: /1 (no margin feature, no lambda mixture, no cross-validation record).
FORMATS = ("optscale-stopping-table/1", FORMAT)

#: What ``calibration.problem_keys`` holds, written into every table.
PROBLEM_KEY_TEXT = (f"first {KEY_CHARS} hex digits of the sha256 of the JSON pair [id, question] of each calibration "
                    "problem (optscale.priors.problem_key); the learned policy refuses to run on these problems")

LEGEND = ("decisions[i] is the state after n samples whose best score so far lies in bin `bin` (bin b: edges[b-1] < "
          "best <= edges[b]), whose leading answer is ahead of the runner-up by `margin` samples (capped at "
          "margin_cap; always 0 without the margin feature) and whose returned sample's tokens lie in bin `length` "
          "(of length_edges, alike); character k of each string is for k samples sharing the answer select returns "
          "(the last: agree_cap or more): S stop, C continue; `consensus`: that answer is also the most frequent and "
          "holds the best-scored sample, `other`: it is not. With settings.mix, a problem whose key (see "
          "calibration.problem_key) read as a fraction in [0, 1) is below mix.share follows decisions_mix (fitted "
          "at mix.lambda) instead")


# -- the file, as pydantic models ------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


Finite = Annotated[float, Field(allow_inf_nan=False)]
Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
_KEY = re.compile(f"[0-9a-f]{{{KEY_CHARS}}}")
Edges = Annotated[list[Finite], Field(max_length=MAX_BINS - 1)]
LengthEdges = Annotated[list[Finite], Field(max_length=MAX_LENGTH_BINS - 1)]


def _increasing(values: list[float]) -> list[float]:
    if any(a >= b for a, b in zip(values, values[1:])):
        raise ValueError("must be increasing")
    return values


class Mix(_Strict):
    """The second lambda of a budget fit and the share of problems that follow it."""

    lam: Finite = Field(alias="lambda")
    share: Finite = Field(ge=0, le=1)


class Settings(_Strict):
    n_max: int = Field(ge=1, le=N_MAX_LIMIT)
    select: Literal["best", "majority", "weighted"]
    lam: Finite = Field(alias="lambda")
    agree_cap: int = Field(ge=0, le=MAX_AGREE_CAP)
    margin_cap: int = Field(0, ge=0, le=MAX_MARGIN_CAP)
    consensus: bool
    shrink: Finite = Field(ge=0)
    edges: Edges
    bins: int = Field(ge=1, le=MAX_BINS)
    length_edges: LengthEdges
    length_bins: int = Field(ge=1, le=MAX_LENGTH_BINS)
    budget: Finite | None = Field(None, gt=0, le=1)
    cost: Literal["tokens", "samples"]
    mix: Mix | None = None
    features: list[str] | None = None

    _edges = field_validator("edges", "length_edges")(_increasing)

    @field_validator("bins", "length_bins")
    @classmethod
    def _count(cls, value, info):
        edges = info.data.get("edges" if info.field_name == "bins" else "length_edges")
        if edges is not None and value != len(edges) + 1:
            raise ValueError(f"must be len({'edges' if info.field_name == 'bins' else 'length_edges'}) + 1 = "
                             f"{len(edges) + 1}, got {value}")
        return value

    @model_validator(mode="after")
    def _size(self):
        if (self.lam < 0 or (self.mix is not None and self.mix.lam < 0)) and self.budget is None:
            raise ValueError("a negative lambda (a reward per token, to spend a budget) needs the budget")
        too_big = _size_error(self.n_max, self.bins, self.agree_cap, self.consensus, self.length_bins,
                              self.margin_cap)
        if too_big:
            raise ValueError(too_big)
        return self


class Calibration(_Strict):
    pool: str | None = None
    sha256: Hex64 | None = None
    problems: int = Field(ge=1)
    samples: int = Field(ge=0)
    orders: int = Field(ge=1)
    mean_accuracy: Finite
    mean_tokens: Finite
    fixed_n_max_accuracy: Finite
    fixed_n_max_tokens: Finite | None = None
    fixed_n_max_samples: Finite | None = None
    problem_key: str | None = None
    problem_keys: list[str] | None = Field(None, validate_default=True)

    @field_validator("problem_keys")
    @classmethod
    def _keys(cls, value):
        if value is None:
            raise ValueError("missing: the table does not record the problems it was fitted on, so nothing can stop "
                             "it from being reported on them (a table written by an older optscale); refit it with "
                             "`optscale policy fit`")
        if not value or any(_KEY.fullmatch(k) is None for k in value):
            raise ValueError(f"must be a non-empty list of {KEY_CHARS}-digit lowercase hex strings (the problems the "
                             "table was fitted on)")
        return value


class CrossValidated(_Strict):
    """What K-fold cross-validation on the calibration problems expects of the table on new problems."""

    folds: int = Field(ge=2)
    candidates: int = Field(ge=1)
    criterion: str
    chosen: str
    accuracy: Finite
    token_share: Finite
    envelope_accuracy: Finite
    gain: Finite
    gain_ci: Annotated[list[Finite], Field(min_length=2, max_length=2)]
    summary: str


class Fitted(_Strict):
    accuracy: Finite
    mean_samples: Finite
    mean_tokens: Finite | None = None
    share_of_bon: Finite
    note: str
    cross_validated: CrossValidated | None = None
    labels: Literal["gold", "consensus"] | None = None  # absent in tables written before --labels


class Row(_Strict):
    n: int
    bin: int
    margin: int = 0
    length: int
    other: str | None = None
    consensus: str | None = None
    any: str | None = None


class TableFile(_Strict):
    """The whole table file (``format`` is checked before, with its own message)."""

    format: Literal[FORMATS]  # type: ignore[valid-type]
    settings: Settings
    calibration: Calibration
    fitted: Fitted | None = None
    legend: str | None = None
    decisions: list[Row]
    decisions_mix: list[Row] | None = None
    #: sha256 of the rest of the document (:func:`content_digest`): a table edited by hand is refused.
    digest: Hex64 | None = None

    @model_validator(mode="after")
    def _mix_pairs(self):
        if (self.settings.mix is None) != (self.decisions_mix is None):
            raise ValueError("settings.mix and decisions_mix come together (both or neither)")
        if self.format == FORMATS[0] and (self.settings.margin_cap or self.settings.mix):
            raise ValueError(f"margin_cap and mix need format {FORMAT!r}")
        return self


def _place(loc: tuple) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + {"lam": "lambda"}.get(part, part)
    return text


def _located(exc: ValidationError, where: str) -> InputError:
    """The first error of a pydantic validation, located as ``where field a.b[3].c``."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    message = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if err["type"] != "value_error" and not isinstance(value, (dict, list)):
        shown = repr(value)
        message += f", got {shown[:60]}" + (f"... ({len(shown)} characters)" if len(shown) > 60 else "")
    return InputError(message, f"{where} field {_place(loc)}" if loc else where)


# -- the table in memory ------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class StoppingTable:
    """A fitted stopping table: settings, provenance and the stop decision in every state.

    ``stop`` has shape ``(n_max, bins, agree_cap + 1, margin_cap + 1, C, L)`` (``C`` = 2 with
    ``consensus``, else 1; ``L = len(length_edges) + 1``); entry ``[n - 1, b, k, m, c, l]`` says
    whether to stop after ``n`` samples in state ``(b, k, m, c, l)``. Tables read from /1 files and
    fits without the margin feature have ``margin_cap`` 0. With ``mix_stop`` (a budget fit between
    two lambdas), a problem whose :func:`mix_fraction` is below ``mix_share`` follows ``mix_stop``
    (fitted at ``mix_lam``) instead of ``stop``.
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
    #: :func:`optscale.priors.problem_keys` of the calibration problems (see the package doc).
    fitted_on: frozenset[str] = field(default_factory=frozenset)
    #: Refuse the calibration problems (:meth:`check_problems`); only a benchmark that scores a table
    #: in-sample on purpose (to choose among tables on calibration data) turns it off.
    strict: bool = True
    #: The file it was read from, if any.
    path: str | None = None
    margin_cap: int = 0
    mix_lam: float | None = None
    mix_share: float = 0.0
    mix_stop: np.ndarray | None = None
    #: Names of the state's features (informative; see :data:`optscale.policies.learned.fit.FEATURES`).
    features: tuple[str, ...] | None = None

    @property
    def bins(self) -> int:
        return len(self.edges) + 1

    @property
    def uses_scores(self) -> bool:
        return len(self.edges) > 0 or self.consensus or self.select != Selection.MAJORITY.value

    def states(self, score: np.ndarray, code: np.ndarray, tokens: np.ndarray, width: int
               ) -> tuple[np.ndarray, np.ndarray]:
        return table_states(score, code, tokens, width, self.edges, self.agree_cap, self.consensus,
                            self.length_edges, self.select, self.margin_cap)

    def mixed(self, ids, questions) -> np.ndarray:
        """Whether each problem follows ``mix_stop`` (False everywhere without a mixture)."""
        if self.mix_stop is None:
            return np.zeros(len(ids), dtype=bool)
        return mix_fraction(ids, questions) < self.mix_share

    def stops(self, states: np.ndarray, mixed: np.ndarray | None = None) -> np.ndarray:
        """Stop decisions for a ``(B, width)`` array of state indices (column j: after j + 1 samples);
        ``mixed`` (``(B,)``): rows that follow ``mix_stop``."""
        cols = np.arange(states.shape[1])[None, :]
        hit = self.stop.reshape(self.n_max, -1)[cols, states]
        if mixed is not None and self.mix_stop is not None and mixed.any():
            other = self.mix_stop.reshape(self.n_max, -1)[cols, states]
            hit = np.where(mixed[:, None], other, hit)
        return hit

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

    def _rows(self, stop: np.ndarray) -> list[dict]:
        chars = np.where(stop, "S", "C")
        columns = ("other", "consensus") if self.consensus else ("any",)
        return [
            {"n": n + 1, "bin": b, **({"margin": m} if self.margin_cap else {}), "length": ln,
             **{name: "".join(chars[n, b, :, m, c, ln]) for c, name in enumerate(columns)}}
            for n in range(self.n_max) for b in range(self.bins) for m in range(self.margin_cap + 1)
            for ln in range(len(self.length_edges) + 1)
        ]

    def to_json(self) -> dict:
        """The JSON document: format, settings, calibration, fitted statistics, legend, decisions, and the
        ``digest`` of all that (a table edited by hand is refused when read)."""
        mix = None if self.mix_stop is None else {"lambda": self.mix_lam, "share": self.mix_share}
        doc = {
            "format": FORMAT,
            "settings": {
                "n_max": self.n_max, "select": self.select, "lambda": self.lam, "budget": self.budget,
                "cost": self.cost, "bins": self.bins, "edges": [float(e) for e in self.edges],
                "agree_cap": self.agree_cap, "margin_cap": self.margin_cap, "consensus": self.consensus,
                "length_bins": len(self.length_edges) + 1, "length_edges": [float(e) for e in self.length_edges],
                "shrink": self.shrink, "mix": mix, **({"features": list(self.features)} if self.features else {}),
            },
            "calibration": {**self.calibration, "problem_key": PROBLEM_KEY_TEXT,
                            "problem_keys": sorted(self.fitted_on)},
            "fitted": self.fitted,
            "legend": LEGEND,
            "decisions": self._rows(self.stop),
            **({"decisions_mix": self._rows(self.mix_stop)} if self.mix_stop is not None else {}),
        }
        return {**doc, "digest": content_digest(doc)}

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_json())

    @classmethod
    def from_json(cls, data: Any, where: str) -> StoppingTable:
        """Validate a parsed table (:class:`TableFile`); errors name ``where field <key>``."""
        if not isinstance(data, dict):
            raise InputError("not a stopping table (expected a JSON object)", where)
        if data.get("format") not in FORMATS:
            raise InputError(f"expected format {FORMAT!r} (a table written by `policy fit`), got "
                             f"{data.get('format')!r}", f"{where} field format")
        try:
            doc = TableFile.model_validate(data)
        except ValidationError as exc:
            raise _located(exc, where) from None
        s = doc.settings
        stop = _stop_array(doc.decisions, s, f"{where} field decisions")
        mix_stop = None if doc.decisions_mix is None else _stop_array(doc.decisions_mix, s,
                                                                      f"{where} field decisions_mix")
        if doc.format != FORMATS[0] and doc.digest is None:
            raise InputError(f"missing: format {doc.format!r} tables carry the sha256 of their content, written by "
                             "`optscale policy fit`", f"{where} field digest")
        if doc.digest is not None and doc.digest != content_digest(data):
            raise InputError("does not match the table's content: the file was changed after `optscale policy fit` "
                             "wrote it (fit it again rather than editing it)", f"{where} field digest")
        calibration = doc.calibration.model_dump(exclude={"problem_key", "problem_keys"}, exclude_none=True)
        return cls(n_max=s.n_max, select=s.select, lam=float(s.lam), edges=np.array(s.edges, dtype=float),
                   agree_cap=s.agree_cap, consensus=s.consensus, length_edges=np.array(s.length_edges, dtype=float),
                   shrink=float(s.shrink), stop=stop, budget=s.budget, cost=s.cost, calibration=calibration,
                   fitted=doc.fitted.model_dump(exclude_none=True) if doc.fitted else {},
                   fitted_on=frozenset(doc.calibration.problem_keys), path=where, margin_cap=s.margin_cap,
                   mix_lam=None if s.mix is None else s.mix.lam, mix_share=0.0 if s.mix is None else s.mix.share,
                   mix_stop=mix_stop, features=tuple(s.features) if s.features else None)


def content_digest(doc: dict) -> str:
    """sha256 of a table document's canonical JSON (sorted keys, no spaces), its ``digest`` left out."""
    doc = {k: v for k, v in doc.items() if k != "digest"}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _stop_array(rows: list[Row], s: Settings, place: str) -> np.ndarray:
    """The stop array of a list of decision rows (each state once, every string S/C of agree_cap + 1)."""
    margins = s.margin_cap + 1
    states = s.n_max * s.bins * margins * s.length_bins
    if len(rows) != states:
        raise InputError(f"must list n_max x bins x (margin_cap + 1) x length_bins = {states} states, got "
                         f"{len(rows)}", place)
    columns = ("other", "consensus") if s.consensus else ("any",)
    stop = np.zeros((s.n_max, s.bins, s.agree_cap + 1, margins, len(columns), s.length_bins), dtype=bool)
    seen = np.zeros((s.n_max, s.bins, margins, s.length_bins), dtype=bool)
    for i, row in enumerate(rows):
        at = f"{place}[{i}]"
        index = []
        for key, low, top in (("n", 1, s.n_max), ("bin", 0, s.bins - 1), ("margin", 0, margins - 1),
                              ("length", 0, s.length_bins - 1)):
            value = getattr(row, key)
            if not low <= value <= top:
                raise InputError(f"{key} must be an integer from {low} to {top}, got {value!r}", at)
            index.append(value - low)
        if seen[tuple(index)]:
            raise InputError(f"state n={row.n} bin={row.bin} margin={row.margin} length={row.length} is listed twice",
                             at)
        seen[tuple(index)] = True
        n, b, m, ln = index
        for c, name in enumerate(columns):
            text = getattr(row, name)
            if text is None or len(text) != s.agree_cap + 1 or set(text) - {"S", "C"}:
                shown = repr(text) if text is None or len(text) <= 60 else f"{text[:60]!r}... ({len(text)} characters)"
                raise InputError(f"{name} must be {s.agree_cap + 1} characters S or C, got {shown}", at)
            stop[n, b, :, m, c, ln] = [ch == "S" for ch in text]
        unused = {"other", "consensus", "any"} - set(columns)
        extra = [name for name in unused if getattr(row, name) is not None]
        if extra:
            raise InputError(f"{extra[0]} is not a column of this table (columns: {', '.join(columns)})", at)
    stop[s.n_max - 1] = True
    return stop


def mix_fraction(ids, questions) -> np.ndarray:
    """Each problem's key (:func:`optscale.priors.problem_key`) read as a fraction in [0, 1): which lambda
    of a mixed table a problem follows, the same in replay and in a live run."""
    questions = list(questions) or [None] * len(ids)
    return np.array([int(problem_key(i, q), 16) / 16.0 ** KEY_CHARS for i, q in zip(ids, questions)])


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
