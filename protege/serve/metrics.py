"""The server's Prometheus metrics, through `prometheus-client` (text exposition 0.0.4).

One registry per server (tests start several in one process); prometheus-client's metrics are
thread-safe, so the event loop and the model thread update them without a lock of ours.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0)


class Metrics:
    """Requests by path and status, errors by reason, request latency, model batch sizes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "protege_requests", "HTTP requests by path and status.", ["path", "status"], registry=r
        )
        self.errors = Counter(
            "protege_errors", "Failed requests by reason.", ["reason"], registry=r
        )
        self.inputs = Counter("protege_inputs", "Inputs predicted.", registry=r)
        self.latency = Histogram(
            "protege_request_latency_seconds",
            "Latency of /v1/predict and /v1/chat/completions requests.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "protege_batch_size",
            "Inputs per model call (micro-batch size).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )

        # OpenAI-compatible answers (`/v1/chat/completions`) and the cascade behind them.
        self.routes = Counter(
            "protege_chat_requests", "Chat completions by who answered: student, teacher, "
            "cache (the store), or student_teacher_unavailable.", ["route"], registry=r,
        )  # fmt: skip
        self.confidence = Histogram(
            "protege_student_confidence", "The student's confidence in its chat answers.",
            buckets=CONFIDENCE_BUCKETS, registry=r,
        )  # fmt: skip
        self.spend = Counter(
            "protege_teacher_spend_usd", "Dollars paid to the teacher.", registry=r
        )
        self.saving = Counter(
            "protege_estimated_saving_usd",
            "What the teacher would have charged for the requests the student answered.",
            registry=r,
        )
        self.shadowed = Counter(
            "protege_shadow_compared", "Student answers also sent to the teacher.", registry=r
        )
        self.shadow_agreed = Counter(
            "protege_shadow_agreed", "Shadowed answers on which the teacher agreed.", registry=r
        )
        self.agreement = Gauge(
            "protege_shadow_agreement", "Live agreement of student and teacher (shadowed).",
            registry=r,
        )  # fmt: skip

    def route(self, route: str, confidence: float | None = None) -> None:
        self.routes.labels(route=route).inc()
        if confidence is not None:
            self.confidence.observe(confidence)

    def teacher_spend(self, dollars: float) -> None:
        if dollars:
            self.spend.inc(dollars)

    def saved(self, dollars: float) -> None:
        if dollars:
            self.saving.inc(dollars)

    def shadow(self, agreed: bool) -> None:
        self.shadowed.inc()
        self.shadow_agreed.inc(int(agreed))
        n = self.sample("protege_shadow_compared_total") or 0
        self.agreement.set((self.sample("protege_shadow_agreed_total") or 0) / max(n, 1))

    def request(self, path: str, status: int, seconds: float | None = None) -> None:
        self.requests.labels(path=path, status=str(status)).inc()
        if seconds is not None:
            self.latency.observe(seconds)

    def error(self, reason: str) -> None:
        self.errors.labels(reason=reason).inc()

    def batch(self, size: int) -> None:
        self.batch_size.observe(size)
        self.inputs.inc(size)

    def sample(self, name: str, **labels: str) -> float | None:
        """One sample's current value (`protege_batch_size_count`), None if never observed."""
        return self.registry.get_sample_value(name, labels)

    def render(self) -> str:
        return generate_latest(self.registry).decode()
