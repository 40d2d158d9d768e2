"""Calling an OpenAI-compatible chat endpoint at scale, through the official `openai` SDK.

`call_all` runs `concurrency` workers over the requests not yet in the store. Each worker
reserves the call's worst-case cost against the budget, waits for the rpm/tpm limits, sends
the request (async SDK, its own timeout) with the parameters the endpoint takes (`params.py`)
and retries on 429, 5xx, timeouts, dropped connections and unreadable answers with exponential
backoff and full jitter, honouring `Retry-After`; the pace follows the limits the server states
(`ratelimit.py`) and each request is leased in the store while in flight (`leases.py`). A 400 about a parameter teaches a rule and is
retried once with it; a fatal answer (bad key, no such model, no credit: `failures.py`) stops the
whole job. Every answer is committed to the store as it arrives (answers landing in the same
event-loop tick share one commit); after the last try a request is recorded as failed with its
error.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.errors import ConfigError
from protege.redact import redact
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
from protege.teacher.leases import LeasedQueue, new_run_id, release
from protege.teacher.params import ParamRules
from protege.teacher.prices import Pricing, usage_counts
from protege.teacher.ratelimit import REMEMBER_S, Pacer, retry_after
from protege.teacher.store import Answer, StoreWriteError, TeacherStore

MAX_BACKOFF_S = 60.0
LOST = object()  # a request whose lease another process took before it was sent


@dataclass
class Request:
    """One distinct request to send: its store key and chat messages."""

    key: str
    messages: list[dict[str, str]]
    worst_prompt_tokens: int
    params: dict[str, Any] | None = None
    """Canonical parameters of this request (its store key); None: the job's."""
    est_tokens: int | None = None
    """Prompt tokens as a server counts them against its tpm limit (None: worst case)."""


@dataclass
class CallReport:
    """What happened to the requests sent in one job."""

    ok: int = 0
    failed: int = 0
    skipped: int = 0
    elsewhere: int = 0
    """Answered by another process while this job ran (leased there, not paid here)."""
    in_batch: int = 0
    """Waiting in a Batch API job (`teacher.mode: batch` collects them): not sent here."""
    retries: int = 0
    cost_usd: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # key -> last error
    learned: list[str] = field(default_factory=list)  # parameter rules learned from 400s


class RetryableError(Exception):
    """A try that may succeed later; `wait_s` is the server's Retry-After when it gave one."""

    def __init__(self, message: str, wait_s: float | None = None, headers: Any = None,
                 status: int = 0):  # fmt: skip
        super().__init__(message)
        self.wait_s, self.headers, self.status = wait_s, headers, status


class Unreachable(RetryableError):
    """No connection at all (refused, name not resolved, TLS failed): fatal until the endpoint
    has answered once in the job, a passing failure after that."""


class RequestError(Exception):
    """An error answer that retrying as is cannot fix: a parameter to fix, a failed request, or
    a fatal one (`failures.classify`)."""

    def __init__(self, error: ApiError, kind: str, headers: Any = None):
        super().__init__(str(error))
        self.error, self.kind, self.headers = error, kind, headers


def backoff(attempt: int, base_s: float, wait_s: float | None) -> float:
    """Full-jitter exponential backoff; a server's Retry-After is a floor."""
    jitter = random.uniform(0, min(MAX_BACKOFF_S, base_s * 2**attempt))
    return max(jitter, wait_s or 0.0)


