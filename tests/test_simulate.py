"""Simulated pools: exact truncated-normal scores, the calibrated curves, tunable overrides, the CLI.

Statistical checks use fixed seeds (so they are deterministic) and tolerances of several
standard errors computed from the simulated sample itself, so they hold for any seed too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from optscale.errors import InputError
from optscale.fit import MU_BOUNDS, fit_mle
from optscale.pools import read_pool
from optscale.simulate import MODEL_KEYS, VERIFIERS, Population, simulate_arrays, simulate_pool
from optscale.stats import truncnorm
from conftest import run_cli

CURVE_N = (1, 2, 4, 8, 16, 32, 64)


@pytest.fixture(scope="module")
def population() -> Population:
    return Population.load()


@pytest.fixture(scope="module")
def big(population):
    """4,000 problems x 64 samples with the calibrated defaults."""
    return simulate_arrays(4000, 64, seed=11, population=population)


def curves(sim, ns=CURVE_N, seed=0):
    """Per-problem Best-of-N and majority-vote accuracy, averaged over disjoint blocks of N samples."""
    rng = np.random.default_rng(seed)
    p, s = sim.scores.shape
    best, vote = [], []
    for n in ns:
        b = s // n
        top = np.argmax(sim.scores[:, : b * n].reshape(p, b, n), axis=2)
        ok = sim.correct[:, : b * n].reshape(p, b, n)
        best.append(np.take_along_axis(ok, top[..., None], axis=2)[..., 0].mean(axis=1))
        codes = sim.answer[:, : b * n].reshape(p, b, n)
        count = (codes[..., None] == np.arange(sim.wrong.shape[1] + 1)).sum(axis=2).astype(float)
        count += 0.1 * rng.random(count.shape) * (count > 0)  # random tie-break among answers given
        winner = np.where(count.max(axis=2) > 0, np.argmax(count, axis=2), -1)
        vote.append((winner == 0).mean(axis=1))
    return np.array(best).T, np.array(vote).T


def test_same_seed_same_pool_and_streams_are_independent(population):
    a = simulate_pool(30, 8, seed=3, population=population)
    b = simulate_pool(30, 8, seed=3, population=population)
    assert [p.model_dump() for p in a] == [p.model_dump() for p in b]
    c = simulate_pool(30, 8, seed=4, population=population)
    assert [p.model_dump() for p in a] != [p.model_dump() for p in c]
    # Changing the answer model leaves scores and correctness of the same seed unchanged.
    x = simulate_arrays(30, 8, 3, population)
    y = simulate_arrays(30, 8, 3, population, wrong_answers=2, no_answer_rate=0.5)
    assert np.array_equal(x.scores, y.scores) and np.array_equal(x.correct, y.correct)


def test_pool_records_follow_the_pool_format(population):
    pool = simulate_pool(12, 16, seed=0, population=population)
    assert [p.id for p in pool] == [f"sim0/{i:04d}" for i in range(12)]
    for problem in pool:
        extra = problem.model_dump()
        assert {"mu", "sigma", "level"} <= extra.keys() and problem.question
        assert MU_BOUNDS[0] <= extra["mu"] <= MU_BOUNDS[1] and extra["sigma"] > 0
        for sample in problem.samples:
            assert 0.0 <= sample.score <= 1.0 and isinstance(sample.tokens, int) and sample.tokens >= 1
            assert sample.correct == (sample.answer == problem.answer)
    assert simulate_pool(10001, 1, seed=0, population=population)[-1].id == "sim0/10000"


def test_scores_are_exactly_truncated_normal_with_the_true_parameters(population):
    n = 4000
    sim = simulate_arrays(40, n, seed=5, population=population)
    assert sim.scores.min() >= 0.0 and sim.scores.max() <= 1.0
    # Probability integral transform with the true parameters: uniform if and only if exact.
    u = truncnorm.cdf(sim.scores, sim.mu[:, None], sim.sigma[:, None]).ravel()
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    # Sample moments agree with the true moments within 5 standard errors (CLT).
    mean, sd = truncnorm.mean_std(sim.mu, sim.sigma)
    assert np.all(np.abs(sim.scores.mean(axis=1) - mean) < 5 * sd / np.sqrt(n))
    kurtosis = stats.kurtosis(sim.scores, axis=1, fisher=False)
    assert np.all(np.abs(sim.scores.std(axis=1) - sd) < 5 * sd * np.sqrt((kurtosis - 1) / (4 * n)))
    # The MLE is no more likely than the truth beyond chance: 2 log LR ~ chi2(2) (or less at
    # the mu bound); 18.4 is its 1e-4 upper quantile.
    fit = fit_mle(sim.scores)
    ll_true = truncnorm.logpdf(sim.scores, sim.mu[:, None], sim.sigma[:, None]).sum(axis=1)
    assert np.all(2 * (fit.loglik - ll_true) < 18.4)
    assert np.all(2 * (fit.loglik - ll_true) > -1e-6)  # the MLE really is the maximum
    fit_mean, _ = truncnorm.mean_std(fit.mu, fit.sigma)
    assert np.all(np.abs(fit_mean - mean) < 5 * sd / np.sqrt(n))


def test_population_matches_the_real_spread_of_problems(population):
    sim = simulate_arrays(4000, 1, seed=2, population=population)
    at_bound = sim.mu >= MU_BOUNDS[1]
    # Two thirds of the real problems have moments only reachable at the mu bound.
    assert abs(at_bound.mean() - 2982 / 4501) < 4 * np.sqrt(0.25 / 4000)
    mean, _ = truncnorm.mean_std(sim.mu, sim.sigma)
    assert 0.93 < np.median(mean) < 0.96  # real median score 0.947
    hard = simulate_arrays(2000, 1, 2, population, levels=[5])
    easy = simulate_arrays(2000, 1, 2, population, levels=[1])
    assert set(hard.level) == {5} and set(easy.level) == {1}
    assert truncnorm.mean_std(hard.mu, hard.sigma)[0].mean() < truncnorm.mean_std(easy.mu, easy.sigma)[0].mean()


def test_best_of_n_rises_and_matches_the_calibration(population, big):
    best, vote = curves(big)
    acc, vote_acc = best.mean(axis=0), vote.mean(axis=0)
    se = best.std(axis=0) / np.sqrt(len(best))
    cal = population.calibration
    model = np.array(cal["best_of_n"]["model"])[np.array(CURVE_N) - 1]
    official = np.array(cal["best_of_n"]["target"])[np.array(CURVE_N) - 1]
    # Simulation agrees with the model's exact curve within sampling error (problems + samples).
    assert np.all(np.abs(acc - model) < 4 * se + 1e-3)
    # The exact model curve rises with N; the simulated one too, within paired sampling error.
    assert np.all(np.diff(cal["best_of_n"]["model"]) >= -1e-4)
    step = np.diff(best, axis=1)
    assert np.all(step.mean(axis=0) > -3 * step.std(axis=0) / np.sqrt(len(step)))
    gain = best[:, -1] - best[:, 0]
    assert gain.mean() > 5 * gain.std() / np.sqrt(len(gain))
    # The calibration stays within 2.5 binomial standard errors of the official 500-problem curve.
    assert np.all(np.abs(model - official) < 2.5 * np.sqrt(official * (1 - official) / 500))
    assert 0.88 < acc[0] < 0.92 and 0.93 < acc[-1] < 0.96
    # Majority voting is a real competitor: close to official Self-Consistency (~0.934).
    for n, target in zip(cal["majority"]["n"], cal["majority"]["target"]):
        k = CURVE_N.index(n)
        assert abs(vote_acc[k] - target) < 2.5 * np.sqrt(target * (1 - target) / 500)
    assert abs(vote_acc[-1] - acc[-1]) < 0.03


def test_tokens_match_the_official_mean_and_grow_with_difficulty(population, big):
    per_sample = big.tokens.mean()
    target = population.calibration["tokens_per_sample"]
    se = big.tokens.mean(axis=1).std() / np.sqrt(big.tokens.shape[0])
    assert abs(per_sample - target) < 4 * se
    assert big.tokens.dtype.kind == "i" and big.tokens.min() >= 1
    wrong = big.tokens[~big.correct].mean() / big.tokens[big.correct].mean()
    assert wrong > 1.2  # wrong answers are longer (factor 1.5, blurred by harder problems' mix)
    per_problem = np.log(big.tokens).mean(axis=1)
    assert stats.spearmanr(per_problem, big.easiness).statistic < -0.3


def test_answers_follow_the_answer_model(population, big):
    wrong = ~big.correct
    assert np.all((big.answer == 0) == big.correct)
    blank = big.answer[wrong] < 0
    rate = population.model["no_answer_rate"]
    assert abs(blank.mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / wrong.sum())
    assert np.all(big.wrong != big.gold[:, None]) and np.all(np.diff(big.wrong, axis=1) > 0)
    # Skewed: the most common wrong answer takes well over a 1/4 share of the wrong ones.
    counts = np.stack([(big.answer == k).sum(axis=1) for k in range(1, 5)], axis=1)
    some = counts.sum(axis=1) >= 10
    assert np.mean(counts[some].max(axis=1) / counts[some].sum(axis=1)) > 0.45
    single = simulate_arrays(50, 32, 1, population, wrong_answers=1, no_answer_rate=0.0)
    assert set(np.unique(single.answer)) <= {0, 1}


def test_discrimination_controls_how_much_best_of_n_gains(population):
    gains = []
    for d in (0.0, 1.0, 3.0):
        sim = simulate_arrays(3000, 64, 7, population, discrimination=d, discrimination_sd=0.0)
        best, _ = curves(sim, ns=(1, 16))
        gain = best[:, 1] - best[:, 0]
        gains.append((gain.mean(), gain.std() / np.sqrt(len(gain))))
    (g0, s0), (g1, s1), (g3, s3) = gains
    assert abs(g0) < 4 * s0  # an uninformative verifier picks at random: no gain
    assert g1 > g0 + 4 * np.hypot(s0, s1) and g3 > g1 + 4 * np.hypot(s1, s3)


def test_other_overrides_do_what_they_say(population):
    base = simulate_arrays(2000, 16, 9, population)
    harder = simulate_arrays(2000, 16, 9, population, intercept=population.model["intercept"] - 4)
    assert harder.correct.mean() < base.correct.mean() - 0.05
    silent = simulate_arrays(2000, 16, 9, population, no_answer_rate=1.0)
    assert np.all((silent.answer < 0) == ~silent.correct)
    longer = simulate_arrays(2000, 16, 9, population, tokens_loc=population.model["tokens_loc"] + np.log(2))
    assert np.allclose(longer.tokens.mean() / base.tokens.mean(), 2.0, rtol=0.01)


def _auc(score: np.ndarray, correct: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` as a predictor of ``correct`` (Mann-Whitney)."""
    ranks = stats.rankdata(score)
    k = correct.sum()
    return float((ranks[correct].sum() - k * (k + 1) / 2) / (k * (correct.size - k)))


