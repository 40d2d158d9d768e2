"""The smaller things a newcomer met on the second day (issue 19, items 5 and 7)."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner
from serve_util import Server, nli_rows, trained_model

from protege.cli import main
from protege.errors import ProtegeError
from protege.formats import TaskConfig
from protege.recipe import RecipeConfig
from protege.teacher.leases import start_run
from protege.teacher.store import Answer, TeacherStore

ROOT = Path(__file__).resolve().parents[1]


def test_python_m_protege_cli_runs_as_accelerate_launch_runs_it():
    """`accelerate launch ... -m protege.cli train ...` (configs/train-emanli.yaml) needs it."""
    res = subprocess.run([sys.executable, "-m", "protege.cli", "train", "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Usage:" in res.stdout
    assert "-m protege.cli train" in (ROOT / "configs/train-emanli.yaml").read_text()


def test_train_cnn_config_reads_what_the_cnn_recipe_writes():
    """configs/train-cnn.yaml trains on cnn-reverse's output, whose gold summary is `summary`
    (the recipe renames `highlights`), and leaves t5-small's own prefix to protege."""
    from protege.config import load_config
    from protege.train.config import TrainConfig

    cfg = load_config(TrainConfig, ROOT / "configs/train-cnn.yaml")
    recipe = yaml.safe_load((ROOT / "recipes/cnn-reverse.yaml").read_text())
    assert cfg.task.target_field in recipe["data"]["fields"]  # a field the recipe's rows have
    assert not cfg.task.input_template.startswith("summarize: ")
    run_dir = recipe["run_dir"]
    assert cfg.train_data.startswith(f"{run_dir}/generate/")
    assert cfg.dev_data == f"{run_dir}/data/dev.jsonl"  # renamed rows, not the raw hub split


def test_export_of_the_default_minilm_student_is_refused_saying_what_to_do(tmp_path):
    """CTranslate2 has no converter for BERT2BERT; the README no longer claims one."""
    import shutil

    from protege.formats import save_task
    from protege.students.seq2seq.build import resolve_model

    model = tmp_path / "minilm"
    model.mkdir()
    shutil.copy(Path(resolve_model("protege:minilm-encdec")) / "config.json", model)
    save_task(TaskConfig(format="label"), model)
    res = CliRunner().invoke(main, ["export", str(model)])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1
    assert "has no CTranslate2 converter: serve it as it is" in res.output
    assert (
        "`protege:minilm-encdec`, a BERT2BERT, has no CTranslate2 converter"
        in (ROOT / "README.md").read_text()
    )


def test_eval_of_a_train_output_dir_says_what_to_do(tmp_path):
    out = tmp_path / "try"
    out.mkdir()
    (out / "results.json").write_text("[]")
    res = CliRunner().invoke(main, ["eval", str(out)])
    assert res.exit_code == 1
    assert "a `protege train` output; score a checkpoint with `protege eval" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_a_missing_train_file_is_reported_before_any_model_is_built(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "model": "no-such-org/no-such-model", "train_data": f"{tmp_path}/nope.jsonl",
        "dev_data": f"{tmp_path}/nope-dev.jsonl", "output_dir": f"{tmp_path}/out",
    }))  # fmt: skip
    res = CliRunner().invoke(main, ["train", str(config)])
    assert res.exit_code == 1
    assert f"{tmp_path}/nope.jsonl: no such file (train_data)" in res.output
    assert "no-such-model" not in res.output


def test_the_cap_is_shown_as_set_and_one_below_the_spend_is_warned_of():
    with TeacherStore() as store:
        store.put(Answer("k", "m", "ok", text="x", cost_usd=0.01), {"model": "m"})
    res = CliRunner().invoke(main, ["teacher", "cap", "set", "0.002"])
    assert res.exit_code == 0
    assert "cap $0.002 (spent so far $0.0100)" in res.output
    assert "warning: the cap $0.002 is below what the store has spent already" in res.output
    stats = CliRunner().invoke(main, ["teacher", "stats"])
    assert "cap $0.002," in stats.output
    assert "cap $5.00 " in CliRunner().invoke(main, ["teacher", "cap", "set", "5"]).output


