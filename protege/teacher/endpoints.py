"""Whose answers a job reads: its endpoint's own, and others' only when asked for.

A stored answer is keyed by its request and the endpoint that gave it (`endpoint_ids.py`).
Using another endpoint's answers is an explicit choice: `teacher.reuse_answers_from` (a list of
endpoint ids, or `any`), the replay teacher (which reads whatever was recorded), or
`protege teacher import`. Answers stored before protege keyed by endpoint were attributed to the
endpoint that wrote them where the store recorded it (`migrations.attribute_old_answers`); those
it could not attribute have no endpoint, and are used only when reused explicitly (`any`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from protege.teacher.answer import COLUMNS, Answer
from protege.teacher.endpoint_ids import ANY, endpoint_key, fallbacks
from protege.teacher.store import TeacherStore


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
    keys = list(dict.fromkeys(prompt_keys))
    found: dict[str, Answer] = {}
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        marks = ",".join("?" * len(chunk))
        sql = (f"SELECT {COLUMNS}, prompt_key FROM responses WHERE prompt_key IN ({marks}) "
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
