"""Scoring outputs against a test file: the same code for a student's generations and the
teacher's zero-shot answers, so the two rows of a report are comparable by construction."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from protege.errors import DataError
from protege.evaluate import metrics as M
from protege.evaluate.stats import bootstrap_ci, mean_ci
from protege.formats import TaskConfig, normalise_label, parse_output


def headline(task: TaskConfig) -> str:
    """The metric a model is selected and tested on: accuracy, or per-summary ROUGE-L."""
    return "accuracy" if task.type == "classification" else "rougeL"


def record_uid(record: dict[str, Any], i: int) -> str:
    return str(record.get("uid", record.get("id", record.get("_line", i + 1))))


def gold_labels(task: TaskConfig, records: list[dict[str, Any]], source: str) -> list[str]:
    golds = []
    for i, r in enumerate(records):
        g = normalise_label(str(r.get(task.label_field, "")), task.labels)
        if g is None:
            raise DataError(
                source,
                f"gold label {r.get(task.label_field)!r} is not one of {', '.join(task.labels)}",
                line=r.get("_line", i + 1),
                field=task.label_field,
            )
        golds.append(g)
    return golds


def score_outputs(
    task: TaskConfig,
    records: list[dict[str, Any]],
    texts: list[str],
    *,
    preds: list[str | None] | None = None,
    rationales: list[str | None] | None = None,
    n_tokens: list[int] | None = None,
    lowercase: bool = False,
    source: str = "test",
    seed: int = 0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, per-example rows) for outputs `texts` on `records`.

    `preds`/`rationales` override what `parse_output` reads from `texts` (the teacher's answers
    come already parsed; a multitask student's rationales come from a second `explain:` pass).
    `lowercase`: score BLEU case-insensitively (for students whose tokenizer is uncased).
    Every headline metric carries a bootstrap 95% interval (`<name>_ci`)."""
    if len(texts) != len(records):
        raise ValueError(f"{len(texts)} outputs for {len(records)} records")
    rows = [
        {"uid": record_uid(r, i), "output": t}
        for i, (r, t) in enumerate(zip(records, texts, strict=True))
    ]
    if task.type == "summarization":
        refs = [str(r.get(task.target_field) or "") for r in records]
        for i, r in enumerate(records):
            if not refs[i].strip():
                raise DataError(
                    source, "missing reference", line=r.get("_line", i + 1), field=task.target_field
                )
        per = M.rouge_per_example(texts, refs)
        out: dict[str, Any] = {"type": "summarization", "n": len(records)}
        for k in M.ROUGE_KEYS:
            out[k] = sum(per[k]) / len(per[k]) if per[k] else 0.0
            out[f"{k}_ci"] = list(mean_ci(per[k], seed=seed))
        out["gen_len_words"] = M.mean_length_words(texts)
        out["gen_len_tokens"] = sum(n_tokens) / len(n_tokens) if n_tokens else None
        for i, row in enumerate(rows):
            row.update({k: per[k][i] for k in M.ROUGE_KEYS})
        out["headline"] = "rougeL"
        return out, rows

    golds = gold_labels(task, records, source)
    if preds is None or (rationales is None and task.needs_rationale):
        parsed = [parse_output(task, t) for t in texts]
        preds = preds if preds is not None else [p.label for p in parsed]
        if rationales is None and task.needs_rationale:
            rationales = [p.rationale for p in parsed]
    cm = M.classification_metrics(golds, preds, task.labels)
    correct = cm.pop("correct")
    parsed_flags = [int(p is not None) for p in preds]
    out = {"type": "classification", **cm}
    out["accuracy_ci"] = list(mean_ci(correct, seed=seed))
    out["coverage_ci"] = list(mean_ci(parsed_flags, seed=seed))
    for i, row in enumerate(rows):
        row.update({"gold": golds[i], "pred": preds[i], "correct": correct[i]})

    # Rationale BLEU against the teacher's rationale, where the test file has one.
    pairs = [
        (i, rationales[i] or "", str(records[i].get(task.rationale_field) or ""))
        for i in range(len(records))
        if rationales is not None and str(records[i].get(task.rationale_field) or "").strip()
    ]
    out["n_rationale_refs"] = len(pairs)
    out["bleu"] = out["bleu_ci"] = out["sentence_bleu_nltk"] = None
    if pairs:
        hyps, refs = M.bleu_inputs([h for _, h, _ in pairs], [r for _, _, r in pairs], lowercase)
        stats = M.bleu_sentence_stats(hyps, refs)
        out["bleu"] = M.bleu_from_stats(stats)
        out["bleu_lowercased"] = lowercase
        table = np.asarray(stats)  # (n, 10): resampled rows are summed, then scored
        out["bleu_ci"] = list(
            bootstrap_ci(len(stats), lambda idx: M.bleu_from_totals(table[idx].sum(axis=0)))
        )
        out["sentence_bleu_nltk"] = M.sentence_bleu_nltk_mean(hyps, refs)
        for i, h, r in pairs:
            rows[i].update({"rationale": h, "reference_rationale": r})
    out["gen_len_words"] = M.mean_length_words(texts)
    out["gen_len_tokens"] = sum(n_tokens) / len(n_tokens) if n_tokens else None
    out["headline"] = "accuracy"
    return out, rows


