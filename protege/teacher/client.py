"""Calling an OpenAI-compatible chat endpoint at scale, through the official `openai` SDK.

`call_all` runs `concurrency` workers over the requests not yet in the store. Each worker
reserves the call's worst-case cost against the budget, waits for the rpm/tpm limits, sends
the request (async SDK, its own timeout) and retries on 429, 5xx, timeouts, dropped connections
and unreadable answers with exponential backoff and full jitter, honouring `Retry-After`.
Every answer is committed to the store as it arrives (answers landing in the same event-loop
tick share one commit); after the last try a request is recorded as failed with its error.
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib
import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from protege.errors import ConfigError
from protege.teacher.config import TeacherConfig
from protege.teacher.cost import Budget, call_cost
from protege.teacher.keys import get_key
from protege.teacher.store import Answer, TeacherStore

MAX_BACKOFF_S = 60.0


@dataclass
class Request:
    """One distinct request to send: its store key and chat messages."""

    key: str
    messages: list[dict[str, str]]
    worst_prompt_tokens: int


@dataclass
class CallReport:
    """What happened to the requests sent in one job."""

    ok: int = 0
    failed: int = 0
    skipped: int = 0
    retries: int = 0
    cost_usd: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # key -> last error


class RetryableError(Exception):
    """A try that may succeed later; `wait_s` is the server's Retry-After when it gave one."""

    def __init__(self, message: str, wait_s: float | None = None):
        super().__init__(message)
        self.wait_s = wait_s


class RateLimiter:
    """A token bucket holding one second's worth; a request bigger than that waits for a full bucket."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def acquire(self, amount: float = 1.0) -> None:
        async with self.lock:
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
                self.stamp = now
                need = min(amount, self.capacity)
                if self.level >= need:
                    self.level -= amount
                    return
                await asyncio.sleep((need - self.level) / self.rate)


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


def backoff(attempt: int, base_s: float, wait_s: float | None) -> float:
    """Full-jitter exponential backoff; a server's Retry-After is a floor."""
    jitter = random.uniform(0, min(MAX_BACKOFF_S, base_s * 2**attempt))
    return max(jitter, wait_s or 0.0)


