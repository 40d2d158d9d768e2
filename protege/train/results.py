"""What one trained configuration leaves behind, whatever trained it: the history it is
resumed from and `result.json`'s entry (best checkpoints by dev loss and by dev accuracy)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from protege.data.io import iter_jsonl
from protege.train import checkpoint

KEEP = (
    "step",
    "epoch",
    "eval_loss",
    "eval_loss_label_span",
    "eval_accuracy",
    "eval_coverage",
    "eval_bleu",
    "eval_rougeL",
)
"""The dev metrics of a best checkpoint that the results table shows."""


def read_upto(path: Path, step: int) -> list[dict[str, Any]]:
    """The log entries a resumed run keeps: those up to its checkpoint's step."""
    if not step or not path.exists():
        return []
    rows = [h for h in iter_jsonl(path) if h["step"] <= step]
    for h in rows:
        h.pop("_line", None)
    return rows


def json_lines(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def result_entry(
    cfg, run_id, baseline, history, acc_key, stopped_early, step, train, dev
) -> dict[str, Any]:
    def best(key: str, higher: bool, dirname: str) -> dict | None:
        h = checkpoint.select_best(history, key, higher)
        if h is None:
            return None
        return {**{k: h.get(k) for k in KEEP if k in h}, "path": f"{run_id}/{dirname}"}

    return {
        "id": run_id,
        "model": cfg.model,
        "format": cfg.task.format,
        "lr": cfg.lr,
        "split": list(cfg.split) if cfg.task.format != "label" else None,
        "seed": cfg.seed,
        "baseline": baseline,
        "status": "done",
        "early_stopped": stopped_early,
        "steps": step,
        "best": {
            "loss": best("eval_loss", False, "best-loss"),
            "accuracy": best(acc_key, True, "best-accuracy"),
        },
        "history": f"{run_id}/history.jsonl",
        "decoding": cfg.generation.settings(),
        "data": {"train": train.counts(), "dev": dev.counts()},
    }
