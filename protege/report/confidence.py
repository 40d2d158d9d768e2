"""Is the teacher right when it is sure? Accuracy of its zero-shot labels against their
recorded confidence (label probability from logprobs, or self-consistency share), by bin.

A `min_confidence` for training is worth setting where accuracy climbs with confidence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protege.data.io import iter_jsonl
from protege.formats import normalise_label
from protege.report import plots
from protege.report.model import Figure, Section, Table, pct
from protege.report.sections import RunFiles

BINS = (0.0, 0.5, 0.7, 0.9, 1.0)
TEACHER_FILE = Path("generate") / "teacher-zeroshot.jsonl"


def accuracy_by_confidence(
    rows: list[dict[str, Any]], labels: list[str], gold: str, pred: str, bins=BINS
) -> list[dict[str, Any]]:
    """Per confidence bin [lo, hi) (the last one closed): rows, correct, accuracy. Rows without
    a confidence are left out; a flagged row (no label) counts wrong."""
    out = [
        {"lo": lo, "hi": hi, "n": 0, "correct": 0}
        for lo, hi in zip(bins[:-1], bins[1:], strict=True)
    ]
    for r in rows:
        c = r.get("confidence")
        if c is None:
            continue
        b = next((b for b in out if b["lo"] <= c < b["hi"]), out[-1])
        b["n"] += 1
        answer = None if r.get("flagged") else r.get(pred)
        b["correct"] += answer is not None and answer == normalise_label(str(r[gold]), labels)
    for b in out:
        b["accuracy"] = b["correct"] / b["n"] if b["n"] else None
    return out


def confidence_section(run: RunFiles) -> Section | None:
    """The section, or None when the teacher's answers carry no confidence (left out)."""
    path = run.run_dir / TEACHER_FILE
    task = run.task or {}
    if run.kind != "classification" or not path.exists():
        return None
    rows = list(iter_jsonl(path))
    gold = task.get("label_field", "label")
    gold = f"original_{gold}" if rows and f"original_{gold}" in rows[0] else gold
    if not any(r.get("confidence") is not None and gold in r for r in rows):
        return None
    labels = task.get("labels") or []
    bins = accuracy_by_confidence(rows, labels, gold, "teacher_label")
    s = Section("Teacher accuracy against its confidence")
    s.tables.append(Table(
        ["confidence", "answers", "correct", "accuracy (%)"],
        [[f"{b['lo']:.1f}–{b['hi']:.1f}", str(b["n"]), str(b["correct"]), pct(b["accuracy"])]
         for b in bins],
        caption="The teacher's zero-shot labels on the test rows, by recorded confidence.",
    ))  # fmt: skip
    png = plots.accuracy_vs_confidence(bins, run.out_dir / "teacher_confidence.png")
    if png:
        s.figures.append(Figure(png, "Teacher accuracy per confidence bin (answers per bin)."))
    return s
