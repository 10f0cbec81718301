"""Prometheus metrics of a server (`GET /metrics`), in a registry of its own (several apps per process are fine)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class ServeMetrics:
    """requests by status, turns per request, latency, tokens, batch sizes, and what is queued or running now."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("riselm_requests", "Chat completion requests answered, by HTTP status.", ["status"], registry=r)
        self.turns = Histogram(
            "riselm_turns_per_request", "Turns generated per answered request.", buckets=(1, 2, 3, 4, 5, 6, 8, 10, 15, 20), registry=r
        )
        self.latency = Histogram(
            "riselm_request_latency_seconds",
            "Seconds from a request's arrival to its whole answer.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.tokens = Counter("riselm_tokens", "Tokens of answered requests, all turns (kind: prompt or completion).", ["kind"], registry=r)
        self.batch = Histogram(
            "riselm_batch_size", "Requests generated together in one rollout.", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        )
        self.in_flight = Gauge("riselm_requests_in_flight", "Requests admitted and not yet answered (queued or running).", registry=r)
        self.stopped_early = Counter("riselm_stopped_early", "Requests that stopped before their K turns (stop-when-stable).", registry=r)

    def answered(self, status: int, seconds: float, riselm: dict | None = None, usage: dict | None = None) -> None:
        self.requests.labels(status=str(status)).inc()
        self.latency.observe(seconds)
        if riselm is not None:
            self.turns.observe(len(riselm["turns"]))
            if riselm.get("stopped") == "stable":
                self.stopped_early.inc()
        if usage is not None:
            self.tokens.labels(kind="prompt").inc(usage["prompt_tokens"])
            self.tokens.labels(kind="completion").inc(usage["completion_tokens"])

    def text(self) -> bytes:
        return generate_latest(self.registry)
