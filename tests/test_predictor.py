"""The prior predictor without any embedding model: data, baselines, calibration, folders, priors, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import need_module

need_module("sklearn", "the predictor extra is not installed")

from optscale.errors import InputError  # noqa: E402
from optscale.priors import FilePriors, PriorSource  # noqa: E402
from optscale.predictor import (  # noqa: E402
    ConstantPredictor, EmbeddingPredictor, KernelPredictor, MetadataPredictor, Prediction, Predictor, PredictorPriors,
    Problems, load, load_training,
)
from optscale.predictor.kernel import loo_select  # noqa: E402

SUBJECTS = ["Algebra", "Geometry", "Number Theory"]
WORDS = ["easy", "simple", "basic", "tricky", "hard"]


def _rows(n: int = 150, seed: int = 0) -> list[dict]:
    """Synthetic MATH-like rows whose difficulty shows in level, subject and wording."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        level = int(rng.integers(1, 6))
        subject = SUBJECTS[i % 3]
        mean = float(np.clip(0.99 - 0.035 * level - 0.02 * (subject == "Geometry") + rng.normal(0, 0.01), 0.5, 0.999))
        std = float(np.clip(0.01 + 0.02 * level + rng.normal(0, 0.005), 0.001, 0.3))
        question = f"{WORDS[level - 1]} problem {i} about {subject.lower()}: compute {rng.integers(1000)} plus x"
        rows.append({"id": f"p{i}", "question": question, "subject": subject, "level": level,
                     "score_mean": mean, "score_std": std})
    return rows


def _write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def train_file(tmp_path):
    path = tmp_path / "train.jsonl"
    _write(path, _rows())
    return path


# ----------------------------------------------------------------------------- data


def test_loads_moments_and_raw_samples(tmp_path):
    path = tmp_path / "mixed.jsonl"
    _write(path, [
        {"question": "q one", "score_mean": 0.9, "score_std": 0.1, "level": "Level 3"},
        {"id": "x", "question": "q two", "samples": [{"score": 0.2}, {"score": 0.6}], "subject": "Algebra"},
        {"question": "q three", "scores": [1.0, 1.0, 0.7]},
    ])
    data = load_training(path)
    assert data.problems.ids == ["mixed.jsonl:1", "x", "mixed.jsonl:3"]
    assert data.problems.levels == [3, None, None] and data.problems.subjects == [None, "Algebra", None]
    np.testing.assert_allclose(data.mean, [0.9, 0.4, 0.9])
    np.testing.assert_allclose(data.std, [0.1, 0.2, np.std([1.0, 1.0, 0.7])])


@pytest.mark.parametrize("row, message", [
    ({"question": "q", "score_mean": 0.9}, "missing label 'score_std'"),
    ({"question": "q", "score_mean": "high", "score_std": 0.1}, "field score_mean"),
    ({"question": "q", "score_mean": 0.9, "score_std": -0.01}, "score_std must be >= 0"),
    ({"question": "  ", "score_mean": 0.9, "score_std": 0.1}, "non-empty 'question'"),
    ({"question": "q", "score_mean": 1.2, "score_std": 0.1}, r"must lie in \[0, 1\]"),
    ({"question": "q", "samples": []}, "non-empty list"),
    ({"question": "q", "samples": [{"score": 2}]}, r"samples\[0\]"),
    ({"question": "q"}, "needs labels"),
])
def test_bad_training_rows_name_file_and_line(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    _write(path, [{"question": "fine", "score_mean": 0.5, "score_std": 0.1}, row])
    with pytest.raises(InputError, match=message) as info:
        load_training(path)
    assert info.value.where.startswith(f"{path}:2")


def test_bad_benchmark_files(tmp_path):
    path = tmp_path / "bench.jsonl"
    _write(path, [{"id": "a", "question": "q"}, {"question": "no id"}])
    assert Problems.from_file(path).ids == ["a", "bench/1"]  # the id a live run gives that row
    _write(path, [{"id": "a", "question": "q"}, {"id": "a", "question": "q2"}])
    with pytest.raises(InputError, match="repeats"):
        Problems.from_file(path)
    path.write_text('{"id": "a", "question": "q"}\n{oops\n', encoding="utf-8")
    with pytest.raises(InputError, match="malformed JSON") as info:
        Problems.from_file(path)
    assert info.value.where == f"{path}:2"
    with pytest.raises(InputError, match="file not found"):
        Problems.from_file(tmp_path / "missing.jsonl")


# ----------------------------------------------------------------------------- predictive distribution


@settings(max_examples=60, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.0, 0.6), st.floats(0.0, 1.5), st.floats(0.0, 1.5))
def test_prediction_stays_in_range(mean, std, s_mean, s_std):
    pred = Prediction.around(np.array([[mean, std]]), [s_mean, s_std])
    assert 0 < pred.mean[0] < 1 and 0 < pred.std[0] <= 0.5
    assert pred.mean_sd[0] >= 0 and pred.std_sd[0] >= 0
    m_lo, m_hi, s_lo, s_hi = pred.interval(0.9)
    tol = 1e-12  # expit(logit(x)) round trip
    assert 0 <= m_lo[0] <= pred.mean[0] + tol and pred.mean[0] - tol <= m_hi[0] <= 1
    assert 0 < s_lo[0] <= pred.std[0] + tol and pred.std[0] - tol <= s_hi[0]