def test_teacher_stats_shows_whole_model_names_and_their_endpoints(tmp_path):
    name = "ft:gpt-4.1-mini-2025-04-14:my-org:nli-teacher:B7xk2Lq9"
    src = tmp_path / "answers.jsonl"
    src.write_text(json.dumps({"teacher_prompt": "p", "rationale": "r"}) + "\n")
    assert CliRunner().invoke(main, ["teacher", "import", str(src), "--model", name]).exit_code == 0
    out = CliRunner().invoke(main, ["teacher", "stats"]).output
    flat = re.sub(r"[\s│┃|]", "", out)
    assert flat.count(name) == 2  # whole, in the usage table and in the endpoint table
    assert re.search(r"import\s+.*1\s*$", out, re.M)


def test_label_only_students_decode_eval_within_their_label_budget():
    """`eval.decoding.max_new_tokens` is for students that write rationales: an untrained
    causal label-only student took 20 s an example decoding up to 96 tokens in the demo."""
    from protege.pipeline import eval_decoding

    recipe = RecipeConfig(
        task=TaskConfig(format="label+rationale"), eval={"decoding": {"max_new_tokens": 96}},
        train={"generation": {"num_beams": 2}},
    )  # fmt: skip
    rationale = eval_decoding(recipe, {"model": "protege:minilm-encdec"})
    label_only = eval_decoding(recipe, {"task": {"format": "label"}})
    assert rationale.max_new_tokens == 96 and rationale.num_beams == 2
    assert label_only.max_new_tokens is None  # resolved per format: 16 for labels
    assert eval_decoding(recipe, None, {"max_new_tokens": 8}).max_new_tokens == 8


def test_a_reports_teacher_spend_counts_only_its_own_runs(tmp_path):
    from protege.report.views import money, spend_section

    run = tmp_path / "run"
    (run / "generate").mkdir(parents=True)
    with TeacherStore() as store:
        start_run(store, "mine", str(run / "generate" / "explain-train.jsonl"))
        start_run(store, "other", str(tmp_path / "elsewhere" / "out.jsonl"))
        store.put(Answer("a", "gpt-4.1-mini", "ok", text="x", cost_usd=0.5, run_id="mine"),
                  {"model": "gpt-4.1-mini"})  # fmt: skip
        store.put(Answer("b", "gpt-4.1-mini", "ok", text="y", cost_usd=7.0, run_id="other"),
                  {"model": "gpt-4.1-mini"})  # fmt: skip
    (table,) = spend_section(run).tables
    assert [row[1] for row in table.rows] == ["1"]  # one answer: this run's
    assert table.rows[0][7] == money(0.5)


def test_minilm_student_loads_without_a_load_report(caplog):
    from protege.students.seq2seq.build import load_student

    load_student("protege:minilm-encdec")  # built (a report then is expected), then loaded
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        model, _ = load_student("protege:minilm-encdec")
    assert model.encoder.pooler is None
    assert not [r for r in caplog.records if "LOAD REPORT" in r.getMessage()]


@pytest.mark.slow
def test_a_rationale_from_a_label_only_student_is_refused(pytestconfig):
    from protege.serve.predictor import Predictor

    predictor = Predictor.load(trained_model(pytestconfig, fmt="label"))
    rows = nli_rows("dev", 2)
    with pytest.raises(ProtegeError, match="trained on labels only"):
        predictor.predict(rows, with_rationale=True)
    with Server(predictor) as s:
        r = httpx.post(s.url + "/v1/predict", json={"inputs": rows, "rationale": True}, timeout=30)
        assert r.status_code == 422
        assert "trained on labels only" in r.json()["error"]
        ok = httpx.post(s.url + "/v1/predict", json={"inputs": rows}, timeout=30)
        assert ok.status_code == 200 and len(ok.json()["predictions"]) == 2
