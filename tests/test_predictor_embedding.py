"""The embedding predictor and the packaged default model (needs the predictor extra's MiniLM)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import need, need_module, shared_data

need_module("sklearn", "the predictor extra is not installed")
need_module("sentence_transformers", "the predictor extra is not installed")

from optscale.errors import InputError  # noqa: E402
from optscale.priors import PriorSource  # noqa: E402
from optscale.predictor import (  # noqa: E402
    EmbeddingPredictor, KernelPredictor, PredictorPriors, Problems, load, load_default, load_training,
)
from optscale.predictor.encoder import embed, model_dir, static_embed  # noqa: E402

try:
    model_dir()
    missing_model = None
except InputError as exc:  # the extra without its model package
    missing_model = exc
need(missing_model is None, f"all-MiniLM-L6-v2 is not installed: {missing_model}")

QUESTIONS = [
    "What is $1 + 1$?",
    "Compute $2 \\times 3$.",
    "Find the number of ordered triples $(a,b,c)$ of positive integers with $\\text{lcm}(a,b)=1000$, "
    "$\\text{lcm}(b,c)=2000$ and $\\text{lcm}(c,a)=2000$.",
    "Let $P(x)$ be a monic polynomial of degree 6 with $P(k) = k$ for $k = 1, \\dots, 6$. Find $P(7)$.",
]


@pytest.fixture(scope="session")
def math_subset():
    """120 real training rows (embedded once per session by the encoder's memo)."""
    data = load_training(shared_data("score-moments", "math_train.jsonl"))
    return data.subset(np.random.default_rng(0).choice(len(data), 120, replace=False))


def test_embeddings_are_unit_norm_and_memoised():
    first = embed(QUESTIONS[:2])
    assert first.shape == (2, 384) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(embed(QUESTIONS[1:2]), first[1:])
    assert embed([]).shape == (0, 384)


def test_static_embeddings_track_contextual_ones():
    static = static_embed(QUESTIONS)
    np.testing.assert_allclose(np.linalg.norm(static, axis=1), 1.0, atol=1e-5)
    # A one-token text is its own static vector: the model's embedding of that token alone.
    words = ["triangle", "integer", "probability"]
    np.testing.assert_allclose(static_embed(words), embed(words), atol=1e-4)
    assert static_embed([]).shape == (0, 384)


def test_embedding_predictor_round_trip(math_subset, tmp_path):
    model = EmbeddingPredictor(lsa_dims=50).fit(math_subset, folds=3)
    assert model.w_embedding.shape == (384, 2)
    again = load(model.save(tmp_path / "m"))
    problems = Problems.from_texts(QUESTIONS)
    np.testing.assert_allclose(again.predict(problems).mean, model.predict(problems).mean, atol=1e-5)


def test_kernel_predictor_round_trip(math_subset, tmp_path):
    model = KernelPredictor(embedding_dims=16).fit(math_subset, folds=3)
    assert model.train["embedding"].shape == (120, 16) and model.dual.shape == (120, 2)
    again = load(model.save(tmp_path / "m"))
    problems = Problems.from_texts(QUESTIONS)
    for a, b in zip(again.predict(problems).loc.T, model.predict(problems).loc.T):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # A training question is predicted from its own row mostly: nearer its label than the mean is.
    own = model.predict(math_subset.problems.subset(range(20))).mean
    assert np.mean(np.abs(own - math_subset.mean[:20])) < np.mean(np.abs(math_subset.mean.mean() - math_subset.mean[:20]))


def test_default_model_is_small_and_sensible():
    model = load_default()
    assert model.kind == "kernel"
    folder_bytes = sum(p.stat().st_size for p in model_folder().iterdir())
    assert folder_bytes < 2_000_000
    val = model.metrics["validation"]
    assert val["rows"] > 4000 and val["mean"]["r2"] > 0.3
    pred = model.predict(Problems.from_texts(QUESTIONS))
    # Real MATH score means are mostly above 0.9 (the paper's predictor put them near 0.5).
    assert np.all((pred.mean > 0.8) & (pred.mean < 1.0)) and np.all(pred.std < 0.2)
    source = PredictorPriors()
    assert isinstance(source, PriorSource)
    priors = source.priors(["a", "b", "c", "d"], QUESTIONS)
    assert np.all(priors.width_mu == model.widths[0]) and np.all(priors.sigma > 0)


def test_default_model_ranks_math500_levels():
    from optscale.predictor import Problems

    problems = Problems.from_file(shared_data("benchmarks", "math500.jsonl"))
    levels = np.array(problems.levels)
    keep = np.concatenate([np.flatnonzero(levels == k)[:30] for k in (1, 3, 5)])  # 90 problems keep it quick
    problems, levels = problems.subset(keep), levels[keep]
    pred = load_default().predict(problems)
    by_level = [pred.mean[levels == k].mean() for k in (1, 3, 5)]
    assert by_level[0] > by_level[1] > by_level[2] and 0.88 < np.mean(pred.mean) < 0.97


def model_folder():
    from optscale.predictor import DEFAULT_MODEL

    return DEFAULT_MODEL


def test_default_model_config_records_format():
    config = json.loads((model_folder() / "config.json").read_text())
    assert config["format_version"] == 1 and config["kind"] == "kernel"
    assert config["params"]["embedding_model"] == "all-MiniLM-L6-v2"
