"""Evaluate a whole training run: every configuration's two checkpoints on the test file,
each tested against its baseline on the same rows, seeds aggregated, and the teacher's
zero-shot row beside them. Writes `RUN_DIR/eval/summary.json` (+ per-model files).

A checkpoint already scored with the same test file, task, decoding and weights is read back
rather than re-generated, so a rerun after adding one configuration scores only that one.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from protege.config import fingerprint, from_dict, read_yaml, to_dict
from protege.data.io import file_sha256, read_records, write_json
from protege.errors import DataError, ProtegeError
from protege.evaluate.hygiene import check_splits, refuse_test_use
from protege.evaluate.model_eval import (
    DEFAULT_HOURLY_PRICE_USD,
    evaluate_model,
    evaluate_teacher,
    read_outputs,
    student_speed,
    write_outputs,
)
from protege.evaluate.predict import Decoding
from protege.evaluate.score import headline, per_example_scores
from protege.evaluate.stats import aggregate, mcnemar, paired_bootstrap, wilson_ci
from protege.formats import TaskConfig, recorded_decoding

CHECKPOINTS = {"loss": "best-loss", "accuracy": "best-accuracy"}
"""results.json `best` keys -> checkpoint directory names (Paper A tests both)."""
TEACHER_FILE = Path("generate") / "teacher-zeroshot.jsonl"
EVAL_VERSION = 2
"""Part of every cached result's fingerprint: raised when what a result holds changes."""


def recipe_defaults(run_dir: str | Path) -> dict[str, Any]:
    """`task` and `data` from `RUN_DIR/recipe.yaml` (a variant's sub-run: its parent's)."""
    for path in (Path(run_dir) / "recipe.yaml", Path(run_dir).parent / "recipe.yaml"):
        if path.exists():
            return read_yaml(path)
    return {}


def training_sources(run_dir: Path, data: dict[str, Any]) -> dict[str, str]:
    """The train and dev files the run actually trained and selected on: from the resolved
    `train/train_config.yaml` that training writes, else from the recipe's `data`."""
    path = run_dir / "train" / "train_config.yaml"
    tc = read_yaml(path) if path.exists() else {}
    found = {
        "train": tc.get("train_data") or data.get("train"),
        "dev": tc.get("dev_data") or data.get("dev"),
    }
    return {k: str(v) for k, v in found.items() if v}


def _read_for_hygiene(
    sources: dict[str, str], test: list[dict[str, Any]]
) -> tuple[dict, list[str]]:
    """Rows of each split that is a plain local file; others (hub names, `file[a:b]` slices
    the pipeline already checked) are listed as not checked rather than fetched."""
    splits, skipped = {"test": test}, []
    for key, source in sources.items():
        if Path(source).is_file():
            splits[key] = read_records(source, key)
        else:
            skipped.append(f"{key}: {source}")
    return splits, skipped


def resolve_inputs(
    run_dir: str | Path, test_path: str | Path | None, task: TaskConfig | None
) -> tuple[str, TaskConfig, dict[str, Any]]:
    """Test file and task from the arguments, else from the run's recipe.yaml."""
    recipe = recipe_defaults(run_dir)
    data = recipe.get("data") or {}
    # `protege run` materialises every split under RUN_DIR/data (slices and hub names
    # resolved); that file, not the recipe's source string, is what the run was tested on.
    run_dir = Path(run_dir)
    made = [d / "data" / "test.jsonl" for d in (run_dir, run_dir.parent)]
    test = test_path or next((str(p) for p in made if p.is_file()), None) or data.get("test")
    if not test:
        raise ProtegeError(
            f"{run_dir}: no test file (pass --test, or set data.test in recipe.yaml)"
        )
    if task is None:
        if "task" not in recipe:
            raise ProtegeError(f"{run_dir}: no task (recipe.yaml has no `task` section)")
        task = from_dict(TaskConfig, recipe["task"], "task")
    return str(test), task, data


