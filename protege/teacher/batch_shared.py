"""Batches shared between processes (`batch.py`): which run drives a batch, waiting for a
batch another live process drives, taking over one whose driver's lease lapsed (killed, or
paused past it), and a batch the endpoint no longer knows (404), whose rows go out again.

The driver holds `batch-driver:<id>` in the leases table, from the transaction that records
the batch, renewed by its heartbeat; a run that loses it (paused past it) stops driving the
batch and only waits for it.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from protege.teacher.batch_lines import failed_answer
from protege.teacher.leases import lease

DONE = ("collected", "lost")  # in the store: nothing more to do for the batch
DRIVER = "batch-driver:"  # the lease of the run that drives a batch (creates, polls, collects)
COLS = ("id", "remote_id", "input_file_id", "status", "n", "attempt", "created_at", "endpoint")


def batch_row(store: Any, bid: str) -> dict[str, Any]:
    """The store's record of batch `bid`."""
    row = store.db.execute(f"SELECT {', '.join(COLS)} FROM batches WHERE id=?", (bid,)).fetchone()
    return dict(zip(COLS, row, strict=True))


def drive(runner: Any, row: dict[str, Any]) -> bool:
    """Whether this run drives the batch (it holds its lease, or takes it: a dead or
    paused-past-expiry driver's); False while another live process does."""
    got = lease(runner.store, [DRIVER + row["id"]], runner.run_id, runner.cfg.lease_s)
    row["mine"] = bool(got.mine)
    if row["mine"]:
        row.update(batch_row(runner.store, row["id"]))  # what the last driver recorded
    return row["mine"]


async def take_over(runner: Any, row: dict[str, Any]) -> bool:
    """A batch another process drove: this run drives it from now on if that one's lease
    has lapsed (killed, or paused past it)."""
    if batch_row(runner.store, row["id"])["status"] in DONE or not drive(runner, row):
        return False
    if not row["remote_id"]:
        await runner.start(row)
    return bool(row.get("mine"))


def elsewhere(runner: Any, row: dict[str, Any]) -> list[dict[str, Any]]:
    """A batch another process collected: its answers count as answered elsewhere; the
    batches holding its requests sent again are waited for too (returned)."""
    keys = list(runner.requests_of(row["id"]))
    stored = runner.store.get_many(keys)
    rest = []
    for key in keys:
        answer = stored.get(key)
        if answer is not None and answer.status == "ok":
            runner.report.elsewhere += 1
            runner.on_answer("elsewhere", None)
        else:
            rest.append(key)
    more = [r for r in runner.open_batches(rest) if r["id"] not in runner.tracked]
    again = {k for r in more for k in runner.requests_of(r["id"])}
    for key in rest:
        if key not in again:
            answer = stored.get(key)
            kind = "failed" if answer is not None else "skipped"
            runner.report.failed += kind == "failed"
            runner.report.skipped += kind == "skipped"
            runner.on_answer(kind, answer)
    for r in more:
        runner.tracked.add(r["id"])
        r["mine"] = False
    return more


def lost(runner: Any, row: dict[str, Any], why: str) -> list:
    """The endpoint does not know the batch (404): its rows and claim are released at once
    and its requests sent again (recorded failed once out of tries)."""
    bid, owner = row["id"], f"batch:{row['id']}"
    requests = runner.requests_of(bid)
    last = row["attempt"] > runner.cfg.max_retries
    failed = [
        (failed_answer(runner, k, f"batch: {why}", row["attempt"]), r) for k, r in requests.items()
    ]

    def release_all(db: sqlite3.Connection) -> None:
        db.execute("UPDATE batches SET status='lost', updated_at=? WHERE id=?",
                   (time.time(), bid))  # fmt: skip
        db.execute("DELETE FROM leases WHERE owner=? OR key=?", (owner, DRIVER + bid))
        db.execute("DELETE FROM claims WHERE owner=?", (owner,))

    runner.store.put_many(failed if last else [], owner=owner, extra=release_all)
    runner.budget.settle(runner.reserved.pop(bid, 0.0), 0.0)
    for answer, _ in failed if last else []:
        runner.report.failed += 1
        runner.report.errors[answer.key] = answer.error or ""
        runner.on_answer("failed", answer)
    return [] if last else [(k, r, row["attempt"] + 1) for k, r in requests.items()]
