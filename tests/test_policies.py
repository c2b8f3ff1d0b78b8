"""Policies: live episodes and vectorised replay agree; selection and stopping rules are right."""

import numpy as np
import pytest

from conftest import check_live_equals_replay, need_module, toy_pool
from optscale.errors import InputError
from optscale.policies import (ConstantPriors, Decision, Prior, Problem, Sample, Selection, make_policy,
                               parse_settings, select)
from optscale.replay import build_batch

PRIORS = ConstantPriors(0.9, 0.1, 0.1, 0.05)

CASES = [
    ("bon", {}), ("sc", {}), ("bon", {"select": "weighted"}),
    ("optscale0", {}), ("optscale0", {"s_min": 0.8, "alpha": 0.5, "peek": 2}),
    ("optscale0", {"over_budget": "stop"}),
    ("optscale-t", {"priors": PRIORS}), ("optscale-t", {"priors": PRIORS, "prior_width": 0.02, "s_min": 0.9}),
    ("optscale", {}), ("optscale", {"estimator": "map", "priors": PRIORS, "s_min": 0.85}),
    ("optscale", {"over_budget": "stop", "peek": 2}),
    ("esc", {}), ("esc", {"window": 2}), ("asc", {}), ("asc", {"threshold": 0.8}),
]


@pytest.mark.parametrize("name,settings", CASES)
@pytest.mark.parametrize("n_max", [4, 8, 16])
def test_live_episodes_equal_vectorised_replay(name, settings, n_max):
    problems = toy_pool(problems=25, samples=16, seed=n_max, ragged=True)
    check_live_equals_replay(make_policy(name, n_max, **settings), problems)


def test_fixed_bon_replay_equals_direct_computation(pool):
    batch = build_batch(pool, orders=5, seed=3)
    for n in (1, 3, 8, 16):
        d = make_policy("bon", n).replay(batch)
        direct = np.argmax(batch.score[:, :, :n], axis=2)
        np.testing.assert_array_equal(d.chosen, direct)
        assert (d.n_used == n).all()


def test_selection_rules_and_no_answer_never_wins():
    score = np.array([[0.9, 0.1, 0.2, 0.3, 0.95]])
    code = np.array([[-1, 1, 1, -1, 0]])
    n = np.array([5])
    assert select(Selection.BEST, score, code, n)[0] == 4
    # majority: code 1 (two votes) beats 0 (one vote); the two "no answer" samples never vote
    assert select(Selection.MAJORITY, score, code, n)[0] == 2  # best-scoring sample of answer 1
    # weighted: 0.95 for answer 0 beats 0.3 for answer 1
    assert select(Selection.WEIGHTED, score, code, n)[0] == 4
    # only "no answer": nothing to return
    assert select(Selection.MAJORITY, score[:, :1], code[:, :1], np.array([1]))[0] == -1
    # tie goes to the answer seen first
    assert select(Selection.MAJORITY, np.array([[0.1, 0.9]]), np.array([[0, 1]]), np.array([2]))[0] == 0


def test_esc_stops_on_agreeing_window_and_asc_on_confidence():
    esc = make_policy("esc", 16, window=3).start()
    decisions = [esc.observe(Sample(0.5, a)) for a in ["1", "2", "1", "1", "1", "1"]]
    assert decisions[:5] == [Decision.CONTINUE] * 5 and decisions[5] is Decision.STOP
    asc = make_policy("asc", 16).start()
    seen = [asc.observe(Sample(0.5, "7")) for _ in range(4)]
    assert seen[-1] is Decision.STOP and seen[-2] is Decision.CONTINUE  # Beta(5,1): 0.969 >= 0.95
    assert asc.result().stop_reason == "confident"


def test_optscale0_peeks_then_commits():
    pol = make_policy("optscale0", 16, s_min=0.9, alpha=0.9, peek=3)
    ep = pol.start()
    assert ep.planned == 3
    for s in (0.95, 0.97, 0.96):
        d = ep.observe(Sample(s, "1"))
    # high scores: the target is already met, stop right after the peek
    assert d is Decision.STOP and ep.result().estimates["n_star"] <= 3
    ep = pol.start()
    for s in (0.3, 0.5, 0.4):
        d = ep.observe(Sample(s, "1"))
    out = ep.result()
    assert d is Decision.CONTINUE and ep.planned == 16 and out.estimates["capped"]
    with pytest.raises(RuntimeError):
        stopped = pol.start()
        for s in (0.95, 0.97, 0.96, 0.9):
            stopped.observe(Sample(s, "1"))


