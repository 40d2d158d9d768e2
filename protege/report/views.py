"""Report sections on the teacher side: Paper B's ROUGE table with the teacher row, the best
student's per-class view, and cost and speed of student vs teacher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from protege.report import plots
from protege.report.model import Figure, Section, Table, ci, money, num, pct
from protege.report.sections import RunFiles, dev_value


def best_student(run: RunFiles) -> dict[str, Any] | None:
    """The checkpoint with the best *dev* score (selection never looks at test)."""
    scored = [(e, _dev(e, run)) for e in run.entries.values()]
    scored = [(e, d) for e, d in scored if d is not None]
    return max(scored, key=lambda x: x[1])[0] if scored else None


def _dev(entry: dict[str, Any], run: RunFiles) -> float | None:
    return dev_value(entry.get("dev"), run.metric)


def rouge_section(run: RunFiles) -> Section:
    s = Section("ROUGE table with the teacher row (Paper B, Table 2)")
    if run.kind != "summarization":
        s.empty = "This run is a classification task; ROUGE applies to summarization runs."
        return s
    if not run.summary:
        s.empty = "No eval/summary.json: run `protege eval RUN_DIR` first."
        return s
    headers = [
        "model",
        "checkpoint",
        "R1",
        "R2",
        "RL",
        "RLsum",
        "RL 95% CI",
        "gen len (words)",
        "gen len (tokens)",
    ]
    rows = []
    for e in run.summary["models"]:
        rows.append(_rouge_row(f"{e['model']} ({e['id']})", e["checkpoint"], e["test"]))
    teacher = run.summary.get("teacher")
    if teacher:
        rows.append(
            _rouge_row(
                f"teacher zero-shot ({teacher.get('teacher_model') or '?'}){_sample(run)}",
                "–",
                teacher["metrics"],
            )
        )
    s.tables.append(Table(headers, rows))
    dec = run.summary["decoding"]
    s.paragraphs.append(
        f"F-measures ×100 with Porter stemming (rouge-score). RL is per-summary LCS (Paper B's "
        f"RL); RLsum splits sentences onto lines (the T5 paper's). Student decoding: "
        f"num_beams={dec['num_beams']}, max_new_tokens={dec['max_new_tokens']}. Generated "
        f"length in whitespace words, and in student tokenizer tokens."
    )
    if not teacher:
        s.paragraphs.append("No teacher row: generate/teacher-zeroshot.jsonl is absent.")
    return s


def _sample(run: RunFiles) -> str:
    """`, first N rows` when the teacher was asked about only part of the test set."""
    teacher = run.summary.get("teacher") or {}
    n = teacher.get("metrics", {}).get("n")
    return f", first {n} of {run.summary['n_test']} rows" if n and n < run.summary["n_test"] else ""


def verdict(run: RunFiles) -> str | None:
    """One sentence: the dev-chosen student minus the teacher, paired on the same rows; or, when
    most teacher answers were flagged or missing, that the comparison measures nothing."""
    teacher = run.summary.get("teacher") or {}
    paired = teacher.get("paired")
    if not paired:
        return None
    if unusable := unusable_teacher(teacher):
        return unusable
    boot = paired["paired_bootstrap"]
    if "mcnemar" in paired:
        test = f"McNemar p={paired['mcnemar']['p_value']:.3f}"
    else:
        test = f"paired bootstrap p={boot['p_value']:.3f}"
    unit = " points" if run.metric == "accuracy" else ""
    return (
        f"Student chosen on dev (`{paired['student']}`) minus the teacher, on the same "
        f"{paired['n']} test rows: {boot['diff'] * run.scale():+.1f}{unit} {run.metric} "
        f"(95% CI {ci([boot['ci_low'], boot['ci_high']], run.scale())}, {test})."
    )


def unusable_teacher(teacher: dict[str, Any]) -> str | None:
    """Why the teacher row cannot be compared with (most of its answers flagged or missing), or
    None when it can."""
    info = teacher.get("speed") or {}
    bad = int(info.get("n_flagged") or 0) + int(info.get("n_missing") or 0)
    total = int(info.get("n_asked") or 0) or (int(info.get("n_answers") or 0) +
                                              int(info.get("n_missing") or 0))  # fmt: skip
    if not total or bad * 2 <= total:
        return None
    return (
        f"Not measured: {bad} of the teacher's {total} zero-shot answers were flagged (not a "
        f"valid answer) or missing, so the teacher row scores its answer format, not the task, "
        f"and a student-minus-teacher gap says nothing about distillation. Ask for structured "
        f"answers (`generate.structured: true`, on by default for the label recipe) or a "
        f"stronger teacher, then rerun."
    )


def teacher_timing_note(speed: dict[str, Any]) -> str:
    """How the teacher's latency columns were measured, from its answers' timestamps."""
    if "max_in_flight" not in speed:
        return (
            "Teacher latency: the recorded per-request latencies (provenance.latency_s); "
            "without timestamps the concurrency they ran at is unknown, so they may include "
            "queueing."
        )
    note = (
        "Teacher batched: the wall time its requests were in flight / answers, as a "
        f"student's; up to {speed['max_in_flight']} were in flight at once."
    )
    if speed.get("p50_single_ms") is not None:
        return note + (
            f" p50 single request: the median of the {speed['n_single']} requests that ran "
            "alone (no queueing)."
        )
    return note + (
        " p50 single request: not measured, as no request ran alone; the median latency "
        f"of all was {num(speed.get('p50_in_flight_ms'), 1)} ms, queueing included (a local "
        "llama.cpp server answers one request at a time). Set `teacher.concurrency: 1` on "
        "the zero-shot step to measure it."
    )


def rouge_cells(m: dict[str, Any]) -> list[str]:
    """R1, R2, RL, RLsum, the RL interval and generated length in words, formatted."""
    return [
        num(m.get("rouge1")),
        num(m.get("rouge2")),
        num(m.get("rougeL")),
        num(m.get("rougeLsum")),
        ci(m.get("rougeL_ci"), digits=2),
        num(m.get("gen_len_words"), 1),
    ]


def _rouge_row(name: str, ckpt: str, m: dict[str, Any]) -> list[str]:
    return [name, ckpt, *rouge_cells(m), num(m.get("gen_len_tokens"), 1)]


def best_model_section(run: RunFiles) -> Section:
    s = Section("Best student (chosen on dev): per class")
    best = best_student(run)
    if run.kind != "classification":
        s.empty = "Per-class precision/recall apply to classification runs."
        return s
    if best is None:
        s.empty = "No evaluated checkpoint with a dev score (eval/summary.json)."
        return s
    m = best["test"]
    gen = m.get("generated")
    s.paragraphs.append(
        f"`{best['name']}`: test accuracy {pct(m['accuracy'])}% {ci(m['accuracy_ci'], 100)} "
        f"by {m.get('served_by') or 'generation'}, as predict and serve answer, "
        f"coverage {pct(m['coverage'])}%, macro-F1 {pct(m['macro_f1'])}"
        + (
            f"; free generation: accuracy {pct(gen['accuracy'])}% "
            f"{ci(gen['accuracy_ci'], 100)}, coverage {pct(gen['coverage'])}%."
            if gen
            else "."
        )
    )
    s.tables.append(
        Table(
            ["class", "precision", "recall", "F1", "support"],
            [
                [c, pct(v["precision"]), pct(v["recall"]), pct(v["f1"]), str(v["support"])]
                for c, v in m["per_class"].items()
            ],
        )
    )
    conf = m["confusion"]
    s.tables.append(
        Table(
            ["gold \\ predicted", *conf["columns_pred"]],
            [
                [g, *(str(conf["counts"][g][c]) for c in conf["columns_pred"])]
                for g in conf["rows_gold"]
            ],
            caption="Confusion matrix on test; malformed outputs get their own column.",
        )
    )
    return s


def generate_dir(run_dir: Path) -> Path:
    """RUN_DIR/generate; a variant's sub-run shares its parent run's teacher steps."""
    own, parent = run_dir / "generate", run_dir.parent / "generate"
    return parent if not own.exists() and parent.exists() else own


def generate_summaries(run_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """(name, summary) of every teacher step; the teacher model is read from the step's
    output provenance when the summary does not name it."""
    out = []
    for p in sorted(generate_dir(run_dir).glob("*.summary.json")):
        g = json.loads(p.read_text())
        if not g.get("model"):
            g["model"] = _output_model(Path(g["output"])) if g.get("output") else None
        out.append((p.name.removesuffix(".summary.json"), g))
    return out


def _output_model(path: Path) -> str | None:
    if not path.exists():
        return None
    with path.open(encoding="utf-8") as f:
        for line in filter(str.strip, f):
            prov = json.loads(line).get("provenance") or {}
            if prov.get("model"):
                return str(prov["model"])
    return None


def spend_section(run_dir: Path, title: str = "Cost and speed") -> Section:
    """Teacher calls, tokens and dollars: this run's steps, and the local teacher store."""
    s = Section(title)
    gens = generate_summaries(run_dir)
    if gens:
        s.tables.append(
            Table(
                [
                    "teacher step",
                    "teacher model",
                    "records",
                    "written",
                    "flagged",
                    "failed",
                    "calls",
                    "cached",
                    "cost",
                    "mean latency (s)",
                ],
                [
                    [
                        name,
                        str(g.get("model") or "–"),
                        str(g.get("n_records", "–")),
                        str(g.get("n_written", "–")),
                        str(g.get("n_flagged", "–")),
                        str(g.get("n_failed", "–")),
                        str(g.get("n_calls", "–")),
                        str(g.get("n_cached", "–")),
                        money(g.get("cost_usd")),
                        num(g.get("mean_latency_s")),
                    ]
                    for name, g in gens
                ],
                caption="Teacher spend of this run (generate/*.summary.json).",
            )
        )
    else:
        s.paragraphs.append("No generate/*.summary.json: no teacher spend recorded for this run.")
    store = _store_stats(generate_dir(run_dir))
    if store:
        s.tables.append(
            Table(
                [
                    "teacher model",
                    "answers",
                    "ok",
                    "failed",
                    "imported",
                    "input tokens",
                    "output tokens",
                    "cost",
                    "mean latency (s)",
                ],
                [
                    [
                        str(r.get("model")),
                        str(r.get("calls")),
                        str(r.get("ok")),
                        str(r.get("failed")),
                        str(r.get("imported", "–")),
                        str(r.get("input_tokens")),
                        str(r.get("output_tokens")),
                        money(r.get("cost_usd")),
                        num(r.get("mean_latency_s")),
                    ]
                    for r in store
                ],
                caption="Tokens and spend of the answers this run's teacher steps paid for, "
                "from the local teacher store (answers another job paid for are not counted).",
            )
        )
    else:
        s.paragraphs.append("No answers of this run in the local teacher store.")
    return s


