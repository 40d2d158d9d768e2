"""Report honesty (issue 18 item 16): the teacher's latency without queueing at its
concurrency and its batched column as wall time / n like the students'; the variants
report's "which student to pick" computed from what was measured, saying where rows differ.
(A rerun of eval keeping the p50 single-request column: test_eval_run.py.)"""

from __future__ import annotations

import datetime

import pytest

from protege.evaluate.score import request_timing, teacher_outputs
from protege.formats import TaskConfig
from protege.report.pick import Candidate, pick_paragraphs


def _answers(spans: list[tuple[float, float]]) -> list[dict]:
    """Zero-shot answers whose requests ran over `spans` (seconds), as generate records them."""
    out = []
    for i, (start, end) in enumerate(spans):
        when = datetime.datetime.fromtimestamp(1_800_000_000 + end, datetime.UTC)
        prov = {"latency_s": end - start, "time": when.isoformat(), "cost_usd": 0.0}
        out.append({"uid": str(i), "teacher_label": "neutral", "provenance": prov})
    return out


def test_a_serial_server_at_concurrency_two_has_no_single_request_latency():
    # llama.cpp answering one at a time, two requests in flight: each waits for the other,
    # so every recorded latency (2 s) is twice the server's time per answer (1 s).
    spans = [(0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)]
    test = [{"uid": str(i), "label": "neutral"} for i in range(len(spans))]
    _, _, info = teacher_outputs(TaskConfig(), test, _answers(spans), "teacher_label")
    assert info["p50_single_ms"] is None and info["n_single"] == 0  # not 2,000 ms
    assert info["p50_in_flight_ms"] == pytest.approx(2000.0)
    assert info["max_in_flight"] == 2
    assert info["latency_s_per_example"] == pytest.approx(1.0)  # wall 6 s / 6, not mean 1.83


def test_requests_that_ran_alone_give_the_single_request_latency():
    t = request_timing([(0, 1.0), (1.0, 1.5), (3, 3.5), (3.2, 4.0)])
    assert t["n_single"] == 2 and t["p50_single_ms"] == pytest.approx(750.0)
    assert t["latency_s_per_example"] == pytest.approx(2.5 / 4)
    assert t["max_in_flight"] == 2


def _c(name, kind, fmt, acc, ci, cost, p50, ece, n_train, n_test=120) -> Candidate:
    return Candidate(name, kind, fmt, acc, ci, ece, p50, cost, n_test, n_train)


def test_the_pick_follows_the_measurements():
    teacher = {"metrics": {"n": 60, "accuracy": 0.4}}
    cls = _c("classifier", "classifier", "label", 0.70, [0.62, 0.78], 0.0001, 3.0, 0.04, 240)
    s2s = _c("seq2seq", "seq2seq", "label+rationale", 0.72, [0.64, 0.80], 0.002, 40.0, 0.15, 240)
    causal = _c("causal", "causal", "label", 0.50, [0.41, 0.59], 0.02, 300.0, 0.30, 96)
    text = "\n".join(pick_paragraphs([cls, s2s, causal], teacher))
    # within the best's interval and cheaper: the classifier, not the best-scoring seq2seq
    assert "`classifier` for labels: its test accuracy (70.0%) is within the 95%" in text
    assert "ECE 0.040" in text
    assert "Where a rationale must come out: `seq2seq`" in text
    assert "the teacher was asked on the first 60 of the 120 test rows" in text
    assert "`causal` on 96" in text
    assert "`classifier`, `causal`: trained on labels only" in text

    worse = _c("classifier", "classifier", "label", 0.55, [0.46, 0.64], 0.0001, 3.0, 0.04, 240)
    text = "\n".join(pick_paragraphs([worse, s2s, causal], None))
    assert "`seq2seq` for labels: the highest test accuracy (72.0%)" in text
    assert "`classifier` is better calibrated (ECE 0.040)" not in text  # not within reach
    assert "Where a rationale must come out" not in text  # the pick writes one
    assert "teacher was asked" not in text


def test_the_pick_weighs_accuracy_against_cost_and_latency_for_every_kind():
    """Four kinds: the cheapest (classical) is less accurate than the interval allows, so the
    pick is not it; the trade-off names what each dearer student buys, and the students
    beaten on both (dearer and less accurate) are left off it."""
    classical = _c("classical", "classical", "label", 0.60, [0.51, 0.69], 9e-6, 0.4, 0.05, 240)
    cls = _c("classifier", "classifier", "label", 0.70, [0.62, 0.78], 0.0001, 3.0, 0.04, 240)
    s2s = _c("seq2seq", "seq2seq", "label+rationale", 0.72, [0.64, 0.80], 0.002, 40.0, 0.15, 240)
    causal = _c("causal", "causal", "label", 0.50, [0.41, 0.59], 0.02, 300.0, 0.30, 240)
    text = "\n".join(pick_paragraphs([classical, cls, s2s, causal], None))
    assert "`classifier` for labels: its test accuracy (70.0%) is within the 95%" in text
    assert (
        "Accuracy against cost, from the cheapest student to the most accurate (each one more "
        "accurate than every cheaper one; the others are beaten on both): `classical` 60.0% at "
        "$0.0000090 per 1,000, p50 0.4 ms; `classifier` 70.0% (+10.0 points) at $0.0001 (11x "
        "the cost), p50 3.0 ms (7.5x the latency); `seq2seq` 72.0% (+2.0 points) at $0.0020 "
        "(20x the cost), p50 40.0 ms (13x the latency)."
    ) in text
    assert "`causal` 50.0%" not in text  # dearer than all and less accurate: off the frontier
    assert "`classical`, `classifier`, `causal`: trained on labels only" in text
    alone = "\n".join(pick_paragraphs([cls], None))
    assert "Accuracy against cost" not in alone  # one student: nothing to weigh


def test_money_keeps_the_digits_of_a_tiny_cost():
    from protege.report.model import money

    assert money(8.88e-06) == "$0.0000089"
    assert money(5e-05) == "$0.000050"
    assert (money(0.0022), money(0.5), money(0.0), money(12.5)) == (
        "$0.0022",
        "$0.5000",
        "$0.0000",
        "$12.50",
    )


def test_variants_report_picks_from_its_own_table(tmp_path):
    import shutil

    from eval_util import make_run, one_thread, tiny_models

    from protege.evaluate import evaluate_run
    from protege.report import build_variants_report

    top = tmp_path / "top"
    for name in ("small", "big"):
        shutil.move(make_run(tmp_path / name, tiny_models()), top / name)
        with one_thread():
            evaluate_run(top / name)
    text = (build_variants_report(top, ["small", "big"]) / "report.md").read_text()
    assert "| accuracy | 95% CI | coverage | BLEU | ECE |" in text
    assert "**Which student to pick**, from the measurements above: `" in text
    assert "the teacher was asked on the first" not in text  # 12 of 12: the same rows
    assert "up to 1 were in flight at once" not in text  # no timestamps: said so instead
    assert "concurrency they ran at is unknown" in text