def test_problem_prior_overrides_source():
    pol = make_policy("optscale-t", 8, priors=PRIORS)
    ep = pol.start(Problem(id="x", prior=Prior(0.3, 0.05, 0.01, 0.01)))
    for s in (0.9, 0.92, 0.91):
        ep.observe(Sample(s, "1"))
    assert ep.result().estimates["mu"] < 0.5  # a tight prior at 0.3 dominates three samples


def test_settings_errors_name_library_arguments():
    cases = [(lambda: make_policy("nope", 8), "policy"), (lambda: make_policy("optscale0", 8, alpha=1.0), "settings.alpha"),
             (lambda: make_policy("esc", 8, windw=3), "settings.windw"), (lambda: make_policy("bon", 0), "n_max"),
             (lambda: make_policy("bon", 2**70), "n_max"), (lambda: parse_settings(["alpha"]), "settings")]
    for build, where in cases:
        with pytest.raises(InputError) as info:
            build()
        assert info.value.where == where and "--" not in str(info.value)
    with pytest.raises(InputError, match="choose from bon, optscale0"):
        make_policy("nope", 8)
    with pytest.raises(InputError, match=r"settings: select, window"):
        make_policy("esc", 8, windw=3)
    # The CLI's one table turns them into its flags.
    with pytest.raises(InputError) as info:
        make_policy("optscale0", 8, alpha=1.0)
    assert info.value.renamed({"settings.": "--set "}).where == "--set alpha"
    assert parse_settings(["alpha=0.8", "peek = 4"]) == {"alpha": "0.8", "peek": "4"}
    assert make_policy("optscale0", 8, **parse_settings(["alpha=0.8", "peek=4"])).peek == 4


def test_errors_stay_short_whatever_value_they_echo():
    """A hostile file's megabyte value is cut in the message, once (renaming does not cut it again)."""
    err = InputError("got " + "S" * 1_000_000, "table.json field decisions[0].other")
    assert len(str(err)) < 2100 and str(err).endswith("(1,000,004 characters in all)")
    renamed = err.renamed({"table.json field decisions[0].other": "--set table"})
    assert renamed.detail == err.detail and str(renamed) == f"--set table: {err.detail}"
    with pytest.raises(InputError) as info:
        make_policy("esc", 8, window="7" * 10_000)
    assert len(str(info.value)) < 400


def test_one_registry_lists_policies_settings_and_schemas():
    from optscale.policies import POLICIES, SELECTIONS, policy_settings_schema, settings_help

    # The paper's rules and the baselines come first; the issue-10 rules follow.
    assert list(POLICIES)[:7] == ["bon", "optscale0", "optscale", "optscale-t", "sc", "esc", "asc"]
    assert all(POLICIES.get(name).name == name for name in POLICIES)
    assert list(SELECTIONS) == [rule.value for rule in Selection] == ["best", "majority", "weighted"]
    schema = policy_settings_schema("optscale0")
    assert "n_max" not in schema["properties"] and schema["title"] == "optscale0"
    assert schema["properties"]["alpha"]["exclusiveMaximum"] == 1
    assert schema["properties"]["select"]["default"] == "best"
    jsonschema = need_module("jsonschema")
    jsonschema.validate({"alpha": 0.8, "peek": 4}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"alpha": 2}, schema)
    for name in POLICIES:
        assert policy_settings_schema(name)["properties"]
    line = settings_help()
    assert "\n" not in line and "esc: select, window" in line and "optscale-t: select, s_min, alpha" in line
    with pytest.raises(InputError) as info:
        policy_settings_schema("nope")
    assert info.value.where == "policy"


def test_map_policy_without_priors_says_where_they_come_from():
    pol = make_policy("optscale-t", 8)
    with pytest.raises(InputError, match="build_policy") as info:
        pol.start(Problem(id="x", question="q"))
    assert info.value.where == "settings.priors"
    # A prior on the problem itself needs no source.
    assert pol.start(Problem(id="x", prior=Prior(0.9, 0.1))).planned == 3


