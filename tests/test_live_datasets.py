"""Loading problems for live runs, prompt templates and run configuration."""

from __future__ import annotations

import asyncio
import gzip
import importlib.util
import json
from pathlib import Path

import pytest

from conftest import shared_data
from optscale.errors import InputError
from optscale.live.config import build_config, build_run_scorer, load_config_file
from optscale.live.datasets import DatasetSpec, load_problems
from optscale.live.prompts import PromptTemplate, render_markup
from optscale.live.sampler import SamplerSettings
from optscale.live.types import GenerationSettings



def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_json_and_csv_give_the_same_problems(tmp_path):
    rows = [{"id": "a", "question": "1+1?", "answer": "2"}, {"id": "b", "question": "2+2?", "answer": 4}]
    jsonl = write_jsonl(tmp_path / "p.jsonl", rows)
    (tmp_path / "p.json").write_text(json.dumps({"problems": rows}))
    (tmp_path / "p.csv").write_text("id,question,answer\na,1+1?,2\nb,2+2?,4\n")
    got = [load_problems(DatasetSpec(str(p))) for p in (jsonl, tmp_path / "p.json", tmp_path / "p.csv")]
    assert got[0] == got[1] == got[2]
    assert [(p.id, p.answer) for p in got[0]] == [("a", "2"), ("b", "4")]


def test_gsm8k_solutions_reduce_to_the_final_answer_and_ids_default_to_row_numbers(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"question": "q?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}])
    [p] = load_problems(DatasetSpec(str(path)))
    assert p.answer == "7" and p.id == "train/0"


def test_offset_limit_and_field_names(tmp_path):
    rows = [{"key": f"k{i}", "problem": f"q{i}", "solution": str(i)} for i in range(5)]
    path = write_jsonl(tmp_path / "x.jsonl", rows)
    got = load_problems(DatasetSpec(str(path), "problem", "solution", "key", offset=1, limit=2))
    assert [(p.id, p.question, p.answer) for p in got] == [("k1", "q1", "1"), ("k2", "q2", "2")]


def test_an_offset_past_the_end_names_the_offset(tmp_path):
    """Review 9 item 5: ``--offset 99`` was reported as ``ds.jsonl: no problems selected``."""
    path = write_jsonl(tmp_path / "x.jsonl", [{"id": f"k{i}", "question": f"q{i}"} for i in range(3)])
    with pytest.raises(InputError, match="skips 99 problems, but .*x.jsonl has only 3") as info:
        load_problems(DatasetSpec(str(path), offset=99))
    assert info.value.where == "offset"
    assert [p.id for p in load_problems(DatasetSpec(str(path), offset=2))] == ["k2"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="no problems in it") as info:
        load_problems(DatasetSpec(str(empty)))
    assert info.value.where == str(empty)


def test_a_row_without_a_question_names_the_line_and_the_problem(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"id": "ok", "question": "q"}, {"id": "p7", "answer": "1"}])
    with pytest.raises(InputError, match="problem 'p7' has no 'question' text") as info:
        load_problems(DatasetSpec(str(path)))
    assert info.value.where == f"{path}:2"


