"""Prometheus metrics, one registry per app (so several apps in one process, e.g. tests, never mix).

Names are a contract (docs/serve.md lists them). Labels stay low-cardinality: the model, the
policy, and a status, stop reason, token kind or fit flag from small fixed sets; never a
request id, a client or a setting value.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

_SAMPLE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """The server's metrics (prefix ``optscale_``)."""

    def __init__(self, inflight: Callable[[], float]):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("optscale_requests_total", "Requests answered, by HTTP status",
                                ["model", "policy", "status"], registry=r)
        self.duration = Histogram("optscale_request_duration_seconds", "Time from request to last byte",
                                  ["model", "policy"], buckets=_LATENCY_BUCKETS, registry=r)
        self.samples_used = Histogram("optscale_samples_used", "Scored samples the policy used per episode",
                                      ["model", "policy"], buckets=_SAMPLE_BUCKETS, registry=r)
        self.launched = Counter("optscale_samples_launched_total", "Upstream generation requests sent",
                                ["model", "policy"], registry=r)
        self.cancelled = Counter("optscale_samples_cancelled_total", "Upstream generations cancelled under way",
                                 ["model", "policy"], registry=r)
        self.stop_reason = Counter("optscale_stop_reason_total", "Episodes by why sampling stopped",
                                   ["model", "policy", "reason"], registry=r)
        self.tokens = Counter("optscale_upstream_tokens_total", "Tokens of upstream generations by kind: "
                              "completion (used samples), cancelled, failed, prompt", ["model", "kind"], registry=r)
        self.scorer = Counter("optscale_scorer_requests_total", "Scorer calls by outcome: ok, flagged, error",
                              ["model", "status"], registry=r)
        self.inflight = Gauge("optscale_inflight_samples", "Upstream generation requests on the wire (sent, not "
                              "queued for a connection)", registry=r)
        self.inflight.set_function(inflight)
        self.fit_failures = Counter("optscale_fit_failures_total", "Episodes whose last fit was flagged, by flag",
                                    ["model", "policy", "flag"], registry=r)
        # shadow sampling (docs/serve.md, "Calibrate on your own traffic"); table: its file name, "" without one
        shadow = ["model", "policy", "table"]
        self.shadow_episodes = Counter("optscale_shadow_episodes_total", "Shadow episodes sampled on to n_max",
                                       shadow, registry=r)
        self.shadow_agreement = Counter("optscale_shadow_agreement_total", "Shadow episodes whose early answer "
                                        "equals the answer of all n_max samples (same selection rule)", shadow,
                                        registry=r)
        self.shadow_tokens = Counter("optscale_shadow_tokens_total", "Completion tokens of shadow episodes' samples: "
                                     "early (the samples the client's answer used), full (all n_max samples)",
                                     [*shadow, "kind"], registry=r)
        self.shadow_dropped = Counter("optscale_shadow_dropped_total", "Shadow episodes dropped, by reason: "
                                      "queue_full, load (a client request waited), shutdown, failed", ["reason"],
                                      registry=r)
        self.traffic_records = Counter("optscale_traffic_records_total", "Shadow episodes written to traffic_dir",
                                       registry=r)
        self.traffic_dropped = Counter("optscale_traffic_records_dropped_total", "Shadow episodes not written to "
                                       "traffic_dir, by reason: disk_full, error", ["reason"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