def test_sample_scores_outside_range_rejected():
    ep = make_policy("bon", 4).start(Problem(id="p1"))
    with pytest.raises(InputError, match="p1"):
        ep.observe(Sample(1.5, "1"))


def test_paper_peek_sizes():
    from optscale.policies import paper_peek

    assert [paper_peek(n) for n in (8, 16, 32, 64)] == [3, 5, 10, 20]


def test_build_policy_injects_the_default_predictor_priors_only_where_needed(monkeypatch):
    import optscale.compose as compose
    from optscale.compose import DefaultPriors, build_policy, with_default_priors

    assert isinstance(build_policy("optscale-t", 8).priors, DefaultPriors)
    assert isinstance(build_policy("optscale", 8, {"estimator": "map"}).priors, DefaultPriors)
    assert build_policy("optscale-t", 8, {"priors": PRIORS}).priors is PRIORS
    assert build_policy("optscale-t", 8, default_priors=False).priors is None
    for name in ("optscale", "optscale0", "bon", "esc"):
        assert getattr(build_policy(name, 8), "priors", None) is None
    assert with_default_priors("bon", {"select": "majority"}) == {"select": "majority"}
    with pytest.raises(InputError) as info:
        build_policy("optscale-t", 8, {"alpha": 2})
    assert info.value.where == "settings.alpha"
    # Without the predictor extra: a clear error, at once, naming the setting and the remedy.
    monkeypatch.setattr(compose.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match=r"pip install 'optscale\[predictor\]'") as info:
        build_policy("optscale-t", 8)
    assert info.value.where == "settings.priors"
    assert build_policy("optscale-t", 8, {"priors": PRIORS}).priors is PRIORS


def test_default_priors_are_the_packaged_predictors():
    need_module("sklearn", "the predictor extra is not installed")
    need_module("sentence_transformers", "the predictor extra is not installed")
    from optscale.compose import build_policy
    from optscale.predictor import PredictorPriors, load_default

    questions = ["What is $1+1$?", "Find all real $x$ with $x^4 - 5x^2 + 4 = 0$."]
    got = build_policy("optscale-t", 8).prior_arrays(["a", "b"], questions)
    want = PredictorPriors(load_default()).priors(["a", "b"], questions)
    for field in ("mu", "sigma", "width_mu", "width_sigma"):
        np.testing.assert_allclose(getattr(got, field), getattr(want, field))


# --- answer-only pools: which policies need scores ----------------------------------------------

def without_scores(problems):
    """The same problems with every score removed (an answer-only pool)."""
    from types import SimpleNamespace

    return [SimpleNamespace(**{**vars(p), "samples": [SimpleNamespace(**{**vars(s), "score": None}) for s in p.samples]})
            for p in problems]


ANSWER_ONLY = [("sc", {}), ("bon", {"select": "majority"}), ("esc", {}), ("esc", {"window": 2}),
               ("asc", {}), ("asc", {"threshold": 0.8})]
SCORE_BASED = [("bon", {}), ("bon", {"select": "weighted"}), ("sc", {"select": "best"}), ("esc", {"select": "weighted"}),
               ("optscale0", {}), ("optscale", {}), ("optscale-t", {"priors": PRIORS})]


def test_requires_scores_follows_the_stopping_and_the_selection_rule():
    from optscale.policies import POLICIES, PolicyBase

    assert PolicyBase.needs_scores is True  # the default: a rule reads scores unless it says otherwise
    for name in ("bon", "sc", "esc", "asc"):
        assert POLICIES.get(name).needs_scores is False
    for name in ("optscale0", "optscale", "optscale-t"):
        assert POLICIES.get(name).needs_scores is True
    assert [make_policy(n, 8, **s).requires_scores() for n, s in ANSWER_ONLY] == [False] * len(ANSWER_ONLY)
    assert [make_policy(n, 8, **s).requires_scores() for n, s in SCORE_BASED] == [True] * len(SCORE_BASED)


