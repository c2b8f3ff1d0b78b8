"""Prior sources for OptScale^t: files of parameters or moments, with clear errors."""

import json

import numpy as np
import pytest

from conftest import shared_data
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
