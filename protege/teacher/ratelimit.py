"""Pacing requests and tokens to the limits the server states, never above the configured ones.

OpenAI (and most compatible servers) send on every answer, 429s included:

    x-ratelimit-limit-requests / -tokens        the account's limits per minute
    x-ratelimit-remaining-requests / -tokens    what is left now
    x-ratelimit-reset-requests / -tokens        when it is back to the limit ("6m0s", "20ms")

`Pacer` keeps a token bucket for requests and one for tokens. Their rates start at the
configured `rpm` / `tpm` (None: unlimited) and drop to `SAFETY` of the server's stated limit
when that is lower: configured limits stay upper bounds. Until the first answer says what the
limits are, one request is in flight (a 512-wide first burst into an unknown limit is a storm
of 429s); an answer without headers (llama.cpp, vLLM) lifts that at once. The store remembers
what an endpoint stated (`remembered`, at most `REMEMBER_S` old): a job against it starts at
that pace, with no probe, and every answer's headers still correct it. A 429 pauses every
sender for its Retry-After (or until the stated reset), and `remaining` at 0 waits for `reset`.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SAFETY = 0.95
"""Share of the server's limit to aim at: its bucket and ours never tick in step."""
BURST_S = 0.5
"""A learned limit's bucket holds half a second's worth: requests that leave spaced out may
arrive together, so our bursts stay well inside the server's (one second's worth)."""

FLOOR = {"requests": 1.0, "tokens": 100.0}
"""Stated limits (per minute) below these are not believed: no endpoint serves fewer, and one
stating `x-ratelimit-limit-requests: 0.01` would pace a job at a request every 100 minutes.
Such a statement is ignored (the configured limits pace the job) and said once (`notices`)."""

REMEMBER_S = 24 * 3600.0
"""How long stated limits are trusted without a probe (an account's tier can change)."""

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str | None) -> float | None:
    """Seconds in a reset header: `1s`, `6m0s`, `20ms`, `1h2m3.5s`, or a bare number of
    seconds; None if unreadable."""
    if not text:
        return None
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


@dataclass
class ServerLimits:
    """What one answer's headers say (None where a header is absent or unreadable)."""

    limit_requests: float | None = None
    limit_tokens: float | None = None
    remaining_requests: float | None = None
    remaining_tokens: float | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str] | None) -> ServerLimits:
        if not headers:
            return cls()

        def num(name: str) -> float | None:
            try:
                return float(headers.get(f"x-ratelimit-{name}"))
            except (TypeError, ValueError):
                return None

        return cls(
            num("limit-requests"),
            num("limit-tokens"),
            num("remaining-requests"),
            num("remaining-tokens"),
            parse_duration(headers.get("x-ratelimit-reset-requests")),
            parse_duration(headers.get("x-ratelimit-reset-tokens")),
        )

    @property
    def known(self) -> bool:
        return self.limit_requests is not None or self.limit_tokens is not None


class RateLimiter:
    """A token bucket holding `burst_s` seconds' worth; a request bigger than that waits for a
    full bucket. `rate` (per second) may change while it runs."""

    def __init__(self, per_minute: float, burst_s: float = 1.0):
        self.burst_s = burst_s
        self.set_rate(per_minute)
        self.level = self.capacity
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()
        self.blocked_until = 0.0

    def set_rate(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * self.burst_s)
        if hasattr(self, "level"):
            self.level = min(self.level, self.capacity)

    def block(self, seconds: float) -> None:
        """Send nothing more for `seconds` (a 429, or nothing remaining until a reset)."""
        self.blocked_until = max(self.blocked_until, time.monotonic() + seconds)
        self.level = min(self.level, 0.0)

    async def acquire(self, amount: float = 1.0) -> None:
        async with self.lock:
            while True:
                now = time.monotonic()
                if now < self.blocked_until:
                    await asyncio.sleep(self.blocked_until - now)
                    self.stamp = time.monotonic()
                    continue
                self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
                self.stamp = now
                need = min(amount, self.capacity)
                if self.level >= need:
                    self.level -= amount
                    return
                await asyncio.sleep((need - self.level) / self.rate)


