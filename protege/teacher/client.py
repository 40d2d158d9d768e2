"""Calling an OpenAI-compatible chat endpoint at scale, through the official `openai` SDK.

`call_all` runs `concurrency` workers over the requests not yet in the store. Each worker
reserves the call's worst-case cost against the budget, waits for the rpm/tpm limits, sends
the request (async SDK, its own timeout) with the parameters the endpoint takes (`params.py`)
and retries on 429, 5xx, timeouts, dropped connections and unreadable answers with exponential
backoff and full jitter, honouring `Retry-After`. A 400 about a parameter teaches a rule and is
retried once with it; a fatal answer (bad key, no such model, no credit: `failures.py`) stops the
whole job. Every answer is committed to the store as it arrives (answers landing in the same
event-loop tick share one commit); after the last try a request is recorded as failed with its
error.
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
from protege.teacher.cost import Budget
from protege.teacher.failures import (
    FATAL,
    FIX,
    RETRY,
    ApiError,
    TeacherFatal,
    classify,
    fatal_message,
)
from protege.teacher.keys import get_key
from protege.teacher.params import ParamRules
from protege.teacher.prices import Pricing, usage_counts
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
    learned: list[str] = field(default_factory=list)  # parameter rules learned from 400s


class RetryableError(Exception):
    """A try that may succeed later; `wait_s` is the server's Retry-After when it gave one."""

    def __init__(self, message: str, wait_s: float | None = None):
        super().__init__(message)
        self.wait_s = wait_s


