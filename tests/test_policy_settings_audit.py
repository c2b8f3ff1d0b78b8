"""Every setting of every registered policy, audited: any value the settings model accepts gives
finite decisions and estimates, in replay and in a live episode, or it is refused when the policy
is built, with an InputError naming the setting.

(The hostile probe found ``beacon`` with ``winsor_low`` 5e-324 or 1e-300 answering NaN mu, sigma
and index: a replay that silently degrades, NaN in a live reply.)"""

from __future__ import annotations

import enum
import math
import types
import typing

import numpy as np
import pytest
from annotated_types import Ge, Gt, Le, Lt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optscale.errors import InputError
from optscale.policies import POLICIES, ConstantPriors, Decision, Problem, Sample, make_policy
from optscale.pools import PoolProblem
from optscale.replay import build_batch

#: Settings the audit does not generate: ``n_max`` (drawn apart), objects (priors, a fitted table).
SKIPPED_FIELDS = {"n_max", "priors", "table"}
#: Values a careless or hostile user may give, tried wherever the bounds admit them.
EXTREMES = (0.0, 5e-324, 1e-300, 1e-12, 1e-6, 0.5, 1 - 1e-12, 1 - 1e-16, 1.0, 1e6, 1e12, 1e300, -1e-300, -1.0, -1e300)


def _bounds(metadata) -> tuple[float | None, float | None, bool, bool]:
    low = high = None
    open_low = open_high = False
    for m in metadata:
        if isinstance(m, Ge):
            low = m.ge
        elif isinstance(m, Gt):
            low, open_low = m.gt, True
        elif isinstance(m, Le):
            high = m.le
        elif isinstance(m, Lt):
            high, open_high = m.lt, True
    return low, high, open_low, open_high


def _admits(value, low, high, open_low, open_high) -> bool:
    return ((low is None or (value > low if open_low else value >= low))
            and (high is None or (value < high if open_high else value <= high)))


