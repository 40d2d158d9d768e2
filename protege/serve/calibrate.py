"""Choosing the cascade's threshold: where the student agrees with the teacher often enough.

On held-out rows that carry the teacher's answers (a run's dev split, or exported traffic),
the student predicts on the path that is served, with its confidence. Sorted by confidence,
each cut-off keeps the rows at or above it; the threshold is the lowest confidence at which
the student agrees with the teacher on at least the target share of the rows it keeps. The
curve (coverage against agreement, one point per cut-off) is written with the threshold into
the model directory (`CASCADE_FILE`) and drawn (`CURVE_PNG`), and the report shows it.

Agreement: the same label for classification; for text (summaries) a ROUGE-L F1 with the
teacher's answer of at least `ROUGE_AGREE` (0.5). Why 0.5: two competent summaries of one
article share much less (Paper B's table: ChatGPT zero-shot scores ROUGE-L 23 against the gold
summaries, fine-tuned students 32), so an agreement cut-off must sit well above that; at 0.5
the student's summary shares at least half its longest common subsequence with the teacher's,
a paraphrase of the same content rather than another summary.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.errors import ConfigError, DataError
from protege.formats import TaskConfig, normalise_label

CASCADE_FILE = "protege_cascade.json"
CURVE_PNG = "cascade_curve.png"
ROUGE_AGREE = 0.5
DEFAULT_TARGET = 0.97
"""The agreement `protege run` calibrates for (`protege calibrate` chooses any)."""


def rouge_l(a: str, b: str) -> float:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"]).score(b, a)["rougeL"].fmeasure


def agrees(task: TaskConfig, student: dict[str, Any], teacher: str | None,
           rouge_cutoff: float = ROUGE_AGREE) -> bool:  # fmt: skip
    """Does the student's prediction say what the teacher's answer says?"""
    if teacher is None:
        return False
    if task.type == "classification":
        return student.get("label") is not None and student.get("label") == normalise_label(
            str(teacher), task.labels
        )
    return rouge_l(student.get("text") or "", str(teacher)) >= rouge_cutoff


@dataclass
class Calibration:
    """A threshold and what it gives on the rows it was chosen on."""

    threshold: float
    target_agreement: float
    coverage: float
    """Share of rows the student answers at this threshold."""
    agreement: float | None
    """Agreement with the teacher on those rows (None: it answers none)."""
    n: int
    agreement_metric: str
    data: str = ""
    curve: list[list[float]] = field(default_factory=list)
    """[[threshold, coverage, agreement], ...], one point per distinct confidence, high to low."""
    created_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def curve(confidences: list[float], agree: list[bool]) -> list[list[float]]:
    """Coverage and agreement at every cut-off (rows with confidence >= it), highest first."""
    order = sorted(range(len(confidences)), key=lambda i: -confidences[i])
    points: list[list[float]] = []
    kept = agreed = 0
    n = len(order)
    for j, i in enumerate(order):
        kept += 1
        agreed += agree[i]
        last = j + 1 == n or confidences[order[j + 1]] != confidences[i]
        if last:
            points.append([confidences[i], kept / n, agreed / kept])
    return points


def choose(points: list[list[float]], target: float) -> tuple[float, float, float | None]:
    """(threshold, coverage, agreement): the lowest cut-off whose kept rows agree at least
    `target`; above every confidence (the student answers nothing) when none does."""
    best = None
    for t, coverage, agreement in points:
        if agreement >= target - 1e-12:
            best = (t, coverage, agreement)
    if best is None:
        top = points[0][0] if points else 1.0
        return math.nextafter(top, math.inf), 0.0, None
    return best


def threshold_for(model_dir: str | Path, target: float) -> Calibration:
    """The model's calibration for `target` (read again from its curve if it was chosen for
    another target); a clear error when the model was never calibrated."""
    path = Path(model_dir) / CASCADE_FILE
    if not path.exists():
        raise ConfigError(
            f"{model_dir}: not calibrated; run `protege calibrate {model_dir} --data ROWS.jsonl "
            f"--target-agreement {target}` first, or give --threshold"
        )
    try:
        cal = Calibration(**json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path}: unreadable ({e}); run `protege calibrate` again") from e
    if abs(cal.target_agreement - target) > 1e-12:
        cal.threshold, cal.coverage, cal.agreement = choose(cal.curve, target)
        cal.target_agreement = target
    return cal


def calibrate(model_dir: str | Path, rows: list[dict[str, Any]], target: float,
              teacher_field: str | None = None, data: str = "", batch_size: int = 32,
              fast: bool = True) -> Calibration:  # fmt: skip
    """Choose and write the threshold for `target` (see the module docstring)."""
    from protege.data.io import write_json
    from protege.serve.predictor import Predictor

    if not 0 < target <= 1:
        raise ConfigError(f"--target-agreement: must be in (0, 1], got {target}")
    predictor = Predictor.load(model_dir, batch_size=batch_size)
    task = predictor.task
    predictor.text_confidence = True
    field_ = teacher_field or (task.label_field if task.type == "classification"
                               else task.target_field)  # fmt: skip
    missing = [r.get("_line", i + 1) for i, r in enumerate(rows) if r.get(field_) in (None, "")]
    if missing:
        raise DataError(data or "rows", f"no teacher answer in field {field_!r}",
                        line=missing[0])  # fmt: skip
    preds = predictor.predict(rows, fast=fast)
    conf = [p.get("score") if p.get("score") is not None else 0.0 for p in preds]
    agree = [agrees(task, p, r[field_]) for p, r in zip(preds, rows, strict=True)]
    points = curve(conf, agree)
    threshold, coverage, agreement = choose(points, target)
    metric = "same label" if task.type == "classification" else f"ROUGE-L F1 >= {ROUGE_AGREE}"
    cal = Calibration(threshold, target, coverage, agreement, len(rows), metric, data,
                      [[round(a, 6), round(b, 6), round(c, 6)] for a, b, c in points],
                      time.time())  # fmt: skip
    write_json(Path(model_dir) / CASCADE_FILE, cal.to_dict())
    plot_curve({Path(model_dir).name: cal}, Path(model_dir) / CURVE_PNG)
    return cal


def plot_curve(cals: dict[str, Calibration], out: Path) -> Path:
    """Coverage (share the student answers) against agreement with the teacher, per student."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, cal in cals.items():
        xs = [p[1] for p in cal.curve]
        ys = [p[2] for p in cal.curve]
        ax.plot(xs, ys, label=name)
        if cal.agreement is not None:
            ax.scatter([cal.coverage], [cal.agreement], marker="o")
        target = cal.target_agreement
    ax.axhline(target, linestyle="--", color="grey", linewidth=1, label=f"target {target:g}")
    ax.set_xlabel("coverage (share of requests the student answers)")
    ax.set_ylabel("agreement with the teacher")
    ax.set_xlim(0, 1.02)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
