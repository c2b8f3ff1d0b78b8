"""Hostile values for the predictor: every ``--param`` of every kind and every field of a saved
model folder is validated, so bad input gets one InputError naming the flag or the file and
field, never a traceback, NaN in a priors file, or a huge allocation."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest

from conftest import need_module

need_module("sklearn", "the predictor extra is not installed")

from optscale.errors import InputError  # noqa: E402
from optscale.predictor import (  # noqa: E402
    KINDS, ConstantPredictor, EmbeddingPredictor, KernelPredictor, MetadataPredictor, TransformerPredictor, load,
    load_training,
)

SUBJECTS = ["Algebra", "Geometry", "Number Theory"]
WORDS = ["easy", "simple", "basic", "tricky", "hard"]
#: Kernel features that need no embedding model.
NO_EMBEDDING = {"block_weights": {"tfidf": 0.5, "meta": 0.1}}


def _rows(n: int = 60) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        level = int(rng.integers(1, 6))
        rows.append({"id": f"p{i}", "question": f"{WORDS[level - 1]} problem {i} about {SUBJECTS[i % 3].lower()}",
                     "subject": SUBJECTS[i % 3], "level": level,
                     "score_mean": float(0.98 - 0.04 * level + rng.normal(0, 0.01)),
                     "score_std": float(0.01 + 0.02 * level + rng.uniform(0, 0.005))})
    return rows


def _write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _cli(*args):
    from typer.testing import CliRunner

    from optscale.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    _write(path, _rows())
    return path


@pytest.fixture
def small_logspace(monkeypatch):
    """Fail, instead of allocating gigabytes, if a grid of more than 1,000 penalties is ever built."""
    logspace = np.logspace

    def bounded(start, stop, num=50, *args, **kwargs):
        assert num <= 1000, f"np.logspace asked for {num} values"
        return logspace(start, stop, num, *args, **kwargs)

    monkeypatch.setattr(np, "logspace", bounded)


# ----------------------------------------------------------------------------- --param


@pytest.mark.parametrize("kind, pair", [
    ("kernel", "alphas=[-2,0.5,-1]"),
    ("kernel", 'alphas="x"'),
    ("kernel", "alphas=[1]"),
    ("kernel", "alphas=[-2,0.5,1000000000]"),  # 7.45 GiB of penalties
    ("kernel", "alphas=[-2,400,11]"),  # 10**400 overflows
    ("kernel", 'embedding_dims="a"'),
    ("kernel", "embedding_dims=100000"),
    ("kernel", "ngram_range=5"),
    ("kernel", "ngram_range=[1,1000]"),
    ("kernel", 'gammas="abc"'),
    ("kernel", "gammas=[NaN]"),
    ("kernel", "gammas=[1e308]"),
    ("kernel", "gammas=[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]"),
    ("kernel", "block_weights=5"),
    ("kernel", 'block_weights={"tfidf":"x"}'),
    ("kernel", 'block_weights={"tfidf":Infinity}'),
    ("kernel", "min_df=true"),
    ("metadata", "alphas=[-3,3,1000000000]"),
    ("embedding", "lsa_dims=1000000000"),
    ("embedding", "max_seq_length=0"),
    ("embedding", "target=z"),
])
def test_cli_train_names_the_bad_param_and_says_what_is_allowed(train_file, tmp_path, small_logspace, kind, pair):
    name = pair.partition("=")[0]
    res = _cli("predictor", "train", "--kind", kind, "--data", train_file, "--out", tmp_path / "m", "--param", pair)
    assert isinstance(res.exception, InputError), res.output
    assert res.exception.where == f"--param {name}" and "allowed: " in str(res.exception)
    assert not (tmp_path / "m" / "config.json").exists()


def test_cli_refuses_a_param_given_twice(train_file, tmp_path):
    res = _cli("predictor", "train", "--kind", "metadata", "--data", train_file, "--out", tmp_path / "m",
               "--param", "alphas=[-3,3,5]", "--param", "alphas=[-1,1,5]")
    assert isinstance(res.exception, InputError) and res.exception.where == "--param", res.output
    assert "given twice" in str(res.exception)


@pytest.mark.parametrize("cls, params", [
    (MetadataPredictor, {"alphas": [-3, 3, 2.5]}),
    (MetadataPredictor, {"alphas": [True, 3, 5]}),
    (EmbeddingPredictor, {"min_df": 0}),
    (EmbeddingPredictor, {"block_weights": {"tfidf": 0}}),
    (KernelPredictor, {"embedding_dims": 0}),
    (KernelPredictor, {"ngram_range": [2, 1]}),
    (TransformerPredictor, {"head_hidden": 10**9}),
    (TransformerPredictor, {"max_length": -1}),
    (TransformerPredictor, {"batch_size": 0}),
    (TransformerPredictor, {"dropout": 1.0}),
    (TransformerPredictor, {"learning_rate": float("nan")}),
    (TransformerPredictor, {"device": "gpu"}),
    (TransformerPredictor, {"seed": -1}),
    (TransformerPredictor, {"backbone": ""}),
])
def test_every_kind_validates_its_params_before_any_work(cls, params):
    with pytest.raises(InputError) as info:
        cls(**params)
    assert info.value.where == next(iter(params))


def test_every_kinds_defaults_are_valid_json_values():
    for name, cls in KINDS.items():
        assert cls(**cls.defaults).params == cls.defaults == json.loads(json.dumps(cls.defaults)), name


# ----------------------------------------------------------------------------- saved folders


@pytest.fixture(scope="module")
def saved(train_file, tmp_path_factory):
    """Folders of three kinds, trained once; tests edit copies."""
    data = load_training(train_file)
    root = tmp_path_factory.mktemp("models")
    return {
        "kernel": KernelPredictor(**NO_EMBEDDING).fit(data, folds=3).save(root / "kernel"),
        "metadata": MetadataPredictor().fit(data, folds=3).save(root / "metadata"),
        "constant": ConstantPredictor().fit(data, folds=3).save(root / "constant"),
    }


def _copy(saved, kind, tmp_path):
    folder = tmp_path / kind
    shutil.copytree(saved[kind], folder)
    return folder


def _edit_config(folder, dotted: str, value) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    *parents, last = dotted.split(".")
    target = config
    for key in parents:
        target = target[key]
    target[last] = value
    path.write_text(json.dumps(config))


def _edit_weights(folder, **changes) -> None:
    path = folder / "weights.npz"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


@pytest.mark.parametrize("kind, dotted, value, field", [
    ("kernel", "state.meta.levels", 5, "state.meta.levels"),
    ("kernel", "state.meta.level_freq", [0.5], "state.meta"),
    ("kernel", "state.alpha", [-1, -1], "state.alpha[0]"),
    ("kernel", "state.gamma", [1.0], "state.gamma[1]"),
    ("kernel", "calibration.z_scale", [float("nan"), 1.0], "calibration.z_scale[0]"),
    ("kernel", "calibration.z_scale", [1e300, 1.0], "calibration.z_scale[0]"),
    ("kernel", "calibration.width_mu", -1, "calibration.width_mu"),
    ("kernel", "params.gammas", "abc", "params.gammas"),
    ("kernel", "params.depth", 3, "params"),
    ("metadata", "state.coef", [[0.1, 0.2]], "state.coef"),
    ("metadata", "params.alphas", [-3, 3, 10**9], "params.alphas"),
    ("constant", "state.point", [float("nan"), 0.1], "state.point[0]"),
    ("constant", "state", [], "state"),
])
def test_damaged_config_names_the_file_and_field(saved, tmp_path, kind, dotted, value, field):
    folder = _copy(saved, kind, tmp_path)
    _edit_config(folder, dotted, value)
    with pytest.raises(InputError) as info:
        load(folder)
    assert info.value.where == f"{folder / 'config.json'} field {field}"


def test_cli_predict_names_the_damaged_file_not_a_flag(saved, tmp_path):
    bench = tmp_path / "bench.jsonl"
    _write(bench, [{"id": "a", "question": "easy problem about algebra", "level": 1}])
    out = tmp_path / "priors.jsonl"
    for dotted, value in (("state.meta.levels", 5), ("calibration.z_scale", [float("nan"), 1.0]),
                          ("params.depth", 3), ("params.gammas", "abc")):
        folder = _copy(saved, "kernel", tmp_path / dotted)
        _edit_config(folder, dotted, value)
        res = _cli("predictor", "predict", bench, "--model", folder, "--out", out)
        assert isinstance(res.exception, InputError), (dotted, res.output)
        assert res.exception.where.startswith(f"{folder / 'config.json'} field "), (dotted, res.exception.where)
        assert not out.exists()


def _huge_header_npz(path) -> None:
    """A weights file whose ``dual`` declares 1.6 GB in a few bytes."""
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**8, 2)}
    member = b"\x93NUMPY\x01\x00"
    text = repr(header).encode() + b" " * 10
    text += b" " * (-(len(member) + 2 + len(text) + 1) % 64) + b"\n"
    member += len(text).to_bytes(2, "little") + text
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("dual.npy", member)


@pytest.mark.parametrize("damage, field", [
    (lambda f: (f / "weights.npz").write_bytes(b"PK\x03\x04garbage"), None),
    (lambda f: (f / "weights.npz").write_bytes(b"garbage"), None),
    (lambda f: (f / "weights.npz").unlink(), None),
    (lambda f: _huge_header_npz(f / "weights.npz"), "dual"),
    (lambda f: _edit_weights(f, dual=np.array([{"pickled": 1}, None], dtype=object)), "dual"),
    (lambda f: _edit_weights(f, dual=np.zeros((3, 5))), "dual"),
    (lambda f: _edit_weights(f, intercept=np.array([np.nan, 0.1])), "intercept"),
    (lambda f: _edit_weights(f, intercept=np.array(["a", "b"])), "intercept"),
    (lambda f: _edit_weights(f, tfidf_indices=np.full(10, 10**6, np.int32), tfidf_data=np.ones(10, np.float16)),
     "tfidf_indices"),
    (lambda f: _edit_weights(f, train_meta=None), "train_meta"),
])
def test_damaged_weights_name_the_file_and_array(saved, tmp_path, damage, field):
    folder = _copy(saved, "kernel", tmp_path)
    damage(folder)
    with pytest.raises(InputError) as info:
        load(folder)
    weights = folder / "weights.npz"
    assert info.value.where == (str(weights) if field is None else f"{weights} field {field}"), str(info.value)


def test_weights_that_contradict_the_config_are_refused(saved, tmp_path):
    folder = _copy(saved, "kernel", tmp_path / "a")
    _edit_config(folder, "state.meta", None)  # the weights still hold the meta block
    with pytest.raises(InputError) as info:
        load(folder)
    assert info.value.where == f"{folder / 'weights.npz'} field train_meta"
    folder = _copy(saved, "kernel", tmp_path / "b")
    (folder / "vocabulary.json").write_text(json.dumps(["only", "words"]))
    with pytest.raises(InputError) as info:
        load(folder)
    assert info.value.where == str(folder / "vocabulary.json")


def test_weights_are_read_within_a_bound(saved, monkeypatch):
    monkeypatch.setattr("optscale.predictor.validation.MAX_WEIGHTS_BYTES", 100)
    with pytest.raises(InputError, match="more than the 100") as info:
        load(saved["kernel"])
    assert info.value.where == str(saved["kernel"] / "weights.npz")


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_overflowing_weights_never_reach_a_priors_file(saved, tmp_path, train_file):
    folder = _copy(saved, "kernel", tmp_path)
    with np.load(folder / "weights.npz") as data:
        shape = data["dual"].shape
    _edit_weights(folder, dual=np.full(shape, 1e308))  # finite, but their sums are not
    model = load(folder)
    with pytest.raises(InputError, match="non-finite") as info:
        model.predict(load_training(train_file).problems)
    assert info.value.where == str(folder)