def _strategy(annotation, metadata) -> st.SearchStrategy:
    """Values of one field: across its bounds, its edges and the extremes they admit."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return st.one_of(*(st.none() if a is type(None) else _strategy(a, metadata) for a in args))
    if typing.get_origin(annotation) is typing.Literal:
        return st.sampled_from(args)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return st.sampled_from([m.value for m in annotation])
    if annotation is bool:
        return st.booleans()
    low, high, open_low, open_high = _bounds(metadata)
    if annotation is int:
        lo = int(low) + open_low if low is not None else -10**6
        hi = int(high) - open_high if high is not None else 10**6
        return st.integers(lo, min(hi, lo + 10**6)) | st.sampled_from(sorted({lo, min(hi, lo + 1), min(hi, 64)}))
    if annotation is float:
        edges = [v for v in EXTREMES if _admits(v, low, high, open_low, open_high)]
        edges += [math.nextafter(b, d) for b, d in ((low, math.inf), (high, -math.inf)) if b is not None]
        edges = [v for v in edges if _admits(v, low, high, open_low, open_high)]
        span = st.floats(min_value=low, max_value=high, exclude_min=open_low and low is not None,
                         exclude_max=open_high and high is not None, allow_nan=False, allow_infinity=False)
        return span | st.sampled_from(edges) if edges else span
    raise AssertionError(f"the audit cannot generate {annotation!r}: teach it this setting's type")


@st.composite
def configured(draw, name: str):
    cls = POLICIES.get(name)
    settings_ = {}
    for key, field in cls.model_fields.items():
        if key in SKIPPED_FIELDS or not draw(st.booleans()):
            continue
        settings_[key] = draw(_strategy(field.annotation, field.metadata))
    if "priors" in cls.model_fields:
        settings_["priors"] = ConstantPriors(draw(st.sampled_from([0.2, 0.7, 1.5])), draw(st.sampled_from([0.05, 0.3])))
    return draw(st.integers(1, 24)), settings_


def _pool() -> list[PoolProblem]:
    """Problems with every awkward score pattern: constant rows (zero spread), 0s and 1s, ties, a
    wide spread, tiny differences, few samples, no answers."""
    rng = np.random.default_rng(5)
    rows = [np.full(12, 0.5), np.zeros(12), np.ones(12), rng.uniform(0, 1, 12), np.r_[np.zeros(6), np.ones(6)],
            0.7 + 1e-9 * rng.standard_normal(12).clip(-3, 3), rng.beta(8, 1, 12), rng.uniform(0, 1, 3)]
    problems = []
    for i, scores in enumerate(rows):
        answers = [None if i == 7 and j == 0 else str(int(s * 4)) for j, s in enumerate(scores)]
        problems.append(PoolProblem.model_validate({
            "id": f"p{i}", "answer": "2", "samples": [
                {"score": float(np.clip(s, 0, 1)), "answer": a, "correct": a == "2", "tokens": 10 + j}
                for j, (s, a) in enumerate(zip(scores, answers))]}))
    return problems


POOL = _pool()
BATCH = build_batch(POOL, orders=2, seed=1)


def _finite(value, where: str) -> None:
    if isinstance(value, (float, np.floating)) or (isinstance(value, np.ndarray) and value.dtype.kind == "f"):
        assert np.all(np.isfinite(value)), f"{where}: not finite: {value!r}"


def _check_replay(policy) -> None:
    decisions = policy.replay(BATCH)
    n_used, chosen = decisions.n_used, decisions.chosen
    assert np.all((n_used >= 1) & (n_used <= policy.n_max)), n_used
    assert np.all((chosen >= -1) & (chosen < n_used)), chosen
    for key, value in decisions.estimates.items():
        _finite(np.asarray(value, dtype=float), f"replay estimate {key}")


def _check_live(policy) -> None:
    for problem in POOL:
        episode = policy.start(Problem(id=problem.id))
        n = 0
        for sample in problem.samples[:policy.n_max]:
            decision = episode.observe(Sample(score=sample.score, answer=sample.answer, tokens=sample.tokens))
            n += 1
            assert n <= episode.planned <= policy.n_max or decision is Decision.STOP
            for key, value in episode.result().estimates.items():
                _finite(value, f"live estimate {key} after {n} samples")
            if decision is Decision.STOP:
                break
        outcome = episode.result()
        assert outcome.n_samples == n and (outcome.chosen is None or 0 <= outcome.chosen < n)


def _audit(name: str, n_max: int, settings_: dict) -> None:
    try:
        policy = make_policy(name, n_max, **settings_)
    except InputError as exc:  # refused: it must name the setting (or the budget) it refused
        assert exc.where == "n_max" or exc.where.startswith("settings."), exc
        key = exc.where.removeprefix("settings.").split(".")[0]
        assert key == "n_max" or key in settings_ or exc.where == "settings", exc
        return
    _check_replay(policy)
    _check_live(policy)


AUDITED = [name for name in POLICIES.names() if name != "learned"]  # learned's settings are a fitted table


@pytest.mark.parametrize("name", AUDITED)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_accepted_setting_gives_finite_decisions(name, data):
    n_max, settings_ = data.draw(configured(name))
    _audit(name, n_max, settings_)


@pytest.mark.parametrize("low", [5e-324, 1e-300, 1e-20])
def test_beacon_tiny_winsor_low_is_refused_or_finite(low):
    """The probe's values: the posterior stays finite, or the setting is refused by name."""
    _audit("beacon", 16, {"winsor_low": low})
    try:
        policy = make_policy("beacon", 16, winsor_low=low)
    except InputError as exc:
        assert exc.where == "settings.winsor_low"
        return
    estimates = policy.replay(BATCH).estimates
    assert all(np.all(np.isfinite(v)) for v in estimates.values())


@pytest.mark.parametrize("high", [1 - 1e-16, 1 - 1e-7])
def test_beacon_winsor_high_next_to_one_is_refused_or_finite(high):
    _audit("beacon", 16, {"winsor_high": high})


@pytest.mark.parametrize("name, extra", [("optscale", {"estimator": "map", "priors": ConstantPriors(0.7, 0.3)}),
                                         ("optscale-t", {"priors": ConstantPriors(0.7, 0.3)}),
                                         ("pandora", {"estimator": "map", "refit": True})])
@pytest.mark.parametrize("width", [5e-324, 1e-200])
def test_a_prior_narrower_than_the_fit_can_compute_still_pins_the_estimate(name, extra, width):
    """A MAP prior of width 1e-200 means "this mu, this sigma" as surely as one of 1e-6 does; it
    overflowed the objective and silently fell back to another fit."""
    narrow = make_policy(name, 16, prior_width=width, **extra).replay(BATCH)
    pinned = make_policy(name, 16, prior_width=1e-6, **extra).replay(BATCH)
    assert np.array_equal(narrow.n_used, pinned.n_used)
    for key in ("mu", "sigma"):
        assert np.allclose(narrow.estimates[key], pinned.estimates[key]), key