def add_generated(
    metrics: dict[str, Any], rows: list[dict[str, Any]], task: TaskConfig, texts: list[str]
) -> None:
    """Free generation's accuracy beside a headline scored on another path (label scoring):
    `metrics["generated"]` (accuracy with its interval, coverage: the share that parsed,
    macro-F1) and each row's `generated_pred` / `generated_correct`."""
    preds = [parse_output(task, t).label for t in texts]
    cm = M.classification_metrics([r["gold"] for r in rows], preds, task.labels)
    correct = cm.pop("correct")
    metrics["generated"] = {
        "accuracy": cm["accuracy"],
        "accuracy_ci": list(mean_ci(correct)),
        "coverage": cm["coverage"],
        "macro_f1": cm["macro_f1"],
    }
    for row, pred, ok in zip(rows, preds, correct, strict=True):
        row["generated_pred"], row["generated_correct"] = pred, ok


def per_example_scores(task: TaskConfig, rows: list[dict[str, Any]]) -> list[float]:
    """The per-example values behind the headline metric (for paired tests)."""
    key = "correct" if task.type == "classification" else "rougeL"
    return [float(r[key]) for r in rows]


def teacher_outputs(
    task: TaskConfig, test: list[dict[str, Any]], answers: list[dict[str, Any]], field: str
) -> tuple[list[str], list[str | None] | None, dict[str, Any]]:
    """Line the teacher's zero-shot answers up with the test rows (by uid).

    A test row with no answer (a failed call) or a flagged answer (did not parse) counts as
    malformed, i.e. wrong; the counts are returned so the report can say so."""
    by_uid = {record_uid(a, i): a for i, a in enumerate(answers)}
    texts: list[str] = []
    preds: list[str | None] = []
    n_missing = n_flagged = 0
    costs, latencies = [], []
    spans: list[tuple[float, float]] = []  # (start, end) of each answer's request, seconds
    for i, r in enumerate(test):
        a = by_uid.get(record_uid(r, i))
        if a is None:
            n_missing += 1
            texts.append("")
            preds.append(None)
            continue
        value = a.get(field)
        text = str(value) if value is not None else str(a.get("teacher_text") or "")
        texts.append(text)
        if a.get("flagged") or value is None:
            n_flagged += 1
            preds.append(None)
        else:
            preds.append(normalise_label(text, task.labels) if task.type != "summarization" else "")
        prov = a.get("provenance") or {}
        if prov.get("cost_usd") is not None:
            costs.append(float(prov["cost_usd"]))
        if prov.get("latency_s") is not None:
            latencies.append(float(prov["latency_s"]))
            if end := _timestamp(prov.get("time")):
                spans.append((end - float(prov["latency_s"]), end))
    answered = len(test) - n_missing
    info = {
        "n_answers": answered,
        "n_missing": n_missing,
        "n_flagged": n_flagged,
        "cost_usd": sum(costs),
        "cost_per_example_usd": sum(costs) / answered if answered else None,
    }
    if spans and len(spans) == len(latencies):
        info.update(request_timing(spans))
    else:  # answers without timestamps: only their recorded latencies, concurrency unknown
        info.update(
            latency_s_per_example=sum(latencies) / len(latencies) if latencies else None,
            p50_single_ms=1000 * statistics.median(latencies) if latencies else None,
            timing="recorded per-request latencies (no timestamps: concurrency unknown)",
        )
    info["cost_per_1k_usd"] = (
        1000 * info["cost_per_example_usd"] if info["cost_per_example_usd"] is not None else None
    )
    return texts, (preds if task.type == "classification" else None), info


def _timestamp(value: Any) -> float | None:
    """Seconds since the epoch of a provenance `time` (ISO 8601), or None."""
    import datetime

    try:
        return datetime.datetime.fromisoformat(str(value)).timestamp() if value else None
    except ValueError:
        return None


def request_timing(spans: list[tuple[float, float]]) -> dict[str, Any]:
    """The teacher's speed from its requests' (start, end) times, measured as the students'
    is. `latency_s_per_example`: the wall time requests were in flight (the union of the
    spans) / n, as a batched student's is its generation time / n. `p50_single_ms`: the
    median latency of the requests that ran alone (none other in flight, so none queued
    behind another of ours), `n_single` of them; None when every request overlapped others.
    `max_in_flight` and `p50_in_flight_ms` (the median of all, queueing included) say what
    the concurrency did: a server that answers one at a time makes concurrent requests wait.
    """
    order = sorted(spans)
    busy, reach = 0.0, float("-inf")  # union length; the latest end seen so far
    alone: list[float] = []
    for i, (start, end) in enumerate(order):
        busy += max(0.0, end - max(start, reach))
        next_start = order[i + 1][0] if i + 1 < len(order) else float("inf")
        if start >= reach and next_start >= end:
            alone.append(end - start)
        reach = max(reach, end)
    events = sorted([(s, 1) for s, _ in order] + [(e, -1) for _, e in order])
    in_flight = peak = 0
    for _, step in events:  # an end sorts before a start at the same instant
        in_flight += step
        peak = max(peak, in_flight)
    return {
        "latency_s_per_example": busy / len(order),
        "p50_single_ms": 1000 * statistics.median(alone) if alone else None,
        "n_single": len(alone),
        "p50_in_flight_ms": 1000 * statistics.median(e - s for s, e in order),
        "max_in_flight": peak,
        "timing": "wall time in flight / n; p50 of the requests that ran alone",
    }