def cost_section(run: RunFiles, hourly_price_usd: float | None) -> Section:
    s = spend_section(run.run_dir)
    if not run.summary:
        s.paragraphs.append("No eval/summary.json: student latency not measured yet.")
        return s
    price = hourly_price_usd if hourly_price_usd is not None else run.summary["hourly_price_usd"]
    rows, bars = [], []
    best = best_student(run)
    for e in run.summary["models"]:
        if e is not best and len(run.summary["models"]) > 6:
            continue  # a large grid: show the best checkpoint only
        lat = e["speed"]["latency_s_per_example"]
        rows.append(
            [
                f"student {e['name']}",
                run.fmt(e["test"].get(run.metric)),
                num(e["speed"].get("p50_single_ms"), 1),
                num(1000 * lat, 1),
                money(1000 * lat * price / 3600),
                "estimated",
            ]
        )
        bars.append((f"student {e['name']}", 1000 * lat))
    teacher = run.summary.get("teacher")
    if teacher:
        sp = teacher["speed"]
        lat = sp.get("latency_s_per_example")
        rows.append(
            [
                f"teacher {teacher.get('teacher_model') or ''} (zero-shot){_sample(run)}",
                run.fmt(teacher["metrics"].get(run.metric)),
                num(sp.get("p50_single_ms"), 1),
                num(1000 * lat, 1) if lat is not None else "–",
                money(sp.get("cost_per_1k_usd")),
                "measured (provenance)",
            ]
        )
        if lat is not None:
            bars.append(("teacher (zero-shot)", 1000 * lat))
    if verdict(run):
        s.paragraphs.append(f"**Did distillation work?** {verdict(run)}")
    s.tables.append(
        Table(
            [
                "model",
                f"test {run.metric}",
                "p50 single request (ms)",
                "batched (ms/example)",
                "cost per 1,000",
                "cost is",
            ],  # fmt: skip
            rows,
            caption="Student vs teacher on the same test rows.",
        )
    )
    dec = run.summary["decoding"]
    s.paragraphs.append(
        f"Student cost is an estimate: measured wall-clock latency per example (batch size "
        f"{dec['batch_size']}, num_beams={dec['num_beams']}, on the evaluating machine) × an "
        f"assumed machine price of ${price:.2f}/hour. Teacher cost is the recorded per-call "
        f"cost (provenance.cost_usd) of its zero-shot answers."
    )
    if teacher:
        s.paragraphs.append(teacher_timing_note(teacher["speed"]))
    if not teacher:
        s.paragraphs.append("No teacher row: generate/teacher-zeroshot.jsonl is absent.")
    png = plots.latency_bars(bars, run.out_dir / "latency.png")
    if png:
        s.figures.append(Figure(png, "Latency per example; orange: teacher."))
    return s


