"""Batch mode (`teacher.mode: batch`): a job through the endpoint's Batch API at the batch price.

The requests without an answer are leased to a new batch (`batch:<id>`, until the 24 h window
is over) and recorded in the store with their request bodies, all in one transaction, before
anything is uploaded. Then: upload the JSONL (`custom_id` = store key), create the batch with
`metadata.protege_batch = <id>`, record its id, and poll with backoff until it ends; download
the output and error files and store every answer at the batch price, marking the batch
collected in the same transaction. Batches are split to the API's limits (requests, bytes).

A killed process loses nothing and never submits twice: the rerun finds the job's batches in
the store and resumes each where it stopped: polls a created one, or (killed between create
and record) finds it by its metadata in the endpoint's batch list before creating anything, or
re-uploads from the stored request bodies. Requests that expired, were cancelled or met a
server error are sent again in a new batch, up to `max_retries` times; a request the API
refused (400) is recorded as failed; a 400 about a parameter teaches a rule (`params.py`).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protege.errors import ProtegeError
from protege.teacher.client import (
    CallReport,
    ChatClient,
    Request,
    rescue_unwritten,
    token_logprobs,
)
from protege.teacher.config import TeacherConfig
from protege.teacher.cost import Budget
from protege.teacher.failures import FATAL, FIX, RETRY, ApiError, TeacherFatal, classify
from protege.teacher.leases import lease, new_run_id, release
from protege.teacher.params import ParamRules
from protege.teacher.prices import Pricing, usage_counts
from protege.teacher.store import Answer, StoreWriteError, TeacherStore

WINDOW_S = 25 * 3600  # a batch's leases: its 24 h completion window, and an hour to collect
TERMINAL = ("completed", "failed", "expired", "cancelled")
MAX_POLL_S = 600.0


def _chunks(lines: list[tuple[str, bytes]], max_n: int, max_bytes: int) -> list[list]:
    """Split (key, line) pairs into batches of at most max_n lines and max_bytes bytes."""
    out: list[list] = [[]]
    size = 0
    for key, line in lines:
        if out[-1] and (len(out[-1]) >= max_n or size + len(line) > max_bytes):
            out.append([])
            size = 0
        out[-1].append((key, line))
        size += len(line)
    return [c for c in out if c]


def _line(key: str, request: dict[str, Any]) -> bytes:
    body = {"model": request["model"], "messages": request["messages"], **request["sent"]}
    row = {"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


class BatchRunner:
    """One job's batches: submit, resume, poll, collect (see the module docstring)."""

    def __init__(self, cfg: TeacherConfig, client: ChatClient, store: TeacherStore,
                 budget: Budget, pricing: Pricing | None, rules: ParamRules, run_id: str,
                 on_answer: Callable[[str, Answer | None], None],
                 rescue_dirs: list[Path] = ()):  # fmt: skip
        self.cfg, self.client, self.store, self.budget = cfg, client, store, budget
        self.rescue_dirs = list(rescue_dirs)
        self.pricing, self.rules, self.run_id, self.on_answer = pricing, rules, run_id, on_answer
        self.sdk = client.sdk
        self.report = CallReport()
        self.reserved: dict[str, float] = {}  # batch id -> worst cost reserved in this run

    # -- the store ---------------------------------------------------------------------------
    def open_batches(self, keys: list[str]) -> list[dict[str, Any]]:
        """Uncollected batches holding any of `keys` (this job's, from any run)."""
        ids: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            ids |= {r[0] for r in self.store.db.execute(
                f"SELECT DISTINCT batch_id FROM batch_requests WHERE key IN ({marks})", chunk)}  # fmt: skip
        rows = []
        cols = ("id", "remote_id", "input_file_id", "status", "n", "attempt", "created_at")
        for bid in sorted(ids):
            row = self.store.db.execute(
                f"SELECT {', '.join(cols)} FROM batches WHERE id=? AND status != 'collected'",
                (bid,),
            ).fetchone()
            if row:
                rows.append(dict(zip(cols, row, strict=True)))
        return rows

    def _update(self, bid: str, **fields: Any) -> None:
        sets = ", ".join(f"{k}=?" for k in fields)
        self.store.db.execute(f"UPDATE batches SET {sets}, updated_at=? WHERE id=?",
                              (*fields.values(), time.time(), bid))  # fmt: skip

    def requests_of(self, bid: str) -> dict[str, dict[str, Any]]:
        rows = self.store.db.execute("SELECT key, request FROM batch_requests WHERE batch_id=?",
                                     (bid,))  # fmt: skip
        return {k: json.loads(r) for k, r in rows}

    # -- submitting --------------------------------------------------------------------------
    def plan(self, requests: list[Request], params: dict, extras: dict, attempt: int = 1) -> list:
        """Lease and record new batches for `requests` (one transaction each); their ids."""
        wire = self.rules.apply({**params, **extras})
        lines = []
        bodies = {}
        for req in requests:
            request = {"model": self.cfg.model_name, "messages": req.messages,
                       "params": req.params or params,
                       "sent": self.rules.apply({**(req.params or params), **extras})
                       if req.params else wire, "endpoint": self.client.endpoint}  # fmt: skip
            bodies[req.key] = request
            lines.append((req.key, _line(req.key, request)))
        worst = {req.key: self._worst(req) for req in requests}
        planned = []
        for chunk in _chunks(lines, self.cfg.batch_max_requests, self.cfg.batch_max_bytes):
            keys = [k for k, _ in chunk]
            affordable = []
            for k in keys:
                if not self.budget.reserve(worst[k]):
                    break
                affordable.append(k)
            skipped = len(keys) - len(affordable)
            self.report.skipped += skipped
            for _ in range(skipped):
                self.on_answer("skipped", None)
            bid = uuid.uuid4().hex[:16]

            def record(db: sqlite3.Connection, mine: list[str], bid: str = bid) -> None:
                if not mine:
                    return
                now = time.time()
                db.execute(
                    "INSERT INTO batches (id, endpoint, model, run_id, status, n, attempt, "
                    "created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (bid, self.cfg.endpoint_url, self.cfg.model_name, self.run_id, "new",
                     len(mine), attempt, now, now),
                )  # fmt: skip
                db.executemany(
                    "INSERT INTO batch_requests (batch_id, key, request) VALUES (?,?,?)",
                    [(bid, k, json.dumps(bodies[k], ensure_ascii=False)) for k in mine],
                )
                # its worst case stays claimed against the store's cap until it is collected
                db.execute("INSERT INTO claims (owner, amount, expires_at) VALUES (?,?,?)",
                           (f"batch:{bid}", sum(worst[k] for k in mine), now + WINDOW_S))  # fmt: skip

            got = lease(self.store, affordable, f"batch:{bid}", WINDOW_S, then=record)
            cost = sum(worst[k] for k in got.mine)
            for k in affordable:
                if k not in got.mine:
                    self.budget.settle(worst[k], 0.0)
            self.report.elsewhere += len(got.done)
            for _ in got.done:
                self.on_answer("elsewhere", None)
            self.report.skipped += len(got.busy)  # in flight elsewhere: left to their owner
            for _ in got.busy:
                self.on_answer("skipped", None)
            if got.mine:
                self.reserved[bid] = cost
                planned.append(bid)
        return planned

    def _worst(self, req: Request) -> float:
        if not self.pricing:
            return 0.0
        return self.pricing.cost(req.worst_prompt_tokens, self.cfg.max_tokens, batch=True)

    async def start(self, row: dict[str, Any]) -> None:
        """Upload and create a recorded batch that has no remote id yet (or find it)."""
        bid = row["id"]
        found = await self._find_remote(bid, row["created_at"])
        if found is None:
            if not row["input_file_id"]:
                data = b"".join(_line(k, r) for k, r in self.requests_of(bid).items())
                upload = await self._api(self.sdk.files.create, file=(
                    f"protege-{bid}.jsonl", data, "application/jsonl"), purpose="batch")  # fmt: skip
                row["input_file_id"] = upload.id
                self._update(bid, input_file_id=upload.id)
            found = await self._api(
                self.sdk.batches.create, input_file_id=row["input_file_id"],
                endpoint="/v1/chat/completions", completion_window="24h",
                metadata={"protege_batch": bid},
            )  # fmt: skip
        row.update(remote_id=found.id, status=found.status)
        self._update(bid, remote_id=found.id, status=found.status)

    async def _find_remote(self, bid: str, since: float) -> Any:
        """The endpoint's batch created for `bid` (killed before its id was recorded), or None."""
        pages = self.sdk.batches.list(limit=100, extra_headers=self.client.headers)
        async for remote in pages:
            if (remote.metadata or {}).get("protege_batch") == bid:
                return remote
            if remote.created_at < since - 3600:
                return None
        return None

    # -- waiting and collecting --------------------------------------------------------------
    async def wait(self, rows: list[dict[str, Any]], progress: Callable[[str], None]) -> list:
        """Poll every batch until it ends, collecting each as it does; the requests to resend."""
        resend: list[tuple[str, dict[str, Any], int]] = []
        delay = self.cfg.batch_poll_s
        open_rows = list(rows)
        while open_rows:
            for row in list(open_rows):
                remote = await self._api(self.sdk.batches.retrieve, row["remote_id"])
                if remote.status != row["status"]:
                    row["status"] = remote.status
                    self._update(row["id"], status=remote.status)
                if remote.status in TERMINAL:
                    resend += await self.collect(row, remote)
                    open_rows.remove(row)
            if open_rows:
                counts = [f"{r['status']}" for r in open_rows]
                progress(f"{len(open_rows)} batch(es) {', '.join(sorted(set(counts)))}")
                await asyncio.sleep(delay)
                delay = min(MAX_POLL_S, delay * 1.5)
        return resend

    async def collect(self, row: dict[str, Any], remote: Any) -> list:
        """Store a finished batch's answers; the (key, request, attempt) to send again."""
        bid = row["id"]
        requests = self.requests_of(bid)
        results: dict[str, dict[str, Any]] = {}
        for fid in (remote.output_file_id, remote.error_file_id):
            if fid:
                content = await self._api(self.sdk.files.content, fid)
                for line in content.content.splitlines():
                    if line.strip():
                        item = json.loads(line)
                        results[item["custom_id"]] = item
        answers: list[tuple[Answer, dict[str, Any]]] = []
        resend = []
        failed_batch = None
        if remote.status == "failed":
            errors = getattr(remote.errors, "data", None) or []
            failed_batch = "; ".join(e.message or e.code or "" for e in errors) or "batch failed"
        elif remote.status == "cancelled":
            failed_batch = "the batch was cancelled"
        for key, request in requests.items():
            item = results.get(key)
            answer, again = self._answer(key, item, remote.status, failed_batch, row["attempt"])
            if answer is not None:
                answers.append((answer, request))
            if again:
                resend.append((key, request, row["attempt"] + 1))
        owner = f"batch:{bid}"
        collected = []

        def finish(db: sqlite3.Connection) -> None:
            cur = db.execute("UPDATE batches SET status='collected', updated_at=? "
                             "WHERE id=? AND status != 'collected'", (time.time(), bid))  # fmt: skip
            collected.append(cur.rowcount)
            db.execute("DELETE FROM leases WHERE owner=?", (owner,))
            db.execute("DELETE FROM claims WHERE owner=?", (owner,))

        try:
            self.store.put_many(answers, owner=owner, extra=finish)
        except sqlite3.Error as e:  # paid answers the store refused: keep them, stop at once
            where = rescue_unwritten(self.store, answers, self.rescue_dirs)
            raise StoreWriteError(
                f"teacher store {self.store.path}: write failed ({e}) while collecting batch "
                f"{bid}; stopped at once: {where}; the batch stays recorded, so a rerun "
                "collects it again and submits nothing twice; free some space and rerun"
            ) from e
        if not collected[0]:
            return []  # another process collected it first (and resends what is left)
        worst = self.reserved.pop(bid, None)
        spent = sum(a.cost_usd for a, _ in answers if a.status == "ok")
        self.budget.settle(worst or 0.0, spent)
        for answer, _ in answers:
            if answer.status == "ok":
                self.report.ok += 1
                self.report.cost_usd += answer.cost_usd
            else:
                self.report.failed += 1
                self.report.errors[answer.key] = answer.error or ""
            self.on_answer(answer.status, answer)
        return resend

    def _answer(self, key: str, item: dict[str, Any] | None, status: str,
                failed_batch: str | None, attempt: int) -> tuple[Answer | None, bool]:  # fmt: skip
        """One result line as an answer to store, and whether to send the request again."""
        last = attempt > self.cfg.max_retries
        if item is None or item.get("error"):
            why = failed_batch or (item or {}).get("error", {}).get("message") or f"batch {status}"
            if failed_batch or last:
                return self._failed(key, f"batch: {why}", attempt), False
            return None, True
        response = item.get("response") or {}
        body = response.get("body") or {}
        code = response.get("status_code", 0)
        if code != 200:
            err = body.get("error") if isinstance(body.get("error"), dict) else {}
            error = ApiError(code, str(err.get("message") or f"HTTP {code}"), err.get("type"),
                             err.get("code"), err.get("param"))  # fmt: skip
            kind = classify(error)
            if kind == FIX and (fix := self.rules.learn(error.as_dict())):
                self.store.put_param_rule(
                    self.rules.endpoint, self.rules.model, *fix, error.message
                )
                self.report.learned.append(f"{self.cfg.model_name}: {fix[0]} -> {fix[1]}")
                return None, True
            if kind == RETRY and not last:
                return None, True
            return self._failed(key, str(error), attempt), False
        choice = body["choices"][0]
        tin, tout, cached, reasoning = usage_counts(body.get("usage") or {})
        cost = self.pricing.cost(tin or 0, tout or 0, cached, batch=True) if self.pricing else 0.0
        return Answer(
            key=key, model=self.cfg.model_name, status="ok",
            text=choice["message"]["content"] or "", finish_reason=choice.get("finish_reason"),
            input_tokens=tin, output_tokens=tout, cost_usd=cost, latency_s=None,
            system_fingerprint=body.get("system_fingerprint"), attempts=attempt,
            created_at=time.time(), source="batch", cached_tokens=cached,
            reasoning_tokens=reasoning, run_id=self.run_id, logprobs=token_logprobs(choice),
        ), False  # fmt: skip

    def _failed(self, key: str, error: str, attempt: int) -> Answer:
        return Answer(key, self.cfg.model_name, "failed", error=error, attempts=attempt,
                      source="batch", run_id=self.run_id)  # fmt: skip

    async def _api(self, call, *args: Any, **kw: Any) -> Any:
        """One Files/Batches call, retried on 429/5xx/connection errors; fatal answers stop."""
        o = self.client.openai
        for attempt in range(self.cfg.max_retries + 1):
            try:
                return await call(*args, **kw, extra_headers=self.client.headers)
            except o.APIStatusError as e:
                error = ApiError.from_sdk(e)
                kind = classify(error)
                if kind == FATAL:
                    raise TeacherFatal(
                        f"teacher: {self.cfg.endpoint_url} batch API: {error}"
                    ) from e
                if kind != RETRY or attempt == self.cfg.max_retries:
                    raise ProtegeError(
                        f"teacher: {self.cfg.endpoint_url} batch API: {error}"
                    ) from e
            except (o.APITimeoutError, o.APIConnectionError) as e:
                if attempt == self.cfg.max_retries:
                    raise ProtegeError(
                        f"teacher: {self.cfg.endpoint_url} batch API unreachable: {e}"
                    ) from e
            await asyncio.sleep(min(MAX_POLL_S, self.cfg.backoff_s * 2**attempt))
        raise AssertionError("unreachable")