def test_predictive_sd_matches_monte_carlo():
    pred = Prediction.around(np.array([[0.93, 0.06]]), [0.7, 0.5])
    rng = np.random.default_rng(0)
    z = pred.loc[0] + pred.scale[0] * rng.standard_normal((400_000, 2))
    assert pred.mean_sd[0] == pytest.approx(np.std(1 / (1 + np.exp(-z[:, 0]))), rel=0.01)
    assert pred.std_sd[0] == pytest.approx(np.std(np.exp(z[:, 1])), rel=0.02)


# ----------------------------------------------------------------------------- kinds


def test_metadata_beats_constant_and_is_calibrated(train_file):
    data = load_training(train_file)
    const = ConstantPredictor().fit(data)
    meta = MetadataPredictor().fit(data)
    for moment in ("mean", "std"):
        assert meta.metrics["validation"][moment]["rmse"] < 0.6 * const.metrics["validation"][moment]["rmse"]
    assert 0.75 <= meta.metrics["validation"]["coverage"]["mean"]["0.9"] <= 1.0
    assert all(w > 0 for w in meta.widths) and meta.widths[0] < const.widths[0]
    # Problems without metadata fall back to the average effect, not a reference category.
    bare = meta.predict(Problems.from_texts(["anything"]))
    assert bare.mean[0] == pytest.approx(np.mean(meta.predict(data.problems).mean), abs=0.01)


def test_repeated_questions_share_a_fold(tmp_path):
    rows = _rows(40)
    rows += [dict(r, id=r["id"] + "-again") for r in rows[:10]]
    path = tmp_path / "dup.jsonl"
    _write(path, rows)
    data = load_training(path)
    from optscale.predictor.base import group_folds

    for train, test in group_folds(data.problems, 5, 0):
        assert not {data.problems.questions[i] for i in train} & {data.problems.questions[i] for i in test}


