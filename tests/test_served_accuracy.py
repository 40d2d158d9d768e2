"""Eval reports the accuracy of the path that is served (issue 18 item 13): predict and serve
answer by label scoring, which never gives a malformed answer, while free generation of an
undertrained student mostly does. The headline is the served accuracy, free generation's
beside it, and the report says which is which."""

from __future__ import annotations

import pytest
from eval_util import one_thread

from protege.data.io import read_records
from protege.data.samples import sample_path
from protege.evaluate import evaluate_model
from protege.formats import TaskConfig, normalise_label, save_task
from protege.serve.predictor import Predictor


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def test_the_headline_is_what_predict_and_serve_answer(tmp_path):
    from protege.students.seq2seq.build import build_random_student

    model = build_random_student("t5", tmp_path / "m")  # undertrained: generation malformed
    save_task(TaskConfig(), model)
    rows = read_records(sample_path("nli", "test"))[:12]
    result = evaluate_model(model, rows)
    m = result["metrics"]

    served = Predictor.load(model).predict(rows)  # what `protege predict` / serve answer
    gold = [normalise_label(r["label"], TaskConfig().labels) for r in rows]
    served_acc = sum(p["label"] == g for p, g in zip(served, gold, strict=True)) / len(rows)
    assert m["served_by"] == "label scoring"
    assert m["accuracy"] == pytest.approx(served_acc)
    assert m["coverage"] == 1.0  # a served answer is always a label
    assert [r["pred"] for r in result["per_example"]] == [p["label"] for p in served]
    assert all(
        r["confidence"] == p["score"] for r, p in zip(result["per_example"], served, strict=True)
    )
    assert m["ece"] is not None  # the served probability's calibration

    gen = m["generated"]  # free generation beside it: malformed outputs count wrong
    assert gen["coverage"] < 0.5
    parsed = [r["generated_pred"] for r in result["per_example"]]
    assert gen["coverage"] == pytest.approx(sum(p is not None for p in parsed) / len(rows))
    assert gen["accuracy"] == pytest.approx(
        sum(r["generated_correct"] for r in result["per_example"]) / len(rows)
    )


def test_rationale_first_students_are_served_by_generation(tmp_path):
    from protege.students.seq2seq.build import build_random_student

    model = build_random_student("t5", tmp_path / "m")
    save_task(TaskConfig(format="rationale+label"), model)
    rows = read_records(sample_path("nli", "test"))[:3]
    m = evaluate_model(model, rows)["metrics"]
    assert m["served_by"] == "generation" and "generated" not in m


def test_report_headlines_the_served_accuracy(tmp_path):
    from eval_util import make_run, tiny_models

    from protege.evaluate import evaluate_run
    from protege.report import build_report

    run = make_run(tmp_path, tiny_models())
    evaluate_run(run)
    text = (build_report(run) / "report.md").read_text()
    assert "free generation (coverage)" in text
    assert "by label scoring, as predict and serve answer" in text
    assert "; free generation: accuracy" in text