class Pacer:
    """Requests and tokens per minute: the configured caps, lowered to what the server states."""

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None,
        learn: bool = True,
        remembered: tuple[float | None, float | None] | None = None,
    ):
        self.rpm_cap, self.tpm_cap = rpm, tpm
        self.requests = RateLimiter(rpm) if rpm else None
        self.tokens = RateLimiter(tpm) if tpm else None
        self.learn = learn
        self.known = asyncio.Event()
        self.observed = False  # an answer (or a 429) has been seen in this job
        self.limits = ServerLimits()
        self.notices: list[str] = []  # limits stated but not believed, one line each
        if learn and remembered is not None:  # stated to an earlier job: no probe
            self.limits = self._believable(ServerLimits(*remembered))
            remembered = (self.limits.limit_requests, self.limits.limit_tokens)
            self.requests = self._tighten(self.requests, rpm, remembered[0])
            self.tokens = self._tighten(self.tokens, tpm, remembered[1])
        if not learn or remembered is not None:
            self.known.set()
        self.probing = False

    def _believable(self, limits: ServerLimits) -> ServerLimits:
        """`limits` without a stated limit below its floor (said once in `notices`)."""
        for kind in ("requests", "tokens"):
            stated = getattr(limits, f"limit_{kind}")
            if stated is not None and stated < FLOOR[kind]:
                line = (f"the endpoint states x-ratelimit-limit-{kind}: {stated:g} a minute, below "
                        f"{FLOOR[kind]:g}: not believed; paced by teacher.rpm / teacher.tpm")  # fmt: skip
                if line not in self.notices:
                    self.notices.append(line)
                setattr(limits, f"limit_{kind}", None)
                setattr(limits, f"remaining_{kind}", None)
        return limits

    async def acquire(self, tokens: float, probe: bool = False) -> None:
        """Wait until one request of `tokens` tokens may be sent (`probe`: the probe's own
        next try, sent before the others are let go)."""
        if not self.known.is_set() and not probe:
            if self.probing:
                await self.known.wait()
            else:
                self.probing = True  # this request is the probe: the others wait for its answer
        if self.requests:
            await self.requests.acquire(1)
        if self.tokens:
            await self.tokens.acquire(tokens)

    def observe(
        self, headers: Mapping[str, str] | None, status: int = 200, release: bool = True
    ) -> None:
        """Learn from one answer's headers (None: no answer at all, e.g. a dropped connection);
        `release=False` keeps the others waiting (the probe is retried with a fixed parameter,
        so that they are not sent with the one the endpoint refused)."""
        limits = self._believable(ServerLimits.from_headers(headers))
        if headers is not None:
            self.observed = True  # and `limits` stays unknown where the endpoint states none
        if limits.known:
            self.limits = limits
            self.requests = self._tighten(self.requests, self.rpm_cap, limits.limit_requests)
            self.tokens = self._tighten(self.tokens, self.tpm_cap, limits.limit_tokens)
            for bucket, left, limit, reset in (
                (self.requests, limits.remaining_requests, limits.limit_requests,
                 limits.reset_requests_s),
                (self.tokens, limits.remaining_tokens, limits.limit_tokens, limits.reset_tokens_s),
            ):  # fmt: skip
                if bucket and left is not None and left < 1 and reset and limit:
                    # nothing left: wait for one request's worth to come back (the reset
                    # header says when the whole quota is back, far more than needed)
                    bucket.block(min(reset, 60.0 / limit))
        if status == 429 and headers is not None:
            wait = retry_after(headers)
            for bucket in (self.requests, self.tokens):
                if bucket and wait:
                    bucket.block(wait)
        if release:
            self.known.set()

    def _tighten(
        self, bucket: RateLimiter | None, cap: float | None, stated: float | None
    ) -> RateLimiter | None:
        if not self.learn or stated is None or stated <= 0:
            return bucket
        rate = stated * SAFETY if cap is None else min(cap, stated * SAFETY)
        if bucket is None:
            return RateLimiter(rate, BURST_S)
        if abs(bucket.per_minute - rate) > 1e-9:
            bucket.set_rate(rate)
        return bucket


def retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` / `retry-after` (seconds or an HTTP date), if any."""
    if headers is None:
        return None
    if ms := headers.get("retry-after-ms"):
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, parsed.timestamp() - time.time())