async def batch_all(
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
    """`call_all`'s contract, through the Batch API: every request answered once, or failed.
    A store write that fails stops the job at once with `StoreWriteError`; answers already
    downloaded are saved beside the store (or in `rescue_dirs`), never dropped."""
    try:
        return await _batch_all(requests, cfg, client, store, budget, on_answer, pricing, rules,
                                run_id, params, extras, progress, rescue_dirs)  # fmt: skip
    except sqlite3.Error as e:  # recording or planning a batch: nothing of it was paid yet
        raise StoreWriteError(
            f"teacher store {store.path}: write failed ({e}); stopped at once: batches already "
            "submitted stay recorded and a rerun collects them; free some space and rerun"
        ) from e


async def _batch_all(requests, cfg, client, store, budget, on_answer, pricing, rules, run_id,
                     params, extras, progress, rescue_dirs) -> CallReport:  # fmt: skip
    run_id = run_id or new_run_id()
    params = cfg.params() if params is None else params
    if rules is None:
        learned = store.param_rules(cfg.endpoint_url, cfg.model_name)
        rules = ParamRules.for_config(cfg, learned)
    runner = BatchRunner(cfg, client, store, budget, pricing, rules, run_id, on_answer,
                         rescue_dirs)  # fmt: skip
    by_key = {r.key: r for r in requests}
    resumed = runner.open_batches(list(by_key))
    in_resumed = {k for row in resumed for k in runner.requests_of(row["id"])}
    fresh = [r for r in requests if r.key not in in_resumed]
    rows = resumed + [_row(store, bid) for bid in runner.plan(fresh, params, extras or {})]
    while rows:
        for row in rows:
            if not row["remote_id"]:
                await runner.start(row)
        progress(f"{len(rows)} batch(es) submitted")
        resend = await runner.wait(rows, progress)
        again = []
        for key, request, attempt in resend:
            req = by_key.get(key) or Request(key, request["messages"], 0, request["params"])
            again.append((req, attempt))
        rows = []
        for attempt in sorted({a for _, a in again}):
            reqs = [r for r, a in again if a == attempt]
            rows += [_row(store, bid) for bid in runner.plan(reqs, params, extras or {}, attempt)]
    release(store, run_id)
    return runner.report


def _row(store: TeacherStore, bid: str) -> dict[str, Any]:
    cols = ("id", "remote_id", "input_file_id", "status", "n", "attempt", "created_at")
    row = store.db.execute(f"SELECT {', '.join(cols)} FROM batches WHERE id=?", (bid,)).fetchone()
    return dict(zip(cols, row, strict=True))