@pytest.mark.parametrize("make", [
    lambda: MetadataPredictor(),
    lambda: EmbeddingPredictor(block_weights={"tfidf": 1.0, "meta": 1.0}),
    lambda: EmbeddingPredictor(block_weights={"tfidf": 1.0}, target="logit"),
    lambda: KernelPredictor(block_weights={"tfidf": 0.5, "meta": 0.1}),
    lambda: KernelPredictor(block_weights={"meta": 1.0}),
])
def test_save_load_round_trip(train_file, tmp_path, make):
    data = load_training(train_file)
    model = make().fit(data)
    folder = model.save(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    assert config["format_version"] == 1 and config["kind"] == model.kind
    again = load(folder)
    a, b = model.predict(data.problems), again.predict(data.problems)
    np.testing.assert_allclose(a.mean, b.mean, atol=1e-6)
    np.testing.assert_allclose(a.std_sd, b.std_sd, atol=1e-6)
    assert again.widths == pytest.approx(model.widths) and again.metrics == model.metrics


def test_tfidf_features_recover_most_of_what_metadata_knows(train_file):
    data = load_training(train_file)
    const = ConstantPredictor().fit(data).metrics["validation"]
    meta = MetadataPredictor().fit(data).metrics["validation"]
    text = EmbeddingPredictor(block_weights={"tfidf": 1.0}).fit(data).metrics["validation"]
    # The wording carries the level here: from the words alone, TF-IDF gains at least 90% of
    # what the level and subject gain over the constant.
    for moment in ("mean", "std"):
        gained = const[moment]["rmse"] - text[moment]["rmse"]
        assert gained >= 0.9 * (const[moment]["rmse"] - meta[moment]["rmse"]) > 0, moment


def test_loo_select_matches_refitting_without_each_row():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(25, 3))
    y = np.stack([np.sin(x[:, 0]) + 0.1 * rng.normal(size=25), x[:, 1] ** 2], -1)
    y = y - y.mean(0)
    dist = ((x[:, None] - x[None]) ** 2).sum(-1)
    gammas, alphas = [0.1, 1.0], np.array([0.01, 0.3, 3.0])

    def brute(k, a, j):  # leave each row out, refit kernel ridge, predict it
        errs = []
        for i in range(len(x)):
            keep = np.arange(len(x)) != i
            dual = np.linalg.solve(k[np.ix_(keep, keep)] + a * np.eye(keep.sum()), y[keep, j])
            errs.append((y[i, j] - k[i, keep] @ dual) ** 2)
        return np.mean(errs)

    kernels = [np.exp(-g * dist) for g in gammas]
    errors = {(g, a, j): brute(kernels[g], a, j) for g in range(2) for a in alphas for j in range(2)}
    for j, (g, a, dual) in enumerate(loo_select(kernels, y, alphas)):
        assert errors[(g, a, j)] == pytest.approx(min(v for (_, _, jj), v in errors.items() if jj == j), rel=1e-9)
        np.testing.assert_allclose(dual, np.linalg.solve(kernels[g] + a * np.eye(len(x)), y[:, j]), rtol=1e-6, atol=1e-9)