def test_weak_verifier_scores_say_less_about_correctness(population, big):
    weak = simulate_arrays(4000, 64, seed=11, population=population, verifier="weak")
    # Only the verifier changes: the same problems, answers model and share of correct samples.
    assert np.array_equal(weak.mu, big.mu) and np.array_equal(weak.scores, big.scores)
    assert abs(weak.correct.mean() - big.correct.mean()) < 0.01
    pooled = _auc(big.scores.ravel(), big.correct.ravel()), _auc(weak.scores.ravel(), weak.correct.ravel())
    mixed = [p for p in range(4000) if 0 < big.correct[p].sum() < 64 and 0 < weak.correct[p].sum() < 64]
    within = [np.mean([_auc(sim.scores[p], sim.correct[p]) for p in mixed]) for sim in (big, weak)]
    assert pooled[1] < pooled[0] - 0.1 and within[1] < within[0] - 0.15, (pooled, within)
    # The practical consequence: Best-of-N no longer beats the majority vote.
    best_default, vote_default = curves(big, ns=(16,))
    best_weak, vote_weak = curves(weak, ns=(16,))
    assert best_default.mean() > vote_default.mean() and best_weak.mean() < vote_weak.mean()
    # Explicit constants override the variant's; unknown variants name the argument.
    mine = simulate_arrays(50, 8, 3, population, verifier="weak", discrimination=2.0)
    same = simulate_arrays(50, 8, 3, population, **{**VERIFIERS["weak"], "discrimination": 2.0})
    assert np.array_equal(mine.correct, same.correct)
    with pytest.raises(InputError) as info:
        simulate_arrays(5, 4, 0, population, verifier="bogus")
    assert info.value.where == "verifier"


