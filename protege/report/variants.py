"""One report over several students of one run (Paper B's Table 2: T5 vs BART, trained on
gold vs synthetic data, next to the teacher's zero-shot row). Each variant lives in
RUN_DIR/<name>/ with its own train/, eval/ and report/; this page compares them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protege.data.io import atomic_write_text
from protege.report.html import render_html
from protege.report.markdown import render_markdown
from protege.report.model import Report, Section, Table, ci, money, num, pct
from protege.report.pick import Candidate, pick_paragraphs
from protege.report.sections import RunFiles
from protege.report.views import best_student, rouge_cells, spend_section, teacher_timing_note


def _metric_cells(m: dict[str, Any], kind: str) -> list[str]:
    if kind == "summarization":
        return rouge_cells(m)
    return [
        pct(m.get("accuracy")),
        ci(m.get("accuracy_ci"), 100),
        pct(m.get("coverage")),
        num(m.get("bleu"), 1),
        num(m.get("ece"), 3),
    ]


def model_facts(model_dir: Path) -> tuple[str, int | None]:
    """(student kind, parameters) of a saved model dir, read from config.json and the
    safetensors headers (no weights loaded)."""
    import json
    import struct

    from protege.students import kind_from_config

    config = model_dir / "config.json"
    kind = kind_from_config(json.loads(config.read_text())) if config.exists() else None
    total = 0
    for shard in model_dir.glob("*.safetensors"):
        with open(shard, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for name, t in header.items():
            if name != "__metadata__":
                size = 1
                for d in t["shape"]:
                    size *= d
                total += size
    if config.exists():  # weights outside top-level safetensors (trees): the count it records
        total = json.loads(config.read_text()).get("num_parameters") or total
    return kind or "–", total or None


def params_cell(params: int | None) -> str:
    if not params:
        return "–"
    return f"{params / 1e6:.1f}M" if params >= 100_000 else f"{params / 1e3:.1f}k"


def candidate(
    name: str, kind: str, best: dict[str, Any], run: RunFiles, usd_per_s: float
) -> Candidate:
    """What `pick_paragraphs` compares of a variant's best checkpoint."""
    import json

    meta = run.run_dir / "train" / best["name"] / "protege_meta.json"
    counts = (json.loads(meta.read_text()).get("data") or {}) if meta.exists() else {}
    train = counts.get("train") or {}
    test = best["test"]
    return Candidate(
        name=name,
        kind=kind,
        format=best.get("format"),
        accuracy=test.get("accuracy"),
        accuracy_ci=test.get("accuracy_ci"),
        ece=test.get("ece"),
        p50_ms=best["speed"].get("p50_single_ms"),
        cost_per_1k=1000 * usd_per_s / 3600,
        n_test=test.get("n"),
        n_train=train.get("scored", train.get("records")),
    )


def build_variants_report(
    run_dir: str | Path, variants: list[str], hourly_price_usd: float | None = None
) -> Path:
    """Write RUN_DIR/report/report.{md,html}: each variant's best checkpoint (chosen on dev)
    on the test set with its latency and estimated cost, the teacher row, and the teacher
    spend; links to each variant's own report. Returns the report dir."""
    run_dir = Path(run_dir)
    out = run_dir / "report"
    runs = [(v, RunFiles(run_dir / v, out)) for v in variants]
    kind = next((r.kind for _, r in runs if r.summary), "classification")
    headers = ["variant", "model", "kind", "parameters", "checkpoint"]
    headers += (
        ["R1", "R2", "RL", "RLsum", "RL 95% CI", "gen len (words)"]
        if kind == "summarization"
        else ["accuracy", "95% CI", "coverage", "BLEU", "ECE"]
    )
    headers += ["p50 single request (ms)", "batched (ms/example)", "cost per 1,000"]
    rows, teacher, missing, price = [], None, [], hourly_price_usd
    cands: list[Candidate] = []
    for name, run in runs:
        best = best_student(run)
        if best is None:
            missing.append(name)
            continue
        price = price if price is not None else run.summary["hourly_price_usd"]
        lat = best["speed"]["latency_s_per_example"]
        kind_name, params = model_facts(run_dir / name / "train" / best["name"])
        cands.append(candidate(name, kind_name, best, run, lat * price))
        rows.append(
            [
                name,
                str(best.get("model")),
                kind_name,
                params_cell(params),
                best["checkpoint"],
                *_metric_cells(best["test"], kind),
                num(best["speed"].get("p50_single_ms"), 1),
                num(1000 * lat, 1),
                money(1000 * lat * price / 3600),
            ]
        )
        teacher = teacher or run.summary.get("teacher")
    if teacher:
        lat = teacher["speed"].get("latency_s_per_example")
        rows.append(
            [
                "teacher zero-shot",
                str(teacher.get("teacher_model") or "–"),
                "LLM",
                "–",
                "–",
                *_metric_cells(teacher["metrics"], kind),
                num(teacher["speed"].get("p50_single_ms"), 1),
                num(1000 * lat, 1) if lat is not None else "–",
                money(teacher["speed"].get("cost_per_1k_usd")),
            ]
        )
    table = Section("Students vs teacher on the test set (Paper B, Table 2)")
    if rows:
        table.tables.append(Table(headers, rows))
        table.paragraphs.append(
            "Each variant's checkpoint with the best dev score. Student cost is estimated: "
            f"batched latency × an assumed ${price or 0:.2f}/hour machine; the teacher's is "
            "its recorded per-call cost. p50 single request: the median of up to 16 test "
            "inputs (fewer, at least 3, once 3 s are spent) answered one at a time by the "
            "student as saved (PyTorch for transformer students); batched: the evaluation's "
            "generation time per example. "
            "`serve_latency.py` times each kind's fastest served path (CTranslate2, ONNX). "
            "ECE: expected calibration error of the served label's probability (lower is "
            "better)."
        )
        if teacher:
            table.paragraphs.append(teacher_timing_note(teacher["speed"]))
        if kind == "classification":
            table.paragraphs += pick_paragraphs(cands, teacher)
    else:
        table.empty = "No variant has an eval/summary.json yet."
    if missing:
        table.paragraphs.append(f"Not evaluated yet: {', '.join(missing)}.")
    from protege.report.cascade import calibrations, cascade_section

    cals = {}
    for v in variants:
        cals.update(calibrations(run_dir / v / "train", lambda p, v=v: f"{v}: {p}"))
    cascade = cascade_section(cals, out / "cascade.png")
    links = Section("Variant reports")
    links.paragraphs += [f"[{v}](../{v}/report/report.html)" for v in variants]
    report = Report(
        f"protege report: {run_dir.name} ({len(variants)} students)",
        [f"run directory: `{run_dir}`", f"variants: {', '.join(variants)}"],
        [table, *([cascade] if cascade else []), spend_section(run_dir, "Teacher spend"), links],
    )
    atomic_write_text(out / "report.md", render_markdown(report))
    atomic_write_text(out / "report.html", render_html(report))
    return out
