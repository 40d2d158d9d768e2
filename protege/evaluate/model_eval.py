"""Evaluate one student model directory, or the teacher's zero-shot answers, on a test file."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from protege.data.io import write_json, write_jsonl
from protege.errors import DataError
from protege.evaluate.metrics import is_uncased
from protege.evaluate.predict import Decoding, generate, load_for_eval, single_request_ms
from protege.evaluate.score import add_generated, score_outputs, teacher_outputs
from protege.formats import (
    TaskConfig,
    explain_input,
    inference_input,
    load_task,
    recorded_decoding,
)

DEFAULT_HOURLY_PRICE_USD = 0.10
"""Assumed price of the machine a student runs on (a small CPU VM), for cost per 1,000."""


def student_speed(seconds_per_example: float, hourly_price_usd: float) -> dict[str, float]:
    """Latency and an *estimated* cost: measured seconds x an assumed hourly machine price."""
    return {
        "latency_s_per_example": seconds_per_example,
        "latency_ms_per_example": 1000 * seconds_per_example,
        "hourly_price_usd": hourly_price_usd,
        "cost_per_1k_usd": 1000 * seconds_per_example * hourly_price_usd / 3600,
    }


def single_speed(ms: list[float]) -> dict[str, float | int | None]:
    """The p50 of single requests (one input at a time), beside the batched figures."""
    import statistics

    return {"p50_single_ms": statistics.median(ms) if ms else None, "n_single": len(ms)}


def evaluate_model(
    model_dir: str | Path,
    records: list[dict[str, Any]],
    task: TaskConfig | None = None,
    *,
    decoding: Decoding | None = None,
    out_dir: str | Path | None = None,
    source: str = "test",
    hourly_price_usd: float = DEFAULT_HOURLY_PRICE_USD,
    device: str | None = None,
) -> dict[str, Any]:
    """Generate with the student in `model_dir` on `records` and score it.

    The task defaults to the model's own `protege_task.json`. Returns the metrics (with 95%
    intervals), decoding settings and speed, plus `per_example` rows; with `out_dir`, writes
    `metrics.json` (everything but the rows) and `predictions.jsonl` (the rows)."""
    if not records:
        raise DataError(source, "no rows to evaluate")
    task = task or load_task(model_dir)
    if task.input_prefix is None:  # the prefix the student was trained with (T5's summarize:)
        task = replace(task, input_prefix=load_task(model_dir).input_prefix)
    decoding = (decoding or Decoding()).resolved(task, recorded_decoding(model_dir))
    student = load_for_eval(model_dir, device)
    model, tok, device = student.model, student.tok, student.device
    inputs = [inference_input(task, r, source) for r in records]
    gen = generate(student, inputs, decoding, desc=Path(model_dir).name)
    rationales = None
    if task.format == "multitask" and any(r.get(task.rationale_field) for r in records):
        # Multitask students explain only when asked with `explain:`; score that pass for BLEU,
        # cut at the budget dev selection cut its rationales at (the same `decoding`).
        expl = generate(student, [explain_input(task, r, source) for r in records], decoding)
        rationales = expl.texts
    served, confidences = served_labels(model_dir, device, task, inputs, decoding)
    metrics, rows = score_outputs(
        task,
        records,
        gen.texts,
        preds=served,
        rationales=rationales,
        n_tokens=gen.n_tokens,
        lowercase=is_uncased(tok),
        source=source,
    )
    if served is not None:  # the headline is what is served; free generation beside it
        metrics["served_by"] = "label scoring"
        add_generated(metrics, rows, task, gen.texts)
    elif task.type == "classification":
        metrics["served_by"] = "generation"
    result = {
        "model_dir": str(model_dir),
        "task": _task_dict(task),
        "decoding": decoding.to_dict(),
        # The rest of the decoding: the student's generation config, which training wrote
        # explicitly (train.generation), not what the pretrained checkpoint brought.
        "generation_config": {
            k: getattr(getattr(model, "generation_config", None), k, None)
            for k in (
                "no_repeat_ngram_size",
                "length_penalty",
                "early_stopping",
                "forced_bos_token_id",
            )
        },
        "device": device,
        "speed": {
            **student_speed(gen.seconds_per_example, hourly_price_usd),
            **single_speed(single_request_ms(student, inputs, decoding)),
        },
        "metrics": metrics,
        "per_example": rows,
    }
    if confidences is not None:  # the served answer's probability: its calibration
        add_calibration(result, confidences)
    if out_dir is not None:
        write_outputs(result, out_dir)
    return result


def served_labels(
    model_dir: str | Path, device: str, task: TaskConfig, inputs: list[str], decoding: Decoding
) -> tuple[list[str | None] | None, list[float] | None]:
    """The labels `protege predict` and `protege serve` answer with by default, and the
    `score` they answer with (a classifier's softmax probability; a generative student's
    probability of the chosen label's tokens): the closed label set scored
    (`Predictor.score`, never malformed). (None, None) where they generate
    (`rationale+label`, summaries), as evaluation did."""
    from protege.formats import clip_sources
    from protege.serve.predictor import Predictor
    from protege.serve.scoring import supports_scoring

    if not supports_scoring(task):
        return None, None
    # Loaded as `protege predict` and `protege serve` load it (the runtime they use for it).
    backend = Predictor.load(model_dir, device=device).backend
    backend.max_source_len = decoding.max_source_len
    predictor = Predictor(backend, task)  # the task eval scores it in
    bs = max(1, decoding.batch_size)
    preds: list[dict[str, Any]] = []
    for i in range(0, len(inputs), bs):
        preds += predictor.score(clip_sources(inputs[i : i + bs], decoding.max_source_len))
    return [p["label"] for p in preds], [float(p["score"]) for p in preds]


def add_calibration(result: dict[str, Any], confidences: list[float]) -> None:
    """Each row's confidence (the served label's probability) and the ECE beside accuracy."""
    from protege.evaluate.metrics import expected_calibration_error

    rows = result["per_example"]
    correct = [int(bool(r.get("correct"))) for r in rows]
    for row, c in zip(rows, confidences, strict=True):
        row["confidence"] = round(c, 4)
    result["metrics"]["ece"] = expected_calibration_error(confidences, correct)


def evaluate_teacher(
    teacher_file: str | Path, records: list[dict[str, Any]], task: TaskConfig
) -> dict[str, Any]:
    """Score the teacher's zero-shot answers (`teacher_label` / `teacher_summary`, written by
    `protege generate`) on the same test rows, with its cost and latency per example.

    A paid teacher is often asked about only the first N test rows (`teacher_zeroshot.limit`):
    it is scored on those rows, and an asked row with no answer (a failed call) or a flagged
    one counts wrong."""
    from protege.data.io import read_records

    field = "teacher_label" if task.type == "classification" else "teacher_summary"
    answers = read_records(teacher_file)
    n_asked = teacher_sample_size(teacher_file, records, answers)
    records = records[:n_asked]
    texts, preds, info = teacher_outputs(task, records, answers, field)
    info["n_asked"] = n_asked
    metrics, rows = score_outputs(task, records, texts, preds=preds, source=str(teacher_file))
    models = sorted({str((a.get("provenance") or {}).get("model")) for a in answers} - {"None"})
    return {
        "model_dir": None,
        "teacher_file": str(teacher_file),
        "teacher_model": ", ".join(models) or None,
        "task": _task_dict(task),
        "decoding": None,
        "speed": info,
        "metrics": metrics,
        "per_example": rows,
    }


def teacher_sample_size(
    teacher_file: str | Path, test: list[dict[str, Any]], answers: list[dict[str, Any]]
) -> int:
    """How many leading test rows the teacher was asked about: `n_records` of the generate
    summary beside the file (`<name>.summary.json`), else up to the last answered row."""
    from protege.evaluate.score import record_uid

    summary = Path(teacher_file).with_name(Path(teacher_file).stem + ".summary.json")
    if summary.exists():
        n = json.loads(summary.read_text()).get("n_records")
        if isinstance(n, int) and n > 0:
            return min(n, len(test))
    answered = {record_uid(a, i) for i, a in enumerate(answers)}
    last = max((i for i, r in enumerate(test) if record_uid(r, i) in answered), default=-1)
    return last + 1 if last >= 0 else len(test)


def write_outputs(result: dict[str, Any], out_dir: str | Path) -> None:
    out = Path(out_dir)
    write_jsonl(out / "predictions.jsonl", result["per_example"])
    write_json(out / "metrics.json", {k: v for k, v in result.items() if k != "per_example"})


def read_outputs(out_dir: str | Path) -> dict[str, Any] | None:
    """A result written by `write_outputs`, or None when absent."""
    out = Path(out_dir)
    if not (out / "metrics.json").exists() or not (out / "predictions.jsonl").exists():
        return None
    from protege.data.io import iter_jsonl

    result = json.loads((out / "metrics.json").read_text())
    result["per_example"] = [
        {k: v for k, v in r.items() if k != "_line"} for r in iter_jsonl(out / "predictions.jsonl")
    ]
    return result


def _task_dict(task: TaskConfig) -> dict[str, Any]:
    from protege.config import to_dict

    return to_dict(task)
