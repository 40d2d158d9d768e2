"""The cascade in the report: each student's coverage against its agreement with the teacher.

Read from the calibrations in the run's model directories (`protege calibrate`, which
`protege run` does on the dev split for each student's best checkpoint): the share of requests
the student would answer at each confidence cut-off, and how often it then says what the
teacher (the labels it learned) says.
"""

from __future__ import annotations

import json
from pathlib import Path

from protege.report.model import Figure, Section, Table, pct
from protege.serve.calibrate import CASCADE_FILE, Calibration, plot_curve


def calibrations(root: Path, name_of=lambda p: p) -> dict[str, Calibration]:
    """Every calibration under `root`, by model directory (named by `name_of(relative path)`)."""
    found = {}
    for path in sorted(root.rglob(CASCADE_FILE)):
        try:
            cal = Calibration(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            continue
        found[name_of(str(path.parent.relative_to(root)))] = cal
    return found


def cascade_section(cals: dict[str, Calibration], png: Path) -> Section | None:
    """The table and the plot, or None when nothing was calibrated."""
    if not cals:
        return None
    s = Section("Cascade: coverage against agreement with the teacher")
    rows = [[name, f"{c.target_agreement:g}", f"{c.threshold:.4f}", pct(c.coverage),
             pct(c.agreement), str(c.n), c.agreement_metric] for name, c in cals.items()]  # fmt: skip
    s.tables.append(Table(
        ["student", "target", "threshold", "coverage (%)", "agreement (%)", "rows", "agreement"],
        rows,
        caption="At each student's threshold: the share of requests it would answer itself "
        "(coverage) and how often its answer is the teacher's there; the rest go to the teacher "
        "(`protege serve MODEL --teacher ... --target-agreement T`). Chosen on held-out rows "
        "carrying the teacher's answers (in a run: the dev split's labels).",
    ))  # fmt: skip
    out = plot_curve(cals, png)
    s.figures.append(Figure(out, "Coverage against agreement, one point per confidence cut-off; "
                            "dots: the chosen thresholds."))  # fmt: skip
    return s
