"""`protege run` end to end on tiny data: a fake OpenAI-compatible teacher, a tiny T5."""

import json
from pathlib import Path

import pytest
import yaml

from protege.data.io import read_records, write_jsonl
from protege.data.samples import sample_path
from protege.errors import ProtegeError
from protege.pipeline import run_recipe
from protege.recipe import load_recipe
from protege.testing.fake_openai import FakeOpenAI


def write_recipe(tmp_path: Path, base_url: str, **changes) -> Path:
    rows = read_records(sample_path("nli", "train"))
    write_jsonl(tmp_path / "train.jsonl", rows[:24])
    write_jsonl(tmp_path / "dev.jsonl", rows[24:36])
    write_jsonl(tmp_path / "test.jsonl", read_records(sample_path("nli", "test"))[:12])
    recipe = {
        "name": "tiny",
        "run_dir": str(tmp_path / "run"),
        "task": {"format": "label+rationale"},
        "data": {k: str(tmp_path / f"{k}.jsonl") for k in ("train", "dev", "test")},
        "teacher": {
            "kind": "openai",
            "model": "fake-model",
            "base_url": base_url,
            "max_tokens": 40,
            "concurrency": 4,
        },
        "generate": [
            {"name": "explain-train", "split": "train", "config": {"recipe": "explain"}},
            {"name": "explain-dev", "split": "dev", "config": {"recipe": "explain"}},
            {"name": "explain-test", "split": "test", "config": {"recipe": "explain"}},
        ],
        "teacher_zeroshot": {"enabled": True, "config": {"teacher": {"max_tokens": 5}}},
        "train": {
            "model": "protege:tiny-t5",
            "epochs": 1,
            "batch_size": 8,
            "warmup_steps": 1,
            "evals_per_epoch": 1,
            "eval_batch_size": 16,
            "generation": {"max_new_tokens": 8},
            "grid": {
                "learning_rates": [1e-3],
                "splits": [[0.5, 0.5]],
                "baseline": True,
                "seeds": [1],
            },
        },
        "eval": {"decoding": {"max_new_tokens": 8}},
        **changes,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture
def teacher(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeOpenAI(
        reply=lambda m: (
            "neutral" if "Explain why" not in m[-1]["content"] else "Because the text says so."
        )
    ) as fake:
        yield fake


def test_run_end_to_end_then_rerun_skips_and_one_change_reruns_what_depends(tmp_path, teacher):
    path = write_recipe(tmp_path, teacher.base_url)
    first = run_recipe(load_recipe(path))
    run = tmp_path / "run"
    assert first.report == run / "report" / "report.html" and first.report.exists()
    assert (run / "report" / "report.md").exists()
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert {m["baseline"] for m in summary["models"]} == {True, False}
    assert summary["teacher"] is not None
    calls = len(teacher.answered())
    assert calls == 24 + 12 + 12 + 12  # explain train, dev, test; teacher zero-shot on test
    rationale = [m for m in summary["models"] if not m["baseline"]]
    assert all(m["test"]["bleu"] is not None for m in rationale)  # test references from teacher

    again = run_recipe(load_recipe(path))
    assert again.ran == [] and len(teacher.answered()) == calls

    changed = run_recipe(load_recipe(path, ["eval.decoding.max_new_tokens=6"]))
    assert changed.ran == ["eval", "report"]
    assert len(teacher.answered()) == calls  # paid calls are never repeated


def test_train_change_sets_earlier_results_aside(tmp_path, teacher):
    path = write_recipe(tmp_path, teacher.base_url, teacher_zeroshot={"enabled": False})
    run_recipe(load_recipe(path))
    second = run_recipe(load_recipe(path, ["train.grid.splits=[[0.75, 0.25]]"]))
    assert "train" in second.ran and "generate:explain-train" not in second.ran
    kept = [p for p in (tmp_path / "run").iterdir() if p.name.startswith("train.")]
    assert len(kept) == 1 and (kept[0] / "results.json").exists()


def test_training_on_test_rows_is_refused(tmp_path, teacher):
    path = write_recipe(tmp_path, teacher.base_url)
    data = {
        "train": str(tmp_path / "test.jsonl") + "[:6]",
        "dev": str(tmp_path / "dev.jsonl"),
        "test": str(tmp_path / "test.jsonl") + "[4:]",
    }
    with pytest.raises(ProtegeError, match="data.train: 2 of its rows are test rows"):
        run_recipe(load_recipe(path, [f"data={json.dumps(data)}"]))
    assert teacher.answered() == []


def test_a_test_row_the_teacher_did_not_answer_stops_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    row = read_records(sample_path("nli", "test"))[3]
    with FakeOpenAI(prompt_faults={row["hypothesis"]: ["500"] * 10}) as fake:
        path = write_recipe(tmp_path, fake.base_url)
        recipe = load_recipe(path, ["teacher.max_retries=1", "teacher.backoff_s=0.01"])
        with pytest.raises(
            ProtegeError, match="generate:explain-test: 11 of 12 rows answered: 1 failed"
        ):
            run_recipe(recipe)
    assert not (tmp_path / "run" / "train").exists()
