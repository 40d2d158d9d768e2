"""Predict a whole file: batched, with a progress bar, resumable.

Rows go to `OUT.partial` as they are predicted (appended and flushed per batch); the finished
file is renamed to `OUT`, so `OUT` only ever exists complete. A rerun continues an existing
`OUT.partial` after checking that its rows are the input's first rows, so nothing is redone.
Every row is validated (rendered with the task's input template) before any model call, so a
bad row stops the run at once with its line number.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from protege.data.io import clean, read_records
from protege.errors import ProtegeError
from protege.serve.predictor import Predictor


@dataclass
class PredictResult:
    """What a `predict_file` run did."""

    output: Path
    n_rows: int
    n_resumed: int
    n_predicted: int
    n_malformed: int


def default_output(input_path: str | Path) -> Path:
    p = Path(input_path)
    return p.with_name(p.stem + ".predictions.jsonl")


def predict_file(
    predictor: Predictor,
    input_path: str | Path,
    output: str | Path | None = None,
    with_rationale: bool = False,
    fast: bool = True,
    progress: bool = True,
) -> PredictResult:
    """Write one row per input record: the record's fields plus `prediction`."""
    from tqdm import tqdm

    records = read_records(input_path)
    sources = [predictor.source(r, source=str(input_path)) for r in records]
    out = Path(output) if output else default_output(input_path)
    if out.exists():
        raise ProtegeError(f"{out}: already exists (choose another --output)")
    partial = out.with_name(out.name + ".partial")
    done = _resume(partial, records, with_rationale)
    out.parent.mkdir(parents=True, exist_ok=True)
    malformed = 0
    bar = tqdm(total=len(records), initial=done, unit="row", desc="predict", disable=not progress)
    with open(partial, "a", encoding="utf-8") as f:
        for i in range(done, len(records), predictor.batch_size):
            batch = sources[i : i + predictor.batch_size]
            preds = predictor.predict(batch, with_rationale=with_rationale, fast=fast)
            lines = []
            for record, pred in zip(records[i : i + len(batch)], preds, strict=True):
                malformed += predictor.task.type == "classification" and pred["label"] is None
                lines.append(json.dumps({**clean(record), "prediction": pred}, ensure_ascii=False))
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(batch))
    bar.close()
    os.replace(partial, out)
    return PredictResult(out, len(records), done, len(records) - done, malformed)


def _resume(partial: Path, records: list[dict], with_rationale: bool) -> int:
    """Rows already in `partial` (a torn last line is dropped); checks they match the input."""
    if not partial.exists():
        return 0
    raw = partial.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    if len(complete) != len(raw):  # interrupted mid-write: drop the torn line
        with open(partial, "wb") as f:
            f.write(complete)
    rows = [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]
    if len(rows) > len(records):
        raise ProtegeError(f"{partial}: has more rows than the input; remove it to start over")
    for n, (row, record) in enumerate(zip(rows, records, strict=False), start=1):
        pred = row.pop("prediction", None)
        if row != clean(record) or not isinstance(pred, dict):
            raise ProtegeError(
                f"{partial}:{n}: does not match the input's row {n}; remove it to start over"
            )
        if ("rationale" in pred) != with_rationale and "label" in pred:
            raise ProtegeError(
                f"{partial}: was written {'with' if not with_rationale else 'without'} "
                "--rationale; rerun the same way or remove it"
            )
    return len(rows)
