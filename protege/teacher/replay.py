"""Recorded answers: `protege teacher import` puts existing teacher outputs into the store.

An imported answer is keyed exactly like a live request (model, messages, parameters), so a
later `generate` with the replay teacher — or any teacher — with the same prompt, model and
parameters finds it and pays nothing. The replay teacher itself is the rule in `run_generate`:
answer from the store or stop, naming the first prompt it has no answer for.
"""

from __future__ import annotations

from pathlib import Path

from protege.data.io import read_records, require_fields
from protege.teacher.config import TeacherConfig
from protege.teacher.store import Answer, TeacherStore, request_key


def import_answers(
    path: str | Path,
    prompt_field: str,
    response_field: str,
    teacher: TeacherConfig,
    system: str | None = None,
    store: TeacherStore | None = None,
) -> int:
    """Record every row's (prompt -> response) under `teacher`'s model and params; returns rows.

    The prompt is the exact user message; `system`, if given, is sent before it. All rows are
    validated before anything is written.
    """
    records = read_records(path)
    require_fields(records, [prompt_field, response_field], str(path))
    model, params = teacher.model_name, teacher.params()
    items = []
    for r in records:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": str(r[prompt_field])})
        key = request_key(model, messages, params)
        answer = Answer(key, model, "ok", text=str(r[response_field]), source="import")
        items.append((answer, {"model": model, "messages": messages, "params": params}))
    own = store is None
    store = store or TeacherStore()
    try:
        for i in range(0, len(items), 1000):
            store.put_many(items[i : i + 1000])
    finally:
        if own:
            store.close()
    return len(items)
