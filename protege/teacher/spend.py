"""A spending cap per teacher store that no sequence of runs can pass, and spend by day, model
and run.

`protege teacher cap set 20` writes the cap into the store itself. Every dollar a run may add
is claimed first: a run's claim (owner = its run id, renewed by its heartbeat) grows in slabs
as its budget reserves worst-case costs, and is granted only while

    spend of finished runs + claims of live runs and batches + money maybe billed  <=  cap

where a run's own stored spend is inside its claim (its budget never spends past it). A batch
waiting at the endpoint holds its own claim (its worst case) until it is collected, so a run
killed while its batch is out cannot free that money for others.

Money in flight is claimed apart (`inflight:<run id>`, at least the worst case of the requests
the run has sent and not yet stored): when a run is killed, or paused past its claim's expiry,
its grant goes but that claim stays, since the server may have billed those requests (a killed
run's stays for good; a run that finishes removes it). A run whose claim has expired (paused,
then resumed) claims again, against what others have claimed since, before it sends anything
more: it never spends within an old grant it no longer holds.
"""

from __future__ import annotations

import time
from typing import Any

from protege.teacher.leases import SEND_MARGIN_S, owner_alive
from protege.teacher.store import TeacherStore

CAP = "cap_usd"
SLAB_SHARE = 0.05
"""A claim grows by what is needed plus this share of the cap, so a run asks rarely."""
INFLIGHT = "inflight:"
INFLIGHT_SLACK = 1.25
"""The in-flight claim is raised to this many times what is in flight, so it is written rarely."""


def get_cap(store: TeacherStore) -> float | None:
    row = store.db.execute("SELECT value FROM settings WHERE name=?", (CAP,)).fetchone()
    return float(row[0]) if row else None


def set_cap(store: TeacherStore, dollars: float | None) -> None:
    """Set (None: remove) the store's spending cap, in dollars."""
    if dollars is None:
        store.db.execute("DELETE FROM settings WHERE name=?", (CAP,))
    else:
        store.db.execute(
            "INSERT INTO settings (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
            (CAP, repr(float(dollars))),
        )