def evaluate_run(
    run_dir: str | Path,
    test_path: str | Path | None = None,
    task: TaskConfig | None = None,
    teacher_file: str | Path | None = None,
    *,
    decoding: Decoding | None = None,
    hourly_price_usd: float = DEFAULT_HOURLY_PRICE_USD,
    device: str | None = None,
) -> dict[str, Any]:
    """Score every checkpoint in `RUN_DIR/train/results.json` on the test file; returns and
    writes the summary. Refuses when the run's training or dev data is the test file."""
    run_dir = Path(run_dir)
    test_path, task, data = resolve_inputs(run_dir, test_path, task)
    results_path = run_dir / "train" / "results.json"
    if not results_path.exists():
        raise ProtegeError(f"{run_dir}: no train/results.json (train the run first)")
    results = json.loads(results_path.read_text())
    sources = training_sources(run_dir, data)
    for role, key in (("training", "train"), ("selection (dev)", "dev")):
        refuse_test_use(sources.get(key), test_path, role)
    test = read_records(test_path, "test")
    if not test:
        raise DataError(str(test_path), "no rows to evaluate")
    splits, skipped = _read_for_hygiene(sources, test)
    hygiene = {**check_splits(splits, task), "not_checked": skipped}
    decoding = decoding or Decoding()  # unset fields: as each checkpoint recorded them
    test_sha = file_sha256(test_path) if Path(test_path).exists() else test_path
    eval_dir = run_dir / "eval"

    entries: list[dict[str, Any]] = []
    scores: dict[str, list[float]] = {}
    for cfg in results:
        for kind, dirname in CHECKPOINTS.items():
            best = (cfg.get("best") or {}).get(kind)
            if not best or not best.get("path"):
                continue
            model_dir = run_dir / "train" / best["path"]
            if not model_dir.exists():
                continue
            out = eval_dir / cfg["id"] / dirname
            # Each configuration is scored in its own format (a baseline has no rationale).
            cfg_task = replace(task, format=cfg["format"]) if cfg.get("format") else task
            model_decoding = decoding.resolved(cfg_task, recorded_decoding(model_dir))
            key = fingerprint(
                test_sha,
                to_dict(cfg_task),
                model_decoding.to_dict(),
                _weights_stamp(model_dir),
                EVAL_VERSION,
            )
            result = read_outputs(out)
            if result is None or result.get("fingerprint") != key:
                result = evaluate_model(
                    model_dir,
                    test,
                    cfg_task,
                    decoding=model_decoding,
                    hourly_price_usd=hourly_price_usd,
                    device=device,
                    source=test_path,
                )
                result["fingerprint"] = key
                write_outputs(result, out)
            else:  # scored earlier: the latencies stand, the assumed price may have changed
                result["speed"] = {
                    **result["speed"],
                    **student_speed(result["speed"]["latency_s_per_example"], hourly_price_usd),
                }
            name = f"{cfg['id']}/{dirname}"
            scores[name] = per_example_scores(cfg_task, result["per_example"])
            entries.append(
                {
                    "name": name,
                    "id": cfg["id"],
                    "checkpoint": dirname,
                    **{k: cfg.get(k) for k in ("model", "format", "lr", "split", "seed")},
                    "baseline": bool(cfg.get("baseline")),
                    "dev": _dev_metrics(best, model_dir),
                    "test": result["metrics"],
                    "speed": result["speed"],
                    "decoding": result["decoding"],
                    "files": str(out.relative_to(run_dir)),
                }
            )
    for e in entries:
        e["paired"] = _paired(e, entries, scores, task)

    teacher = None
    teacher_file = teacher_file or (run_dir / TEACHER_FILE)
    if Path(teacher_file).exists():
        teacher_result = evaluate_teacher(teacher_file, test, task)
        write_outputs(teacher_result, eval_dir / "teacher")
        teacher = {k: v for k, v in teacher_result.items() if k != "per_example"}
        teacher["paired"] = _vs_teacher(entries, scores, teacher_result, task)

    summary = {
        "run_dir": str(run_dir),
        "test": test_path,
        "test_sha256": test_sha,
        "n_test": len(test),
        "sources": sources,
        "task": to_dict(task),
        "headline": headline(task),
        "decoding": _decoding_summary(decoding, entries),
        "hourly_price_usd": hourly_price_usd,
        "hygiene": hygiene,
        "models": entries,
        "aggregates": _aggregates(entries, task),
        "teacher": teacher,
    }
    write_json(eval_dir / "summary.json", summary)
    return summary


