"""Scorers: step splitting and aggregation, the confidence, judge and PRM scorers, batching."""

from __future__ import annotations

import asyncio
import math

import pytest

from optscale.errors import InputError
from optscale.live.scorers import (
    BatchingScorer,
    ConfidenceScorer,
    Score,
    ScoreRequest,
    _positive_probability,
    aggregate_steps,
    split_steps,
)


def test_split_steps_uses_paragraphs():
    assert split_steps("a\n\n  \n\nb\nc\n\n") == ["a", "b\nc"]
    assert split_steps("  ") == []


@pytest.mark.parametrize("how, expected", [("mean", 0.6), ("min", 0.2), ("last", 0.8), ("product", 0.128)])
def test_aggregates(how, expected):
    assert aggregate_steps([0.8, 0.2, 0.8], how) == pytest.approx(expected)


def test_unknown_aggregate_names_the_setting():
    with pytest.raises(InputError, match="unknown aggregate") as info:
        aggregate_steps([0.5], "median")
    assert info.value.where == "--scorer-set aggregate"


@pytest.mark.parametrize("entry, expected", [
    ([0.3, 0.7], 0.7),                      # class probabilities (vLLM applies softmax for PRMs)
    ([0.0, math.log(3)], 0.75),             # logits
    (0.4, 0.4), ([0.9], 0.9),               # a single probability
    (2.0, 1 / (1 + math.exp(-2.0))),        # a single logit
])
def test_positive_probability_reads_every_pooling_shape(entry, expected):
    assert _positive_probability(entry) == pytest.approx(expected)


def test_positive_probability_rejects_nonsense():
    with pytest.raises(ValueError):
        _positive_probability("x")


def test_confidence_is_the_geometric_mean_token_probability():
    scorer = ConfidenceScorer()
    got = asyncio.run(scorer.score([
        ScoreRequest("q", "text", (math.log(0.5), math.log(0.8))),
        ScoreRequest("q", "", ()),
        ScoreRequest("q", "text", None),
    ]))
    assert got[0].value == pytest.approx(math.sqrt(0.4)) and got[0].flag is None
    assert got[1] == Score(0.0, flag="empty") and got[2] == Score(0.0, flag="no_logprobs")


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


# -- against the fake server --------------------------------------------------------------
fakes = pytest.importorskip("live_fakes", reason="the fake server needs fastapi and uvicorn")

from optscale.live.generators import ClientSettings, OpenAIGenerator  # noqa: E402
from optscale.live.scorers import JudgeScorer, VllmPrmScorer  # noqa: E402
from conftest import score_with  # noqa: E402

FAST = ClientSettings(backoff=0.01, backoff_max=0.05, idle_timeout=2, timeout=5, retries=2)
SOLUTION = "q=0.8000\n\nstep two\n\nThe answer is \\boxed{3}."


def judge_scores(url, items, **kwargs):
    return score_with(lambda: JudgeScorer(OpenAIGenerator(url, fakes.MODEL, client=FAST), **kwargs), items)


def test_judge_reads_p_yes_from_top_logprobs():
    with fakes.FakeServer() as server:
        got = judge_scores(server.base_url, [ScoreRequest("Problem a: x?", SOLUTION), ScoreRequest("q", " ")])
    assert got[0].value == pytest.approx(0.8, abs=1e-6) and got[0].flag is None
    assert got[1].flag == "empty" and got[1].value == 0.0


def test_judge_without_logprobs_fails_its_check():
    with fakes.FakeServer(fakes.FakeConfig(logprobs=False)) as server:
        with pytest.raises(InputError, match="logprobs") as info:
            judge_scores(server.base_url, [])
    assert info.value.where == "--scorer judge"


def test_judge_prompt_must_have_both_placeholders():
    with pytest.raises(InputError, match="{solution}"):
        JudgeScorer(OpenAIGenerator("http://x/v1", "m"), prompt="{question} only")


def prm_scores(url, items, aggregate="mean"):
    return score_with(lambda: VllmPrmScorer(OpenAIGenerator(url, fakes.MODEL, client=FAST), aggregate=aggregate), items)


def test_vllm_prm_scores_each_step_in_one_batched_request():
    with fakes.FakeServer() as server:
        got = prm_scores(server.base_url, [ScoreRequest("Problem a: x?", SOLUTION), ScoreRequest("q", ""),
                                           ScoreRequest("q", "q=0.2500\n\nno answer")], aggregate="min")
        assert server.pooled == 1 + 2  # the check's probe, then the two non-empty texts together
    assert got[0].steps == pytest.approx((0.8, 0.8, 0.8)) and got[0].value == pytest.approx(0.8)
    assert got[1].flag == "empty"
    assert got[2].steps == pytest.approx((0.25, 0.25))


def test_vllm_prm_of_the_wrong_shape_is_refused_with_a_hint():
    with fakes.FakeServer(fakes.FakeConfig(prm_shape="tokens")) as server:
        with pytest.raises(InputError, match="one score per step") as info:
            prm_scores(server.base_url, [])
    assert info.value.where == "--scorer prm"


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
    assert info.value.where == "--scorer-set model"