def total_spent(store: TeacherStore) -> float:
    return float(store.db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM responses").fetchone()[0])


def committed(db, exclude: str | None = None) -> tuple[float, float]:
    """(spend of runs without a live claim, claims) — `exclude`'s own left out. Claims: live
    runs' (at least what they stored), unexpired batches', and the money in flight of runs
    whose claim is gone (killed, or paused past its expiry)."""
    now = time.time()
    rows = db.execute("SELECT owner, amount, expires_at FROM claims").fetchall()
    runs = {o for o, _, _ in rows if not o.startswith(("batch:", INFLIGHT))}
    live = {o for o, _, e in rows if o in runs and e > now and owner_alive(o)}
    mine = {exclude, INFLIGHT + exclude} if exclude else set()
    if exclude:  # the run's own batches: their worst case is inside the run's claim already
        mine |= {r[0] for r in db.execute(
            "SELECT 'batch:' || id FROM batches WHERE run_id=?", (exclude,))}  # fmt: skip
    by_run = dict(db.execute("SELECT run_id, COALESCE(SUM(cost_usd), 0) FROM responses "
                             "GROUP BY run_id").fetchall())  # fmt: skip
    claims = 0.0
    for owner, amount, expires in rows:
        if owner in mine:
            continue
        if owner.startswith("batch:"):
            claims += amount if expires > now else 0.0
        elif owner.startswith(INFLIGHT):
            claims += 0.0 if owner[len(INFLIGHT) :] in live else amount
        elif owner in live:
            claims += max(amount, by_run.get(owner, 0.0))
    spent = sum(cost for run, cost in by_run.items() if run not in live and run != exclude)
    return spent, claims


class StoreCap:
    """One run's claim on the store's cap (see the module docstring)."""

    def __init__(self, store: TeacherStore, owner: str, ttl_s: float):
        self.store, self.owner, self.ttl_s = store, owner, ttl_s
        self.granted = 0.0
        self.inflight = 0.0  # the in-flight claim written
        self.valid_until = 0.0  # when the grant ends, by our clock (renewed by `heartbeat`)
        self.cap = get_cap(store)
        self.refused: str | None = None

    def allow(self, needed: float, inflight: float = 0.0) -> bool:
        """Claim enough for this run to have spent and reserved `needed` dollars in all, of
        which `inflight` may be billed without an answer stored (sent, or about to be)."""
        if self.cap is None:
            return True
        fresh = time.time() + SEND_MARGIN_S < self.valid_until
        if fresh and needed <= self.granted + 1e-12 and inflight <= self.inflight + 1e-12:
            return True
        db = self.store.db
        db.execute("BEGIN IMMEDIATE")
        try:
            self.cap = get_cap(self.store)
            if self.cap is None:
                db.execute("COMMIT")
                return True
            now = time.time()
            row = db.execute(
                "SELECT expires_at FROM claims WHERE owner=?", (self.owner,)
            ).fetchone()
            if row is None or row[0] <= now:
                self.granted = 0.0  # lapsed (paused past it): others may have its room now
            if needed > self.granted + 1e-12:
                spent, others = committed(db, exclude=self.owner)
                room = self.cap - spent - others
                if needed > room + 1e-12:
                    self.refused = (
                        f"teacher: the store's spending cap ${self.cap:.2f} is reached (spent "
                        f"${spent:.4f}, ${others:.4f} claimed by runs and batches in flight); "
                        f"raise it with `protege teacher cap set DOLLARS`"
                    )
                    self._write(db, now)  # what it has in flight stays claimed
                    db.execute("COMMIT")
                    return False
                self.granted = min(room, needed + SLAB_SHARE * self.cap)
            if inflight > self.inflight + 1e-12:
                self.inflight = min(self.granted, inflight * INFLIGHT_SLACK)
            self._write(db, now)
            db.execute("COMMIT")
            return True
        except BaseException:
            self.store._rollback()
            raise

    def _write(self, db, now: float) -> None:
        upsert = ("INSERT INTO claims (owner, amount, expires_at) VALUES (?,?,?) "
                  "ON CONFLICT(owner) DO UPDATE SET amount=excluded.amount, "
                  "expires_at=excluded.expires_at")  # fmt: skip
        db.execute(upsert, (self.owner, self.granted, now + self.ttl_s))
        db.execute(upsert, (INFLIGHT + self.owner, max(self.inflight, 0.0), float("inf")))
        self.valid_until = now + self.ttl_s

    def heartbeat(self) -> None:
        """Renew the claim, unless it has lapsed (then the next `allow` claims again)."""
        now = time.time()
        cur = self.store.db.execute(
            "UPDATE claims SET expires_at=? WHERE owner=? AND expires_at > ?",
            (now + self.ttl_s, self.owner, now),
        )
        if cur.rowcount:
            self.valid_until = now + self.ttl_s

    def close(self, unsettled: float = 0.0) -> None:
        """The run is over: what it spent is in the store; its claim goes. `unsettled`: what it
        had sent and never heard back about (stopped by Ctrl-C): that stays claimed for good."""
        db = self.store.db
        db.execute("DELETE FROM claims WHERE owner=?", (self.owner,))
        if unsettled > 1e-12 and self.cap is not None:
            db.execute(
                "UPDATE claims SET amount=? WHERE owner=?", (unsettled, INFLIGHT + self.owner)
            )
        else:
            db.execute("DELETE FROM claims WHERE owner=?", (INFLIGHT + self.owner,))


def spend_by(store: TeacherStore, what: str) -> list[dict[str, Any]]:
    """Spend grouped by `day` (UTC), `model` or `run` (with what the run wrote)."""
    group = {
        "day": "date(r.created_at, 'unixepoch')",
        "model": "r.model",
        "run": "COALESCE(r.run_id, '(before runs were recorded)')",
    }[what]
    rows = store.db.execute(
        f"""SELECT {group} AS g, COUNT(*), SUM(r.status='ok'), COALESCE(SUM(r.cost_usd), 0),
                   MIN(r.created_at), MAX(runs.label)
            FROM responses r LEFT JOIN runs ON runs.id = r.run_id
            GROUP BY g ORDER BY MIN(r.created_at)"""
    ).fetchall()
    keys = (what, "calls", "ok", "cost_usd", "first", "label")
    out = [dict(zip(keys, row, strict=True)) for row in rows]
    for row in out:
        row.pop("first")
        if what != "run":
            row.pop("label")
    return out
