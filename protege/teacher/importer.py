"""Recorded answers: `protege teacher import` puts existing teacher outputs into the store.

An imported answer is keyed like a live request (model, messages, parameters), under the
endpoint `import`: a later `generate` with the replay teacher, or with a live teacher told
`teacher.reuse_answers_from: [import]`, finds it for the same prompt, model and parameters and
pays nothing; a live teacher never takes it for its own endpoint's answer by itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protege.config import from_dict
from protege.data.io import read_records, require_fields
from protege.teacher.config import TeacherConfig
from protege.teacher.endpoint_ids import IMPORTED
from protege.teacher.store import Answer, TeacherStore, request_key


def import_answers(
    path: str | Path,
    prompt_field: str = "teacher_prompt",
    response_field: str = "rationale",
    model: str = "gpt-3.5-turbo-0125",
    system: str | None = None,
    params: dict[str, Any] | None = None,
    store: TeacherStore | None = None,
) -> int:
    """Record every row's (prompt -> response) under `model` and `params`; returns the count.

    The prompt is the exact user message; `system`, if given, is sent before it. `params`
    (temperature, seed, max_tokens) default to TeacherConfig's, i.e. Paper A's 0.2 / 123 / 400:
    the answers must be keyed with the parameters a later `generate` will send. All rows are
    validated before anything is written.
    """
    teacher = from_dict(TeacherConfig, {**(params or {}), "model": model}, "params")
    records = read_records(path)
    require_fields(records, [prompt_field, response_field], str(path))
    model, request_params = teacher.model_name, teacher.params()
    items = []
    for r in records:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": str(r[prompt_field])})
        key = request_key(model, messages, request_params, endpoint=IMPORTED)
        answer = Answer(key, model, "ok", text=str(r[response_field]), source="import")
        request = {"model": model, "messages": messages, "params": request_params}
        items.append((answer, {**request, "endpoint": IMPORTED}))
    own = store is None
    store = store or TeacherStore()
    try:
        for i in range(0, len(items), 1000):
            store.put_many(items[i : i + 1000])
    finally:
        if own:
            store.close()
    return len(items)
