"""One configuration of a self-fitting kind (`Student.fits_itself`: the classical students):
the kind fits its candidates and scores them on dev; the best by dev loss and by dev accuracy
are saved as the training loop saves its checkpoints, with the same history and
`result.json`, so the grid, evaluation, report and serving see no difference."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from protege.config import to_dict
from protege.data.io import atomic_write_text, write_json
from protege.train import checkpoint
from protege.train.config import TrainConfig
from protege.train.data import data_fingerprint, load_examples, refuse_selection_on_training_rows
from protege.train.results import json_lines, result_entry

BEST = (("eval_loss", False, "best-loss"), ("eval_accuracy", True, "best-accuracy"))


def fit_one(student, cfg: TrainConfig, out: Path, run_id: str, baseline: bool) -> dict[str, Any]:
    task = student.task = cfg.task
    train = load_examples(cfg.train_data, task, cfg.max_train_rows,
                          min_confidence=cfg.min_confidence)  # fmt: skip
    dev = load_examples(cfg.dev_data, task, cfg.max_dev_rows, split="dev")
    refuse_selection_on_training_rows(cfg, task, train.records, dev.records)
    t0 = time.perf_counter()
    fitted = student.fit(train.examples, dev.examples, cfg.seed)
    seconds = time.perf_counter() - t0
    history = [
        {"step": i + 1, "epoch": 1.0, **f.metrics, "fit_seconds": round(seconds, 3)}
        for i, f in enumerate(fitted)
    ]
    meta_base = {
        "run_id": run_id,
        "config": to_dict(cfg),
        "seed": cfg.seed,
        "data_fingerprint": data_fingerprint(
            cfg.train_data, cfg.dev_data, max_rows=cfg.max_train_rows
        ),
        "versions": checkpoint.library_versions(),
        "decoding": cfg.generation.settings(),
        "data": {"train": train.counts(), "dev": dev.counts()},
    }
    for key, higher, dirname in BEST:
        best = checkpoint.select_best(history, key, higher)
        if best is None:
            continue
        student.model = fitted[best["step"] - 1].model
        meta = {**meta_base, "step": best["step"], "epoch": 1.0, "metrics": best}
        checkpoint.save_model_dir(student, task, meta, out / dirname)
    atomic_write_text(out / "history.jsonl", json_lines(history))
    result = result_entry(
        cfg, run_id, baseline, history, "eval_accuracy", False, len(history), train, dev
    )
    result["lr"] = None  # the kind chose its own candidates: no learning rate was used
    write_json(out / "result.json", result)
    atomic_write_text(out / "DONE", f"fitted {len(history)} candidates in {seconds:.2f} s\n")
    return result