class ChatClient:
    """The endpoint, spoken to through the official `openai` SDK, except for the hot path.

    Every call but one goes through the SDK (`models()`, and the Batch API's files and batches
    in `batch.py`). `once()`, the chat completion sent hundreds of times a second, posts the
    SDK's request (its headers, URL and body) through one pooled `aiohttp` session
    instead: measured against the replica, the SDK's per-request layers (httpx2 request and
    response objects, URL and header handling) cost 1.57 ms of CPU per request against 0.48 ms
    for the same exchange through aiohttp, and one core then caps a job near 600 requests/s.
    Error answers are read the way the SDK reads them (`ApiError.from_response`).
    """

    def __init__(self, cfg: TeacherConfig, base_url: str | None, api_key: str | None):
        import openai

        self.cfg = cfg
        self.secrets = [api_key]  # redacted from every error kept or shown
        self.openai = openai
        self.base_url, self.api_key = base_url or cfg.endpoint_url, api_key
        self.endpoint = cfg.endpoint_id(api_key)  # what its answers are stored under
        self.headers = {} if api_key else {"Authorization": openai.Omit()}
        self.url = self.base_url.rstrip("/") + "/chat/completions"
        # The headers the SDK sends (its platform telemetry aside); no key: no Authorization.
        wire = {"Accept": "application/json", "Content-Type": "application/json",
                "User-Agent": f"AsyncOpenAI/Python {openai.__version__}"}  # fmt: skip
        for header, env in (("OpenAI-Organization", "OPENAI_ORG_ID"),
                            ("OpenAI-Project", "OPENAI_PROJECT_ID")):  # fmt: skip
            if os.environ.get(env):
                wire[header] = os.environ[env]
        if api_key:
            wire["Authorization"] = f"Bearer {api_key}"
        self.wire_headers = wire
        self.session = None  # aiohttp.ClientSession, made inside the running event loop
        self.proxy = self.proxy_auth = None

    @functools.cached_property
    def sdk(self):
        """The SDK client, built on first use (about 0.1 s: an SSL context and its pool)."""
        return self.openai.AsyncOpenAI(
            base_url=self.base_url,
            # No key: no Authorization header at all (the SDK would otherwise read
            # $OPENAI_API_KEY itself and send it to whatever server this is).
            api_key=self.api_key or "",
            _enforce_credentials=False,
            max_retries=0,  # protege retries itself, so it can record and budget every try
            timeout=self.cfg.timeout_s,
        )

    def _session(self):
        import aiohttp

        if self.session is None:
            from aiohttp.helpers import get_env_proxy_for_url
            from yarl import URL

            # $HTTP(S)_PROXY / $NO_PROXY, as the SDK honours them, looked up once here: the
            # session's own `trust_env` looks them (and ~/.netrc) up in a thread per request.
            try:
                self.proxy, self.proxy_auth = get_env_proxy_for_url(URL(self.url))
            except LookupError:
                self.proxy, self.proxy_auth = None, None
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.cfg.concurrency),
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
            )
        return self.session

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        if "sdk" in self.__dict__:
            await self.sdk.close()

    async def models(self) -> list[str] | None:
        """The model ids the endpoint serves (`GET /models`), or None if it will not say."""
        try:
            page = await self.sdk.models.list(extra_headers=self.headers)
            return sorted(m.id for m in page.data)
        except self.openai.OpenAIError:
            return None

    async def once(
        self, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> tuple[dict[str, Any], Any]:
        """One try. Returns the parsed JSON body and the response headers; raises
        RetryableError or RequestError (each carrying the headers, where there was an answer)."""
        import aiohttp

        body = {"model": self.cfg.model_name, "messages": messages, **params}
        try:
            async with self._session().post(
                self.url,
                data=json.dumps(body),
                headers=self.wire_headers,
                allow_redirects=False,
                proxy=self.proxy,
                proxy_auth=self.proxy_auth,
            ) as response:
                status, headers, content = response.status, response.headers, await response.read()
        except TimeoutError as e:
            raise RetryableError(f"timeout after {self.cfg.timeout_s:g}s") from e
        except aiohttp.ClientConnectorError as e:
            raise Unreachable(redact(f"{type(e).__name__}: {e}", self.secrets)) from e
        except aiohttp.ClientError as e:
            cause = redact(f"{type(e).__name__}: {e}", self.secrets)
            raise RetryableError(f"connection error: {cause}") from e
        if status >= 300:
            error = ApiError.from_response(status, content)
            error.message = redact(error.message, self.secrets)
            kind = classify(error)
            if kind == RETRY:
                raise RetryableError(str(error), retry_after(headers), headers, status)
            raise RequestError(error, kind, headers)
        try:
            answer = json.loads(content)
            choice = answer["choices"][0]
            _ = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            what = redact(f"{type(e).__name__}: {e}", self.secrets)
            raise RetryableError(f"unreadable answer: {what}", headers=headers) from e
        return answer, headers


async def call_all(
    requests: list[Request],
    cfg: TeacherConfig,
    client: ChatClient,
    store: TeacherStore,
    budget: Budget,
    on_answer: Callable[[str, Answer | None], None] = lambda kind, answer: None,
    pricing: Pricing | None = None,
    rules: ParamRules | None = None,
    run_id: str | None = None,
    params: dict[str, Any] | None = None,
    extras: dict[str, Any] | None = None,
    progress: Callable[[str], None] = lambda line: None,
    rescue_dirs: list[Path] = (),
) -> CallReport:
    """Send every request (not already stored) once; store each answer as it arrives.

    Each request is leased in the store before it is sent (`leases.py`), so a second process
    on the same job sends only what this one does not hold. `params` are the job's canonical
    parameters (the store key; default `cfg.params()`), `extras` go on the wire only (logprobs).
    `on_answer(kind, answer)` is told of each outcome: "ok", "failed", "elsewhere" (answered by
    another process) or "skipped" (budget, held by a batch, or not sent after a fatal answer).
    A fatal answer raises `TeacherFatal` once the requests in flight have finished and
    everything answered is stored. A store write that fails twice stops all sending at once;
    every answer held is saved to a file (`rescue.py`: beside the store, or in one of
    `rescue_dirs`) and `StoreWriteError` says where.
    """
    report = CallReport()
    run_id = run_id or new_run_id()
    store.import_rescued(rescue_dirs)  # answers a full disk left elsewhere: never paid twice
    work = LeasedQueue(
        store, requests, run_id, cfg.lease_s, chunk=max(8, min(256, cfg.concurrency))
    )
    account = limits_account(client)
    remembered = store.server_limits(account, cfg.model_name, REMEMBER_S)
    pacer = Pacer(cfg.rpm, cfg.tpm, remembered=remembered)
    pending: list[tuple[Answer, dict[str, Any]]] = []
    loop = asyncio.get_running_loop()
    job_params = cfg.params() if params is None else params
    extras = extras or {}
    if rules is None:
        learned = store.param_rules(cfg.endpoint_url, cfg.model_name)
        rules = ParamRules.for_config(cfg, learned)
    fatal: list[ApiError] = []
    fatal_keys: set[str] = set()
    unreachable: list[str] = []  # no connection before the endpoint ever answered: stop
    answered = [False]  # the endpoint has answered (anything) in this job
    refused: list[Request] = []  # sent, answered fatally
    unsent: list[Request] = []
    store_error: list[str] = []  # the first failed write: nothing more is sent
    unwritten: list[tuple[Answer, dict[str, Any]]] = []

    def halted() -> bool:
        return bool(fatal or store_error or unreachable)

    def cost(tin: int, tout: int, cached: int = 0) -> float:
        return pricing.cost(tin, tout, cached) if pricing else 0.0

    def flush() -> None:
        if not pending:
            return
        batch = pending[:]
        pending.clear()
        if not store_error:
            for _ in range(2):  # one retry: a write can fail on a passing lock or I/O error
                try:
                    store.put_many(batch, owner=run_id)
                    return
                except sqlite3.Error as e:
                    error = str(e)
            store_error.append(error)
            work.close()
        unwritten.extend(batch)

    def record(answer: Answer, req: Request, sent: dict[str, Any]) -> None:
        answer.endpoint = client.endpoint
        if not pending:
            loop.call_soon(flush)  # everything answered in this tick shares one commit
        request = {"model": answer.model, "messages": req.messages,
                   "params": req.params or job_params, "sent": sent,
                   "endpoint": client.endpoint}  # fmt: skip
        pending.append((answer, request))

    async def next_request() -> Request | None:
        try:
            return await work.next()  # leases it: a store write
        except sqlite3.Error as e:
            store_error.append(str(e))
            work.close()
            return None

    async def worker() -> None:
        while not halted() and (req := await next_request()) is not None:
            worst = cost(req.worst_prompt_tokens, cfg.max_tokens)
            if not budget.reserve(worst):
                work.put_back(req)  # nothing more may be sent without risking the budget
                work.close()
                break
            result = await call_one(req)
            if result is LOST:  # another process holds it now (we were paused): not sent
                budget.settle(worst, 0.0)
                work.lost(req)
                continue
            if result is None:  # stopped (fatal answer, failed write): not answered
                budget.settle(worst, 0.0)
                (refused if req.key in fatal_keys else unsent).append(req)
                continue
            answer, sent = result
            budget.settle(worst, answer.cost_usd)
            record(answer, req, sent)
            if answer.status == "ok":
                report.ok += 1
                report.cost_usd += answer.cost_usd
                report.latencies.append(answer.latency_s or 0.0)
            else:
                report.failed += 1
                report.errors[req.key] = answer.error or ""
            on_answer(answer.status, answer)

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(cfg.lease_s / 3)
            try:
                work.renew()
                if budget.cap is not None:
                    budget.cap.heartbeat()
            except sqlite3.Error as e:
                store_error.append(str(e))
                work.close()

    async def call_one(req: Request) -> tuple[Answer, dict[str, Any]] | object | None:
        error, tries, fixes, fixed = "", 0, 0, False
        canonical = {**(req.params or job_params), **extras}
        params = rules.apply(canonical)
        tokens = (req.est_tokens or req.worst_prompt_tokens) + cfg.max_tokens
        while tries <= cfg.max_retries and not halted():
            await pacer.acquire(tokens, probe=fixed)
            fixed = False
            if halted():  # stopped while waiting for its turn: not sent
                break
            try:
                if not work.still_mine(req.key):  # leased long ago: is it still ours?
                    return LOST
            except sqlite3.Error as e:
                store_error.append(str(e))
                work.close()
                return None
            params = rules.apply(canonical)
            start = time.monotonic()
            try:
                body, headers = await client.once(req.messages, params)
                pacer.observe(headers)
            except RetryableError as e:
                pacer.observe(e.headers, e.status)
                if isinstance(e, Unreachable) and not answered[0]:
                    unreachable.append(str(e))  # a typo in the URL, or no server: stop now
                    return None
                answered[0] = answered[0] or not isinstance(e, Unreachable)
                error, tries = str(e), tries + 1
                if tries <= cfg.max_retries:
                    report.retries += 1
                    await asyncio.sleep(backoff(tries - 1, cfg.backoff_s, e.wait_s))
                continue
            except RequestError as e:
                answered[0] = True
                if e.kind == FIX and fixes < len(canonical):
                    fix = rules.learn(e.error.as_dict())
                    if fix:
                        try:
                            store.put_param_rule(rules.endpoint, rules.model, *fix, e.error.message)
                        except sqlite3.Error:
                            pass  # a rule not remembered is learned again next run
                        report.learned.append(f"{cfg.model_name}: {fix[0]} -> {fix[1]}")
                    if rules.apply(canonical) != params:  # learned here or by another worker
                        # a probe tries again at once, the others still waiting for its answer
                        pacer.observe(e.headers, e.error.status, release=False)
                        fixes, fixed = fixes + 1, True
                        continue
                pacer.observe(e.headers, e.error.status)
                if e.kind == FATAL:
                    fatal.append(e.error)
                    fatal_keys.add(req.key)
                    return None
                failed = Answer(req.key, cfg.model_name, "failed", error=str(e),
                                attempts=tries + fixes + 1, run_id=run_id)  # fmt: skip
                return failed, params
            answered[0] = True
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
                run_id=run_id,
                logprobs=token_logprobs(choice),
            )
            return answer, params
        if halted():
            return None
        failed = Answer(req.key, cfg.model_name, "failed", attempts=tries + fixes, run_id=run_id,
                        error=f"{error} (after {cfg.max_retries + 1} tries)")  # fmt: skip
        return failed, params

    beat = asyncio.ensure_future(heartbeat())
    try:
        n_workers = min(cfg.concurrency, len(requests)) or 1
        await asyncio.gather(*(worker() for _ in range(n_workers)))
    finally:
        beat.cancel()
        flush()
        try:
            release(store, run_id)
            if pacer.observed:
                lim = pacer.limits
                store.put_server_limits(
                    account, cfg.model_name, lim.limit_requests, lim.limit_tokens
                )
        except sqlite3.Error:
            pass  # leases of a dead run expire by themselves; limits are learned again
    report.learned += pacer.notices
    report.elsewhere = len(work.done)
    report.in_batch = len(work.in_batch)
    for _ in range(report.elsewhere):
        on_answer("elsewhere", None)
    report.skipped = work.left() - len(work.in_batch) + len(unsent) + len(refused)
    for _ in range(report.skipped + report.in_batch):
        on_answer("skipped", None)
    if store_error:
        raise _store_failed(store, store_error[0], unwritten, report, rescue_dirs)
    refusals = f"{len(refused)} refused, " if refused else ""
    stopped = (
        f"(stopped: {report.ok} answers stored, {refusals}{report.skipped - len(refused)} "
        "not sent; a rerun sends only what is missing)"
    )
    if fatal:
        served = await client.models() if fatal[0].status == 404 else None
        line = fatal_message(fatal[0], cfg.model_name, cfg.endpoint_url, cfg.key_env, served)
        raise TeacherFatal(f"{line} {stopped}")
    if unreachable:
        raise TeacherFatal(
            f"teacher: cannot connect to {client.base_url} ({unreachable[0]}); check "
            f"teacher.base_url and that the server is up {stopped}"
        )
    return report


