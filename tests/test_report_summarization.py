"""Paper B's view: a summarization run with two student variants and the teacher's
zero-shot row, evaluated with ROUGE and reported per variant and across variants."""

from __future__ import annotations

import shutil

import pytest
from eval_util import fit_tiny, one_thread

from protege.data.io import read_records, write_json, write_jsonl
from protege.data.samples import sample_path
from protege.evaluate import Decoding, evaluate_run
from protege.formats import TaskConfig
from protege.report import build_report, build_variants_report

TASK = TaskConfig(type="summarization", input_template="{article}", target_field="summary")
N = 4


@pytest.fixture(scope="module")
def summ_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("summ")
    with one_thread():
        test = read_records(sample_path("summarization", "test"))[:N]
        run = root / "run"
        write_jsonl(run / "data" / "test.jsonl", test)
        model = fit_tiny(root / "student", test[0]["summary"], TASK, steps=80)
        # Teacher: the gold summary for 3 rows, no answer for the last (a failed call).
        answers = [
            {
                **{k: v for k, v in r.items() if k != "_line"},
                "teacher_summary": r["summary"],
                "provenance": {"model": "gpt-test", "cost_usd": 0.001, "latency_s": 2.0},
            }
            for r in test[: N - 1]
        ]
        write_jsonl(run / "generate" / "teacher-zeroshot.jsonl", answers)
        summary = {"n_records": N, "n_written": N - 1, "n_failed": 1, "cost_usd": 0.003}
        write_json(run / "generate" / "teacher-zeroshot.summary.json", summary)
        for variant, dev_rl in (("gold", 0.30), ("synthetic", 0.28)):
            cid = "lr0.001-s0"
            for ck in ("best-loss", "best-accuracy"):
                shutil.copytree(model, run / variant / "train" / cid / ck)
            best = {
                kind: {
                    "step": 2,
                    "epoch": 1.0,
                    "eval_loss": 0.5,
                    "eval_accuracy": None,
                    "eval_rougeL": dev_rl,
                    "path": f"{cid}/{ck}",
                }
                for kind, ck in (("loss", "best-loss"), ("accuracy", "best-accuracy"))
            }
            write_json(
                run / variant / "train" / "results.json",
                [
                    {
                        "id": cid,
                        "model": "protege:tiny-t5",
                        "format": "label",
                        "lr": 1e-3,
                        "split": None,
                        "seed": 0,
                        "baseline": True,
                        "status": "done",
                        "best": best,
                        "history": f"{cid}/history.jsonl",
                    }
                ],
            )
            write_jsonl(
                run / variant / "train" / cid / "history.jsonl",
                [
                    {
                        "step": 2,
                        "epoch": 1.0,
                        "eval_loss": 0.5,
                        "eval_accuracy": None,
                        "eval_rougeL": dev_rl,
                        "eval_bleu": None,
                    }
                ],
            )
            evaluate_run(
                run / variant,
                run / "data" / "test.jsonl",
                TASK,
                teacher_file=run / "generate" / "teacher-zeroshot.jsonl",
                decoding=Decoding(max_new_tokens=48),
            )
            build_report(run / variant)
        build_variants_report(run, ["gold", "synthetic"])
    return run


def test_rouge_table_has_students_and_teacher_row(summ_run):
    md = (summ_run / "gold" / "report" / "report.md").read_text()
    section = md.split("## ROUGE table")[1].split("\n## ")[0]
    teacher = next(line for line in section.splitlines() if line.startswith("| teacher"))
    cells = [c.strip() for c in teacher.strip("|").split("|")]
    # 3 of 4 rows identical to the reference, one missing (scored 0): 75.00 for every ROUGE.
    assert cells[2:6] == ["75.00", "75.00", "75.00", "75.00"]
    students = [line for line in section.splitlines() if line.startswith("| protege:tiny-t5")]
    assert len(students) == 2  # both checkpoints
    assert (
        "Eval rougeL over training" in md
        and "(chosen on dev): per class" not in md
        and "Rationale BLEU" not in md
    )
    assert "| $1.00 |" in md  # teacher: $0.001 per answer -> $1 per 1,000


def test_variants_report_compares_students_with_teacher(summ_run):
    md = (summ_run / "report" / "report.md").read_text()
    rows = [
        line
        for line in md.splitlines()
        if line.startswith(("| gold", "| synthetic", "| teacher zero-shot"))
    ]
    assert [r.split("|")[1].strip() for r in rows] == ["gold", "synthetic", "teacher zero-shot"]
    assert "[gold](../gold/report/report.html)" in md  # from RUN/report/
    html = (summ_run / "report" / "report.html").read_text()
    assert "<a href='../gold/report/report.html'>gold</a>" in html
