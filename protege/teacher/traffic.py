"""Stored traffic as training rows: what `protege proxy` and the cascade's escalations stored.

Each stored request is read back into task rows: with a template (`--template label`), the
prompt's variables are read out of its messages (`serve/prompts.py`; `{{ input }}` split back
into record fields by the input template where it fits) and the teacher's answer parsed by the
recipe's parser (a label, a rationale, a summary); an answer the parser flags is left out and
counted. Without a template the user message itself is the input (`input`) and the answer the
target (`target`, or a `label` when `--labels` are given). Rows carry the store key as `uid`.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from protege.errors import ConfigError
from protege.formats import TaskConfig

TRAFFIC_SOURCES = ("proxy", "cascade")
NLI_INPUT = "Premise: {premise} Hypothesis: {hypothesis}"


@dataclass
class ExportResult:
    output: str
    n_stored: int = 0
    """Stored traffic answers considered."""
    n_rows: int = 0
    n_unread: int = 0
    """Requests whose messages are not the template's prompt."""
    n_flagged: int = 0
    """Answers the recipe's parser could not read (not a label of the set ...)."""
    reasons: list[str] = field(default_factory=list)


def parse_since(text: str | None) -> float | None:
    """`--since`: an ISO date/time (UTC unless it says otherwise) or an age (`24h`, `7d`)."""
    if not text:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text.strip())
    if m:
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return time.time() - seconds
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as e:
        raise ConfigError(f"--since: {text!r} is neither a date (2026-12-01) nor an age "
                          "(24h, 7d)") from e  # fmt: skip
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _split_input(text: str, input_template: str) -> dict[str, str] | None:
    """Record fields of a rendered input template, or None when it does not fit."""
    out, names = [], []
    for i, piece in enumerate(re.split(r"{(\w+)}", input_template)):
        if i % 2 == 0:
            out.append(re.escape(piece))
        else:
            out.append(f"(?P<{piece}>.*?)" if piece not in names else f"(?P={piece})")
            names.append(piece)
    m = re.fullmatch("".join(out), text, re.S)
    return m.groupdict() if m else None


def _labels_of(request: dict[str, Any]) -> list[str] | None:
    """The label set a request's schema names (the `label` recipe's enum), if any."""
    fmt = (request.get("params") or {}).get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema") or fmt.get("schema") or {}
    enum = ((schema.get("properties") or {}).get("label") or {}).get("enum")
    return list(enum) if enum else None


def export_traffic(output: str | Path, template: str | None = None, since: str | None = None,
                   labels: list[str] | None = None, input_template: str = NLI_INPUT,
                   model: str | None = None, store_path: str | Path | None = None,
                   ) -> ExportResult:  # fmt: skip
    """Write stored traffic as task rows to `output` (JSONL, atomically)."""
    from protege.data.io import write_jsonl
    from protege.generate.recipes import get_recipe
    from protege.generate.schema import schema_of_params
    from protege.serve.prompts import RAW, MessageReader, PromptMismatch, resolve_spec
    from protege.teacher.store import TeacherStore

    cutoff = parse_since(since)
    result = ExportResult(str(output))
    recipe = get_recipe(template) if template and template != RAW else None
    rows: list[dict[str, Any]] = []
    with TeacherStore(store_path) as store:
        marks = ",".join("?" * len(TRAFFIC_SOURCES))
        sql = (f"SELECT key, model, request, text, created_at FROM responses WHERE status='ok' "
               f"AND source IN ({marks})")  # fmt: skip
        args: list[Any] = list(TRAFFIC_SOURCES)
        if cutoff is not None:
            sql += " AND created_at >= ?"
            args.append(cutoff)
        if model:
            sql += " AND model = ?"
            args.append(model)
        found = store.db.execute(sql + " ORDER BY created_at, key", args).fetchall()
    readers: dict[tuple, MessageReader] = {}
    for key, _model, request_json, text, _created in found:
        result.n_stored += 1
        request = json.loads(request_json)
        messages = request.get("messages") or []
        set_ = labels or _labels_of(request) or ["entailment", "neutral", "contradiction"]
        task = TaskConfig(labels=set_, input_template=input_template)
        spec = resolve_spec(".", task, template or RAW)
        reader = readers.setdefault((spec.recipe, tuple(set_)), MessageReader(spec, task))
        try:
            read = reader.read(messages)
        except PromptMismatch as e:
            result.n_unread += 1
            result.reasons.append(str(e))
            continue
        if isinstance(read.item, dict):
            row: dict[str, Any] = dict(read.item)
        else:
            row = _split_input(read.item, input_template) or {"input": read.item}
            if recipe is None:
                row = {"input": read.item}
        if recipe is not None:
            parsed = recipe.parse(text or "", recipe.output_field, set_,
                                  schema_of_params(request.get("params") or {}))  # fmt: skip
            if parsed.flagged:
                result.n_flagged += 1
                result.reasons.append(parsed.flagged)
                continue
            fields = dict(parsed.fields)
            if f"{recipe.output_field}_rationale" in fields:
                fields["rationale"] = fields.pop(f"{recipe.output_field}_rationale")
            row.update(fields)
        elif labels:
            from protege.generate.recipes import parse_label

            parsed = parse_label(text or "", "label", labels)
            if parsed.flagged:
                result.n_flagged += 1
                result.reasons.append(parsed.flagged)
                continue
            row["label"] = parsed.fields["label"]
        else:
            row["target"] = (text or "").strip()
        row["uid"] = key[:16]
        rows.append(row)
    write_jsonl(Path(output), rows)
    result.n_rows = len(rows)
    result.reasons = list(dict.fromkeys(result.reasons))[:5]
    return result