def _decoding_summary(asked: Decoding, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The decoding of the summary: each setting's value where every checkpoint used the
    same, else its range (`"128-183"`: each decoded as its training recorded)."""
    out = asked.to_dict()
    for key in ("max_new_tokens", "num_beams"):
        values = sorted({e["decoding"][key] for e in entries if e.get("decoding")})
        if values:
            out[key] = values[0] if len(values) == 1 else f"{values[0]}-{values[-1]}"
    return out


def _weights_stamp(model_dir: Path) -> str:
    """The checkpoint's content fingerprint (`digest.py`): changes when it is overwritten."""
    from protege.digest import model_fingerprint

    return model_fingerprint(model_dir)


def _dev_metrics(best: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    """The checkpoint's dev scores from results.json, with the number of dev rows scored
    (from the checkpoint's protege_meta.json) and a Wilson 95% interval on dev accuracy over
    those rows only. Rows left out of dev (flagged teacher output, a missing rationale under
    `missing_rationale: skip`) were never scored: they are not in the accuracy's denominator,
    so not in the interval's `n` either; `n_unscored` counts them."""
    dev = {k: v for k, v in best.items() if k != "path"}
    meta_path = model_dir / "protege_meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    counts = (meta.get("data") or {}).get("dev") or {}
    n = counts.get("scored")
    if n is None and counts.get("records") is not None:  # checkpoints from before "scored"
        n = (
            counts["records"]
            - counts.get("skipped_flagged", 0)
            - counts.get("skipped_missing_rationale", 0)
        )
    dev["n"] = n
    dev["n_unscored"] = counts["records"] - n if n is not None and "records" in counts else None
    if n and dev.get("eval_accuracy") is not None:
        dev["accuracy_ci"] = list(wilson_ci(dev["eval_accuracy"], n))
    return dev


def dev_score(entry: dict[str, Any], task: TaskConfig) -> float | None:
    """The dev-set selection metric of a checkpoint, from results.json."""
    key = "eval_accuracy" if task.type == "classification" else "eval_rougeL"
    value = entry["dev"].get(key)
    return float(value) if value is not None else None


def _paired(
    entry: dict[str, Any],
    entries: list[dict[str, Any]],
    scores: dict[str, list[float]],
    task: TaskConfig,
) -> dict[str, Any] | None:
    """Test a non-baseline checkpoint against a baseline checkpoint of the same kind: the one
    with the same lr and seed, else the same seed with the best dev score, else the best dev
    score. Selection uses dev only, never test."""
    if entry["baseline"]:
        return None
    same_kind = [b for b in entries if b["baseline"] and b["checkpoint"] == entry["checkpoint"]]
    match = [b for b in same_kind if b["lr"] == entry["lr"] and b["seed"] == entry["seed"]]
    how = "same lr and seed"
    if not match:
        match = [b for b in same_kind if b["seed"] == entry["seed"]] or same_kind
        match = sorted(match, key=lambda b: -(dev_score(b, task) or float("-inf")))[:1]
        how = "best baseline on dev"
    if not match:
        return None
    base = match[0]
    a, b = scores[entry["name"]], scores[base["name"]]
    out: dict[str, Any] = {"baseline": base["name"], "chosen_by": how}
    out["paired_bootstrap"] = paired_bootstrap(a, b)
    if task.type == "classification":
        out["mcnemar"] = mcnemar([int(x) for x in a], [int(x) for x in b])
    return out


def _vs_teacher(
    entries: list[dict[str, Any]],
    scores: dict[str, list[float]],
    teacher: dict[str, Any],
    task: TaskConfig,
) -> dict[str, Any] | None:
    """The student chosen on dev against the teacher, on the rows the teacher was asked:
    "did distillation work" as a paired difference (student minus teacher)."""
    scored = [e for e in entries if dev_score(e, task) is not None]
    if not scored:
        return None
    best = max(scored, key=lambda e: dev_score(e, task))
    t = per_example_scores(task, teacher["per_example"])
    s = scores[best["name"]][: len(t)]
    out: dict[str, Any] = {"student": best["name"], "n": len(t)}
    out["paired_bootstrap"] = paired_bootstrap(s, t)
    if task.type == "classification":
        out["mcnemar"] = mcnemar([int(x) for x in s], [int(x) for x in t])
    return out


def _aggregates(entries: list[dict[str, Any]], task: TaskConfig) -> list[dict[str, Any]]:
    """Mean +- std over seeds of each (model, format, lr, split, checkpoint) configuration."""
    key_metric = headline(task)
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        split = tuple(e["split"]) if e["split"] else None
        groups[(e["model"], e["format"], e["lr"], split, e["baseline"], e["checkpoint"])].append(e)
    out = []
    for (model, fmt, lr, split, baseline, ckpt), group in groups.items():
        row = {
            "model": model,
            "format": fmt,
            "lr": lr,
            "split": list(split) if split else None,
            "baseline": baseline,
            "checkpoint": ckpt,
            "seeds": [e["seed"] for e in group],
            "test_" + key_metric: aggregate([e["test"].get(key_metric) for e in group]),
            "dev": aggregate([dev_score(e, task) for e in group]),
        }
        if task.type == "classification":
            row["test_coverage"] = aggregate([e["test"].get("coverage") for e in group])
            row["test_bleu"] = aggregate([e["test"].get("bleu") for e in group])
        out.append(row)
    return out