def test_kernel_finds_what_no_additive_model_can(tmp_path):
    """Score means set by an interaction of two words (an XOR): linear ridge cannot, neighbours can."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(160):
        colour, shape = rng.integers(2), rng.integers(2)
        rows.append({"id": f"p{i}", "question": f"{['red', 'blue'][colour]} {['round', 'square'][shape]} item {i}",
                     "score_mean": float((0.95 if colour == shape else 0.8) + rng.normal(0, 0.01)),
                     "score_std": float((0.03 if colour == shape else 0.12) + rng.normal(0, 0.003))})
    path = tmp_path / "xor.jsonl"
    _write(path, rows)
    data = load_training(path)
    words = {"block_weights": {"tfidf": 1.0}, "ngram_range": [1, 1]}  # bigrams would spell out the interaction
    linear = EmbeddingPredictor(**words).fit(data).metrics["validation"]
    kernel = KernelPredictor(**words).fit(data).metrics["validation"]
    for moment in ("mean", "std"):
        assert kernel[moment]["rmse"] < 0.3 * linear[moment]["rmse"]
        assert kernel[moment]["r2"] > 0.95


def test_kernel_predicts_in_chunks_as_in_one_piece(train_file, monkeypatch):
    import optscale.predictor.kernel as kernel

    data = load_training(train_file)
    model = KernelPredictor(block_weights={"tfidf": 0.5, "meta": 0.1}).fit(data, folds=3)
    whole = model.predict(data.problems).loc
    monkeypatch.setattr(kernel, "CHUNK", 7)
    np.testing.assert_allclose(model.predict(data.problems).loc, whole, atol=1e-12)
    assert len(model.predict(Problems.from_texts([]))) == 0


@pytest.mark.parametrize("params, message", [
    ({"block_weights": {"tfidf": 0, "meta": 0}}, "at least one positive"),
    ({"block_weights": {"tfidf": -1, "meta": 1}}, "at least one positive"),
    ({"block_weights": {"words": 1}}, "unknown feature block"),
    ({"gammas": []}, "gammas"),
    ({"gammas": [1, -1]}, "gammas"),
])
def test_kernel_rejects_bad_parameters(params, message):
    with pytest.raises(InputError, match=message):
        KernelPredictor(**params)


def test_kernel_without_usable_blocks(tmp_path):
    path = tmp_path / "bare.jsonl"
    _write(path, [{"question": f"q{i}", "score_mean": 0.9, "score_std": 0.1} for i in range(12)])
    with pytest.raises(InputError, match="no feature block is usable"):
        KernelPredictor(block_weights={"meta": 1.0}).fit(load_training(path))


def test_folder_errors(train_file, tmp_path):
    model = MetadataPredictor().fit(load_training(train_file))
    folder = model.save(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    with pytest.raises(InputError, match="kind 'metadata', expected one of \\['constant'\\]"):
        ConstantPredictor.load(folder)
    (folder / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(InputError, match="format version 99") as info:
        load(folder)
    assert info.value.where == str(folder / "config.json")
    (folder / "config.json").write_text(json.dumps({**config, "kind": "oracle"}))
    with pytest.raises(InputError, match="kind 'oracle'"):
        load(folder)
    with pytest.raises(InputError, match="no config.json"):
        load(tmp_path / "empty")
    with pytest.raises(InputError, match="unknown parameter"):
        MetadataPredictor(depth=3)


# ----------------------------------------------------------------------------- priors


def test_predictor_priors_use_validation_widths(train_file):
    model = MetadataPredictor().fit(load_training(train_file))
    source = PredictorPriors(model)
    assert isinstance(source, PriorSource)
    arrays = source.priors(["a", "b"], ["easy problem", "hard problem"])
    assert np.all(arrays.width_mu == model.widths[0]) and np.all(arrays.width_sigma == model.widths[1])
    assert np.all(arrays.sigma > 0)
    fixed = PredictorPriors(model, width=(0.2, 0.05)).priors(["a"], ["q"])
    assert fixed.width_mu[0] == 0.2 and fixed.width_sigma[0] == 0.05
    with pytest.raises(InputError, match="non-empty string"):
        source.priors(["a"], [None])
    with pytest.raises(InputError, match="width"):
        PredictorPriors(model, width=-1)


def test_priors_file_comparison_rejects_an_empty_file(tmp_path, train_file):
    from optscale.predictor.evaluate import compare_file

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="no priors") as info:
        compare_file(empty, load_training(train_file))
    assert info.value.where == str(empty)


def test_failed_save_leaves_no_half_written_folder(train_file, tmp_path):
    model = MetadataPredictor().fit(load_training(train_file))

    def broken(folder):
        (folder / "weights.npz").write_bytes(b"partial")
        raise OSError("disk full")

    model._save_weights = broken
    with pytest.raises(InputError, match="disk full"):
        model.save(tmp_path / "m")
    assert [p.name for p in (tmp_path / "m").iterdir()] == []


# ----------------------------------------------------------------------------- embedding caches


class _FakeEncoder:
    """Stands in for sentence-transformers: a deterministic unit vector per text, counting calls."""

    max_seq_length = 256

    def __init__(self):
        self.encoded: list[str] = []

    def encode(self, texts, **_):
        self.encoded += texts
        out = np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=384) for t in texts])
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def fake_encoder(monkeypatch, tmp_path):
    from collections import OrderedDict

    import optscale.predictor.encoder as encoder

    fake = _FakeEncoder()
    monkeypatch.setattr(encoder, "_loaded", [fake])
    monkeypatch.setattr(encoder, "_memo", OrderedDict())
    monkeypatch.setattr(encoder, "_disk_read", set())
    monkeypatch.setenv("OPTSCALE_EMBEDDING_CACHE", str(tmp_path / "cache"))
    return encoder, fake


def test_embedding_memo_is_a_bounded_lru(fake_encoder, monkeypatch):
    encoder, fake = fake_encoder
    monkeypatch.setattr(encoder, "MEMO_ENTRIES", 3)
    monkeypatch.delenv("OPTSCALE_EMBEDDING_CACHE")
    texts = [f"question {i}" for i in range(5)]
    first = encoder.embed(texts)  # more texts than the memo holds: all still returned
    assert first.shape == (5, 384) and len(encoder._memo) == 3
    for text in texts:
        encoder.embed([text])
    fake.encoded.clear()
    encoder.embed(["question 4", "question 2"])  # the most recent survive
    assert fake.encoded == []
    encoder.embed(["question 0"])
    assert fake.encoded == ["question 0"]
    np.testing.assert_allclose(encoder.embed(texts), first, rtol=1e-6)


def test_embedding_disk_cache_only_appends_what_is_new(fake_encoder, tmp_path, monkeypatch):
    encoder, fake = fake_encoder
    encoder.embed(["a", "b"])
    cache = encoder._disk_cache(256)
    [shard] = cache.shards()
    before = shard.read_bytes()
    encoder.embed(["b", "c"])
    shards = cache.shards()
    assert len(shards) == 2 and shard.read_bytes() == before  # the first shard was not rewritten
    [new] = [p for p in shards if p != shard]
    with np.load(new) as data:
        assert len(data["keys"]) == 1  # only "c"
    # A fresh process reads every shard and computes nothing again.
    monkeypatch.setattr(encoder, "_memo", type(encoder._memo)())
    monkeypatch.setattr(encoder, "_disk_read", set())
    fake.encoded.clear()
    encoder.embed(["a", "b", "c"])
    assert fake.encoded == []
    # Many shards are merged into one, keeping every vector.
    monkeypatch.setattr(encoder, "MAX_SHARDS", 3)
    for i in range(4):
        encoder.embed([f"more {i}"])
    assert len(cache.shards()) <= 3 and len(cache.read()) == 7


# ----------------------------------------------------------------------------- CLI


def test_cli_train_predict_evaluate(train_file, tmp_path):
    from typer.testing import CliRunner

    from optscale.cli.app import app

    runner = CliRunner()
    model_dir = tmp_path / "model"
    res = runner.invoke(app, ["predictor", "train", "--kind", "kernel", "--data", str(train_file), "--out", str(model_dir),
                              "--param", 'block_weights={"tfidf": 0.5, "meta": 0.1}'])
    assert res.exit_code == 0, res.output
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["training_data"]["rows"] == 150
    res = runner.invoke(app, ["predictor", "train", "--kind", "metadata", "--data", str(train_file), "--out", str(model_dir)])
    assert res.exit_code != 0 and "--force" in str(res.exception)

    bench = tmp_path / "bench.jsonl"
    _write(bench, [{"id": r["id"], "question": r["question"], "level": r["level"], "subject": r["subject"]} for r in _rows(20)])
    priors = tmp_path / "priors.jsonl"
    res = runner.invoke(app, ["predictor", "predict", str(bench), "--model", str(model_dir), "--out", str(priors)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in priors.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(20)]
    assert {"score_mean", "score_std", "mu", "sigma", "width_mu", "width_sigma"} <= set(rows[0])
    loaded = FilePriors(priors).priors(["p0"], [None])
    assert loaded.mu[0] == pytest.approx(rows[0]["mu"]) and loaded.width_mu[0] == pytest.approx(rows[0]["width_mu"])

    plot, report = tmp_path / "calib.png", tmp_path / "report.json"
    res = runner.invoke(app, ["predictor", "evaluate", "--data", str(train_file), "--model", str(model_dir), "--folds", "3",
                              "--priors", str(priors), "--plot", str(plot), "--json", str(report)])
    assert res.exit_code == 0, res.output
    assert plot.stat().st_size > 10_000
    out = json.loads(report.read_text())
    assert out["model"]["mean"]["rmse"] < out["constant"]["mean"]["rmse"]
    assert out["priors_files"][0]["labelled_matches"] == 20 and "errors" in out["priors_files"][0]

    res = runner.invoke(app, ["predictor", "evaluate", "--data", str(train_file), "--model", str(model_dir), "--fitted",
                              "--json", str(report)])
    assert res.exit_code == 0, res.output
    fitted = json.loads(report.read_text())
    assert fitted["mode"] == "fitted" and fitted["model"]["mean"]["rmse"] <= out["model"]["mean"]["rmse"]

    no_ids = tmp_path / "noids.jsonl"
    _write(no_ids, [{"question": "q"}])
    res = runner.invoke(app, ["predictor", "predict", str(no_ids), "--model", str(model_dir), "--out", str(priors)])
    assert res.exit_code == 0, res.output  # keyed as `optscale run` keys that row
    assert [json.loads(line)["id"] for line in priors.read_text().splitlines()] == ["noids/0"]


def test_predictor_is_abstract():
    with pytest.raises(TypeError):
        Predictor()


def test_cli_checks_outputs_before_working_and_names_flags(train_file, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import optscale.cli.predictor as cli_predictor
    from optscale.cli.app import app

    def never(*args, **kwargs):
        raise AssertionError("worked before checking its output")

    monkeypatch.setattr(cli_predictor, "load_training", never)
    monkeypatch.setattr(cli_predictor.Problems, "from_file", never)
    runner = CliRunner()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["predictor", "train", "--kind", "oracle", "--out", str(tmp_path / "m")], "--kind", "choose from constant"),
        (["predictor", "train", "--out", str(a_file / "m")], "--out", "cannot write"),
        (["predictor", "train", "--out", str(a_file)], "--out", "not a folder"),
        (["predictor", "predict", str(train_file), "--out", str(tmp_path)], "--out", "is a folder"),
        (["predictor", "evaluate", "--data", str(train_file), "--plot", str(a_file / "p.png")], "--plot", "not a folder"),
        (["predictor", "evaluate", "--data", str(train_file), "--json", str(tmp_path)], "--json", "is a folder"),
    ]
    for args, flag, message in cases:
        res = runner.invoke(app, args)
        assert isinstance(res.exception, InputError), (args, res.output)
        assert res.exception.where == flag and message in str(res.exception), (args, str(res.exception))
    monkeypatch.undo()
    res = runner.invoke(app, ["predictor", "train", "--kind", "metadata", "--data", str(train_file), "--out",
                              str(tmp_path / "m"), "--param", "depth=3"])
    assert isinstance(res.exception, InputError) and res.exception.where == "--param"
    res = runner.invoke(app, ["predictor", "train", "--kind", "kernel", "--data", str(train_file), "--out",
                              str(tmp_path / "m"), "--param", "gammas=[]"])
    assert isinstance(res.exception, InputError) and res.exception.where == "--param gammas"


# ----------------------------------------------------------------------------- review 9 regressions


def _cli(*args):
    from typer.testing import CliRunner

    from optscale.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("seed", ["-1", "99999999999999999999", str(2**32)])
def test_cli_seed_out_of_range_names_the_flag_before_any_work(train_file, tmp_path, seed):
    # scikit-learn raised "Seed must be between 0 and 2**32 - 1" as a traceback.
    for args in (("train", "--kind", "constant", "--data", train_file, "--out", tmp_path / "m"),
                 ("evaluate", "--data", train_file)):
        res = _cli("predictor", *args, "--seed", seed)
        assert res.exit_code != 0 and isinstance(res.exception, InputError), res.output
        assert res.exception.where == "--seed"
    assert not (tmp_path / "m").exists()


def test_cli_outputs_never_overwrite_inputs_or_each_other(train_file, tmp_path):
    before = train_file.read_bytes()
    res = _cli("predictor", "predict", train_file, "--out", train_file)
    assert isinstance(res.exception, InputError) and res.exception.where == "--out", res.output
    assert train_file.read_bytes() == before
    res = _cli("predictor", "evaluate", "--data", train_file, "--plot", tmp_path / "c.png", "--json", tmp_path / "c.png")
    assert isinstance(res.exception, InputError) and res.exception.where == "--json", res.output
    res = _cli("predictor", "evaluate", "--data", train_file, "--json", train_file)
    assert isinstance(res.exception, InputError) and res.exception.where == "--json", res.output
    assert train_file.read_bytes() == before and not (tmp_path / "c.png").exists()


def test_embedding_disk_cache_is_bounded_and_read_with_a_bound(fake_encoder, monkeypatch):
    encoder, fake = fake_encoder
    monkeypatch.setattr(encoder, "DISK_ENTRIES", 5)
    for i in range(8):
        encoder.embed([f"text {i}"])
    cache = encoder._disk_cache(256)
    kept = cache.read()
    newest = [encoder.hashlib.sha1(f"text {i}".encode()).hexdigest() for i in range(3, 8)]
    assert list(kept) == newest and len(cache.shards()) == 1  # the newest 5 survive, oldest first
    assert list(cache.read(2)) == newest[-2:]  # a bounded read takes the newest
    # A fresh process reads no more than its memo holds.
    monkeypatch.setattr(encoder, "MEMO_ENTRIES", 2)
    monkeypatch.setattr(encoder, "_memo", type(encoder._memo)())
    monkeypatch.setattr(encoder, "_disk_read", set())
    fake.encoded.clear()
    encoder.embed(["text 7"])
    assert fake.encoded == [] and len(encoder._memo) == 2