def test_cli_weak_verifier_equals_the_library(tmp_path, monkeypatch, capsys):
    out = tmp_path / "pool.jsonl"
    code, _, err = run_cli(["simulate", "--out", out, "--problems", 12, "--samples", 4, "--seed", 5, "--verifier",
                            "weak", "--discrimination", 0.5], monkeypatch, capsys)
    assert code == 0, err
    expected = simulate_pool(12, 4, 5, verifier="weak", discrimination=0.5)
    assert [p.model_dump() for p in read_pool(out, grade_missing=False)] == [p.model_dump() for p in expected]
    code, _, err = run_cli(["simulate", "--out", out, "--verifier", "nope"], monkeypatch, capsys)
    assert code != 0 and "--verifier:" in err


@pytest.mark.parametrize(
    "kwargs, where",
    [
        ({"discrimination": -1.0}, "discrimination"),
        ({"no_answer_rate": 1.5}, "no_answer_rate"),
        ({"wrong_answers": 2.5}, "wrong_answers"),
        ({"difficulty_corr": float("nan")}, "difficulty_corr"),
        ({"bogus": 1.0}, "bogus"),
        ({"levels": [9]}, "levels"),
    ],
)
def test_bad_overrides_name_the_argument(population, kwargs, where):
    with pytest.raises(InputError) as info:
        simulate_arrays(5, 4, 0, population, **kwargs)
    assert info.value.where == where