class ChatClient:
    """One async OpenAI SDK client with a connection pool as large as the concurrency."""

    def __init__(self, cfg: TeacherConfig, base_url: str | None, api_key: str | None):
        import openai

        # The SDK's own httpx flavour (openai 3.x ships `httpx2`), for its pool limits.
        hx = importlib.import_module(
            openai.DefaultAsyncHttpxClient.__mro__[1].__module__.split(".")[0]
        )
        self.cfg = cfg
        self.openai = openai
        self.response_type = hx.Response
        pool = hx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
        self.sdk = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "not-needed",
            max_retries=0,  # protege retries itself, so it can record and budget every try
            timeout=cfg.timeout_s,
            # aiohttp under the SDK (its `aiohttp` extra): at hundreds of requests per second
            # its C HTTP parser costs far less CPU than the default httpcore pool.
            http_client=openai.DefaultAioHttpClient(limits=pool, timeout=cfg.timeout_s),
        )

    async def close(self) -> None:
        await self.sdk.close()

    async def once(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """One try. Returns the parsed JSON body; raises RetryableError or a fatal SDK error."""
        o = self.openai
        try:
            # The SDK's request path (auth, errors, timeouts) without its per-call TypedDict
            # transform of the messages, which costs more CPU than the HTTP exchange itself.
            raw = await self.sdk.post(
                "/chat/completions",
                body={"model": self.cfg.model_name, "messages": messages, **self.cfg.params()},
                cast_to=self.response_type,
            )
        except o.APIStatusError as e:
            if e.status_code == 429 or e.status_code >= 500 or e.status_code == 408:
                raise RetryableError(
                    f"HTTP {e.status_code}: {e.message}", retry_after(e.response.headers)
                ) from e
            raise
        except o.APITimeoutError as e:
            raise RetryableError(f"timeout after {self.cfg.timeout_s:g}s") from e
        except o.APIConnectionError as e:
            raise RetryableError(f"connection error: {e.__cause__ or e}") from e
        try:
            body = json.loads(raw.content)
            choice = body["choices"][0]
            _ = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise RetryableError(f"unreadable answer: {type(e).__name__}: {e}") from e
        return body


async def call_all(
    requests: list[Request],
    cfg: TeacherConfig,
    client: ChatClient,
    store: TeacherStore,
    budget: Budget,
    on_answer: Callable[[str, Answer | None], None] = lambda kind, answer: None,
) -> CallReport:
    """Send every request (not already stored) once; store each answer as it arrives.

    `on_answer(kind, answer)` is told of each outcome: "ok", "failed" or "skipped" (budget).
    """
    report = CallReport()
    queue = list(reversed(requests))
    rpm = RateLimiter(cfg.rpm) if cfg.rpm else None
    tpm = RateLimiter(cfg.tpm) if cfg.tpm else None
    pending: list[tuple[Answer, dict[str, Any]]] = []
    loop = asyncio.get_running_loop()
    stop = False

    def flush() -> None:
        if pending:
            batch = pending[:]
            pending.clear()
            store.put_many(batch)

    def record(answer: Answer, messages: list[dict[str, str]]) -> None:
        if not pending:
            loop.call_soon(flush)  # everything answered in this tick shares one commit
        request = {"model": answer.model, "messages": messages, "params": cfg.params()}
        pending.append((answer, request))

    async def worker() -> None:
        nonlocal stop
        while queue and not stop:
            req = queue.pop()
            worst_tokens = req.worst_prompt_tokens + cfg.max_tokens
            worst = call_cost(cfg.prices, cfg.model_name, req.worst_prompt_tokens, cfg.max_tokens)
            if not budget.reserve(worst):
                stop = True  # nothing more may be sent without risking the budget
                queue.append(req)
                break
            answer = await call_one(req, worst_tokens)
            budget.settle(worst, answer.cost_usd)
            record(answer, req.messages)
            if answer.status == "ok":
                report.ok += 1
                report.cost_usd += answer.cost_usd
                report.latencies.append(answer.latency_s or 0.0)
            else:
                report.failed += 1
                report.errors[req.key] = answer.error or ""
            on_answer(answer.status, answer)

    async def call_one(req: Request, worst_tokens: int) -> Answer:
        error = ""
        for attempt in range(cfg.max_retries + 1):
            if rpm:
                await rpm.acquire(1)
            if tpm:
                await tpm.acquire(worst_tokens)
            start = time.monotonic()
            try:
                body = await client.once(req.messages)
            except RetryableError as e:
                error = str(e)
                if attempt < cfg.max_retries:
                    report.retries += 1
                    await asyncio.sleep(backoff(attempt, cfg.backoff_s, e.wait_s))
                continue
            except client.openai.APIError as e:  # 400, 401, 404: retrying cannot help
                return Answer(req.key, cfg.model_name, "failed", error=str(e), attempts=attempt + 1)
            latency = time.monotonic() - start
            choice = body["choices"][0]
            usage = body.get("usage") or {}
            tin, tout = usage.get("prompt_tokens"), usage.get("completion_tokens")
            return Answer(
                key=req.key,
                model=cfg.model_name,
                status="ok",
                text=choice["message"]["content"] or "",
                finish_reason=choice.get("finish_reason"),
                input_tokens=tin,
                output_tokens=tout,
                cost_usd=call_cost(cfg.prices, cfg.model_name, tin or 0, tout or 0),
                latency_s=latency,
                system_fingerprint=body.get("system_fingerprint"),
                attempts=attempt + 1,
                created_at=time.time(),
            )
        return Answer(
            req.key,
            cfg.model_name,
            "failed",
            error=f"{error} (after {cfg.max_retries + 1} tries)",
            attempts=cfg.max_retries + 1,
        )

    try:
        await asyncio.gather(*(worker() for _ in range(min(cfg.concurrency, len(requests)))))
    finally:
        flush()
    report.skipped = len(queue)
    for _ in range(report.skipped):
        on_answer("skipped", None)
    return report


@contextmanager
def endpoint(cfg: TeacherConfig) -> Iterator[tuple[str | None, str | None]]:
    """(base_url, api_key) for a live teacher; the local kind runs llama.cpp for the block."""
    if cfg.kind == "local" and not cfg.base_url:
        from protege.teacher.local import local_server

        with local_server(cfg.gguf, model_alias=cfg.model_name) as url:
            yield url, "local"
        return
    key = get_key(cfg.api_key_env)
    if cfg.kind == "openai" and not cfg.base_url and not key:
        raise ConfigError(
            f"teacher: no API key; set ${cfg.api_key_env} or run `protege teacher key set "
            f"{cfg.api_key_env}`"
        )
    yield cfg.base_url, key
