"""Batch mode (`teacher.mode: batch`): a job through the endpoint's Batch API at the batch price.

The requests without an answer are leased to a new batch (`batch:<id>`, until the 24 h window
is over) and recorded in the store with their request bodies, all in one transaction, before
anything is uploaded. Then: upload the JSONL (`custom_id` = store key), create the batch with
`metadata.protege_batch = <id>`, record its id, and poll with backoff until it ends; download
the output and error files and store every answer at the batch price, marking the batch
collected in the same transaction. Batches are split to the API's limits (requests, bytes).

One process drives a batch: its run holds the batch's own lease (`batch-driver:<id>`, renewed
by a heartbeat) from the transaction that records the batch, and checks it still does right
before it creates the batch remotely. Another process on the same job waits for a batch a live
process drives (it reads the answers from the store once collected) and takes it over only
once that lease has expired. A killed process loses nothing and never submits twice: the rerun
finds the job's batches in the store and resumes each where it stopped: polls a created one, or
(killed between create and record) finds it by its metadata in the endpoint's batch list before
creating anything, or re-uploads from the stored request bodies. A batch is polled at the
endpoint it was created at (its stored base URL, with this job's key); one it does not know (404)
releases its rows and claim, and they go out again in a new batch. Each output line is read on
its own: one that is not what the API promises (not JSON, no `custom_id`, a 200 body without
`choices`) is a failed try of that request, never the whole batch. Requests that expired, were
cancelled or met a server error are sent again in a new batch, up to `max_retries` times; a
request the API refused (400) is recorded as failed; a 400 about a parameter teaches a rule
(`params.py`).
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

from protege.teacher.batch_lines import answer_of, chunks, request_line, result_of
from protege.teacher.batch_remote import MAX_POLL_S, BatchAPI, BatchGone
from protege.teacher.batch_shared import DONE, DRIVER, drive, elsewhere, lost, take_over
from protege.teacher.batch_shared import batch_row as _row
from protege.teacher.chat import ChatClient
from protege.teacher.client import CallReport, Request, rescue_unwritten
from protege.teacher.config import TeacherConfig
from protege.teacher.cost import Budget
from protege.teacher.leases import hold, lease, new_run_id, release, renew
from protege.teacher.params import ParamRules
from protege.teacher.prices import Pricing
from protege.teacher.store import Answer, StoreWriteError, TeacherStore

WINDOW_S = 25 * 3600  # a batch's leases: its 24 h completion window, and an hour to collect
TERMINAL = ("completed", "failed", "expired", "cancelled")


class _Collected(Exception):
    """Another process collected the batch first: nothing of this collection is stored."""


class BatchRunner:
    """One job's batches: submit, resume, poll, collect (see the module docstring)."""

    def __init__(self, cfg: TeacherConfig, client: ChatClient, store: TeacherStore,
                 budget: Budget, pricing: Pricing | None, rules: ParamRules, run_id: str,
                 on_answer: Callable[[str, Answer | None], None],
                 rescue_dirs: list[Path] = ()):  # fmt: skip
        self.cfg, self.client, self.store, self.budget = cfg, client, store, budget
        self.rescue_dirs = list(rescue_dirs)
        self.pricing, self.rules, self.run_id, self.on_answer = pricing, rules, run_id, on_answer
        self.report = CallReport()
        self.reserved: dict[str, float] = {}  # batch id -> worst cost reserved in this run
        self.apis: dict[str, BatchAPI] = {client.base_url: BatchAPI(cfg, client)}
        self.watched: set[str] = set()  # batches driven by another live process
        self.tracked: set[str] = set()  # batches this run polls or waits for

    def api(self, row: dict[str, Any]) -> BatchAPI:
        """The Batch API of the endpoint the batch was created at (a rerun may name another)."""
        url = row.get("endpoint") or self.client.base_url
        if url == "local" or url == self.cfg.endpoint_url:
            url = self.client.base_url
        if url not in self.apis:
            other = ChatClient(self.cfg, url, self.client.api_key)
            self.apis[url] = BatchAPI(self.cfg, other)
        return self.apis[url]

    async def close(self) -> None:
        for url, api in self.apis.items():
            if url != self.client.base_url:
                await api.client.close()

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
        for bid in sorted(ids):
            row = _row(self.store, bid)
            if row["status"] not in DONE:
                rows.append(row)
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
            lines.append((req.key, request_line(req.key, request)))
        worst = {req.key: self._worst(req) for req in requests}
        planned = []
        for chunk in chunks(lines, self.cfg.batch_max_requests, self.cfg.batch_max_bytes):
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
                    (bid, self.client.base_url, self.cfg.model_name, self.run_id, "new",
                     len(mine), attempt, now, now),
                )  # fmt: skip
                db.execute("INSERT OR REPLACE INTO leases (key, owner, expires_at) VALUES "
                           "(?,?,?)", (DRIVER + bid, self.run_id, now + self.cfg.lease_s))  # fmt: skip
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
            for owner in got.owners.values():  # in another process's batch: waited for
                if owner.startswith("batch:"):
                    self.watched.add(owner[len("batch:") :])
                else:  # sent online by another process: left to it
                    self.report.skipped += 1
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
        """Upload and create a recorded batch that has no remote id yet (or find it). Right
        before creating, the run checks it still drives the batch: paused past its lease, it
        may have lost it to a process that has created the batch since (then it only waits)."""
        bid = row["id"]
        api = self.api(row)
        found = await api.find(bid, row["created_at"])
        if found is None:
            if not row["input_file_id"]:
                data = b"".join(request_line(k, r) for k, r in self.requests_of(bid).items())
                row["input_file_id"] = await api.upload(f"protege-{bid}.jsonl", data)
                self._update(bid, input_file_id=row["input_file_id"])
            if not hold(self.store, DRIVER + bid, self.run_id, self.cfg.lease_s):
                row["mine"] = False
                return
            found = await api.create(row["input_file_id"], bid)
        row.update(remote_id=found.id, status=found.status)
        self._update(bid, remote_id=found.id, status=found.status)

    # -- waiting and collecting --------------------------------------------------------------
    async def wait(self, rows: list[dict[str, Any]], progress: Callable[[str], None]) -> list:
        """Poll every batch until it ends, collecting each as it does; the requests to resend."""
        resend: list[tuple[str, dict[str, Any], int]] = []
        delay = self.cfg.batch_poll_s
        open_rows = list(rows)
        self.tracked |= {r["id"] for r in rows}
        while open_rows:
            for row in list(open_rows):
                if not row.get("mine") and not await take_over(self, row):
                    if _row(self.store, row["id"])["status"] in DONE:  # its driver is done
                        open_rows.remove(row)
                        open_rows += elsewhere(self, row)
                    continue
                if not row["remote_id"]:
                    continue  # lost the batch right before creating it: watched from now on
                try:
                    remote = await self.api(row).retrieve(row["remote_id"])
                except BatchGone as e:
                    resend += lost(self, row, str(e))
                    open_rows.remove(row)
                    continue
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
                for line in (await self.api(row).content(fid)).splitlines():
                    item = result_of(line)  # a line not as the API promises: no result for it
                    if item is not None and item["custom_id"] in requests:
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
            answer, again = answer_of(self, key, item, remote.status, failed_batch, row["attempt"])
            if answer is not None:
                answers.append((answer, request))
            if again:
                resend.append((key, request, row["attempt"] + 1))
        owner = f"batch:{bid}"

        def finish(db: sqlite3.Connection) -> None:
            cur = db.execute("UPDATE batches SET status='collected', updated_at=? "
                             "WHERE id=? AND status != 'collected'", (time.time(), bid))  # fmt: skip
            if not cur.rowcount:
                raise _Collected  # rolls back the answers stored above: stored already
            db.execute("DELETE FROM leases WHERE owner=? OR key=?", (owner, DRIVER + bid))
            db.execute("DELETE FROM claims WHERE owner=?", (owner,))

        try:
            self.store.put_many(answers, owner=owner, extra=finish)
        except _Collected:  # counted as answered elsewhere, never collected twice
            elsewhere(self, row)
            return []
        except sqlite3.Error as e:  # paid answers the store refused: keep them, stop at once
            where = rescue_unwritten(self.store, answers, self.rescue_dirs)
            raise StoreWriteError(
                f"teacher store {self.store.path}: write failed ({e}) while collecting batch "
                f"{bid}; stopped at once: {where}; the batch stays recorded, so a rerun "
                "collects it again and submits nothing twice; free some space and rerun"
            ) from e
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
    store.import_rescued(rescue_dirs)  # answers a full disk left elsewhere: never paid twice
    params = cfg.params() if params is None else params
    if rules is None:
        learned = store.param_rules(cfg.endpoint_url, cfg.model_name)
        rules = ParamRules.for_config(cfg, learned)
    runner = BatchRunner(cfg, client, store, budget, pricing, rules, run_id, on_answer,
                         rescue_dirs)  # fmt: skip
    by_key = {r.key: r for r in requests}

    async def heartbeat() -> None:  # the leases of the batches this run drives, and its claim
        while True:
            await asyncio.sleep(cfg.lease_s / 3)
            renew(store, run_id, cfg.lease_s)
            if budget.cap is not None:
                budget.cap.heartbeat()

    def planned(reqs: list[Request], attempt: int = 1) -> list[dict[str, Any]]:
        rows = [{**_row(store, bid), "mine": True}
                for bid in runner.plan(reqs, params, extras or {}, attempt)]  # fmt: skip
        for bid in sorted(runner.watched - runner.tracked - {r["id"] for r in rows}):
            rows.append({**_row(store, bid), "mine": False})
        runner.watched.clear()
        return rows

    beat = asyncio.ensure_future(heartbeat())
    try:
        resumed = runner.open_batches(list(by_key))
        for row in resumed:
            drive(runner, row)
        in_resumed = {k for row in resumed for k in runner.requests_of(row["id"])}
        rows = resumed + planned([r for r in requests if r.key not in in_resumed])
        while rows:
            for row in rows:
                if row["mine"] and not row["remote_id"]:
                    await runner.start(row)
            progress(f"{len(rows)} batch(es) submitted")
            resend = await runner.wait(rows, progress)
            again = []
            for key, request, attempt in resend:
                req = by_key.get(key) or Request(key, request["messages"], 0, request["params"])
                again.append((req, attempt))
            rows = []
            for attempt in sorted({a for _, a in again}):
                rows += planned([r for r, a in again if a == attempt], attempt)
    finally:
        beat.cancel()
        await runner.close()
    release(store, run_id)
    return runner.report
