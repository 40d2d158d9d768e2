"""Never paying twice across processes: a request in flight is leased in the store.

Before a request is sent, its key is leased to the sender (a run id, or `batch:<id>` for a
request waiting in a Batch API job) until `expires_at`. Another process that wants the same key
sees the lease and takes other work first, then waits for the answer or for the lease to
expire. A live run renews its leases (a heartbeat every third of the lease time); a killed one
stops renewing, so its leases expire and its work is taken over. Storing an answer ends its
lease in the same transaction (`TeacherStore.put_many(owner=...)`). A process paused past its
leases' expiry (SIGSTOP) may find them taken when it resumes: a sender checks that it still
holds a lease before each send (`LeasedQueue.still_mine`), and a lost one is only waited for.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from protege.teacher.store import TeacherStore

SEND_MARGIN_S = 2.0
"""A lease that ends sooner than this (by our clock) is checked in the store before a send:
clocks of other hosts on a shared store, and the moment the request takes to leave."""


def new_run_id() -> str:
    """A run's owner id: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def owner_alive(owner: str) -> bool:
    """False only when `owner` is a run on this host whose process is gone (a killed run's
    leases are taken over at once, not after they expire); True when it cannot tell."""
    parts = owner.rsplit("-", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return True
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def start_run(store: TeacherStore, run_id: str, label: str) -> None:
    """Record a run (what it wrote), so spend can be shown per run."""
    store.db.execute(
        "INSERT OR IGNORE INTO runs (id, label, pid, started_at) VALUES (?,?,?,?)",
        (run_id, label, os.getpid(), time.time()),
    )


@dataclass
class Leased:
    """The outcome of asking for leases on some keys."""

    mine: list[str] = field(default_factory=list)
    """Now leased to the asker: send these."""
    done: list[str] = field(default_factory=list)
    """Already answered (by another process, meanwhile): nothing to send."""
    busy: dict[str, float] = field(default_factory=dict)
    """Leased by another live owner: key -> when that lease expires."""
    owners: dict[str, str] = field(default_factory=dict)
    """Who holds each busy key."""


def lease(store: TeacherStore, keys: Iterable[str], owner: str, ttl_s: float, then=None) -> Leased:
    """Lease every key of `keys` that has no good answer and no live lease, in one transaction;
    `then(db, mine)` runs inside it (a batch records itself with the keys it got)."""
    keys = list(dict.fromkeys(keys))
    out = Leased()
    now = time.time()
    alive: dict[str, bool] = {}
    db = store.db
    db.execute("BEGIN IMMEDIATE")
    try:
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            ok = {
                row[0]
                for row in db.execute(
                    f"SELECT key FROM responses WHERE status='ok' AND key IN ({marks})", chunk
                )
            }
            held = {
                row[0]: (row[1], row[2])
                for row in db.execute(
                    f"SELECT key, owner, expires_at FROM leases WHERE key IN ({marks})", chunk
                )
            }
            take = []
            for key in chunk:
                if key in ok:
                    out.done.append(key)
                elif (
                    key in held
                    and held[key][0] != owner
                    and held[key][1] > now
                    and alive.setdefault(held[key][0], owner_alive(held[key][0]))
                ):
                    out.busy[key] = held[key][1]
                    out.owners[key] = held[key][0]
                else:
                    take.append((key, owner, now + ttl_s))
                    out.mine.append(key)
            db.executemany(
                "INSERT INTO leases (key, owner, expires_at) VALUES (?,?,?) ON CONFLICT(key) "
                "DO UPDATE SET owner=excluded.owner, expires_at=excluded.expires_at",
                take,
            )
        if then is not None:
            then(db, out.mine)
        db.execute("COMMIT")
    except BaseException:
        store._rollback()  # not when SQLite has already rolled back (a full disk)
        raise
    return out


def renew(store: TeacherStore, owner: str, ttl_s: float) -> list[str]:
    """Push back the expiry of every lease `owner` still holds: the heartbeat (the run's
    spending claim has its own: `spend.StoreCap.heartbeat`). Returns the keys renewed; a key
    leased before and not among them was lost."""
    until = time.time() + ttl_s
    db = store.db
    db.execute("BEGIN IMMEDIATE")
    try:
        rows = db.execute(
            "UPDATE leases SET expires_at=? WHERE owner=? RETURNING key", (until, owner)
        ).fetchall()
        db.execute("COMMIT")
    except BaseException:
        store._rollback()  # not when SQLite has already rolled back (a full disk)
        raise
    return [r[0] for r in rows]


def hold(store: TeacherStore, key: str, owner: str, ttl_s: float) -> bool:
    """Whether `owner` still holds `key`, its lease renewed for `ttl_s` if so (one statement):
    checked before sending what was leased a while ago. A process paused past its leases'
    expiry (SIGSTOP, a suspended laptop) may have lost them to another that sent them since."""
    cur = store.db.execute(
        "UPDATE leases SET expires_at=? WHERE key=? AND owner=?", (time.time() + ttl_s, key, owner)
    )
    return cur.rowcount == 1


def release(store: TeacherStore, owner: str, keys: Iterable[str] | None = None) -> None:
    """End `owner`'s leases on `keys` (all of them when None)."""
    if keys is None:
        store.db.execute("DELETE FROM leases WHERE owner=?", (owner,))
    else:
        store.db.executemany(
            "DELETE FROM leases WHERE key=? AND owner=?", [(k, owner) for k in keys]
        )


class LeasedQueue:
    """The requests of one job, handed out only once leased to `owner`.

    `next()` leases the next chunk in one transaction; keys answered meanwhile are counted as
    `done`, keys another live process holds are put aside and asked for again once nothing
    else is left (every `poll_s`, until answered or their lease expires). None: no work left.
    """

    def __init__(self, store: TeacherStore, items: list, owner: str, ttl_s: float,
                 chunk: int = 64, poll_s: float = 0.5, on_wait=lambda n: None):  # fmt: skip
        self.store, self.owner, self.ttl_s = store, owner, ttl_s
        self.todo = list(reversed(items))
        self.ready: list = []
        self.waiting: dict[str, object] = {}
        self.chunk, self.poll_s, self.on_wait = chunk, poll_s, on_wait
        self.done: list[str] = []
        self.in_batch: list = []  # held by a Batch API job: `teacher.mode: batch` collects them
        self.closed = False
        self._wait_lock = None
        self.expiry: dict[str, float] = {}  # key -> when this queue's lease on it ends

    def still_mine(self, key: str) -> bool:
        """Whether the lease on `key` is still this queue's, checked in the store unless it
        surely is (unexpired by our own clock, with a margin): asked before each send."""
        if time.time() + SEND_MARGIN_S < self.expiry.get(key, 0.0):
            return True
        now = time.time()
        if hold(self.store, key, self.owner, self.ttl_s):
            self.expiry[key] = now + self.ttl_s
            return True
        self.expiry.pop(key, None)
        return False

    def lost(self, item) -> None:
        """`item`'s lease went to another process: wait for its answer like any busy key."""
        self.waiting[item.key] = item

    def renew(self) -> None:
        """The heartbeat: renew every lease still held (lost ones are not brought back)."""
        now = time.time()
        for key in renew(self.store, self.owner, self.ttl_s):
            self.expiry[key] = now + self.ttl_s

    def left(self) -> int:
        """Items not handed out (budget, a fatal answer, held by a batch)."""
        return len(self.todo) + len(self.ready) + len(self.waiting) + len(self.in_batch)

    def put_back(self, item) -> None:
        """An item leased but not sent (budget): released, counted as left over."""
        release(self.store, self.owner, [item.key])
        self.todo.append(item)

    def close(self) -> None:
        """Send nothing more."""
        self.closed = True

    def _take(self, items: list) -> None:
        by_key = {item.key: item for item in items}
        now = time.time()
        got = lease(self.store, by_key, self.owner, self.ttl_s)
        self.expiry.update((k, now + self.ttl_s) for k in got.mine)
        self.ready.extend(by_key[k] for k in reversed(got.mine))
        self.done.extend(got.done)
        for key in got.done:
            self.waiting.pop(key, None)
        for key in got.busy:
            if got.owners[key].startswith("batch:"):
                self.waiting.pop(key, None)
                self.in_batch.append(by_key[key])
            else:
                self.waiting[key] = by_key[key]
        for key in got.mine:
            self.waiting.pop(key, None)

    async def next(self):
        import asyncio

        if self._wait_lock is None:
            self._wait_lock = asyncio.Lock()
        while not self.closed:
            if self.ready:
                return self.ready.pop()
            if self.todo:
                n = min(self.chunk, len(self.todo))
                self._take([self.todo.pop() for _ in range(n)])
                continue
            if not self.waiting:
                return None
            async with self._wait_lock:  # one worker polls for everyone
                if self.waiting and not self.ready and not self.todo:
                    self.on_wait(len(self.waiting))
                    await asyncio.sleep(self.poll_s)
                    self._take(list(self.waiting.values()))
        return None
