"""Every path decodes with the generation settings training recorded in the checkpoint (issue
18 item 11): test (`evaluate_model`, `evaluate_run`, the pipeline's eval stage), predict,
serve and `export --check` (`Predictor.load`, PyTorch and CTranslate2), and the multitask
rationales scored for BLEU are cut where dev cut them.

The oracle: the student's own output at the recorded budget, generated directly. A random
tiny T5 writes until the budget runs out, so any path that decodes with another budget gives
other texts, hence other labels and scores."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_util import one_thread

from protege.data.io import read_records
from protege.data.samples import sample_path
from protege.evaluate import Decoding, evaluate_model
from protege.evaluate.score import score_outputs
from protege.formats import TaskConfig, explain_input, inference_input, recorded_decoding
from protege.serve.predictor import Predictor
from protege.train.config import GenerationConfig

RECORDED = 170
"""Above eval's old fixed 160 and serving's 128: training raises `max_new_tokens` this far
when the longest rationale+label target needs it to reach its label."""


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def _trained_like(tmp_path: Path, fmt: str, budget: int, num_beams: int = 1) -> Path:
    """A tiny T5 checkpoint saved as training saves one: its decoding set on the model
    (`configure_decoding`) and recorded in protege_meta.json."""
    from protege.students import load_student
    from protege.students.seq2seq.build import build_random_student
    from protege.train.checkpoint import save_model_dir

    base = build_random_student("t5", tmp_path / "base")
    task = TaskConfig(format=fmt)
    student = load_student(str(base), task)
    settings = GenerationConfig(max_new_tokens=budget, num_beams=num_beams).settings()
    student.configure_decoding(settings)
    return save_model_dir(student, task, {"decoding": settings}, tmp_path / "best-accuracy")


def _oracle(model_dir: Path, sources: list[str], budget: int) -> list[str]:
    return _oracle_ids(model_dir, sources, budget)[0]


def _oracle_ids(model_dir: Path, sources: list[str], budget: int) -> tuple[list[str], list[int]]:
    """The student's own texts at `budget`, and how many tokens each generated."""
    from protege.evaluate.predict import load_for_eval

    student = load_for_eval(model_dir, "cpu")
    texts, counts = student.generate_ids(sources, budget)
    return [t.strip() for t in texts], counts


def test_eval_and_serving_decode_with_the_recorded_budget(tmp_path):
    model = _trained_like(tmp_path, "rationale+label", RECORDED)
    assert recorded_decoding(model)["max_new_tokens"] == RECORDED
    task = TaskConfig(format="rationale+label")
    rows = read_records(sample_path("nli", "test"))[:3]
    for r in rows:
        r["rationale"] = "the text says so"
    oracle, counts = _oracle_ids(model, [inference_input(task, r) for r in rows], RECORDED)
    assert max(counts) > 160  # it writes past the old fixed budgets

    result = evaluate_model(model, rows, decoding=Decoding(batch_size=3))
    assert result["decoding"]["max_new_tokens"] == RECORDED
    assert [p["output"] for p in result["per_example"]] == oracle
    want, _ = score_outputs(task, rows, oracle)
    assert result["metrics"]["accuracy"] == want["accuracy"]
    assert result["metrics"]["bleu"] == want["bleu"]  # the rationale cut where dev cut it

    predictor = Predictor.load(model)  # predict, serve and export --check load it so
    assert (predictor.max_new_tokens, predictor.num_beams) == (RECORDED, 1)
    served = predictor.predict(rows, with_rationale=True)
    assert [p["text"].strip() for p in served] == oracle


def test_an_explicit_budget_still_wins(tmp_path):
    model = _trained_like(tmp_path, "rationale+label", RECORDED)
    rows = read_records(sample_path("nli", "test"))[:2]
    result = evaluate_model(model, rows, decoding=Decoding(max_new_tokens=5))
    assert result["decoding"]["max_new_tokens"] == 5
    assert Predictor.load(model, max_new_tokens=5).max_new_tokens == 5


def test_multitask_rationales_are_cut_as_dev_cut_them(tmp_path):
    """Dev generates the `explain:` pass with the recorded budget; test did with 160."""
    model = _trained_like(tmp_path, "multitask", 12)
    task = TaskConfig(format="multitask")
    rows = read_records(sample_path("nli", "test"))[:3]
    for r in rows:
        r["rationale"] = "the text says so"
    result = evaluate_model(model, rows)
    oracle = _oracle(model, [explain_input(task, r) for r in rows], 12)
    assert [p["rationale"] for p in result["per_example"]] == oracle


def test_recorded_beam_width_reaches_the_predictor(tmp_path):
    model = _trained_like(tmp_path, "label+rationale", 20, num_beams=2)
    assert (Predictor.load(model).max_new_tokens, Predictor.load(model).num_beams) == (20, 2)
    rows = read_records(sample_path("nli", "test"))[:2]
    assert evaluate_model(model, rows)["decoding"]["num_beams"] == 2


def test_ct2_export_decodes_with_the_recorded_settings(tmp_path):
    pytest.importorskip("ctranslate2")
    from protege.students.seq2seq.ct2 import export_ct2

    model = _trained_like(tmp_path, "rationale+label", RECORDED)
    out = export_ct2(model, tmp_path / "ct2", quantization="float32")
    exported = Predictor.load(out)
    assert (exported.max_new_tokens, exported.num_beams) == (RECORDED, 1)
    rows = read_records(sample_path("nli", "test"))[:2]
    texts = [p["text"].strip() for p in exported.predict(rows, with_rationale=True)]
    task = TaskConfig(format="rationale+label")
    oracle = _oracle(model, [inference_input(task, r) for r in rows], RECORDED)
    assert [len(t.split()) for t in texts] == [len(t.split()) for t in oracle]


def test_the_pipeline_eval_stage_decodes_each_checkpoint_as_recorded(tmp_path):
    """The pipeline passed only `num_beams` (from the recipe): test decoded at 160/16."""
    from eval_util import make_run

    from protege.pipeline import _evaluate
    from protege.recipe import RecipeConfig

    models = {
        "baseline": _trained_like(tmp_path / "b", "label", 24),
        "rationale": _trained_like(tmp_path / "r", "label+rationale", 40),
    }
    run = make_run(tmp_path, models)  # its protege_meta.json: the generation config records
    recipe = RecipeConfig(name="t", task=TaskConfig(format="label+rationale"))
    _evaluate(recipe, run, run / "data" / "test.jsonl", None)
    import json

    summary = json.loads((run / "eval" / "summary.json").read_text())
    budgets = {e["id"]: e["decoding"]["max_new_tokens"] for e in summary["models"]}
    assert budgets == {"baseline-lr0.001-s0": 24, "ab25-lr0.001-s0": 40}
    assert summary["decoding"]["max_new_tokens"] == "24-40"
    got = Decoding().resolved(TaskConfig(format="label"), {})  # nothing recorded: by task
    assert (got.max_new_tokens, got.num_beams) == (16, 1)
