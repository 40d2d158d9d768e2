"""The teacher store: every request and answer in one SQLite database.

Key = hash of the canonical request (model, messages, sampling parameters) and of the endpoint
that answers it (`endpoint_ids.py`): the same request to the same endpoint is answered once,
whoever asks; other endpoints' answers are used only when asked for. WAL mode and one commit
per answer: a SIGKILL at any moment loses at most the answers still in flight and never
corrupts the file. The schema changes only through the ordered `MIGRATIONS` list
(`migrations.py`); `PRAGMA user_version` says how many have run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from protege.errors import ProtegeError
from protege.paths import teacher_db_path
from protege.teacher import rescue
from protege.teacher.answer import COLUMNS, Answer
from protege.teacher.endpoint_ids import endpoint_key
from protege.teacher.migrations import MIGRATIONS
from protege.teacher.store_file import StoreOpenError, cannot_open, create_private, refuse_empty


def request_key(
    model: str,
    messages: list[dict[str, str]],
    params: dict[str, Any],
    endpoint: str | None = None,
) -> str:
    """The store key of an answer: sha256 of the request's canonical JSON (its *prompt key*),
    then, with `endpoint`, sha256 of the endpoint id and that (`endpoint_ids.endpoint_key`).
    `endpoint` is `endpoint_ids.endpoint_id(base_url, api_key)` of the server that answers (the
    base URL; for api.openai.com also the account): whatever stores answers passes it, and the
    same id as `"endpoint"` in the request it gives `TeacherStore.put_many`. Without it: the
    prompt key (the `prompt_key` column), the request to any endpoint, as keyed before.
    """
    blob = json.dumps(
        {"model": model, "messages": messages, "params": params},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    key = hashlib.sha256(blob.encode()).hexdigest()
    return endpoint_key(key, endpoint) if endpoint else key


class StoreWriteError(ProtegeError):
    """The store refused a write (disk full, read-only): sending stopped, answers were kept."""


class TeacherStore:
    """A connection to the store. Use from one thread (the event loop's).

    The store holds prompts and paid answers: its directory is created 700 and its files
    (database, WAL, shared memory) are kept 600. Answers a failed write left in a file for it
    (`rescue.py`: beside it, in the working or the temp directory) are imported when it opens.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else teacher_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not create_private(self.path):
            refuse_empty(self.path)
        try:
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._wal()
            # NORMAL in WAL mode: a commit survives a killed process (the OS holds it); only a
            # power cut can drop the last commits, and it never corrupts the file.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.migrate()
        except sqlite3.Error as e:  # not a database, read-only, locked for good
            raise StoreOpenError(cannot_open(self.path, e)) from None
        self._make_private()
        self.import_rescued()

    def _wal(self, timeout_s: float = 30.0) -> None:
        """WAL mode. Two processes switching a new file at once can deadlock on the lock
        upgrade, and SQLite then answers one of them "database is locked" at once, without its
        busy timeout: that one waits a moment and tries again."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.01, 0.1))

    def _make_private(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            try:
                os.chmod(str(self.path) + suffix, 0o600)
            except OSError:  # not there, or not ours
                pass

    def import_rescued(self, extra_dirs: Iterable[str | Path] = ()) -> int:
        """Import the files of answers a failed write left for this store (beside it, in
        `extra_dirs`, the working or the temp directory: `rescue.py`); returns the count. A file
        is removed once its answers are committed; if the store still refuses, it stays."""
        n = 0
        for path in rescue.pending(self.path, [Path(d) for d in extra_dirs]):
            try:
                items = rescue.load(path)
                self.put_many(items)
            except (sqlite3.Error, OSError, ValueError, KeyError, TypeError):
                continue
            try:
                path.unlink(missing_ok=True)
            except OSError:  # imported again next time: a paid answer is never stored twice
                pass
            n += len(items)
        return n

    def migrate(self) -> None:
        """Run the migrations not yet run, one transaction each. The version is read inside
        the transaction: two processes opening a new store together never run one twice."""
        while True:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                version = self.db.execute("PRAGMA user_version").fetchone()[0]
                if version >= len(MIGRATIONS):
                    self.db.execute("COMMIT")
                    return
                MIGRATIONS[version](self.db)
                self.db.execute(f"PRAGMA user_version={version + 1}")
                self.db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> TeacherStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_many(self, keys: Iterable[str]) -> dict[str, Answer]:
        """Stored rows (ok or failed) for `keys`, looked up in chunks."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, Answer] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT {COLUMNS} FROM responses WHERE key IN ({marks})"
            for row in self.db.execute(sql, chunk):
                found[row[0]] = Answer(*row)
        return found

    def get(self, key: str) -> Answer | None:
        return self.get_many([key]).get(key)

    def put(self, answer: Answer, request: dict[str, Any]) -> None:
        """Record one answer and commit at once. A failure never overwrites an ok answer."""
        self.put_many([(answer, request)])

    def put_many(
        self, items: list[tuple[Answer, dict[str, Any]]], owner: str | None = None, extra=None
    ) -> None:
        """Record answers in one transaction (one commit for everything that arrived together),
        ending `owner`'s leases on them; `extra(db)` runs inside the same transaction.
        Requests are {model, messages, params, endpoint (the id the key was made with)...}."""
        now = time.time()
        for a, req in items:
            a.endpoint = a.endpoint or req.get("endpoint")
        rows = [
            (
                a.key, a.model, json.dumps(req, ensure_ascii=False), a.status, a.text,
                a.finish_reason, a.input_tokens, a.output_tokens, a.cost_usd, a.latency_s,
                a.system_fingerprint, a.error, a.attempts, a.created_at or now, now, a.source,
                a.cached_tokens, a.reasoning_tokens, a.run_id, a.logprobs,
                a.endpoint,
                request_key(req["model"], req["messages"], req.get("params") or {})
                if "messages" in req else a.key,
            )
            for a, req in items
        ]  # fmt: skip
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany(
                """INSERT INTO responses (key, model, request, status, text, finish_reason,
                    input_tokens, output_tokens, cost_usd, latency_s, system_fingerprint, error,
                    attempts, created_at, updated_at, source, cached_tokens, reasoning_tokens,
                    run_id, logprobs, endpoint, prompt_key)
                VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
                ON CONFLICT(key) DO UPDATE SET
                    status=excluded.status, text=excluded.text,
                    finish_reason=excluded.finish_reason, input_tokens=excluded.input_tokens,
                    output_tokens=excluded.output_tokens,
                    cost_usd=responses.cost_usd + excluded.cost_usd,
                    latency_s=excluded.latency_s, system_fingerprint=excluded.system_fingerprint,
                    error=excluded.error, attempts=responses.attempts + excluded.attempts,
                    created_at=excluded.created_at, updated_at=excluded.updated_at,
                    source=excluded.source, cached_tokens=excluded.cached_tokens,
                    reasoning_tokens=excluded.reasoning_tokens, run_id=excluded.run_id,
                    logprobs=excluded.logprobs
                WHERE responses.status != 'ok'""",
                rows,
            )
            if owner is not None:
                self.db.executemany(
                    "DELETE FROM leases WHERE key=? AND owner=?", [(a.key, owner) for a, _ in items]
                )
            if extra is not None:
                extra(self.db)
            self.db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        # SQLite has already rolled back after some errors (SQLITE_FULL, SQLITE_IOERR): a second
        # ROLLBACK would raise "no transaction is active" and hide the real error.
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def param_rules(self, endpoint: str, model: str) -> dict[str, str]:
        """What `endpoint` was learned to accept for `model`: {canonical param: action}."""
        rows = self.db.execute(
            "SELECT param, action FROM param_rules WHERE endpoint=? AND model=?", (endpoint, model)
        )
        return dict(rows.fetchall())

    def put_param_rule(
        self, endpoint: str, model: str, param: str, action: str, reason: str = ""
    ) -> None:
        """Remember a parameter rule learned from an endpoint's 400 (committed at once)."""
        self.db.execute(
            """INSERT INTO param_rules (endpoint, model, param, action, reason, created_at)
            VALUES (?,?,?,?,?,?) ON CONFLICT(endpoint, model, param) DO UPDATE SET
            action=excluded.action, reason=excluded.reason, created_at=excluded.created_at""",
            (endpoint, model, param, action, reason, time.time()),
        )

    def server_limits(
        self, endpoint: str, model: str, max_age_s: float
    ) -> tuple[float | None, float | None] | None:
        """(requests, tokens) per minute `endpoint` stated for `model` within `max_age_s`
        (None in the pair: it states no such limit); None when not known that recently."""
        row = self.db.execute(
            "SELECT limit_requests, limit_tokens, learned_at FROM server_limits "
            "WHERE endpoint=? AND model=?",
            (endpoint, model),
        ).fetchone()
        if row is None or time.time() - row[2] > max_age_s:
            return None
        return row[0], row[1]

    def put_server_limits(
        self, endpoint: str, model: str, requests: float | None, tokens: float | None
    ) -> None:
        """Remember the limits an answer stated (committed at once)."""
        self.db.execute(
            """INSERT INTO server_limits (endpoint, model, limit_requests, limit_tokens,
            learned_at) VALUES (?,?,?,?,?) ON CONFLICT(endpoint, model) DO UPDATE SET
            limit_requests=excluded.limit_requests, limit_tokens=excluded.limit_tokens,
            learned_at=excluded.learned_at""",
            (endpoint, model, requests, tokens, time.time()),
        )

    def stats(self) -> list[dict[str, Any]]:
        """Per model: calls, ok, failed, tokens, cost and mean latency of live answers."""
        rows = self.db.execute(
            """SELECT model, COUNT(*), SUM(status='ok'), SUM(status='failed'),
                      COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),
                      COALESCE(SUM(cost_usd), 0), AVG(latency_s), SUM(source='import'),
                      COALESCE(SUM(cached_tokens), 0), COALESCE(SUM(reasoning_tokens), 0)
               FROM responses GROUP BY model ORDER BY model"""
        ).fetchall()
        keys = (
            "model", "calls", "ok", "failed", "input_tokens", "output_tokens", "cost_usd",
            "mean_latency_s", "imported", "cached_tokens", "reasoning_tokens",
        )  # fmt: skip
        return [dict(zip(keys, row, strict=True)) for row in rows]
