"""Prior sources for OptScale^t: files of parameters or moments, with clear errors."""

import json

import numpy as np
import pytest

from conftest import need_module, shared_data
from optscale.errors import InputError
from optscale.fit import moments_to_params
from optscale.policies import ConstantPriors, FilePriors, PriorArrays
from optscale.stats import truncnorm


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_parameters_and_moments(tmp_path):
    mean, std = truncnorm.mean_std(1.1, 0.08)
    f = FilePriors(write(tmp_path / "p.jsonl", [
        {"id": "a", "mu": 0.9, "sigma": 0.1, "width_mu": 0.05},
        {"id": "b", "score_mean": float(mean), "score_std": float(std)},
        {"id": "c", "prior_mean": 0.5, "prior_std": -0.01},
    ]), width=0.2)
    p = f.priors(["b", "a", "c"], [None] * 3)
    assert p.mu[0] == pytest.approx(1.1, abs=1e-5) and p.sigma[0] == pytest.approx(0.08, rel=1e-4)
    assert p.mu[1] == 0.9 and p.width_mu[1] == 0.05 and p.width_sigma[1] == 0.2
    assert len(f.repairs) == 1 and "p.jsonl:3" in f.repairs[0]  # negative std clipped, reported
    assert p.override_width((0.01, 0.02)).width_sigma.tolist() == [0.02] * 3


@pytest.mark.parametrize("rows,match", [
    (["{not json"], r"p.jsonl:1.*malformed JSON"),
    ([{"mu": 0.5, "sigma": 0.1}], r"p.jsonl:1.*'id'"),
    ([{"id": "a", "mu": 0.5, "sigma": 0.1}, {"id": "a", "mu": 0.5, "sigma": 0.1}], r"p.jsonl:2.*duplicate"),
    ([{"id": "a", "mu": 0.5, "sigma": -1}], r"p.jsonl:1 field sigma"),
    ([{"id": "a", "mu": "x", "sigma": 0.1}], r"p.jsonl:1 field mu"),
    ([{"id": "a", "score_mean": 1.5, "score_std": 0.1}], r"p.jsonl:1.*score_mean"),
    ([{"id": "a", "foo": 1}], r"p.jsonl:1.*needs mu and sigma"),
])
def test_bad_priors_name_the_line(tmp_path, rows, match):
    with pytest.raises(InputError, match=match):
        FilePriors(write(tmp_path / "p.jsonl", rows))