def test_bad_sizes_are_rejected(population):
    for args, where in [((0, 4, 0), "n_problems"), ((5, 0, 0), "n_samples"), ((5, 4, -1), "seed")]:
        with pytest.raises(InputError) as info:
            simulate_pool(*args, population=population)
        assert info.value.where == where


def test_packaged_population_is_compact_and_has_provenance(population):
    from importlib import resources

    raw = (resources.files("optscale") / "data" / "population.json").read_bytes()
    assert len(raw) < 16_000
    prov = population.provenance
    assert prov["source"].endswith("math_train.jsonl") and prov["problems"] == 4501
    assert len(prov["source_sha256"]) == 64 and prov["date"] and "fit_population.py" in prov["command"]
    assert prov["flags"]["mu_at_bound"] + prov["flags"]["ok"] == 4501
    assert set(population.model) == set(MODEL_KEYS)
    assert set(population.calibration["fitted"]) | set(population.calibration["assumed"]) <= set(MODEL_KEYS)
    assert population.calibration["best_of_n"]["target"][0] == pytest.approx(0.896)


def test_population_files_are_validated(tmp_path, population):
    data = json.loads((__import__("importlib").resources.files("optscale") / "data" / "population.json").read_text())
    path = tmp_path / "pop.json"
    path.write_text(json.dumps(data))
    assert Population.load(path).model == population.model
    for broken in (
        {**data, "format": "other"},
        {**data, "model": {k: v for k, v in data["model"].items() if k != "intercept"}},
        {**data, "model": {**data["model"], "no_answer_rate": 2}},
        {**data, "interior": {**data["interior"], "weights": [[1.0]]}},
    ):
        path.write_text(json.dumps(broken))
        with pytest.raises(InputError):
            Population.load(path)
    path.write_text("{")
    with pytest.raises(InputError, match="malformed JSON"):
        Population.load(path)



def test_cli_writes_a_valid_pool(tmp_path, monkeypatch, capsys):
    out = tmp_path / "pool.jsonl"
    args = ["simulate", "--out", out, "--problems", 25, "--samples", 8, "--seed", 2, "--discrimination", 2,
            "--no-answer-rate", 0.2, "--set", "wrong_concentration=0.3", "--level", 4, "--level", 5]
    code, stdout, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert "wrote 25 problems x 8 samples" in stdout
    pool = read_pool(out, grade_missing=False)
    assert len(pool) == 25 and all(len(p.samples) == 8 for p in pool)
    assert {p.model_dump()["level"] for p in pool} <= {4, 5}
    expected = simulate_pool(25, 8, 2, levels=[4, 5], discrimination=2.0, no_answer_rate=0.2, wrong_concentration=0.3)
    assert [p.model_dump() for p in pool] == [p.model_dump() for p in expected]
    assert [p.name for p in tmp_path.iterdir()] == ["pool.jsonl"]  # no temporary file left behind


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--discrimination", "-1"], "--discrimination"),
        (["--problems", "0"], "--problems"),
        (["--samples", "0"], "--samples"),
        (["--no-answer-rate", "1.5"], "--no-answer-rate"),
        (["--wrong-answers", "0"], "--wrong-answers"),
        (["--set", "tokens_sample_sd=-1"], "--set tokens_sample_sd"),
        (["--set", "nonsense=1"], "--set"),
        (["--set", "intercept=high"], "--set"),
        (["--level", "9"], "--level"),
    ],
)
def test_cli_rejects_bad_flags_with_one_clear_line(tmp_path, monkeypatch, capsys, extra, flag):
    out = tmp_path / "pool.jsonl"
    out.write_text("keep me\n")
    code, _, err = run_cli(["simulate", "--out", out, *extra], monkeypatch, capsys)
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("error: ") and f"{flag}:" in err
    assert out.read_text() == "keep me\n"


