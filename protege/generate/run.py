"""`run_generate`: records in, teacher answers out, paying only for prompts never answered.

Order of work, so that nothing is paid for in vain: read and validate every record (a bad line,
a missing field or an unknown label stops here, before any call); render each prompt and key
it; look every key up in the store; send only the distinct prompts with no good answer (the
replay teacher refuses instead); then write every answered record, atomically.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from protege.config import to_dict
from protege.data.io import (
    jsonl_line,
    read_records,
    rename_fields,
    require_fields,
    require_labels,
    write_json,
    write_jsonl,
)
from protege.errors import ConfigError, DataError, ProtegeError
from protege.formats import normalise_label
from protege.generate.calls import send
from protege.generate.confidence import grammar_note
from protege.generate.config import GenerateConfig, GenerateResult
from protege.generate.recipes import Recipe, Template, get_recipe
from protege.generate.rows import output_row
from protege.generate.schema import label_schema, response_format
from protege.teacher.cost import estimate_prompt_tokens, worst_prompt_tokens
from protege.teacher.endpoint_ids import endpoint_key
from protege.teacher.endpoints import answered_elsewhere, lookup
from protege.teacher.params import ParamRules
from protege.teacher.prices import pricing, unknown_price
from protege.teacher.replay import replay_miss
from protege.teacher.spend import get_cap
from protege.teacher.store import TeacherStore, request_key


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
    cfg = with_answer_room(cfg, recipe)
    tcfg = cfg.teacher
    model = tcfg.model_name
    params, schema = job_params(cfg, recipe)
    samples = tcfg.self_consistency if recipe.confidence else 1
    if samples > 1 and tcfg.temperature == 0:
        raise ConfigError(
            f"teacher.self_consistency: {samples} answers at temperature 0 agree by "
            "construction, so their share says nothing (1.0 for wrong answers too); set "
            "teacher.temperature above 0 (e.g. 0.7), or self_consistency: 1"
        )
    no_logprobs = (
        grammar_note(tcfg.kind, schema is not None, samples) if recipe.confidence else None
    )

    eid = tcfg.endpoint_id(tcfg.read_key())  # answers are this endpoint's (endpoint_ids.py)
    keys: list[list[str]] = []  # per record: its request keys (k for self-consistency)
    distinct: dict[str, list[dict[str, str]]] = {}
    prompt_keys: dict[str, str] = {}  # store key -> the request's key at any endpoint
    key_params: dict[str, dict[str, Any]] = {}
    for record in records:
        messages = template.messages(_context(cfg, template, record))
        mine = []
        for i, p in enumerate(sample_params(params, samples)):
            prompt_key = request_key(model, messages, p)
            key = endpoint_key(prompt_key, eid) if eid else prompt_key
            mine.append(key)
            distinct.setdefault(key, messages)
            prompt_keys[key] = prompt_key
            if i:
                key_params[key] = p
        keys.append(mine)

    result = GenerateResult(output=str(cfg.output), n_records=len(records), dry_run=cfg.dry_run)
    result.n_requests, result.endpoint = len(distinct), eid
    reuse = tcfg.reuse_answers_from
    with TeacherStore() as store:
        if cfg.output:  # answers a full disk made an earlier run leave beside its output
            store.import_rescued([Path(str(cfg.output)).parent])
        stored = lookup(store, prompt_keys, eid, reuse)
        todo = [k for k in distinct if k not in stored or stored[k].status != "ok"]
        result.n_cached = len(distinct) - len(todo)
        if todo and eid:
            result.answered_elsewhere = dict(
                answered_elsewhere(store, (prompt_keys[k] for k in todo), eid, reuse)
            )
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
        # what the endpoint is sent (its rules, and any it teaches this job): the provenance
        rules = ParamRules.for_config(tcfg, store.param_rules(tcfg.endpoint_url, model))
        if todo and tcfg.kind == "replay":
            first = records[next(i for i, ks in enumerate(keys) if set(ks) & set(todo))]
            where = f"{cfg.input}:{first.get('_line', '?')}"
            raise replay_miss(model, len(todo), len(distinct), where)
        if todo and price is None and (cfg.max_cost is not None or get_cap(store) is not None):
            raise unknown_price(tcfg)
        if todo:
            requests = [
                Request(k, distinct[k], worst_prompt_tokens(distinct[k]), key_params.get(k),
                        estimate_prompt_tokens(distinct[k]))
                for k in todo
            ]  # fmt: skip
            extras = (
                {"logprobs": True, "top_logprobs": 1}
                if recipe.confidence and tcfg.logprobs and no_logprobs is None
                else None
            )
            rows = RowMaker(cfg, recipe, template, output_field, rules, params, schema, keys,
                            records, stored)  # fmt: skip
            report = send(cfg, requests, store, result.n_cached, price, params, extras, rows.add,
                          rules)  # fmt: skip
            result.n_calls = report.ok + report.failed
            result.n_retries = report.retries
            result.cost_usd = report.cost_usd
            if report.latencies:
                result.mean_latency_s = sum(report.latencies) / len(report.latencies)
            result.errors = list(dict.fromkeys(report.errors.values()))[:5]
            result.learned = report.learned
            result.n_elsewhere = report.elsewhere
            # answers this run did not see arrive (another process's) are read back
            others = {k: p for k, p in prompt_keys.items() if k not in rows.fresh}
            stored = {**lookup(store, others, eid, reuse), **rows.fresh}
        done = {k for k in todo if k in stored and stored[k].status == "ok"}
        made = rows.made if todo else {}

    out_records: list[dict[str, Any] | str] = []
    for i, (record, mine) in enumerate(zip(records, keys, strict=True)):
        if i in made:  # made while the teacher was answering others
            line, flagged = made[i]
            result.n_flagged += flagged
            out_records.append(line)
            continue
        answers = [stored.get(k) for k in mine]
        if any(a is None or a.status != "ok" for a in answers):
            if any(a is not None and a.status != "ok" for a in answers):
                result.n_failed += 1
            else:
                result.n_skipped += 1
            continue
        cached = not (set(mine) & done)
        row = output_row(cfg, recipe, template, output_field, record, answers, cached,
                         rules.apply(params), schema)  # fmt: skip
        result.n_flagged += "flagged" in row
        out_records.append(row)
    result.n_written = len(out_records)
    if recipe.confidence and not cfg.dry_run:
        result.confidence = confidence_line(out_records, no_logprobs, samples, tcfg)
        print(result.confidence)
    try:
        write_jsonl(cfg.output, out_records)
        write_json(
            summary_path(cfg.output),
            {**to_dict(result), "reduction": result.reduction, "config": to_dict(cfg)},
        )
    except OSError as e:
        raise ProtegeError(
            f"{e.filename or cfg.output}: cannot write ({e.strerror}); every answer is kept in "
            "the teacher store, so a rerun with room writes it without paying again"
        ) from e
    return result


class RowMaker:
    """Output rows made as answers arrive, while the event loop waits on the network: the
    job's end then only writes them. A record's row is made once all its answers are in (k
    for self-consistency; one answer may serve several records)."""

    def __init__(self, cfg, recipe, template, output_field, rules, params, schema, keys,
                 records, stored):  # fmt: skip
        self.args = (cfg, recipe, template, output_field)
        self.rules, self.params, self.schema = rules, params, schema
        self.keys, self.records, self.stored = keys, records, stored
        self.by_key: dict[str, list[int]] = {}
        for i, mine in enumerate(keys):
            for k in mine:
                self.by_key.setdefault(k, []).append(i)
        self.fresh: dict[str, Any] = {}
        self.made: dict[int, tuple[str, bool]] = {}  # record index -> (JSONL line, flagged)

    def add(self, answer) -> None:
        self.fresh[answer.key] = answer
        for i in self.by_key.get(answer.key, ()):
            answers = [self.fresh.get(k) or self.stored.get(k) for k in self.keys[i]]
            if any(a is None or a.status != "ok" for a in answers):
                continue
            try:
                row = output_row(*self.args, self.records[i], answers, False,
                                 self.rules.apply(self.params), self.schema)  # fmt: skip
            except Exception:  # noqa: BLE001  made again at the end, where an error is raised
                continue
            self.made[i] = (jsonl_line(row), "flagged" in row)


def confidence_line(rows: list, no_logprobs: str | None, samples: int, tcfg) -> str:
    """One line: how the label confidence of this job's rows was computed, and on how many
    it is unavailable (training's `min_confidence` keeps those rows; it cannot judge them)."""
    if no_logprobs:
        return no_logprobs
    n = len(rows)
    parsed = [json.loads(r) if isinstance(r, str) else r for r in rows]  # made rows: lines
    have = sum(r.get("confidence") is not None for r in parsed)
    if samples > 1:
        how = f"self-consistency, the share of {samples} answers at temperature {tcfg.temperature}"
    elif tcfg.logprobs:
        how = "the probability of the label's tokens"
    else:
        how = "none asked (teacher.logprobs: false)"
    missing = f"; unavailable on {n - have} (no logprobs, or a label token was forced)"
    return f"confidence: {how}, on {have} of {n} rows" + (missing if have < n else "")


def with_answer_room(cfg: GenerateConfig, recipe: Recipe) -> GenerateConfig:
    """`cfg` with `teacher.max_tokens` raised, where it is too small for the longest answer a
    label-only schema allows (`{"label": "contradiction"}`, counted as one token per character,
    the worst case): a cut-off JSON answer could only be flagged. Said in one line."""
    if not cfg.structured or cfg.with_rationale or not cfg.labels:
        return cfg
    if recipe.schema(cfg.labels, False) != label_schema(cfg.labels, False):
        return cfg  # a user's own schema: its answers' size is its author's to set
    longest = max(cfg.labels, key=len)
    room = len(json.dumps({"label": longest})) + 4  # and spaces the model may put in
    if cfg.teacher.max_tokens >= room:
        return cfg
    print(f"teacher.max_tokens raised from {cfg.teacher.max_tokens} to {room}: the longest "
          f"answer the label schema allows needs that many tokens at most")  # fmt: skip
    return replace(cfg, teacher=replace(cfg.teacher, max_tokens=room))


def job_params(cfg: GenerateConfig, recipe: Recipe) -> tuple[dict[str, Any], dict | None]:
    """The job's canonical request parameters (the store key) and the output schema asked for:
    the teacher's sampling parameters, plus `response_format` when the recipe has a schema."""
    params: dict[str, Any] = dict(cfg.teacher.params())
    schema = recipe.schema(cfg.labels, cfg.with_rationale) if cfg.structured else None
    if schema is not None:
        params["response_format"] = response_format(schema, recipe.name)
    return params, schema


def sample_params(params: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """k requests' parameters for self-consistency: seeds seed, seed+1, ... (the first is the
    single-answer request itself, so k=1 and the first of k share an answer)."""
    seed = params.get("seed") or 0
    return [params] + [{**params, "seed": seed + i} for i in range(1, k)]


def result_line(result: GenerateResult) -> str:
    return json.dumps(to_dict(result))