def test_missing_problem_and_file(tmp_path):
    f = FilePriors(write(tmp_path / "p.jsonl", [{"id": "a", "mu": 0.5, "sigma": 0.1}]))
    with pytest.raises(InputError, match="'zz'"):
        f.priors(["a", "zz"], [None, None])
    with pytest.raises(InputError, match="not found"):
        FilePriors(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("text", ["", "\n\n", "\ufeff"])
def test_empty_priors_file_is_a_located_error(tmp_path, text):
    path = tmp_path / "empty.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match="no priors") as info:
        FilePriors(path)
    assert info.value.where == str(path)


def test_prior_sources_live_below_policies_and_predictor():
    import optscale.policies
    import optscale.priors

    assert optscale.policies.FilePriors is optscale.priors.FilePriors  # the old import keeps working
    assert isinstance(ConstantPriors(0.9, 0.1), optscale.priors.PriorSource)


def test_constant_priors_shape():
    p = ConstantPriors(0.9, 0.1).priors(["a", "b"], [None, None])
    assert isinstance(p, PriorArrays) and p.mu.shape == (2,)


def test_official_priors_are_moments_converted():
    path = shared_data("official", "predictor-priors", "math500.jsonl")
    f = FilePriors(path)
    assert len(f) == 500 and len(f.repairs) == 3  # the published file has three negative stds
    rows = [json.loads(line) for line in path.read_text().splitlines()[:20]]
    p = f.priors([r["id"] for r in rows], [None] * 20)
    want = moments_to_params([r["prior_mean"] for r in rows], [max(r["prior_std"], 0) for r in rows])
    np.testing.assert_allclose(p.mu, want.mu)


# --- population priors (empirical Bayes on calibration problems) ------------------------------

from conftest import SHARED, toy_pool  # noqa: E402
from optscale.policies import Problem, make_policy  # noqa: E402
from optscale.priors import PopulationPriors, problem_key  # noqa: E402
from optscale.replay import build_batch, split_problems, subset  # noqa: E402


def simulated_scores(problems=400, n=16, seed=0):
    rng = np.random.default_rng(seed)
    mus, sigmas = rng.normal(0.8, 0.1, problems), rng.uniform(0.05, 0.2, problems)
    return [truncnorm.sample(m, s, n, rng=rng) for m, s in zip(mus, sigmas)], mus, sigmas


def test_population_prior_recovers_the_population():
    scores, mus, sigmas = simulated_scores()
    prior = PopulationPriors.fit(scores, [f"c{i}" for i in range(len(scores))])
    assert prior.problems == 400
    assert prior.mu == pytest.approx(np.median(mus), abs=0.03)
    assert prior.sigma == pytest.approx(np.median(sigmas), abs=0.02)
    # Widths: the population's spread plus the estimates' noise (conservative, never narrower).
    assert 0.9 * np.std(mus) <= prior.width_mu <= 1.6 * np.std(mus)
    assert 0.9 * np.std(sigmas) <= prior.width_sigma <= 1.6 * np.std(sigmas)
    # One runaway problem cannot move a robust fit.
    again = PopulationPriors.fit([*scores, np.array([0.999, 1.0, 0.998])])
    assert again.mu == pytest.approx(prior.mu, abs=0.005) and again.width_mu == pytest.approx(prior.width_mu, rel=0.05)
    arrays = prior.priors(["x", "y"], [None, None])
    assert arrays.mu.tolist() == [prior.mu] * 2 and arrays.width_sigma.tolist() == [prior.width_sigma] * 2


def test_population_prior_needs_enough_scored_problems():
    with pytest.raises(InputError, match="at least 5 calibration problems") as info:
        PopulationPriors.fit([[0.5, 0.6]] * 4 + [[0.7]] * 10 + [[0.3, 0.3]] * 10)
    assert info.value.where == "settings.priors"
    bare = toy_pool(problems=10, samples=4)
    for p in bare:
        for s in p.samples:
            s.score = None
    with pytest.raises(InputError, match="has none"):
        PopulationPriors.from_batch(build_batch(bare, source="calib.jsonl"))


def test_population_prior_in_a_split_sees_no_held_out_problem():
    """How sweep uses it: fitted on the calibration half only; held-out scores cannot change it."""
    problems = toy_pool(problems=60, samples=16, seed=3)
    batch = build_batch(problems, orders=3, seed=1)
    calib, held = split_problems(len(problems), 0.5, seed=4)
    prior = PopulationPriors.from_batch(subset(batch, calib), strict=False)
    key = lambda i: problem_key(problems[i].id, problems[i].question)  # noqa: E731
    assert prior.fitted_on == {key(i) for i in calib} and not prior.fitted_on & {key(i) for i in held}
    # Scramble every held-out score: the prior is the same.
    for i in held:
        for s in problems[i].samples:
            s.score = 1.0 - s.score
    again = PopulationPriors.from_batch(subset(build_batch(problems, orders=3, seed=1), calib), strict=False)
    assert again == prior
    # The fitted prior drives OptScale^t on the held-out half (live and replay agree there too).
    policy = make_policy("optscale-t", 8, priors=prior)
    decisions = policy.replay(subset(batch, held))
    np.testing.assert_allclose(policy.prior_arrays(["any"], [None]).mu, prior.mu)
    assert decisions.n_used.shape == (len(held), 3)


def test_strict_population_prior_refuses_its_own_calibration_problems():
    problems = toy_pool(problems=20, samples=8)
    prior = PopulationPriors.fit([[s.score for s in p.samples] for p in problems], [p.id for p in problems],
                                 [p.question for p in problems])
    with pytest.raises(InputError, match="calibration data of the population prior") as info:
        make_policy("optscale-t", 8, priors=prior).replay(build_batch(problems))
    assert info.value.where == "settings.priors"
    assert prior.priors(["other"], [None]).mu[0] == prior.mu
    # Another pool that merely reuses the ids (e.g. a second simulated pool) is not refused.
    assert prior.priors([problems[0].id], ["another question"]).mu[0] == prior.mu


def test_priors_population_needs_calibration_data():
    policy = make_policy("optscale-t", 8, priors="population")
    for run in (lambda: policy.replay(build_batch(toy_pool(problems=3))), lambda: policy.start(Problem("a"))):
        with pytest.raises(InputError, match="sweep fits one on its calibration split.*population:POOL") as info:
            run()
        assert info.value.where == "settings.priors"


def write_pool_file(path, problems, extra=None):
    rows = []
    for k, p in enumerate(problems):
        samples = [{"answer": s.answer, "score": s.score, "tokens": s.tokens, "correct": s.correct} for s in p.samples]
        rows.append({"id": p.id, "question": p.question, "answer": p.answer, "samples": samples, **((extra or {}).get(k, {}))})
    return write(path, rows)


def test_build_policy_fits_population_on_a_calibration_pool(tmp_path):
    from optscale.compose import build_policy

    calib, report = toy_pool(problems=30, samples=8, seed=1), toy_pool(problems=30, samples=8, seed=2)
    for p in report:
        p.question = "another " + p.question
    path = write_pool_file(tmp_path / "calib.jsonl", calib)
    policy = build_policy("optscale-t", 8, {"priors": f"population:{path}"})
    want = PopulationPriors.fit([[s.score for s in p.samples] for p in calib], [p.id for p in calib],
                                [p.question for p in calib])
    assert policy.priors == want
    assert policy.replay(build_batch(report)).n_used.shape == (30, 1)
    with pytest.raises(InputError, match="calibration data"):  # reporting on the calibration pool would leak
        policy.replay(build_batch(calib))
    for p in calib:
        for s in p.samples:
            s.score = None
    bare = write_pool_file(tmp_path / "bare.jsonl", calib)
    for value, match in ((f"population:{bare}", "has none"), (f"population:{tmp_path}/nope.jsonl", "calibration pool"),
                         ("population:", "path")):
        with pytest.raises(InputError, match=match) as info:
            build_policy("optscale-t", 8, {"priors": value})
        assert info.value.where == "settings.priors"


# --- the predictor path: the same inputs as `optscale predictor predict`, and real questions ---

def benchmark_file(tmp_path, count=30):
    """A benchmark file with level and subject: the head of MATH-500 where shared, else generated."""
    path = SHARED / "benchmarks" / "math500.jsonl"
    if path.exists():
        lines = path.read_text(encoding="utf-8").splitlines()[:count]
    else:
        subjects = ["Algebra", "Geometry", "Number Theory"]
        lines = [json.dumps({"id": f"gen/{i}", "question": f"Compute the sum of the first {i + 3} primes times {i}.",
                             "answer": "1", "subject": subjects[i % 3], "level": f"Level {1 + i % 5}"})
                 for i in range(count)]
    return write(tmp_path / "bench.jsonl", lines)


def test_predictor_priors_use_level_and_subject_like_predictor_predict(tmp_path):
    need_module("sklearn", "the predictor extra is not installed")
    need_module("sentence_transformers", "the predictor extra is not installed")
    from optscale.compose import build_policy
    from optscale.predictor import load_default, prior_rows
    from optscale.predictor.data import Problems
    from optscale.pools import read_pool

    bench = benchmark_file(tmp_path)
    problems = Problems.from_file(bench)
    want = prior_rows(load_default(), problems)  # what `optscale predictor predict` writes
    rows = [json.loads(line) for line in bench.read_text().splitlines()]
    rng = np.random.default_rng(0)
    pool = write(tmp_path / "pool.jsonl", [{**r, "samples": [{"answer": "1", "score": float(x), "tokens": 3}
                                                             for x in rng.uniform(0.3, 1.0, 8)]} for r in rows])
    batch = build_batch(read_pool(pool, grade_missing=False), orders=2)
    assert batch.meta[0] == {"level": rows[0]["level"], "subject": rows[0]["subject"]}
    policy = build_policy("optscale-t", 8)
    got = policy.prior_arrays(batch.ids, batch.questions, batch.meta)  # the replay path
    np.testing.assert_allclose(got.mu, [w["mu"] for w in want], atol=1e-9)
    np.testing.assert_allclose(got.sigma, [w["sigma"] for w in want], atol=1e-9)
    live = policy.episode_context(Problem(rows[1]["id"], rows[1]["question"], meta=batch.meta[1]))["prior"]
    assert live.mu[0] == pytest.approx(want[1]["mu"], abs=1e-9)  # the live path
    # Replay with the default predictor == replay with the priors file `predictor predict` writes.
    from_file = build_policy("optscale-t", 8, {"priors": str(write(tmp_path / "priors.jsonl", want))})
    a, b = policy.replay(batch).estimates, from_file.replay(batch).estimates
    for key in ("mu", "sigma", "n_star"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-9)
    # Without level and subject the priors differ: the test can tell the paths apart.
    blind = policy.prior_arrays(batch.ids, batch.questions)
    assert np.abs(blind.mu - got.mu).max() > 0.01


@pytest.mark.parametrize("ids,questions,fragment", [
    (["a", "b"], ["What is 1+1?", None], "1 of 2 problem(s) have none, e.g. id 'b'"),
    (["a", "b"], ["What is 1+1?", "   "], "have none"),
    (["a", "b"], ["question 1", "question 2"], "2 of 2 problem(s) hold a placeholder"),
    (["a", "b", "c"], ["What is 1+1?", "Problem #7", "Solve x^2 = 4."], "e.g. id 'b': 'Problem #7'"),
    (["math/1", "math/2"], ["math/1", "Solve x^2 = 4."], "e.g. id 'math/1'"),
    (["a", "b", "c"], ["placeholder"] * 3, "3 of 3"),
])
def test_predictor_refuses_missing_and_placeholder_questions(ids, questions, fragment):
    from optscale.predictor.priors import check_questions

    with pytest.raises(InputError, match="priors=FILE.*priors=population") as info:
        check_questions(ids, questions)
    assert fragment in info.value.detail and info.value.where == "settings.priors"


def test_placeholder_check_accepts_real_questions():
    from optscale.predictor.priors import check_questions

    check_questions(["a"], ["What is 2 + 2?"])  # one problem: nothing to compare with
    check_questions(["a", "b"], ["Question 1 of the exam: what is 2 + 2?", "Compute 12 * 12."])
    path = SHARED / "benchmarks" / "math500.jsonl"
    if path.exists():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        check_questions([r["id"] for r in rows], [r["question"] for r in rows])


def test_optscale_t_with_the_predictor_refuses_a_placeholder_pool():
    need_module("sklearn", "the predictor extra is not installed")
    need_module("sentence_transformers", "the predictor extra is not installed")
    from optscale.compose import build_policy

    batch = build_batch(toy_pool(problems=5))  # questions "question 0" ... "question 4"
    with pytest.raises(InputError, match="placeholder.*priors=population") as info:
        build_policy("optscale-t", 8).replay(batch)
    assert info.value.where == "settings.priors"
