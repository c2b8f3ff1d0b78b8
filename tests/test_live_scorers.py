"""Scorers: step splitting and aggregation, the confidence, judge and PRM scorers, batching."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from optscale.errors import InputError
from optscale.live.scorers import (
    SCORERS,
    BatchingScorer,
    ConfidenceScorer,
    Score,
    ScoreRequest,
    ScoringError,
    aggregate_steps,
    scorer_settings,
    split_steps,
)
from optscale.live.scorers.base import positive_probability, reported_tokens, share_tokens


def test_split_steps_uses_paragraphs():
    assert split_steps("a\n\n  \n\nb\nc\n\n") == ["a", "b\nc"]
    assert split_steps("  ") == []


@pytest.mark.parametrize("how, expected", [("mean", 0.6), ("min", 0.2), ("last", 0.8), ("product", 0.128)])
def test_aggregates(how, expected):
    assert aggregate_steps([0.8, 0.2, 0.8], how) == pytest.approx(expected)


def test_unknown_aggregate_names_the_setting():
    with pytest.raises(InputError, match="unknown aggregate") as info:
        aggregate_steps([0.5], "median")
    assert info.value.where == "scorer.aggregate"


@pytest.mark.parametrize("entry, expected", [
    ([0.3, 0.7], 0.7),                      # class probabilities (vLLM applies softmax for PRMs)
    ([0.0, math.log(3)], 0.75),             # logits
    (0.4, 0.4), ([0.9], 0.9),               # a single probability
    (2.0, 1 / (1 + math.exp(-2.0))),        # a single logit
])
def testpositive_probability_reads_every_pooling_shape(entry, expected):
    assert positive_probability(entry) == pytest.approx(expected)


def testpositive_probability_rejects_nonsense():
    with pytest.raises(ValueError):
        positive_probability("x")


def test_confidence_is_the_geometric_mean_token_probability():
    scorer = ConfidenceScorer()
    got = asyncio.run(scorer.score([
        ScoreRequest("q", "text", (math.log(0.5), math.log(0.8))),
        ScoreRequest("q", "", ()),
        ScoreRequest("q", "text", None),
    ]))
    assert got[0].value == pytest.approx(math.sqrt(0.4)) and got[0].flag is None
    assert got[1] == Score(0.0, flag="empty", tokens=0) and got[2] == Score(0.0, flag="no_logprobs", tokens=0)
    assert got[0].tokens == 0  # no second model: the confidence costs no tokens


@pytest.mark.parametrize("bad", [50.0, 0.01, math.nan, math.inf, -math.inf])
def test_confidence_flags_logprobs_that_are_no_probabilities(bad):
    """A positive (or non-finite) logprob used to give confidence 1.0 with no flag."""
    [got] = asyncio.run(ConfidenceScorer().score([ScoreRequest("q", "text", (math.log(0.5), bad))]))
    assert got.value == 0.0 and got.flag.startswith("invalid_logprobs: token 1")


def test_confidence_accepts_a_logprob_of_zero_and_its_rounding():
    [got] = asyncio.run(ConfidenceScorer().score([ScoreRequest("q", "text", (0.0, 1e-9))]))
    assert got.value == pytest.approx(1.0) and got.flag is None


@pytest.mark.parametrize("total, weights, expected", [
    (10, [1, 1], [5, 5]), (12, [1, 2, 1], [3, 6, 3]), (10, [1, 2, 1], [3, 5, 2]),
    (1, [3, 2], [1, 0]), (7, [0, 0], [4, 3]),
    (None, [1, 2], [None, None]), (0, [5], [0]),
])
def test_share_tokens_splits_a_batch_total_by_size_and_keeps_the_sum(total, weights, expected):
    got = share_tokens(total, weights)
    assert got == expected and (total is None or sum(got) == total)


@pytest.mark.parametrize("value, expected", [(5, 5), (0, 0), (-1, None), (True, None), (2.5, None), ("7", None),
                                             (None, None), (10**30, None)])
def test_reported_tokens_refuses_impossible_usage(value, expected):
    assert reported_tokens(value) == expected


def test_batching_scorer_batches_concurrent_requests():
    class Recording:
        kind, needs_logprobs = "rec", False

        def __init__(self):
            self.batches = []

        async def score(self, items):
            self.batches.append(len(items))
            await asyncio.sleep(0.01)
            return [Score(len(i.text) / 10) for i in items]

    async def go():
        inner = Recording()
        batcher = BatchingScorer(inner, max_batch=8, workers=1)
        results = await asyncio.gather(*(batcher.score([ScoreRequest("q", "x" * k)]) for k in range(10)))
        await batcher.aclose()
        return inner, results

    inner, results = asyncio.run(go())
    assert [r[0].value for r in results] == pytest.approx([k / 10 for k in range(10)])
    assert sum(inner.batches) == 10 and max(inner.batches) > 1


def test_batching_scorer_delivers_errors_to_every_waiter():
    class Broken:
        kind, needs_logprobs = "broken", False

        async def score(self, items):
            raise RuntimeError("scorer down")

    async def go():
        batcher = BatchingScorer(Broken())
        try:
            return await asyncio.gather(*(batcher.score([ScoreRequest("q", "a")]) for _ in range(3)),
                                        return_exceptions=True)
        finally:
            await batcher.aclose()

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(go()))


@pytest.mark.parametrize("returned", [0, 1, 3])
def test_batching_scorer_fails_requests_a_scorer_left_unanswered(returned, caplog):
    """Issue 9 defect 9: a scorer answering a batch with the wrong number of scores used to leave
    the unanswered requests waiting forever (a non-strict zip)."""
    class Short:
        kind, needs_logprobs = "short", False

        async def score(self, items):
            return [Score(0.5)] * returned

    async def go():
        batcher = BatchingScorer(Short(), max_batch=2, workers=1)
        try:
            async with asyncio.timeout(10):
                got = await asyncio.gather(*(batcher.score([ScoreRequest("q", "a")]) for _ in range(2)),
                                           return_exceptions=True)
            return got, batcher.stats
        finally:
            await batcher.aclose()

    got, stats = asyncio.run(go())
    assert all(isinstance(r, ScoringError) and "scores for 2 responses" in str(r) for r in got)
    assert stats.failed_items == 2 and stats.scored == 0
    assert any("short scorer failed" in r.getMessage() for r in caplog.records)


def test_scorer_registry_lists_every_scorer_with_help_and_described_settings():
    assert SCORERS.names() == ["prm", "prm-local", "judge", "confidence"]
    for name, spec in SCORERS.items():
        assert spec.help and "[" not in spec.help
        for key, field in (spec.settings.model_fields.items() if spec.settings else ()):
            assert field.description and "[" not in field.description, (name, key)
    with pytest.raises(InputError, match="choose from prm, prm-local, judge, confidence") as info:
        scorer_settings("nope", {})
    assert info.value.where == "scorer"


def test_scorer_settings_are_normalised():
    prm = scorer_settings("prm", {"base_url": "http://a/v1, http://b/v1", "model": "m", "separator": "\\n",
                                  "step_tag": "<s>\\t", "max_steps": "8"}, env={})
    assert prm.base_url == ["http://a/v1", "http://b/v1"] and prm.separator == "\n" and prm.step_tag == "<s>\t"
    assert prm.max_steps == 8 and prm == scorer_settings("prm", prm.model_dump(), env={})
    assert scorer_settings("confidence", {}) is None


@pytest.mark.parametrize("kind, values, where, match", [
    ("confidence", {"x": 1}, "scorer.x", "has no settings"),
    ("judge", {"colour": "red"}, "scorer.colour", "has no setting 'colour'"),
    ("prm", {"model": "m"}, "scorer.base_url", "needs base_url="),
    ("prm", {"base_url": "http://a", "model": "m", "max_steps": 0}, "scorer.max_steps", "greater than or equal"),
    ("prm", {"base_url": "http://a", "model": "m", "aggregate": "median"}, "scorer.aggregate", "mean"),
    ("judge", {"prompt": "{question} only"}, "scorer.prompt", "{solution}"),
    ("judge", {"api_key": 12345678}, "scorer.api_key", "string"),
])
def test_bad_scorer_settings_name_the_key(kind, values, where, match):
    with pytest.raises(InputError, match=match) as info:
        scorer_settings(kind, values, env={})
    assert info.value.where == where and "12345678" not in str(info.value)


def test_scorer_keys_come_from_their_own_settings_or_environment_and_are_never_dumped():
    env = {"OPTSCALE_JUDGE_API_KEY": "judge-key-from-env", "OPENAI_API_KEY": "generator-key"}
    judge = scorer_settings("judge", {"base_url": "http://u:PASSWORD@judge/v1"}, env=env)
    assert judge.api_key.get_secret_value() == "judge-key-from-env"
    dumped = json.dumps(judge.model_dump(mode="json"))
    assert "judge-key-from-env" not in dumped and "PASSWORD" not in dumped and "judge-key" not in repr(judge)
    assert scorer_settings("judge", {}, env={"OPENAI_API_KEY": "generator-key"}).api_key is None
    prm = scorer_settings("prm", {"base_url": "http://p/v1", "model": "m", "api_key": "given"},
                          env={"OPTSCALE_PRM_API_KEY": "env"})
    assert prm.api_key.get_secret_value() == "given"


# -- against the fake server --------------------------------------------------------------
import live_fakes as fakes  # noqa: E402
from conftest import score_with  # noqa: E402

from optscale.live.openai import OpenAIGenerator  # noqa: E402
from optscale.live.scorers import JudgeScorer, ScorerContext, VllmPrmScorer, build_scorer  # noqa: E402
from optscale.live.types import ClientSettings, GenerationSettings, Prompt  # noqa: E402

FAST = ClientSettings(backoff=0.01, backoff_max=0.05, idle_timeout=2, timeout=5, retries=2)
SOLUTION = "q=0.8000\n\nstep two\n\nThe answer is \\boxed{3}."


def judge_scores(url, items, **kwargs):
    return score_with(lambda: JudgeScorer(OpenAIGenerator(url, fakes.MODEL, client=FAST), **kwargs), items)


def test_judge_reads_p_yes_from_top_logprobs():
    with fakes.FakeServer() as server:
        got = judge_scores(server.base_url, [ScoreRequest("Problem a: x?", SOLUTION), ScoreRequest("q", " ")])
    assert got[0].value == pytest.approx(0.8, abs=1e-6) and got[0].flag is None
    assert got[0].tokens == 10 + 1  # the judge server's usage: prompt and completion tokens
    assert got[1].flag == "empty" and got[1].value == 0.0 and got[1].tokens == 0  # no call made


def test_judge_without_logprobs_fails_its_check():
    with fakes.FakeServer(fakes.FakeConfig(logprobs=False)) as server:
        with pytest.raises(InputError, match="logprobs") as info:
            judge_scores(server.base_url, [])
    assert info.value.where == "scorer"


def test_judge_prompt_must_have_both_placeholders():
    async def go():
        async with OpenAIGenerator("http://x/v1", "m") as judge:
            JudgeScorer(judge, prompt="{question} only")

    with pytest.raises(InputError, match="{solution}") as info:
        asyncio.run(go())
    assert info.value.where == "scorer.prompt"


def prm_scores(url, items, aggregate="mean"):
    return score_with(lambda: VllmPrmScorer(OpenAIGenerator(url, fakes.MODEL, client=FAST), aggregate=aggregate), items)


def test_vllm_prm_scores_each_step_in_one_batched_request():
    with fakes.FakeServer() as server:
        got = prm_scores(server.base_url, [ScoreRequest("Problem a: x?", SOLUTION), ScoreRequest("q", ""),
                                           ScoreRequest("q", "q=0.2500\n\nno answer")], aggregate="min")
        assert server.pooled == 1 + 2  # the check's probe, then the two non-empty texts together
    assert got[0].steps == pytest.approx((0.8, 0.8, 0.8)) and got[0].value == pytest.approx(0.8)
    assert got[1].flag == "empty" and got[1].tokens == 0
    assert got[2].steps == pytest.approx((0.25, 0.25))
    # the fake server reports 1 token per pooling request: the batch's total, shared by size
    assert got[0].tokens + got[2].tokens == 1 and got[0].tokens == 1


def test_vllm_prm_of_the_wrong_shape_is_refused_with_a_hint():
    with fakes.FakeServer(fakes.FakeConfig(prm_shape="tokens")) as server:
        with pytest.raises(InputError, match="one score per step") as info:
            prm_scores(server.base_url, [])
    assert info.value.where == "scorer"


def test_vllm_prm_wrong_shape_during_a_run_scores_zero_with_a_flag():
    async def go(url):
        scorer = VllmPrmScorer(OpenAIGenerator(url, fakes.MODEL, client=FAST))
        try:
            return await scorer.score([ScoreRequest("q", SOLUTION)])
        finally:
            await scorer.aclose()

    with fakes.FakeServer(fakes.FakeConfig(prm_shape="tokens")) as server:
        [score] = asyncio.run(go(server.base_url))
    assert score.value == 0.0 and score.flag.startswith("prm_shape: expected 3 step scores")


def test_the_prm_check_never_asks_the_reward_server_to_generate():
    with fakes.FakeServer() as server:
        prm_scores(server.base_url, [])
        assert server.served == [] and server.pooled == 1

        async def wrong_model():
            scorer = VllmPrmScorer(OpenAIGenerator(server.base_url, "Qwen/Other-PRM", client=FAST))
            try:
                await scorer.check()
            finally:
                await scorer.aclose()

        with pytest.raises(InputError, match="does not serve 'Qwen/Other-PRM'") as info:
            asyncio.run(wrong_model())
    assert info.value.where == "scorer.model"


@pytest.mark.parametrize("kind", ["judge", "prm"])
def test_each_server_gets_only_its_own_key(kind, monkeypatch):
    """Issue 9 defect 1: the generator's key used to go to the judge's and the PRM's servers."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-generator-env")
    generator_client = ClientSettings(**{**FAST.model_dump(), "api_key": "sk-generator"})

    async def go(gen_url, scorer_url, scorer_values):
        context = ScorerContext((gen_url,), fakes.MODEL, generator_client)
        async with OpenAIGenerator(gen_url, fakes.MODEL, GenerationSettings(max_tokens=4),
                                   client=generator_client) as generator:
            await generator.generate(Prompt(messages=({"role": "user", "content": "Problem a: x"},)))
            for values in scorer_values:
                scorer = build_scorer(kind, scorer_settings(kind, {"base_url": scorer_url, "model": fakes.MODEL,
                                                                   **values}, env={}), context)
                try:
                    await scorer.score([ScoreRequest("Problem a: x?", SOLUTION)])
                finally:
                    await scorer.aclose()

    with fakes.FakeServer() as gen_server, fakes.FakeServer() as scorer_server:
        asyncio.run(go(gen_server.base_url, scorer_server.base_url, [{}, {"api_key": "sk-scorer"}]))
    assert {auth for _, auth in gen_server.auth} == {"Bearer sk-generator"}
    assert [auth for _, auth in scorer_server.auth] == [None, "Bearer sk-scorer"]
