"""Loading problems for live runs, prompt templates and run configuration."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from optscale.errors import InputError
from optscale.live.config import build_config, load_config_file
from optscale.live.datasets import DatasetSpec, load_problems
from optscale.live.prompts import PromptTemplate, render_markup

SHARED_GSM8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "benchmarks" / "gsm8k.jsonl"


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
    with pytest.raises(InputError, match="not valid JSON") as info:
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


@pytest.mark.skipif(not SHARED_GSM8K.exists(), reason="shared benchmark data not present")
def test_the_shared_gsm8k_file_loads():
    problems = load_problems(DatasetSpec(str(SHARED_GSM8K), limit=3))
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
        assert config.policy_settings == {"alpha": 0.8, "peek": "4"}
    assert build_config(load_config_file(toml), base_flags(scorer=None)).scorer_config().model == "judge-model"


def test_config_errors_name_the_flag(tmp_path):
    with pytest.raises(InputError) as info:
        build_config({}, {"dataset": "d", "out": "o", "base_url": ["u"], "scorer": "judge"})
    assert info.value.where == "--model"
    with pytest.raises(InputError) as info:
        build_config({}, base_flags(scorer="oracle"))
    assert info.value.where == "--scorer"
    with pytest.raises(InputError, match="unknown setting 'colour'"):
        build_config({"colour": "red"}, base_flags())
    with pytest.raises(InputError, match="needs base_url") as info:
        build_config({}, base_flags(scorer="prm")).scorer_config()
    assert info.value.where == "--scorer-set"
    with pytest.raises(InputError, match="has no setting 'temp'"):
        build_config({}, base_flags(scorer="judge", scorer_settings={"temp": "1"})).scorer_config()
    bad = tmp_path / "c.toml"
    bad.write_text("model = \n")
    with pytest.raises(InputError, match="cannot parse"):
        load_config_file(bad)


def test_identity_ignores_runtime_settings_and_never_holds_the_api_key():
    a = build_config({}, base_flags(concurrency=2, api_key="sk-secret"))
    b = build_config({}, base_flags(concurrency=9, base_url=["http://other/v1"]))
    assert a.identity() == b.identity()
    assert build_config({}, base_flags(temperature=0.1)).identity() != a.identity()
    assert "sk-secret" not in json.dumps(a.runtime()) + json.dumps(a.identity())
    prm = build_config({}, base_flags(scorer="prm", scorer_settings={"base_url": "http://a/v1,http://b/v1",
                                                                     "model": "prm", "separator": "\\n"}))
    settings = prm.scorer_config()
    assert settings.base_url == ["http://a/v1", "http://b/v1"] and settings.separator == "\n"
    assert "base_url" not in prm.identity()["scorer_settings"]


def test_the_cli_help_lists_every_scorer_setting():
    from optscale.cli.live import SCORER_SETTINGS_HELP
    from optscale.live.config import scorer_settings_help

    assert SCORER_SETTINGS_HELP == scorer_settings_help()
