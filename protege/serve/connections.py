"""Connections before any request: what a client that never finishes its headers may hold.

uvicorn has a keep-alive timeout but no header timeout and no connection cap, so a client
that opens thousands of connections and sends one byte on each holds them (and the process's
file descriptors) for ever. `guarded_protocol` is uvicorn's h11 protocol with both:

- a header timeout: a connection that has not sent a whole request head within
  `header_timeout_s` of opening (or of its last response) is closed;
- a connection cap: past `max_connections`, a new connection evicts the oldest one that has
  waited over `MIN_AGE_S` without completing a request head (a client that just connected
  is not pushed out by a flood arriving with it); if there is none, the new one gets 503.

Connections that have sent a request are never evicted, so hostile idle connections cost
legitimate clients nothing but a reconnect. `RepeatFilter` keeps a flood of identical log
lines (one per bad connection) to one line per interval with a count of those left out.
"""

from __future__ import annotations

import logging
import resource
import time
from collections import OrderedDict

from uvicorn.protocols.http.h11_impl import H11Protocol

MIN_AGE_S = 1.0
"""A connection younger than this is never evicted: its client may still be sending its head."""

REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: 26\r\n\r\ntoo many open connections\n"
)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout and a connection cap (module docstring)."""

    header_timeout_s: float = 10.0
    max_connections: int = 4096

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Connections that have not sent a request head yet, oldest first (shared by all).
        self.waiting: OrderedDict = self.server_state.__dict__.setdefault("waiting", OrderedDict())
        self.header_timer = None
        if len(self.connections) > self.max_connections and not self._evict_one():
            transport.write(REFUSED)
            transport.close()
            return
        self.waiting[self] = time.monotonic()
        self._await_head()

    def _evict_one(self) -> bool:
        oldest_ok = time.monotonic() - MIN_AGE_S
        while self.waiting:
            victim, since = next(iter(self.waiting.items()))
            if since > oldest_ok:
                return False  # the oldest is too young: so is every other
            del self.waiting[victim]
            if not victim.transport.is_closing():
                victim.transport.close()
                return True
        return False

    def _await_head(self) -> None:
        self.header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _head_received(self) -> None:
        self.waiting.pop(self, None)
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timeout(self) -> None:
        self.header_timer = None
        if self.cycle is None or self.cycle.response_complete:  # still no request head
            self.waiting.pop(self, None)
            if not self.transport.is_closing():
                self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self._head_received()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.header_timer is None:
            self._await_head()  # the next request on this keep-alive connection (not evictable)

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_received()
        super().connection_lost(exc)


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[GuardedH11Protocol]:
    """A `GuardedH11Protocol` class with these limits (uvicorn's `http=` takes a class)."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout_s": header_timeout_s, "max_connections": max_connections},
    )


class RepeatFilter(logging.Filter):
    """Lets one record per (logger, message template) through every `interval_s`; the next one
    let through says how many were left out."""

    def __init__(self, interval_s: float = 10.0):
        super().__init__()
        self.interval_s = interval_s
        self.seen: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = time.monotonic()
        last, dropped = self.seen.get(key, (float("-inf"), 0))
        if now - last < self.interval_s:
            self.seen[key] = (last, dropped + 1)
            return False
        if len(self.seen) > 1000:
            self.seen.clear()
        self.seen[key] = (now, 0)
        if dropped:
            record.msg = f"{record.getMessage()} (and {dropped} more like it)"
            record.args = None
        return True


def quiet_repeats(interval_s: float = 10.0) -> RepeatFilter:
    """Install one `RepeatFilter` on the loggers a flood of bad connections writes to."""
    flt = RepeatFilter(interval_s)
    for name in ("uvicorn.error", "uvicorn.access", "asyncio", "protege.serve"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(flt)
    return flt


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-files limit towards `wanted` (never past the hard limit); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft
