"""`run_generate`: records in, teacher answers out, paying only for prompts never answered.

Order of work, so that nothing is paid for in vain: read and validate every record (a bad line,
a missing field or an unknown label stops here, before any call); render each prompt and key
it; look every key up in the store; send only the distinct prompts with no good answer (the
replay teacher refuses instead); then write every answered record, atomically.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from protege.config import to_dict
from protege.data.io import (
    clean,
    read_records,
    rename_fields,
    require_fields,
    require_labels,
    write_json,
    write_jsonl,
)
from protege.errors import ConfigError, DataError
from protege.formats import normalise_label
from protege.generate.calls import send
from protege.generate.config import GenerateConfig, GenerateResult
from protege.generate.recipes import Recipe, Template, get_recipe
from protege.teacher.cost import estimate_prompt_tokens, worst_prompt_tokens
from protege.teacher.prices import pricing, unknown_price
from protege.teacher.replay import replay_miss
from protege.teacher.store import Answer, TeacherStore, request_key


def summary_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.stem + ".summary.json")


def load_inputs(cfg: GenerateConfig, recipe: Recipe, template: Template) -> list[dict[str, Any]]:
    """Read, rename and validate the records; raises DataError before anything is paid."""
    if not cfg.input:
        raise ConfigError("input: give a data file or a dataset name")
    records = rename_fields(read_records(cfg.input, cfg.split), cfg.fields)
    if cfg.limit is not None:
        records = records[: cfg.limit]
    if not records:
        raise DataError(cfg.input, "no records")
    needed = set(template.record_fields())
    if "input" in template.variables:
        needed |= set(_format_fields(cfg.input_template))
    if recipe.needs_label or "verb" in template.variables:
        needed.add(cfg.label_field)
    require_fields(records, sorted(needed), cfg.input)
    if recipe.needs_label or "verb" in template.variables:
        require_labels(records, cfg.label_field, cfg.labels, cfg.input)
        missing = [label for label in cfg.labels if label not in cfg.verbs]
        if missing:
            raise ConfigError(f"verbs: no verb for label {missing[0]!r} (verbs.{missing[0]}=...)")
    return records


def _format_fields(template: str) -> list[str]:
    import string

    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _context(cfg: GenerateConfig, template: Template, record: dict[str, Any]) -> dict[str, Any]:
    ctx = dict(record, labels=cfg.labels, with_rationale=cfg.with_rationale)
    if "input" in template.variables:
        ctx["input"] = cfg.input_template.format(**record)
    if "verb" in template.variables:
        ctx["verb"] = cfg.verbs[normalise_label(str(record[cfg.label_field]), cfg.labels)]
    return ctx


def run_generate(cfg: GenerateConfig) -> GenerateResult:
    """Run one generation job; see the module docstring for the order of work."""
    from protege.teacher.client import Request

    recipe = get_recipe(cfg.recipe)
    template = Template(recipe.path)
    output_field = cfg.output_field or recipe.output_field
    if not cfg.output and not cfg.dry_run:
        raise ConfigError("output: give the output JSONL path")
    records = load_inputs(cfg, recipe, template)
    tcfg = cfg.teacher
    model, params = tcfg.model_name, tcfg.params()

    keys: list[str] = []
    distinct: dict[str, list[dict[str, str]]] = {}
    for record in records:
        messages = template.messages(_context(cfg, template, record))
        key = request_key(model, messages, params)
        keys.append(key)
        distinct.setdefault(key, messages)

    result = GenerateResult(output=str(cfg.output), n_records=len(records), dry_run=cfg.dry_run)
    result.n_requests = len(distinct)
    with TeacherStore() as store:
        stored = store.get_many(distinct)
        todo = [k for k in distinct if k not in stored or stored[k].status != "ok"]
        result.n_cached = len(distinct) - len(todo)
        result.est_input_tokens = sum(estimate_prompt_tokens(distinct[k]) for k in todo)
        result.est_output_tokens = tcfg.max_tokens * len(todo)
        price = pricing(tcfg)
        result.price_source = price.source if price else None
        if price:
            result.est_cost_usd = price.cost(result.est_input_tokens, result.est_output_tokens)
            result.est_batch_cost_usd = price.cost(
                result.est_input_tokens, result.est_output_tokens, batch=True
            )
        if cfg.dry_run:
            return result
        if todo and tcfg.kind == "replay":
            first = records[keys.index(todo[0])]
            where = f"{cfg.input}:{first.get('_line', '?')}"
            raise replay_miss(model, len(todo), len(distinct), where)
        if todo and price is None and cfg.max_cost is not None:
            raise unknown_price(tcfg)
        if todo:
            requests = [Request(k, distinct[k], worst_prompt_tokens(distinct[k])) for k in todo]
            report = send(cfg, requests, store, result.n_cached, price)
            result.n_calls = report.ok + report.failed
            result.n_retries = report.retries
            result.cost_usd = report.cost_usd
            if report.latencies:
                result.mean_latency_s = sum(report.latencies) / len(report.latencies)
            result.errors = list(dict.fromkeys(report.errors.values()))[:5]
            result.learned = report.learned
            result.n_elsewhere = report.elsewhere
            stored = store.get_many(distinct)
        done = {k for k in todo if k in stored and stored[k].status == "ok"}

    out_records = []
    for record, key in zip(records, keys, strict=True):
        answer = stored.get(key)
        if answer is None or answer.status != "ok":
            if answer is not None:
                result.n_failed += 1
            else:
                result.n_skipped += 1
            continue
        row = _output_record(cfg, recipe, template, output_field, record, answer, key not in done)
        result.n_flagged += "flagged" in row
        out_records.append(row)
    result.n_written = len(out_records)
    write_jsonl(cfg.output, out_records)
    write_json(
        summary_path(cfg.output),
        {**to_dict(result), "reduction": result.reduction, "config": to_dict(cfg)},
    )
    return result


def _output_record(
    cfg: GenerateConfig,
    recipe: Recipe,
    template: Template,
    output_field: str,
    record: dict[str, Any],
    answer: Answer,
    cached: bool,
) -> dict[str, Any]:
    """The source record plus the teacher's text, the parsed fields, a flag and provenance."""
    parsed = recipe.parse(answer.text or "", output_field, cfg.labels)
    row = clean(record)
    for name in parsed.fields:
        if name in row:  # e.g. reverse: the real article gives way to the synthetic one
            row[f"original_{name}"] = row.pop(name)
    row["teacher_text"] = answer.text
    row.update(parsed.fields)
    flag = parsed.flagged
    if answer.finish_reason == "length":
        flag = "; ".join(filter(None, [flag, "truncated: the answer hit max_tokens"]))
    if flag:
        row["flagged"] = flag
    row["provenance"] = {
        "model": answer.model,
        "system_fingerprint": answer.system_fingerprint,
        "template_hash": template.hash,
        "params": cfg.teacher.params(),
        "time": datetime.datetime.fromtimestamp(answer.created_at, datetime.UTC).isoformat(),
        "cost_usd": answer.cost_usd,
        "latency_s": answer.latency_s,
        "cached": cached,
        "source": answer.source,
    }
    return row


def result_line(result: GenerateResult) -> str:
    return json.dumps(to_dict(result))