@pytest.mark.parametrize("name,settings", ANSWER_ONLY)
@pytest.mark.parametrize("n_max", [4, 8, 16])
def test_answer_only_policies_run_without_scores_live_and_replayed(name, settings, n_max):
    scored = toy_pool(problems=20, samples=16, seed=n_max, ragged=True)
    bare = without_scores(scored)
    policy = make_policy(name, n_max, **settings)
    check_live_equals_replay(policy, bare)
    # The same stops and the same answer as on the pool with scores (only ties inside the
    # winning answer, broken by score there, may pick another sample of that answer).
    with_scores, without = policy.replay(build_batch(scored, 3, 1)), policy.replay(build_batch(bare, 3, 1))
    np.testing.assert_array_equal(with_scores.n_used, without.n_used)
    batch = build_batch(bare, 3, 1)
    code = lambda d: np.where(d.chosen >= 0, np.take_along_axis(batch.answer, np.maximum(d.chosen, 0)[..., None], 2)[..., 0], -1)  # noqa: E731
    np.testing.assert_array_equal(code(with_scores), code(without))


@pytest.mark.parametrize("name,settings", SCORE_BASED)
def test_score_based_policies_refuse_answer_only_pools_with_one_clear_error(name, settings):
    bare = without_scores(toy_pool(problems=5, samples=8))
    batch = build_batch(bare, 2, 0, source="pool.jsonl")
    assert not batch.has_scores and np.isnan(batch.score).all()
    policy = make_policy(name, 8, **settings)
    with pytest.raises(InputError) as info:
        policy.replay(batch)
    assert info.value.where == "pool.jsonl field samples[].score"
    assert info.value.detail.startswith(f"policy {name!r} needs sample scores and pool.jsonl has none")
    # Live: the same error at the first sample without a score.
    episode = policy.start(Problem(id="q"))
    with pytest.raises(InputError, match=f"policy {name!r} needs sample scores") as info:
        episode.observe(Sample(None, "1", 5))
    assert info.value.where == "problem 'q' sample 0 field score"


def test_episodes_and_batches_refuse_scores_on_some_samples_only():
    episode = make_policy("sc", 8).start(Problem(id="q"))
    episode.observe(Sample(None, "1"))
    with pytest.raises(InputError, match="has one, but sample 0 has none") as info:
        episode.observe(Sample(0.5, "1"))
    assert info.value.where == "problem 'q' sample 1 field score"
    mixed = toy_pool(problems=3, samples=4)
    mixed[2].samples[1].score = None
    with pytest.raises(InputError, match="missing, but the first sample of the pool has one") as info:
        build_batch(mixed, source="pool.jsonl")
    assert info.value.where == "pool.jsonl problem 'toy/2' field samples[1].score"


# ----------------------------------------------------------------------------- review 9 regressions


@pytest.mark.parametrize("name,settings,key", [
    ("optscale0", {"priors": "/proc/self/mem"}, "priors"),  # OptScale^0 fits by maximum likelihood
    ("optscale", {"priors": "p.jsonl"}, "priors"),  # the sequential rule's default estimator is the MLE
    ("optscale0", {"prior_width": 0.1}, "prior_width"),
])
def test_priors_given_to_a_maximum_likelihood_fit_are_refused(name, settings, key):
    with pytest.raises(InputError, match="only a MAP estimate reads") as info:
        make_policy(name, 8, **settings)
    assert info.value.where == f"settings.{key}"
    assert make_policy("optscale", 8, estimator="map", priors="p.jsonl").priors == "p.jsonl"


@pytest.mark.parametrize("name", ["optscale0", "optscale", "optscale-t", "beacon", "pandora"])
def test_a_peek_beyond_the_budget_is_refused(name):
    for peek in (9, 99999999999999999999):
        with pytest.raises(InputError, match="at most n_max") as info:
            make_policy(name, 8, peek=peek, **({"priors": "p.jsonl"} if name == "optscale-t" else {}))
        assert info.value.where == "settings.peek" and "Value error" not in info.value.detail
    assert make_policy(name, 2, **({"priors": "p.jsonl"} if name == "optscale-t" else {})).n_max == 2  # default peek


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_settings_say_finite(value):
    with pytest.raises(InputError, match="finite number") as info:
        make_policy("optscale0", 8, s_min=value)
    assert info.value.where == "settings.s_min"


def test_a_setting_given_twice_is_refused():
    with pytest.raises(InputError, match="'alpha' is given twice") as info:
        parse_settings(["alpha=0.8", "alpha = 0.9"])
    assert info.value.where == "settings"
