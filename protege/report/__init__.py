"""`protege report RUN_DIR`: a Markdown and a self-contained HTML report of a run.

It answers "did distillation work, and what did it cost?" from the run's own files only:
Paper A's grid table and figures, Paper B's ROUGE table with the teacher row, and the cost
and speed of student vs teacher.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from protege.data.io import atomic_write_text
from protege.report.cascade import calibrations, cascade_section
from protege.report.confidence import confidence_section
from protege.report.html import render_html
from protege.report.markdown import render_markdown
from protege.report.model import Report
from protege.report.sections import (
    RunFiles,
    bleu_curves_section,
    curves_section,
    eval_vs_test_section,
    grid_section,
    hygiene_section,
)
from protege.report.variants import build_variants_report
from protege.report.views import best_model_section, cost_section, rouge_section


def assemble_report(run_dir: str | Path, hourly_price_usd: float | None = None) -> Report:
    """Read the run's files, draw the PNGs into RUN_DIR/report/, and return the sections."""
    run_dir = Path(run_dir)
    run = RunFiles(run_dir, run_dir / "report")
    meta = [f"run directory: `{run_dir}`"]
    if run.task:
        meta.append(f"task: {run.task.get('type')}, format `{run.task.get('format')}`")
    if run.summary:
        dec = run.summary["decoding"]
        meta.append(f"test file: `{run.summary['test']}` ({run.summary['n_test']} rows)")
        meta.append(
            f"student decoding: num_beams={dec['num_beams']}, "
            f"max_new_tokens={dec['max_new_tokens']}, batch_size={dec['batch_size']}"
        )
    meta.append(f"generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}")
    # Sections that do not apply to the task are left out (ROUGE for NLI, per-class and
    # rationale BLEU for summaries); a section that applies but lacks data says why.
    if run.kind == "summarization":
        task_sections = [rouge_section(run)]
    else:
        task_sections = [bleu_curves_section(run), best_model_section(run)]
        if confidence := confidence_section(run):  # only when the teacher recorded confidence
            task_sections.append(confidence)
    cascade = cascade_section(calibrations(run_dir / "train"), run.out_dir / "cascade.png")
    sections = [
        hygiene_section(run),
        grid_section(run),
        eval_vs_test_section(run),
        curves_section(run),
        *task_sections,
        *([cascade] if cascade else []),
        cost_section(run, hourly_price_usd),
    ]
    return Report(f"protege report: {run_dir.name}", meta, sections)


def build_report(run_dir: str | Path, hourly_price_usd: float | None = None) -> Path:
    """Write RUN_DIR/report/report.md and report.html (+ PNGs); returns the report dir.

    `hourly_price_usd`: the assumed price of the student's machine for its cost per 1,000
    predictions (default: the one `protege eval` recorded)."""
    out = Path(run_dir) / "report"
    report = assemble_report(run_dir, hourly_price_usd)
    atomic_write_text(out / "report.md", render_markdown(report))
    atomic_write_text(out / "report.html", render_html(report))
    return out


__all__ = ["assemble_report", "build_report", "build_variants_report"]
