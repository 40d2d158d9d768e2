"""One output row per record: the source record, the teacher's text, what the recipe parsed out
of it, a flag when it did not parse, the label's confidence, and provenance."""

from __future__ import annotations

import datetime
from typing import Any

from protege.data.io import clean
from protege.generate.confidence import grammar_note, label_probability, majority
from protege.generate.config import GenerateConfig
from protege.generate.recipes import Recipe, Template
from protege.teacher.store import Answer


def output_row(
    cfg: GenerateConfig,
    recipe: Recipe,
    template: Template,
    output_field: str,
    record: dict[str, Any],
    answers: list[Answer],
    cached: bool,
    params: dict[str, Any],
    schema: dict[str, Any] | None,
) -> dict[str, Any]:
    """The row for `record` from its answers (one, or k for self-consistency)."""
    answer = answers[0]
    parsed = [recipe.parse(a.text or "", output_field, cfg.labels, schema) for a in answers]
    first = parsed[0]
    row = clean(record)
    for name in first.fields:
        if name in row:  # e.g. reverse: the real article gives way to the synthetic one
            row[f"original_{name}"] = row.pop(name)
    row["teacher_text"] = answer.text
    row.update(first.fields)
    flag = first.flagged
    if recipe.confidence and len(answers) > 1:
        votes = [p.fields.get(output_field) for p in parsed]
        label, share = majority(votes)
        row[output_field] = label
        row["confidence"] = share
        row["votes"] = votes
        flag = None if label is not None else f"no valid label in {len(answers)} answers"
    elif (
        recipe.confidence
        and first.flagged is None
        and not grammar_note(cfg.teacher.kind, schema is not None, len(answers))
    ):
        p = label_probability(answer.logprobs, answer.text or "", first.fields.get(output_field))
        if p is not None:
            row["confidence"] = round(p, 6)
    if answer.finish_reason == "length" and len(answers) == 1:
        flag = "; ".join(filter(None, [flag, "truncated: the answer hit max_tokens"]))
    if flag:
        row["flagged"] = flag
    row["provenance"] = {
        "model": answer.model,
        "endpoint": answer.endpoint,
        "system_fingerprint": answer.system_fingerprint,
        "template_hash": template.hash,
        "params": params,
        "time": datetime.datetime.fromtimestamp(answer.created_at, datetime.UTC).isoformat(),
        "cost_usd": sum(a.cost_usd for a in answers),
        "latency_s": answer.latency_s,
        "cached": cached,
        "source": answer.source,
    }
    return row