def test_ids_and_questions_carry_the_seed_so_other_seeds_are_other_problems(population):
    from optscale.priors import PopulationPriors

    a, b = simulate_pool(20, 8, 3, population), simulate_pool(20, 8, 4, population)
    assert a[0].id == "sim3/0000" and b[0].id == "sim4/0000" and "seed 3" in a[0].question
    assert not {p.id for p in a} & {p.id for p in b}
    prior = PopulationPriors.fit([[s.score for s in p.samples] for p in a], [p.id for p in a], [p.question for p in a])
    # Fitted on seed 3: refused as a leak on seed 3's problems, accepted on seed 4's.
    with pytest.raises(InputError, match="calibration data of the population prior"):
        prior.priors([p.id for p in a], [p.question for p in a])
    assert prior.priors([p.id for p in b], [p.question for p in b]) is not None


@pytest.mark.parametrize("value", [10**9, 1e9, 1e20, 10_001])
def test_wrong_answers_is_bounded_with_a_located_error(population, value):
    with pytest.raises(InputError, match="from 1 to 10,000") as info:
        simulate_arrays(5, 4, 0, population, wrong_answers=value)
    assert info.value.where == "wrong_answers"


def test_many_wrong_answers_stay_small_and_fast(population):
    import time
    import tracemalloc

    tracemalloc.start()
    t0 = time.perf_counter()
    sim = simulate_arrays(400, 64, 1, population, wrong_answers=10_000)
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # problems x wrong answers = 4e6 probabilities (32 MB); never problems x samples x wrong answers (2 GB)
    assert peak < 400e6 and elapsed < 20, (peak, elapsed)
    assert sim.wrong.shape == (400, 10_000) and sim.answer.max() <= 10_000
    # The same draws as the unblocked categorical: identical to a small-block run of the same seed.
    few = simulate_arrays(30, 16, 2, population, wrong_answers=7)
    rng = np.random.SeedSequence(2).spawn(6)[4]
    draw = np.random.default_rng(rng)
    gold = draw.integers(10, 1000, 30)
    draw.integers(1, 50, (30, 7))
    share = draw.dirichlet(np.full(7, population.model["wrong_concentration"]), 30)
    u = draw.random((30, 16))
    expected = 1 + (u[..., None] * share.cumsum(axis=1)[:, None, -1:] >= share.cumsum(axis=1)[:, None, :]).sum(-1)
    expected = np.minimum(expected, 7)
    wrong = few.answer > 0
    assert np.array_equal(few.answer[wrong], expected[wrong]) and np.array_equal(few.gold, gold)
    with pytest.raises(InputError, match="problems x 5000 wrong answers") as info:
        simulate_arrays(10_000, 1, 0, population, wrong_answers=5000)
    assert info.value.where == "wrong_answers"


@pytest.mark.parametrize("extra, flag", [(["--wrong-answers", "1000000000"], "--wrong-answers"),
                                         (["--set", "wrong_answers=1e20"], "--set wrong_answers"),
                                         (["--set", "wrong_answers=1e9"], "--set wrong_answers")])
def test_cli_bounds_wrong_answers(tmp_path, monkeypatch, capsys, extra, flag):
    code, _, err = run_cli(["simulate", "--out", tmp_path / "p.jsonl", *extra], monkeypatch, capsys)
    assert code != 0 and err.startswith(f"error: {flag}: must be an integer from 1 to 10,000"), err
    assert not (tmp_path / "p.jsonl").exists()


def test_cli_refuses_a_folder_or_unwritable_out_before_simulating(tmp_path, monkeypatch, capsys):
    import optscale.cli.simulate as cli

    def boom(*args, **kwargs):
        raise AssertionError("simulated before checking --out")

    monkeypatch.setattr(cli, "simulate_pool", boom)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.chdir(tmp_path)
    for out, text in ((".", "is a folder"), (tmp_path, "is a folder"), (blocker / "pool.jsonl", "--out:")):
        code, _, err = run_cli(["simulate", "--out", out, "--problems", 3, "--samples", 2], monkeypatch, capsys)
        assert code != 0 and err.startswith("error: --out:") and text in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_cli_bounds_samples_per_problem_by_what_a_pool_holds(tmp_path, monkeypatch, capsys):
    """2 x 70,000 draws are few, but a pool holds at most 65,536 samples per problem: refused up front,
    not a validation traceback after drawing."""
    code, _, err = run_cli(["simulate", "--out", tmp_path / "p.jsonl", "--problems", "2", "--samples", "70000"],
                           monkeypatch, capsys)
    assert code != 0 and err.startswith("error: --samples: at most 65,536 samples per problem"), err
    assert not (tmp_path / "p.jsonl").exists()