class RequestError(Exception):
    """An error answer that retrying as is cannot fix: a parameter to fix, a failed request, or
    a fatal one (`failures.classify`)."""

    def __init__(self, error: ApiError, kind: str):
        super().__init__(str(error))
        self.error, self.kind = error, kind


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
        self.headers = {} if api_key else {"Authorization": openai.Omit()}
        pool = hx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
        self.sdk = openai.AsyncOpenAI(
            base_url=base_url or cfg.endpoint_url,
            # No key: no Authorization header at all (the SDK would otherwise read
            # $OPENAI_API_KEY itself and send it to whatever server this is).
            api_key=api_key or "",
            _enforce_credentials=False,
            max_retries=0,  # protege retries itself, so it can record and budget every try
            timeout=cfg.timeout_s,
            # aiohttp under the SDK (its `aiohttp` extra): at hundreds of requests per second
            # its C HTTP parser costs far less CPU than the default httpcore pool.
            http_client=openai.DefaultAioHttpClient(limits=pool, timeout=cfg.timeout_s),
        )

    async def close(self) -> None:
        await self.sdk.close()

    async def models(self) -> list[str] | None:
        """The model ids the endpoint serves (`GET /models`), or None if it will not say."""
        try:
            page = await self.sdk.models.list(extra_headers=self.headers)
            return sorted(m.id for m in page.data)
        except self.openai.OpenAIError:
            return None

    async def once(self, messages: list[dict[str, str]], params: dict[str, Any]) -> dict[str, Any]:
        """One try. Returns the parsed JSON body; raises RetryableError or RequestError."""
        o = self.openai
        try:
            # The SDK's request path (auth, errors, timeouts) without its per-call TypedDict
            # transform of the messages, which costs more CPU than the HTTP exchange itself.
            raw = await self.sdk.post(
                "/chat/completions",
                body={"model": self.cfg.model_name, "messages": messages, **params},
                cast_to=self.response_type,
                options={"headers": self.headers},
            )
        except o.APIStatusError as e:
            error = ApiError.from_sdk(e)
            kind = classify(error)
            if kind == RETRY:
                raise RetryableError(str(error), retry_after(e.response.headers)) from e
            raise RequestError(error, kind) from e
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
    pricing: Pricing | None = None,
    rules: ParamRules | None = None,
) -> CallReport:
    """Send every request (not already stored) once; store each answer as it arrives.

    `on_answer(kind, answer)` is told of each outcome: "ok", "failed" or "skipped" (budget, or
    not sent after a fatal answer). A fatal answer raises `TeacherFatal` once the requests in
    flight have finished and everything answered is stored.
    """
    report = CallReport()
    queue = list(reversed(requests))
    rpm = RateLimiter(cfg.rpm) if cfg.rpm else None
    tpm = RateLimiter(cfg.tpm) if cfg.tpm else None
    pending: list[tuple[Answer, dict[str, Any]]] = []
    loop = asyncio.get_running_loop()
    canonical = cfg.params()
    if rules is None:
        learned = store.param_rules(cfg.endpoint_url, cfg.model_name)
        rules = ParamRules(cfg.endpoint_url, cfg.model_name, cfg.is_openai, learned)
    stop = False
    fatal: list[ApiError] = []
    unsent: list[Request] = []

    def cost(tin: int, tout: int, cached: int = 0) -> float:
        return pricing.cost(tin, tout, cached) if pricing else 0.0

    def flush() -> None:
        if pending:
            batch = pending[:]
            pending.clear()
            store.put_many(batch)

    def record(answer: Answer, messages: list[dict[str, str]], sent: dict[str, Any]) -> None:
        if not pending:
            loop.call_soon(flush)  # everything answered in this tick shares one commit
        request = {"model": answer.model, "messages": messages, "params": canonical, "sent": sent}
        pending.append((answer, request))

    async def worker() -> None:
        nonlocal stop
        while queue and not stop and not fatal:
            req = queue.pop()
            worst_tokens = req.worst_prompt_tokens + cfg.max_tokens
            worst = cost(req.worst_prompt_tokens, cfg.max_tokens)
            if not budget.reserve(worst):
                stop = True  # nothing more may be sent without risking the budget
                queue.append(req)
                break
            result = await call_one(req, worst_tokens)
            if result is None:  # a fatal answer: this request was not answered
                budget.settle(worst, 0.0)
                unsent.append(req)
                continue
            answer, sent = result
            budget.settle(worst, answer.cost_usd)
            record(answer, req.messages, sent)
            if answer.status == "ok":
                report.ok += 1
                report.cost_usd += answer.cost_usd
                report.latencies.append(answer.latency_s or 0.0)
            else:
                report.failed += 1
                report.errors[req.key] = answer.error or ""
            on_answer(answer.status, answer)

    async def call_one(req: Request, worst_tokens: int) -> tuple[Answer, dict[str, Any]] | None:
        error, tries, fixes = "", 0, 0
        params = rules.apply(canonical)
        while tries <= cfg.max_retries and not fatal:
            if rpm:
                await rpm.acquire(1)
            if tpm:
                await tpm.acquire(worst_tokens)
            params = rules.apply(canonical)
            start = time.monotonic()
            try:
                body = await client.once(req.messages, params)
            except RetryableError as e:
                error, tries = str(e), tries + 1
                if tries <= cfg.max_retries:
                    report.retries += 1
                    await asyncio.sleep(backoff(tries - 1, cfg.backoff_s, e.wait_s))
                continue
            except RequestError as e:
                if e.kind == FIX and fixes < len(canonical):
                    fix = rules.learn(e.error.as_dict())
                    if fix:
                        store.put_param_rule(rules.endpoint, rules.model, *fix, e.error.message)
                        report.learned.append(f"{cfg.model_name}: {fix[0]} -> {fix[1]}")
                    if rules.apply(canonical) != params:  # learned here or by another worker
                        fixes += 1
                        continue
                if e.kind == FATAL:
                    fatal.append(e.error)
                    return None
                failed = Answer(req.key, cfg.model_name, "failed", error=str(e),
                                attempts=tries + fixes + 1)  # fmt: skip
                return failed, params
            latency = time.monotonic() - start
            choice = body["choices"][0]
            tin, tout, cached, reasoning = usage_counts(body.get("usage") or {})
            answer = Answer(
                key=req.key,
                model=cfg.model_name,
                status="ok",
                text=choice["message"]["content"] or "",
                finish_reason=choice.get("finish_reason"),
                input_tokens=tin,
                output_tokens=tout,
                cost_usd=cost(tin or 0, tout or 0, cached),
                latency_s=latency,
                system_fingerprint=body.get("system_fingerprint"),
                attempts=tries + fixes + 1,
                created_at=time.time(),
                cached_tokens=cached,
                reasoning_tokens=reasoning,
            )
            return answer, params
        if fatal:
            return None
        failed = Answer(req.key, cfg.model_name, "failed", attempts=tries + fixes,
                        error=f"{error} (after {cfg.max_retries + 1} tries)")  # fmt: skip
        return failed, params

    try:
        await asyncio.gather(*(worker() for _ in range(min(cfg.concurrency, len(requests)))))
    finally:
        flush()
    report.skipped = len(queue) + len(unsent)
    for _ in range(report.skipped):
        on_answer("skipped", None)
    if fatal:
        served = await client.models() if fatal[0].status == 404 else None
        line = fatal_message(fatal[0], cfg.model_name, cfg.endpoint_url, cfg.key_env, served)
        raise TeacherFatal(
            f"{line} (stopped: {report.ok} answers stored, {report.skipped} requests not sent; "
            "a rerun sends only what is missing)"
        )
    return report


@contextmanager
def endpoint(cfg: TeacherConfig) -> Iterator[tuple[str | None, str | None]]:
    """(base_url, api_key) for a live teacher; the local kind runs llama.cpp for the block.

    The key is read from the endpoint's own variable (`TeacherConfig.key_env`): OpenAI's key
    goes to api.openai.com only, unless `api_key_env` names it for another endpoint.
    """
    if cfg.kind == "local" and not cfg.base_url:
        from protege.teacher.local import local_server

        with local_server(cfg.gguf, model_alias=cfg.model_name) as url:
            yield url, "local"
        return
    env = cfg.key_env
    key = get_key(env) if env else None
    if env and not key and (cfg.api_key_env or cfg.is_openai):
        raise ConfigError(
            f"teacher: no API key for {cfg.endpoint_url}; set ${env} or run "
            f"`protege teacher key set {env}`"
        )
    yield cfg.base_url or cfg.endpoint_url, key
