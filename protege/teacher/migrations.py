"""The teacher store's schema: the ordered list of its migrations.

`TeacherStore.migrate` runs those not yet run, one transaction each; `PRAGMA user_version` says
how many have run. A change to the schema is a new function at the end of `MIGRATIONS`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from protege.teacher.config import LOCAL_MODEL
from protege.teacher.endpoint_ids import IMPORTED, endpoint_key, key_digest, normalise_url


def _m001_responses(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE responses (
            key TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            request TEXT NOT NULL,
            status TEXT NOT NULL,              -- ok | failed
            text TEXT,
            finish_reason TEXT,
            input_tokens INTEGER,
            output_tokens INTEGER,
            cost_usd REAL NOT NULL DEFAULT 0,
            latency_s REAL,
            system_fingerprint TEXT,
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 1,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )"""
    )
    db.execute("CREATE INDEX responses_model ON responses(model)")


def _m002_source(db: sqlite3.Connection) -> None:
    # Where an answer came from: a live call, or `protege teacher import`.
    db.execute("ALTER TABLE responses ADD COLUMN source TEXT NOT NULL DEFAULT 'live'")


def _m003_usage_details_and_param_rules(db: sqlite3.Connection) -> None:
    # Usage as billed: cached input tokens (inside input_tokens) and reasoning tokens (inside
    # output_tokens). And what each endpoint/model was learned to accept (`params.py`).
    db.execute("ALTER TABLE responses ADD COLUMN cached_tokens INTEGER")
    db.execute("ALTER TABLE responses ADD COLUMN reasoning_tokens INTEGER")
    db.execute(
        """CREATE TABLE param_rules (
            endpoint TEXT NOT NULL,
            model TEXT NOT NULL,
            param TEXT NOT NULL,               -- canonical name (max_tokens, temperature, seed)
            action TEXT NOT NULL,              -- rename:<name> | drop
            reason TEXT,                       -- the error message it was learned from
            created_at REAL NOT NULL,
            PRIMARY KEY (endpoint, model, param)
        )"""
    )