def _store_stats(generate: Path) -> list[dict[str, Any]]:
    """Per-model totals of the answers paid for by the jobs that wrote into `generate` (the
    store's `runs` record what each job wrote), when the teacher store exists."""
    try:
        from protege.paths import teacher_db_path
        from protege.teacher.store import TeacherStore
    except ImportError:
        return []
    if not teacher_db_path().exists():
        return []
    here = generate.resolve()
    try:
        with TeacherStore() as store:
            runs = [i for i, label in store.db.execute("SELECT id, label FROM runs")
                    if label and here in Path(label).resolve().parents]  # fmt: skip
            runs += [f"batch:{b}" for (b,) in store.db.execute(
                f"SELECT id FROM batches WHERE run_id IN ({','.join('?' * len(runs))})", runs)]  # fmt: skip
            rows = store.db.execute(
                f"""SELECT model, COUNT(*), SUM(status='ok'), SUM(status='failed'),
                    COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),
                    COALESCE(SUM(cost_usd), 0), AVG(latency_s), SUM(source='import')
                FROM responses WHERE run_id IN ({",".join("?" * len(runs))})
                GROUP BY model ORDER BY model""",
                runs,
            ).fetchall()
    except Exception:  # a store from another version: the run's own files still report spend
        return []
    keys = ("model", "calls", "ok", "failed", "input_tokens", "output_tokens", "cost_usd",
            "mean_latency_s", "imported")  # fmt: skip
    return [dict(zip(keys, row, strict=True)) for row in rows]
