"""Optional OpenTelemetry spans: one per request, one per sample and per scorer call (``gen_ai.*`` attributes).

Active only when ``opentelemetry-api`` is importable (the ``otel`` extra); the exporter is
whatever the process configured (``opentelemetry-instrument``, or an SDK set up by the
deployment). Without it every call here is a no-op.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["Tracing"]

try:
    from opentelemetry import trace as _trace
except ImportError:  # the otel extra is not installed
    _trace = None


class Tracing:
    """A tracer, or nothing."""

    def __init__(self, provider: Any = None):
        """``provider``: a TracerProvider to use instead of the process's global one (tests, embedding)."""
        if _trace is None:
            self.tracer = None
        else:
            self.tracer = (provider or _trace.get_tracer_provider()).get_tracer("optscale.serve")

    @contextlib.contextmanager
    def request(self, operation: str, model: str) -> Iterator[Any]:
        """The request's span (None without OpenTelemetry); sample spans are its children."""
        if self.tracer is None:
            yield None
            return
        attributes = {"gen_ai.operation.name": operation, "gen_ai.request.model": model, "gen_ai.system": "optscale"}
        with self.tracer.start_as_current_span(f"{operation} {model}", attributes=attributes) as span:
            yield span

    def sample(self, parent: Any, record: dict[str, Any]) -> None:
        """A finished, cancelled or failed sample as a child span (timed from its measured latency)."""
        if self.tracer is None or parent is None:
            return
        end = time.time_ns()
        start = end - int(float(record.get("latency_s") or 0.0) * 1e9)
        context = _trace.set_span_in_context(parent)
        attributes = {"gen_ai.operation.name": "sample", "optscale.sample.status": record["type"],
                      "gen_ai.usage.output_tokens": int(record.get("tokens") or 0)}
        if record.get("prompt_tokens") is not None:
            attributes["gen_ai.usage.input_tokens"] = int(record["prompt_tokens"])
        if record.get("score") is not None:
            attributes["optscale.sample.score"] = float(record["score"])
        if record.get("finish_reason"):
            attributes["gen_ai.response.finish_reasons"] = [str(record["finish_reason"])]
        span = self.tracer.start_span("sample", context=context, start_time=start, attributes=attributes)
        span.end(end_time=end)

    @contextlib.contextmanager
    def scorer_call(self, kind: str, items: int) -> Iterator[Any]:
        """A scorer call's span (a child of the request's), or None."""
        if self.tracer is None:
            yield None
            return
        with self.tracer.start_as_current_span(f"score {kind}", attributes={
                "gen_ai.operation.name": "score", "gen_ai.system": "optscale", "optscale.scorer.kind": kind,
                "optscale.scorer.items": items}) as span:
            yield span

    @staticmethod
    def scorer_result(span: Any, scores: Sequence[Any], tokens: int | None) -> None:
        """What the scorer call gave: its tokens (when its server reported them) and flagged scores."""
        if span is None:
            return
        if tokens is not None:
            span.set_attribute("optscale.scorer.tokens", tokens)
        span.set_attribute("optscale.scorer.flagged", sum(1 for s in scores if s.flag))