def limits_account(client: ChatClient) -> str:
    """Whose limits: the endpoint and a digest of the key (accounts on one endpoint differ;
    the key itself is never stored)."""
    digest = hashlib.sha256((client.api_key or "").encode()).hexdigest()[:12]
    return f"{client.base_url.rstrip('/')}#{digest}"


def _store_failed(
    store: TeacherStore, error: str, unwritten: list, report: CallReport, dirs: list[Path]
) -> StoreWriteError:
    """Save the answers the store refused and say where they are, in one line."""
    where = rescue_unwritten(store, unwritten, dirs)
    return StoreWriteError(
        f"teacher store {store.path}: write failed ({error}); stopped sending at once: "
        f"{report.ok + report.failed - len(unwritten)} answers stored, {where}, "
        f"{report.skipped} requests not sent; free some space and rerun"
    )


def rescue_unwritten(store: TeacherStore, unwritten: list, dirs: list[Path]) -> str:
    """Save answers the store refused (`rescue.py`); where they went, as part of a line."""
    from protege.teacher import rescue

    saved = rescue.save(unwritten, store.path, list(dirs))
    if not saved:
        return f"{len(unwritten)} answers could not be saved anywhere"
    return (f"{len(unwritten)} answers saved to {saved} (the rerun imports them before it "
            f"sends anything; or `protege teacher import {saved}`)")  # fmt: skip


def token_logprobs(choice: dict[str, Any]) -> str | None:
    """The answer's tokens and their log-probabilities as compact JSON, where returned."""
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        return None
    pairs = [[t.get("token", ""), t.get("logprob")] for t in content]
    return json.dumps(pairs, ensure_ascii=False, separators=(",", ":"))


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