def test_repeated_ids_bad_json_and_missing_files_are_reported(tmp_path):
    dup = write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "question": "q"}, {"id": "a", "question": "r"}])
    with pytest.raises(InputError, match="repeats"):
        load_problems(DatasetSpec(str(dup)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "q"}\n{oops\n')
    with pytest.raises(InputError, match="malformed JSON") as info:
        load_problems(DatasetSpec(str(bad)))
    assert info.value.where.endswith("bad.jsonl:2")
    with pytest.raises(InputError, match="not found"):
        load_problems(DatasetSpec(str(tmp_path / "nope.jsonl")))


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None,
                    reason="datasets is installed; loading from the hub needs network")
def test_a_hub_name_without_the_datasets_package_says_what_to_install():
    with pytest.raises(InputError, match="pip install datasets") as info:
        load_problems(DatasetSpec("openai/gsm8k", subset="main"))
    assert info.value.where == "openai/gsm8k"


def test_the_shared_gsm8k_file_loads():
    problems = load_problems(DatasetSpec(str(shared_data("benchmarks", "gsm8k.jsonl")), limit=3))
    assert [p.id for p in problems] == ["gsm8k/test/0", "gsm8k/test/1", "gsm8k/test/2"]
    assert problems[0].answer == "18"


def test_prompt_templates():
    t = PromptTemplate(system="Be brief.")
    prompt = t.render("What is {x}?")
    assert prompt.messages[0] == {"role": "system", "content": "Be brief."}
    assert prompt.messages[1]["content"].startswith("What is {x}?\n") and "\\boxed{}" in prompt.messages[1]["content"]
    assert prompt.text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert prompt.text.endswith("<|im_start|>assistant\n")
    llama = PromptTemplate(user="Q: {question}", markup="llama3").render("2+2")
    assert llama.text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n") and "Q: 2+2" in llama.text
    with pytest.raises(InputError, match=r"\{question\}"):
        PromptTemplate(user="no placeholder")
    closed = render_markup("chatml", [{"role": "assistant", "content": "a<extra_0>"}], open_assistant=False)
    assert closed == "<|im_start|>assistant\na<extra_0><|im_end|>\n"


def base_flags(**extra):
    flags = {"dataset": "d.jsonl", "out": "o", "base_url": ["http://h/v1"], "model": "m", "scorer": "confidence"}
    return flags | extra


def test_config_files_and_flags_merge_flags_winning(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('model = "file-model"\nn_max = 8\nscorer = "judge"\n[policy_settings]\nalpha = 0.8\n'
                    '[scorer_settings]\nmodel = "judge-model"\n')
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("model: file-model\nn-max: 8\nscorer: judge\npolicy_settings: {alpha: 0.8}\n")
    for path in (toml, yaml_file):
        values = load_config_file(path)
        config = build_config(values, {"dataset": "d.jsonl", "out": "o", "base_url": ["http://h/v1"],
                                       "model": "flag-model", "policy_settings": {"peek": "4"}})
        assert config.model == "flag-model" and config.n_max == 8 and config.scorer == "judge"
        assert config.policy_settings == {"alpha": 0.8, "peek": "4"} and config.policy_config() == {"alpha": 0.8, "peek": 4}
    assert build_config(load_config_file(toml), base_flags(scorer=None)).scorer_config().model == "judge-model"


def test_config_errors_name_the_setting(tmp_path):
    with pytest.raises(InputError) as info:
        build_config({}, {"dataset": "d", "out": "o", "base_url": ["http://h/v1"], "scorer": "judge"})
    assert info.value.where == "model"
    with pytest.raises(InputError) as info:
        build_config({}, base_flags(scorer="oracle"))
    assert info.value.where == "scorer" and "choose from prm, prm-local, judge, confidence" in info.value.detail
    with pytest.raises(InputError, match="unknown setting 'colour'"):
        build_config({"colour": "red"}, base_flags())
    with pytest.raises(InputError, match="needs base_url") as info:
        build_config({}, base_flags(scorer="prm"))
    assert info.value.where == "scorer_settings.base_url"
    with pytest.raises(InputError, match="has no setting 'temp'") as info:
        build_config({}, base_flags(scorer="judge", scorer_settings={"temp": "1"}))
    assert info.value.where == "scorer_settings.temp"
    with pytest.raises(InputError, match="less than 1") as info:
        build_config({}, base_flags(policy_settings={"alpha": "2"}))
    assert info.value.where == "policy_settings.alpha"
    for values, where in [({"limit": 0}, "limit"), ({"temperature": -1}, "temperature"),
                          ({"concurrency": 0}, "concurrency"), ({"n_max": 0}, "n_max"), ({"policy": "x"}, "policy"),
                          ({"client": {"backoff": -1}}, "client.backoff")]:
        with pytest.raises(InputError) as info:
            build_config(values, base_flags())
        assert info.value.where == where
    bad = tmp_path / "c.toml"
    bad.write_text("model = \n")
    with pytest.raises(InputError, match="cannot parse"):
        load_config_file(bad)


def test_a_policy_setting_given_at_its_default_is_the_same_run_as_none():
    """Review 9 item 8: ``--set alpha=0.9`` (the default) used to be a different run than no ``--set``."""
    plain = build_config({}, base_flags())
    for settings in ({"alpha": "0.9"}, {"alpha": 0.9, "s_min": "0.95"}):
        assert build_config({}, base_flags(policy_settings=settings)).identity() == plain.identity()
    assert build_config({}, base_flags(policy_settings={"alpha": "0.8"})).identity() != plain.identity()
    stored = plain.identity() | {"policy_settings": {"alpha": 0.9}}  # written by a version that kept it
    assert plain.normalise_identity(stored) == plain.identity()


@pytest.mark.parametrize("values, where", [
    ({"temperature": float("inf")}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"timeout": float("inf")}, "timeout"), ({"idle_timeout": float("inf")}, "idle_timeout"),
    ({"client": {"backoff": float("inf")}}, "client.backoff"), ({"top_p": float("nan")}, "top_p"),
])
def test_settings_that_are_not_finite_numbers_are_refused_by_name(values, where):
    """Review 9 item 4b: ``--temperature inf`` crashed writing config.json (after the server check)."""
    with pytest.raises(InputError, match="finite number") as info:
        build_config(values, base_flags())
    assert info.value.where == where


def test_the_run_budget_is_bounded_as_the_policies_bound_it():
    """Review 9 item 14: one bound of N for every engine, the policies' N_MAX_LIMIT."""
    from optscale.policies.common import N_MAX_LIMIT

    assert build_config({}, base_flags(n_max=N_MAX_LIMIT)).n_max == N_MAX_LIMIT
    with pytest.raises(InputError, match=f"less than or equal to {N_MAX_LIMIT}") as info:
        build_config({}, base_flags(n_max=N_MAX_LIMIT + 1))
    assert info.value.where == "n_max"


@pytest.mark.parametrize("url, message", [
    ("http://127.0.0.1:99999/v1", "invalid port"), ("http://h:0/v1", "invalid port"),
    ("http://h/v1?api-key=QSECRET42", "query string"), ("http://h/v1#QSECRET42", "fragment"),
])
def test_server_urls_with_a_bad_port_or_a_query_are_refused_without_showing_it(url, message):
    """Review 9 items 4e and 10: port 99999 crashed inside httpx; a query string was mangled and printed."""
    with pytest.raises(InputError, match=message) as info:
        build_config({}, base_flags(base_url=[url]))
    assert info.value.where == "base_url" and "QSECRET42" not in str(info.value)


def test_a_key_and_url_credentials_together_are_refused():
    """Review 9 item 16: httpx sent the URL's userinfo as Basic auth and silently dropped the bearer key."""
    with pytest.raises(InputError, match="Basic auth") as info:
        build_config({}, base_flags(base_url=["http://alice:PW12@h/v1"], api_key="sk-key"))
    assert info.value.where == "api_key" and "PW12" not in str(info.value) and "sk-key" not in str(info.value)
    assert build_config({}, base_flags(base_url=["http://alice:PW12@h/v1"])).client.api_key is None


def test_flat_and_nested_config_files_build_the_same_settings_models(tmp_path):
    flat = build_config({"temperature": 0.2, "timeout": 30, "concurrency": 3, "limit": 5, "split": "train"},
                        base_flags())
    nested = build_config({"generation": {"temperature": 0.2}, "client": {"timeout": 30},
                           "sampler": {"concurrency": 3}, "dataset": {"limit": 5, "split": "train"}},
                          base_flags())
    assert flat == nested
    assert flat.generation.temperature == 0.2 and flat.client.timeout == 30 and flat.sampler.concurrency == 3
    assert flat.dataset.limit == 5 and flat.dataset.source == "d.jsonl"
    defaults = build_config({}, base_flags())
    assert defaults.generation == GenerationSettings() and defaults.sampler == SamplerSettings()
    assert build_config({"temperature": 0.2}, base_flags(temperature=0.9)).generation.temperature == 0.9


def test_identity_is_computed_from_normalised_settings():
    a = build_config({}, base_flags(policy_settings={"s_min": "0.9", "peek": "3"}))
    b = build_config({"policy_settings": {"s_min": 0.90, "peek": 3}}, base_flags())
    c = build_config({}, base_flags(policy_settings={"s_min": "9e-1", "peek": "3.0"}))
    assert a.identity() == b.identity() == c.identity()
    assert a.identity()["policy_settings"] == {"s_min": 0.9}  # peek=3 is the default: the same run as without it
    assert build_config({}, base_flags(policy_settings={"s_min": "0.91"})).identity() != a.identity()
    judge = build_config({}, base_flags(scorer="judge", scorer_settings={"concurrency": "4"}))
    assert judge.identity() == build_config({}, base_flags(scorer="judge")).identity()


def test_identity_ignores_runtime_settings_and_never_holds_a_key_or_url_credentials():
    a = build_config({}, base_flags(concurrency=2, api_key="sk-secret"))
    b = build_config({}, base_flags(concurrency=9, base_url=["http://user:PASSWORD9@other/v1"]))
    assert a.identity() == b.identity()
    assert build_config({}, base_flags(temperature=0.1)).identity() != a.identity()
    stored = json.dumps(a.runtime()) + json.dumps(a.identity()) + json.dumps(b.runtime()) + json.dumps(b.identity())
    assert "sk-secret" not in stored and "PASSWORD9" not in stored and "user" not in stored
    assert b.runtime()["base_url"] == ["http://***@other/v1"] and "PASSWORD9" in b.secrets()
    prm = build_config({}, base_flags(scorer="prm", scorer_settings={
        "base_url": "http://a/v1,http://k:PRMPASS@b/v1", "model": "prm", "separator": "\\n", "api_key": "sk-prm"}))
    settings = prm.scorer_config()
    assert settings.base_url == ["http://a/v1", "http://k:PRMPASS@b/v1"] and settings.separator == "\n"
    assert "base_url" not in prm.identity()["scorer_settings"]
    stored = json.dumps(prm.runtime()) + json.dumps(prm.identity())
    assert "PRMPASS" not in stored and "sk-prm" not in stored and {"sk-prm", "PRMPASS"} <= set(prm.secrets())


def test_the_generator_key_is_the_generators_only():
    config = build_config({}, base_flags(scorer="judge", api_key="sk-gen"))
    assert config.client.api_key.get_secret_value() == "sk-gen"
    assert config.scorer_config().api_key is None
    scorer = build_run_scorer(config)
    try:
        assert scorer.judge.client_settings.api_key is None
    finally:
        asyncio.run(scorer.aclose())


@pytest.mark.parametrize("value, expected", [(0, "0"), ("0", "0"), (False, "false"), (7, "7"), ("", "ids/1"),
                                             (None, "ids/1")])
def test_ids_keep_their_value(value, expected, tmp_path):
    """An id 0 (or "0", or false) used to be taken for a missing id and renamed ``<stem>/<row>``."""
    path = write_jsonl(tmp_path / "ids.jsonl", [{"id": "x", "question": "q"}, {"id": value, "question": "q"}])
    assert [p.id for p in load_problems(DatasetSpec(str(path)))] == ["x", expected]


def test_non_utf8_and_gzip_datasets(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"id,question\na,fine\nb,caf\xe9\n")
    with pytest.raises(InputError, match="not UTF-8") as info:
        load_problems(DatasetSpec(str(bad)))
    assert info.value.where == f"{bad}:3"
    rows = [{"id": "a", "question": "1+1?", "answer": "2"}]
    packed = tmp_path / "p.jsonl.gz"
    packed.write_bytes(gzip.compress(json.dumps(rows[0]).encode() + b"\n"))
    [p] = load_problems(DatasetSpec(str(packed)))
    assert (p.id, p.answer) == ("a", "2")
    assert load_problems(DatasetSpec(str(write_jsonl(tmp_path / "nums.jsonl", [{"question": "q"}]))))[0].id == "nums/0"
