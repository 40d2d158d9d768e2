"""evaluate_run and `protege eval` on a fabricated run directory with tiny checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from eval_util import N_TEST, make_run, one_thread, tiny_models

from protege.cli import main
from protege.errors import ProtegeError
from protege.evaluate import evaluate_run
from protege.formats import TaskConfig


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture()
def run_dir(tmp_path):
    return make_run(tmp_path, tiny_models())


def test_evaluate_run_scores_every_checkpoint_and_teacher(run_dir):
    s = evaluate_run(run_dir)
    assert s["n_test"] == N_TEST and s["headline"] == "accuracy"
    names = [e["name"] for e in s["models"]]
    assert names == [
        "baseline-lr0.001-s0/best-loss",
        "baseline-lr0.001-s0/best-accuracy",
        "ab25-lr0.001-s0/best-loss",
        "ab25-lr0.001-s0/best-accuracy",
    ]
    n_neutral = sum(
        1
        for line in (run_dir / "data/test.jsonl").read_text().splitlines()
        if json.loads(line)["label"] == "neutral"
    )
    for e in s["models"]:
        # Both tiny students learnt to answer "Neutral": accuracy is the neutral share.
        assert e["test"]["accuracy"] == pytest.approx(n_neutral / N_TEST)
        assert e["test"]["coverage"] == 1.0
        lo, hi = e["test"]["accuracy_ci"]
        assert lo <= e["test"]["accuracy"] <= hi
        assert e["speed"]["latency_ms_per_example"] > 0
    rat = s["models"][3]
    assert rat["test"]["bleu"] == pytest.approx(100.0)  # it repeats the reference rationale
    assert rat["paired"]["baseline"] == "baseline-lr0.001-s0/best-accuracy"
    assert rat["paired"]["chosen_by"] == "same lr and seed"
    assert rat["paired"]["mcnemar"] == {"a_only": 0, "b_only": 0, "p_value": 1.0}
    assert s["models"][1]["paired"] is None  # a baseline is not tested against itself
    assert s["models"][1]["test"]["bleu"] is None  # scored in its own format: no rationale
    t = s["teacher"]
    # 8 right, 1 flagged (malformed), 1 missing (failed call), 2 wrong.
    assert t["metrics"]["accuracy"] == pytest.approx(8 / N_TEST)
    assert t["metrics"]["coverage"] == pytest.approx(10 / N_TEST)
    assert t["speed"]["n_missing"] == 1 and t["speed"]["n_flagged"] == 1
    assert t["speed"]["cost_per_1k_usd"] == pytest.approx(0.2)
    assert t["speed"]["latency_s_per_example"] == pytest.approx(0.8)
    assert (run_dir / "eval/summary.json").exists()
    assert (run_dir / "eval/ab25-lr0.001-s0/best-accuracy/predictions.jsonl").exists()
    assert s["hygiene"]["ok"]  # the shipped sample splits do not overlap
    assert [a["seeds"] for a in s["aggregates"]] == [[0]] * 4


def test_rerun_reuses_scored_checkpoints(run_dir, monkeypatch):
    evaluate_run(run_dir)
    import protege.evaluate.run_eval as run_eval

    def boom(*a, **k):
        raise AssertionError("re-generated an unchanged checkpoint")

    monkeypatch.setattr(run_eval, "evaluate_model", boom)
    s = evaluate_run(run_dir, hourly_price_usd=3.6)
    assert len(s["models"]) == 4
    speed = s["models"][0]["speed"]  # a new assumed price reprices the measured latency
    assert speed["cost_per_1k_usd"] == pytest.approx(speed["latency_s_per_example"])
    assert speed["p50_single_ms"] > 0 and speed["n_single"] > 0  # kept, not dropped


def test_selection_on_test_is_refused(run_dir):
    import yaml

    dev = yaml.safe_load((run_dir / "recipe.yaml").read_text())["data"]["dev"]
    copy = run_dir.parent / "dev-copy.jsonl"
    shutil.copy(dev, copy)  # same bytes under another name is still the dev file
    with pytest.raises(ProtegeError, match="selection"):
        evaluate_run(run_dir, test_path=copy)


def test_cli_eval_run_dir(run_dir):
    res = CliRunner().invoke(main, ["eval", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert "teacher (zero-shot)" in res.output
    assert json.loads((run_dir / "eval/summary.json").read_text())["n_test"] == N_TEST


def test_cli_eval_rejects_other_dirs(tmp_path):
    res = CliRunner().invoke(main, ["eval", str(tmp_path)])
    assert res.exit_code != 0 and "neither a model dir" in res.output


def test_seeds_are_aggregated_per_configuration():
    from protege.evaluate.run_eval import _aggregates

    task = TaskConfig()
    entries = [
        {
            "model": "m",
            "format": "label",
            "lr": 1e-3,
            "split": None,
            "baseline": True,
            "checkpoint": "best-loss",
            "seed": seed,
            "dev": {"eval_accuracy": dev},
            "test": {"accuracy": acc, "coverage": 1.0, "bleu": None},
        }
        for seed, dev, acc in ((0, 0.5, 0.40), (1, 0.6, 0.44))
    ]
    (agg,) = _aggregates(entries, task)
    assert agg["seeds"] == [0, 1]
    assert agg["test_accuracy"]["mean"] == pytest.approx(0.42)
    assert agg["test_accuracy"]["std"] == pytest.approx(0.02 * 2**0.5)
    assert agg["dev"]["mean"] == pytest.approx(0.55)
    assert agg["test_bleu"]["n"] == 0


def test_dev_interval_counts_only_the_scored_rows(tmp_path):
    from protege.evaluate.run_eval import _dev_metrics
    from protege.evaluate.stats import wilson_ci

    counts = {"records": 100, "examples": 80, "skipped_flagged": 15, "skipped_missing_rationale": 5}
    for extra in ({}, {"scored": 80}):  # checkpoints written before and after "scored"
        (tmp_path / "protege_meta.json").write_text(
            json.dumps({"data": {"dev": {**counts, **extra}}})
        )
        dev = _dev_metrics({"eval_accuracy": 0.5, "path": "x"}, tmp_path)
        assert (dev["n"], dev["n_unscored"]) == (80, 20)
        assert dev["accuracy_ci"] == pytest.approx(list(wilson_ci(0.5, 80)))