def _m004_leases_runs_batches_cap(db: sqlite3.Connection) -> None:
    # Leases: a request in flight belongs to one owner (a process's run, or a batch) until its
    # answer is stored or the lease expires (`leases.py`). Runs: who paid for what (stats by
    # run, the spending cap). Claims: spend a live run or batch may still add (the cap).
    # Batches: Batch API jobs recorded before they are waited for (`batch.py`).
    db.execute(
        """CREATE TABLE leases (
            key TEXT PRIMARY KEY,
            owner TEXT NOT NULL,               -- a run id, or batch:<id>
            expires_at REAL NOT NULL
        )"""
    )
    db.execute("CREATE INDEX leases_owner ON leases(owner)")
    db.execute("ALTER TABLE responses ADD COLUMN run_id TEXT")
    db.execute("ALTER TABLE responses ADD COLUMN logprobs TEXT")
    db.execute(
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY, label TEXT, pid INTEGER, started_at REAL NOT NULL
        )"""
    )
    db.execute("CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute(
        """CREATE TABLE claims (
            owner TEXT PRIMARY KEY,            -- a run id, or batch:<id>
            amount REAL NOT NULL,              -- dollars it may still add to the store's spend
            expires_at REAL NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE batches (
            id TEXT PRIMARY KEY,               -- protege's id, sent as metadata.protege_batch
            endpoint TEXT NOT NULL,
            model TEXT NOT NULL,
            run_id TEXT,
            remote_id TEXT,                    -- the endpoint's batch id, once created
            input_file_id TEXT,
            status TEXT NOT NULL,              -- new | validating ... completed | collected
            output_file_id TEXT,
            error_file_id TEXT,
            n INTEGER NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 1,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE batch_requests (
            batch_id TEXT NOT NULL,
            key TEXT NOT NULL,
            request TEXT NOT NULL,             -- the stored request JSON (model, messages ...)
            PRIMARY KEY (batch_id, key)
        )"""
    )


def _m005_server_limits(db: sqlite3.Connection) -> None:
    # The rate limits an endpoint last stated for a model (NULL: it states none), so that the
    # next job paces from its first request instead of waiting for one answer's headers.
    db.execute(
        """CREATE TABLE server_limits (
            endpoint TEXT NOT NULL,            -- base URL#sha256(key)[:12]: one account
            model TEXT NOT NULL,
            limit_requests REAL,               -- per minute
            limit_tokens REAL,                 -- per minute
            learned_at REAL NOT NULL,
            PRIMARY KEY (endpoint, model)
        )"""
    )


def _m006_endpoints(db: sqlite3.Connection) -> None:
    # Answers keyed by their endpoint too; old ones attributed and rekeyed (below).
    for column in ("endpoint", "prompt_key"):  # endpoint id (NULL: unknown); its request_key
        db.execute(f"ALTER TABLE responses ADD COLUMN {column} TEXT")
    attribute_old_answers(db, LOCAL_MODEL)
    db.execute("CREATE INDEX responses_prompt_key ON responses(prompt_key)")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _m001_responses,
    _m002_source,
    _m003_usage_details_and_param_rules,
    _m004_leases_runs_batches_cap,
    _m005_server_limits,
    _m006_endpoints,
]


# -- 006: answers stored before endpoints were ----------------------------------------------------
_LOCAL_KEY = key_digest("local")  # the key the local teacher's client was given


def _evidence_url(endpoint: str) -> str:
    """An endpoint as recorded in param_rules, batches or server_limits, as an endpoint id
    without account (the local teacher's random port as `local`)."""
    url, _, digest = endpoint.partition("#")
    if url == "local" or digest == _LOCAL_KEY:
        return "local"
    return normalise_url(url)


def attribute_old_answers(db: sqlite3.Connection, local_model: str) -> None:
    """Give answers stored before endpoints were recorded the endpoint that wrote them, where
    the store says it, and rekey them (`endpoint_key`); run once, by the store's migration.

    Imports are `import`; answers of a Batch API job, that batch's endpoint; a model that the
    store's parameter rules, batches and remembered limits tie to exactly one endpoint, that
    endpoint; the local teacher's default model, `local`. The rest keep their old key and no
    endpoint: no job finds them by itself (`reuse_answers_from: [any]` does). Answers of
    api.openai.com are attributed to its URL without an account (the account was never
    recorded), and every account there finds them (`fallbacks`).
    """
    seen: dict[str, set[str]] = {}
    for table in ("param_rules", "batches", "server_limits"):
        for endpoint, model in db.execute(f"SELECT endpoint, model FROM {table}"):
            seen.setdefault(model, set()).add(_evidence_url(endpoint))
    batch_of = dict(
        db.execute(
            "SELECT r.key, b.endpoint FROM batch_requests r JOIN batches b ON b.id = r.batch_id"
        ).fetchall()
    )
    updates = []
    for key, model, source in db.execute("SELECT key, model, source FROM responses").fetchall():
        if source == "import":
            endpoint = IMPORTED
        elif key in batch_of:
            endpoint = _evidence_url(batch_of[key])
        elif len(seen.get(model, ())) == 1:
            endpoint = next(iter(seen[model]))
        elif model == local_model and not seen.get(model):
            endpoint = "local"
        else:
            endpoint = None
        new = endpoint_key(key, endpoint) if endpoint else key
        updates.append((new, endpoint, key, key))
    db.executemany("UPDATE responses SET key=?, endpoint=?, prompt_key=? WHERE key=?", updates)
    # requests of batches still out, and their leases, under the keys their answers will have
    for bid, endpoint in db.execute("SELECT id, endpoint FROM batches").fetchall():
        eid = _evidence_url(endpoint)
        rows = db.execute(
            "SELECT key, request FROM batch_requests WHERE batch_id=?", (bid,)
        ).fetchall()
        db.executemany(
            "UPDATE batch_requests SET key=?, request=? WHERE batch_id=? AND key=?",
            [(endpoint_key(k, eid), json.dumps({**json.loads(r), "endpoint": eid},
                                               ensure_ascii=False), bid, k)
             for k, r in rows],
        )  # fmt: skip
        db.executemany(
            "UPDATE OR IGNORE leases SET key=? WHERE key=? AND owner=?",
            [(endpoint_key(k, eid), k, f"batch:{bid}") for k, _ in rows],
        )
