"""The replica's rate limits: requests and tokens per minute, enforced and stated in headers.

Like OpenAI's, the limits are per minute but enforced continuously: each is a bucket that
refills at limit/60 per second and holds one second's worth (a minute's quota is not one
burst). A request costs 1 request and its prompt tokens (~4 characters a token) plus its
`max_tokens`/`max_completion_tokens`, counted when it arrives. Over either bucket: a 429
`rate_limit_exceeded` naming which limit, with `retry-after-ms`. Every answer states the limits
(`x-ratelimit-limit-*`), what is left (`-remaining-*`) and when the bucket is full again
(`-reset-*`, as "1.5s" or "120ms").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


def duration(seconds: float) -> str:
    """A reset header value as OpenAI writes it: `6m0s`, `1.5s`, `120ms`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    return f"{int(seconds // 60)}m{seconds % 60:.0f}s"


@dataclass
class Bucket:
    per_minute: float
    level: float = field(init=False)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.level = self.capacity

    @property
    def rate(self) -> float:
        return self.per_minute / 60.0

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate)

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        return max(0.0, (min(amount, self.capacity) - self.level) / self.rate)

    def reset_s(self) -> float:
        return (self.capacity - self.level) / self.rate


class Limits:
    """Requests and tokens per minute for one replica (None: that one is not limited)."""

    def __init__(self, rpm: float | None, tpm: float | None):
        self.requests = Bucket(rpm) if rpm else None
        self.tokens = Bucket(tpm) if tpm else None
        self.limited = 0  # requests refused with a 429
        self.stated: dict[str, str] = {}  # headers stated instead, whatever is enforced

    @staticmethod
    def cost(body: dict[str, Any]) -> int:
        chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
        most = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        return chars // 4 + int(most)

    def take(self, body: dict[str, Any]) -> tuple[str, float] | None:
        """Count one request; (which limit, seconds to wait) if it is over a limit."""
        now = time.monotonic()
        need = self.cost(body)
        for bucket in (self.requests, self.tokens):
            if bucket:
                bucket.refill(now)
        if self.requests and self.requests.level < 1:
            self.limited += 1
            return "requests", self.requests.wait_for(1)
        if self.tokens and self.tokens.level < min(need, self.tokens.capacity):
            self.limited += 1
            return "tokens", self.tokens.wait_for(need)
        if self.requests:
            self.requests.level -= 1
        if self.tokens:
            self.tokens.level -= need
        return None

    def headers(self) -> str | None:
        """The x-ratelimit-* lines for the state now; None when nothing is limited. `stated`
        replaces them (a proxy or a misconfigured server stating limits it does not keep)."""
        if self.stated:
            return "".join(f"{k}: {v}\r\n" for k, v in self.stated.items())
        if not (self.requests or self.tokens):
            return None
        lines = []
        for name, bucket, default in (("requests", self.requests, 10_000),
                                      ("tokens", self.tokens, 10_000_000)):  # fmt: skip
            if bucket:
                lines += [
                    f"x-ratelimit-limit-{name}: {bucket.per_minute:g}",
                    f"x-ratelimit-remaining-{name}: {max(0, int(bucket.level))}",
                    f"x-ratelimit-reset-{name}: {duration(bucket.reset_s())}",
                ]
            else:
                lines += [f"x-ratelimit-limit-{name}: {default}",
                          f"x-ratelimit-remaining-{name}: {default}",
                          f"x-ratelimit-reset-{name}: 0s"]  # fmt: skip
        return "".join(line + "\r\n" for line in lines)
