"""evaluate_model on tiny model dirs, `protege eval MODEL_DIR`, and the teacher row scorer."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from eval_util import fit_tiny, one_thread, tiny_models

from protege.cli import main
from protege.data.io import read_records
from protege.data.samples import sample_path
from protege.evaluate import Decoding, evaluate_model
from protege.evaluate.score import teacher_outputs
from protege.formats import TaskConfig, save_task
from protege.students.seq2seq.build import build_random_student

SUMMARY = TaskConfig(type="summarization", input_template="{article}", target_field="summary")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def test_random_model_outputs_are_malformed_and_counted_wrong(tmp_path):
    model = build_random_student("t5", tmp_path / "m")
    save_task(TaskConfig(), model)
    rows = read_records(sample_path("nli", "test"))[:6]
    r = evaluate_model(model, rows, decoding=Decoding(batch_size=4, max_new_tokens=5))
    m = r["metrics"]
    parsed = [p["pred"] is not None for p in r["per_example"]]
    assert m["n"] == 6 and m["coverage"] == pytest.approx(sum(parsed) / 6)
    assert m["accuracy"] == pytest.approx(sum(p["correct"] for p in r["per_example"]) / 6)
    assert r["decoding"] == {
        "batch_size": 4,
        "max_new_tokens": 5,
        "num_beams": 1,
        "max_source_len": 512,
    }
    assert all(n <= 5 for n in [len(p["output"].split()) for p in r["per_example"]])
    assert r["speed"]["latency_s_per_example"] > 0
    assert r["speed"]["n_single"] == 6 and r["speed"]["p50_single_ms"] > 0  # one at a time
    cost = r["speed"]["latency_s_per_example"] * 1000 * 0.10 / 3600
    assert r["speed"]["cost_per_1k_usd"] == pytest.approx(cost)


def test_cli_eval_model_dir_writes_metrics_and_predictions(tmp_path):
    model = tiny_models()["rationale"]
    data = tmp_path / "test.jsonl"
    rows = read_records(sample_path("nli", "test"))[:8]
    data.write_text(
        "".join(json.dumps({**r, "rationale": "the text says so"}) + "\n" for r in rows)
    )
    out = tmp_path / "out" / "m.json"
    res = CliRunner().invoke(main, ["eval", str(model), "--data", str(data), "--out", str(out)])
    assert res.exit_code == 0, res.output
    m = json.loads(out.read_text())["metrics"]
    n_neutral = sum(r["label"] == "neutral" for r in rows)
    assert m["accuracy"] == pytest.approx(n_neutral / 8) and m["coverage"] == 1.0
    assert m["bleu"] == pytest.approx(100.0) and m["bleu_lowercased"] is True
    preds = (out.parent / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 8 and json.loads(preds[0])["pred"] == "neutral"
    assert "accuracy" in res.output
    res = CliRunner().invoke(main, ["eval", str(model)])
    assert res.exit_code != 0 and "--data" in res.output


def test_summarization_student_scored_with_rouge(tmp_path):
    rows = read_records(sample_path("summarization", "test"))[:4]
    target = rows[0]["summary"]
    model = fit_tiny(tmp_path / "s", target, SUMMARY, steps=80)
    r = evaluate_model(model, rows, decoding=Decoding(max_new_tokens=48))
    m = r["metrics"]
    assert m["type"] == "summarization" and m["headline"] == "rougeL"
    first = r["per_example"][0]
    assert first["rouge1"] > 50  # it learnt the first row's summary (uncased, so not 100)
    lo, hi = m["rougeL_ci"]
    assert lo <= m["rougeL"] <= hi
    assert m["gen_len_tokens"] > 0 and m["gen_len_words"] > 0


def test_teacher_outputs_flagged_and_missing_count_as_malformed():
    task = TaskConfig()
    test = [{"uid": str(i), "label": "neutral"} for i in range(4)]
    answers = [
        {
            "uid": "0",
            "teacher_label": "Neutral.",
            "provenance": {"cost_usd": 0.001, "latency_s": 1},
        },
        {"uid": "1", "teacher_label": "banana", "flagged": "not a label", "provenance": {}},
        {"uid": "2", "teacher_label": "entailment", "provenance": {"latency_s": 3}},
    ]
    texts, preds, info = teacher_outputs(task, test, answers, "teacher_label")
    assert preds == ["neutral", None, "entailment", None]
    assert (info["n_missing"], info["n_flagged"], info["n_answers"]) == (1, 1, 3)
    assert info["latency_s_per_example"] == 2.0 and info["p50_single_ms"] == 2000.0
    assert info["cost_per_1k_usd"] == pytest.approx(1000 * 0.001 / 3)


def test_uncased_decoding_of_the_connectors_still_parses():
    from protege.formats import parse_output

    parsed = parse_output(TaskConfig(format="label+rationale"), "neutral explanation : it says")
    assert (parsed.label, parsed.rationale) == ("neutral", "it says")
    parsed = parse_output(TaskConfig(format="rationale+label"), "explanation : x answer : neutral")
    assert (parsed.label, parsed.rationale) == ("neutral", "x")


def test_multitask_student_is_asked_for_rationales_separately():
    model = tiny_models()["baseline"]  # answers "neutral" to any input, explain: included
    rows = [{**r, "rationale": "neutral"} for r in read_records(sample_path("nli", "test"))[:4]]
    task = TaskConfig(format="multitask")
    r = evaluate_model(model, rows, task, decoding=Decoding(max_new_tokens=4))
    m = r["metrics"]
    assert m["n_rationale_refs"] == 4
    assert m["bleu"] == 0.0  # a one-word hypothesis has no 4-gram: corpus BLEU 0 ...
    assert m["sentence_bleu_nltk"] == pytest.approx(0.0, abs=1e-12)  # NLTK: ~1e-231
    assert [p["rationale"] for p in r["per_example"]] == ["neutral"] * 4  # ... but it answered


def test_teacher_sample_is_the_rows_it_was_asked(tmp_path):
    from protege.data.io import write_json, write_jsonl
    from protege.evaluate.model_eval import teacher_sample_size

    test = [{"uid": str(i)} for i in range(10)]
    answers = [{"uid": "0"}, {"uid": "2"}]  # row 1 failed; rows 3.. were not asked
    path = tmp_path / "teacher-zeroshot.jsonl"
    write_jsonl(path, answers)
    assert teacher_sample_size(path, test, answers) == 3
    write_json(tmp_path / "teacher-zeroshot.summary.json", {"n_records": 5})
    assert teacher_sample_size(path, test, answers) == 5  # the job's own count wins
