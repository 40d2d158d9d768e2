"""A spending cap per teacher store that no sequence of runs can pass, and spend by day, model
and run.

`protege teacher cap set 20` writes the cap into the store itself. Every dollar a run may add
is claimed first: a run's claim (owner = its run id, renewed with its leases) grows in slabs
as its budget reserves worst-case costs, and is granted only while

    spend of finished runs + claims of live runs and batches  <=  cap

where a run's own stored spend is inside its claim (its budget never spends past it). A batch
waiting at the endpoint holds its own claim (its worst case) until it is collected, so a run
killed while its batch is out cannot free that money for others. A dead run's claim expires
with its leases; what it stored still counts.
"""

from __future__ import annotations

import time
from typing import Any

from protege.teacher.leases import owner_alive
from protege.teacher.store import TeacherStore

CAP = "cap_usd"
SLAB_SHARE = 0.05
"""A claim grows by what is needed plus this share of the cap, so a run asks rarely."""


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
    """(spend of runs without a live claim, live claims) — `exclude`'s claim left out."""
    now = time.time()
    claims = {
        owner: amount
        for owner, amount, expires in db.execute("SELECT owner, amount, expires_at FROM claims")
        if expires > now and (owner.startswith("batch:") or owner_alive(owner))
    }
    mine = {exclude} if exclude else set()
    if exclude:  # the run's own batches: their worst case is inside the run's claim already
        mine |= {r[0] for r in db.execute(
            "SELECT 'batch:' || id FROM batches WHERE run_id=?", (exclude,))}  # fmt: skip
    live = set(claims) | mine
    spent = 0.0
    for run_id, cost in db.execute(
        "SELECT run_id, COALESCE(SUM(cost_usd), 0) FROM responses GROUP BY run_id"
    ):
        if run_id not in live:
            spent += cost
    return spent, sum(a for o, a in claims.items() if o not in mine)


class StoreCap:
    """One run's claim on the store's cap (see the module docstring)."""

    def __init__(self, store: TeacherStore, owner: str, ttl_s: float):
        self.store, self.owner, self.ttl_s = store, owner, ttl_s
        self.granted = 0.0
        self.cap = get_cap(store)
        self.refused: str | None = None

    def allow(self, needed: float) -> bool:
        """Claim enough for this run to have spent and reserved `needed` dollars in all."""
        if self.cap is None or needed <= self.granted + 1e-12:
            return True
        db = self.store.db
        db.execute("BEGIN IMMEDIATE")
        try:
            self.cap = get_cap(self.store)
            if self.cap is None:
                db.execute("COMMIT")
                return True
            spent, others = committed(db, exclude=self.owner)
            room = self.cap - spent - others
            if needed > room + 1e-12:
                self.refused = (
                    f"teacher: the store's spending cap ${self.cap:.2f} is reached (spent "
                    f"${spent:.4f}, ${others:.4f} claimed by runs and batches in flight); raise "
                    f"it with `protege teacher cap set DOLLARS`"
                )
                db.execute("COMMIT")
                return False
            self.granted = min(room, needed + SLAB_SHARE * self.cap)
            db.execute(
                "INSERT INTO claims (owner, amount, expires_at) VALUES (?,?,?) "
                "ON CONFLICT(owner) DO UPDATE SET amount=excluded.amount, "
                "expires_at=excluded.expires_at",
                (self.owner, self.granted, time.time() + self.ttl_s),
            )
            db.execute("COMMIT")
            return True
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """The run is over: what it spent is in the store; its claim goes."""
        self.store.db.execute("DELETE FROM claims WHERE owner=?", (self.owner,))


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
