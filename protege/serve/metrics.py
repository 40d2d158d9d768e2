"""Prometheus text exposition (format 0.0.4) for the server, without a client library.

Counters and histograms only, guarded by one lock; the server updates them from the event loop
and the model thread.
"""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...]):
        self.name, self.help, self.buckets = name, help, buckets
        self.counts = [0] * len(buckets)
        self.count, self.sum = 0, 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for bound, n in zip(self.buckets, self.counts, strict=True):
            lines.append(f'{self.name}_bucket{{le="{_num(bound)}"}} {n}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{self.name}_sum {_num(self.sum)}")
        lines.append(f"{self.name}_count {self.count}")
        return lines


class Metrics:
    """Requests by path and status, errors by reason, request latency, model batch sizes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.inputs = 0
        self.latency = Histogram(
            "protege_request_latency_seconds", "Latency of /v1/predict requests.", LATENCY_BUCKETS
        )
        self.batch_size = Histogram(
            "protege_batch_size", "Inputs per model call (micro-batch size).", BATCH_BUCKETS
        )

    def request(self, path: str, status: int, seconds: float | None = None) -> None:
        with self.lock:
            self.requests[(path, status)] += 1
            if seconds is not None:
                self.latency.observe(seconds)

    def error(self, reason: str) -> None:
        with self.lock:
            self.errors[reason] += 1

    def batch(self, size: int) -> None:
        with self.lock:
            self.batch_size.observe(size)
            self.inputs += size

    def render(self) -> str:
        with self.lock:
            lines = [
                "# HELP protege_requests_total HTTP requests by path and status.",
                "# TYPE protege_requests_total counter",
            ]
            for (path, status), n in sorted(self.requests.items()):
                lines.append(f'protege_requests_total{{path="{path}",status="{status}"}} {n}')
            lines += [
                "# HELP protege_errors_total Failed requests by reason.",
                "# TYPE protege_errors_total counter",
            ]
            for reason, n in sorted(self.errors.items()):
                lines.append(f'protege_errors_total{{reason="{reason}"}} {n}')
            lines += [
                "# HELP protege_inputs_total Inputs predicted.",
                "# TYPE protege_inputs_total counter",
                f"protege_inputs_total {self.inputs}",
            ]
            lines += self.latency.render() + self.batch_size.render()
        return "\n".join(lines) + "\n"


def _num(x: float) -> str:
    return repr(float(x)) if not float(x).is_integer() else f"{float(x):.1f}"
