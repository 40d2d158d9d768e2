"""Which endpoint gave an answer: part of its key, so that answers never cross endpoints.

The same request to a local stub, to vLLM and to api.openai.com gives three different answers;
a store keyed by the request alone handed the stub's text to a later job against OpenAI as
"cached". So a stored answer is keyed by its request *and* its endpoint (`endpoint_id`):

- any endpoint: its base URL, normalised (`http://localhost:8000/v1`);
- api.openai.com: the base URL and the account, `https://api.openai.com/v1#<sha256(key)[:12]>`
  (accounts on one URL differ; the key itself is never stored). Azure OpenAI's resource URL is
  already its account (its two keys rotate within it), so it is the URL alone;
- the local teacher: `local` (the bundled SmolLM2 GGUF) or `local:<gguf path>`;
- `protege teacher import`: `import`.

Using another endpoint's answers is an explicit choice: `teacher.reuse_answers_from` (a list of
endpoint ids, or `any`), the replay teacher (which reads whatever was recorded), or
`protege teacher import`. Answers stored before protege keyed by endpoint were attributed to the
endpoint that wrote them where the store recorded it (`attribute_old_answers`); those it could
not attribute have no endpoint, and are used only when reused explicitly (`any`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from protege.teacher.store import Answer, TeacherStore

ANY = "any"
"""In `reuse_answers_from`: the answers of any endpoint, including unattributed old ones."""

IMPORTED = "import"
"""The endpoint id of answers recorded with `protege teacher import`."""

_ACCOUNT_HOSTS = ("api.openai.com",)
"""Hosts where the account (the key) is part of the endpoint id."""


def normalise_url(base_url: str) -> str:
    """A base URL as one string per endpoint: scheme and host lower-case, no trailing slash."""
    parts = urlsplit(base_url.strip())
    if not parts.scheme:
        return base_url.strip().rstrip("/")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"),
                       parts.query, ""))  # fmt: skip


def key_digest(api_key: str | None) -> str:
    """Who the key belongs to, without the key: the first 12 hex digits of its sha256."""
    return hashlib.sha256((api_key or "").encode()).hexdigest()[:12]


def endpoint_id(base_url: str, api_key: str | None = None) -> str:
    """The identity of an endpoint that answers requests, as stored with its answers.

    `base_url` is the OpenAI-compatible base URL (`.../v1`). For api.openai.com the account
    counts as well: `https://api.openai.com/v1#<sha256(api_key)[:12]>`; for every other
    endpoint (Azure OpenAI, whose resource URL is its account, vLLM, Ollama, a proxy) the
    normalised URL alone. Pass the result as `request_key(..., endpoint=...)` and as the
    `"endpoint"` of the request dict given to `TeacherStore.put_many`.
    """
    url = normalise_url(base_url)
    if urlsplit(url).hostname in _ACCOUNT_HOSTS:
        return f"{url}#{key_digest(api_key)}"
    return url


def endpoint_key(prompt_key: str, endpoint: str) -> str:
    """The store key of `endpoint`'s answer to the request whose endpoint-free key is
    `prompt_key` (`request_key` without an endpoint)."""
    return hashlib.sha256(f"{endpoint}\n{prompt_key}".encode()).hexdigest()


def fallbacks(endpoint: str) -> list[str]:
    """Ids whose answers are this endpoint's own: for an account on api.openai.com, the URL
    without an account (answers stored before the account was recorded)."""
    return [endpoint.split("#", 1)[0]] if "#" in endpoint else []


def lookup(
    store: TeacherStore,
    wanted: dict[str, str],
    endpoint: str | None,
    reuse: Sequence[str] = (),
) -> dict[str, Answer]:
    """Stored answers for `wanted` ({store key: prompt key}), keyed by the wanted key.

    `endpoint`'s own answers (ok or failed) first, then good answers stored before its account
    was recorded, then good answers of the endpoints in `reuse`, in order (`any`: any endpoint,
    the newest answer). `endpoint` None (the replay teacher): any endpoint's good answer.
    """
    found = store.get_many(wanted) if endpoint else {}

    def missing() -> dict[str, str]:
        return {k: p for k, p in wanted.items() if k not in found or found[k].status != "ok"}

    others = [*fallbacks(endpoint), *reuse] if endpoint else [ANY]
    for other in dict.fromkeys(others):
        todo = missing()
        if not todo:
            break
        if other == ANY:
            by_prompt = by_prompt_keys(store, todo.values())
            for k, p in todo.items():
                if p in by_prompt:
                    found[k] = by_prompt[p]
            continue
        theirs = {endpoint_key(p, other): k for k, p in todo.items()}
        for their_key, answer in store.get_many(theirs).items():
            if answer.status == "ok":
                found[theirs[their_key]] = answer
    return found


def by_prompt_keys(store: TeacherStore, prompt_keys: Iterable[str]) -> dict[str, Answer]:
    """The newest good answer of any endpoint per prompt key (`request_key` without one)."""
    from protege.teacher.store import _COLUMNS, Answer

    keys = list(dict.fromkeys(prompt_keys))
    found: dict[str, Answer] = {}
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        marks = ",".join("?" * len(chunk))
        sql = (f"SELECT {_COLUMNS}, prompt_key FROM responses WHERE prompt_key IN ({marks}) "
               "AND status='ok' ORDER BY created_at")  # fmt: skip
        for row in store.db.execute(sql, chunk):
            found[row[-1]] = Answer(*row[:-1])
    return found


def answered_elsewhere(
    store: TeacherStore, prompt_keys: Iterable[str], endpoint: str | None, reuse: Sequence[str] = ()
) -> Counter[str]:
    """How many of `prompt_keys` other endpoints answered well, per endpoint ("" for old
    answers with no recorded endpoint): answers not used unless reused explicitly."""
    counts: Counter[str] = Counter()
    keys = list(dict.fromkeys(prompt_keys))
    own = {endpoint, *fallbacks(endpoint), *reuse} if endpoint else set()
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        marks = ",".join("?" * len(chunk))
        rows = store.db.execute(
            f"SELECT COALESCE(endpoint, ''), COUNT(DISTINCT prompt_key) FROM responses "
            f"WHERE prompt_key IN ({marks}) AND status='ok' GROUP BY 1",
            chunk,
        )
        for eid, n in rows:
            if eid not in own:
                counts[eid] += n
    return counts


def by_endpoint(store: TeacherStore) -> list[tuple[str | None, str, int]]:
    """(endpoint id, model, good answers) for every endpoint and model in the store."""
    return store.db.execute(
        "SELECT endpoint, model, SUM(status='ok') FROM responses GROUP BY endpoint, model "
        "ORDER BY endpoint, model"
    ).fetchall()


def describe(endpoint: str) -> str:
    """An endpoint id as said to a user ("" is an answer stored before endpoints were)."""
    return endpoint or "an unrecorded endpoint (stored before protege kept endpoints)"


# -- the store migration ----------------------------------------------------------------------
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
