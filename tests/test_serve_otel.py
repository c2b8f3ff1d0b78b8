"""OpenTelemetry spans of ``optscale serve``: one per request, with a child per sample and per scorer call."""

from __future__ import annotations

import live_fakes as fakes
import openai
from serve_fakes import Proxy

from conftest import need_module

need_module("opentelemetry.sdk", "opentelemetry-sdk (the otel extra) is not installed")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

Q = "Problem p1: how many?"


def test_one_request_gives_a_request_span_with_sample_and_scorer_children():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with fakes.FakeServer(fakes.FakeConfig(seed=4)) as up, \
            Proxy(up.base_url, n_max=3, in_flight=3, scorer="judge", tracer_provider=provider) as px:
        c = openai.OpenAI(base_url=px.base_url, api_key="x", max_retries=0)
        exporter.clear()  # the readiness check's work is no request's
        r = c.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": Q}],
                                      extra_body={"optscale": {"policy": "bon", "return_samples": True}})
    o = r.model_extra["optscale"]
    spans = exporter.get_finished_spans()
    [request] = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "chat"]
    assert request.name == "chat fake-model" and request.parent is None
    assert request.attributes["gen_ai.request.model"] == "fake-model"
    assert request.attributes["gen_ai.usage.input_tokens"] == r.usage.prompt_tokens
    assert request.attributes["gen_ai.usage.output_tokens"] == r.usage.completion_tokens
    assert request.attributes["optscale.n_used"] == o["n_used"] == 3

    def children(operation):
        found = [s for s in spans if s.attributes.get("gen_ai.operation.name") == operation]
        for s in found:
            assert s.parent is not None and s.parent.span_id == request.context.span_id
            assert s.context.trace_id == request.context.trace_id
            assert request.start_time <= s.end_time <= request.end_time
        return found

    samples = children("sample")
    assert len(samples) == o["n_launched"] == 3
    assert sorted(s.attributes["gen_ai.usage.output_tokens"] for s in samples) == \
        sorted(x["tokens"] for x in o["samples"])
    assert sorted(s.attributes["optscale.sample.score"] for s in samples) == sorted(x["score"] for x in o["samples"])
    assert all(s.attributes["optscale.sample.status"] == "sample" for s in samples)

    scorer = children("score")
    assert scorer and all(s.name == "score judge" for s in scorer)
    assert sum(s.attributes["optscale.scorer.items"] for s in scorer) == 3
    # the judge's own tokens (the fake judge reports 10 prompt + 1 completion per call)
    assert sum(s.attributes["optscale.scorer.tokens"] for s in scorer) == o["usage_breakdown"]["scorer_tokens"] == 33
