"""Calling an OpenAI-compatible chat endpoint at scale, through the official `openai` SDK.

`call_all` runs `concurrency` workers over the requests not yet in the store. Each worker
reserves the call's worst-case cost against the budget, waits for the rpm/tpm limits, sends
the request (`chat.py`: one try, its own timeout) with the parameters the endpoint takes
(`params.py`) and retries on 429, 5xx, timeouts, dropped connections and unreadable answers
with exponential backoff and full jitter, honouring `Retry-After`; the pace follows the limits
the server states (`ratelimit.py`) and each request is leased in the store while in flight
(`leases.py`). A 400 about a parameter teaches a rule and is retried once with it; a fatal
answer (bad key, no such model, no credit: `failures.py`) stops the whole job. Every answer is
committed to the store as it arrives (answers landing in the same event-loop tick share one
commit); after the last try a request is recorded as failed with its error.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.teacher import rescue
from protege.teacher.chat import (
    ChatClient,
    RequestError,
    RetryableError,
    Unreachable,
    limits_account,
    token_logprobs,
)
from protege.teacher.config import TeacherConfig
from protege.teacher.cost import Budget
from protege.teacher.failures import (
    FATAL,
    FIX,
    ApiError,
    TeacherFatal,
    fatal_message,
)
from protege.teacher.leases import LeasedQueue, new_run_id, release
from protege.teacher.params import ParamRules
from protege.teacher.prices import Pricing, usage_counts
from protege.teacher.ratelimit import REMEMBER_S, Pacer
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


def backoff(attempt: int, base_s: float, wait_s: float | None) -> float:
    """Full-jitter exponential backoff; a server's Retry-After is a floor."""
    jitter = random.uniform(0, min(MAX_BACKOFF_S, base_s * 2**attempt))
    return max(jitter, wait_s or 0.0)


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
    saved = rescue.save(unwritten, store.path, list(dirs))
    if not saved:
        return f"{len(unwritten)} answers could not be saved anywhere"
    return (f"{len(unwritten)} answers saved to {saved} (the rerun imports them before it "
            f"sends anything; or `protege teacher import {saved}`)")  # fmt: skip
