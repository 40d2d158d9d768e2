"""`protege run` and the teacher: a step is done only when every row has its answer; Paper B's
length filter also applies to the synthetic articles a variant trains on; under
`accelerate launch` only the main process pays the teacher."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_pipeline import write_recipe
from test_train_ddp import free_port

from protege.data.io import read_records, write_jsonl
from protege.data.samples import sample_path
from protege.errors import ProtegeError
from protege.pipeline import Stages, _data_and_teacher, run_recipe
from protege.recipe import load_recipe
from protege.testing.fake_openai import FakeOpenAI

BIN = Path(sys.executable).parent


def _reply(messages):
    return "neutral" if "Explain why" not in messages[-1]["content"] else "Because it says so."


def test_failed_teacher_rows_stop_the_run_and_a_rerun_sends_only_those(tmp_path):
    row = read_records(sample_path("nli", "train"))[5]
    with FakeOpenAI(reply=_reply, prompt_faults={row["hypothesis"]: ["500"] * 2}) as fake:
        path = write_recipe(tmp_path, fake.base_url, teacher_zeroshot={"enabled": False})
        overrides = ["teacher.max_retries=1", "teacher.backoff_s=0.01"]
        with pytest.raises(ProtegeError, match=r"generate:explain-train: 23 of 24 rows answered: "
                           r"1 failed, 0 not sent \(budget\) \(first error: HTTP 500"):  # fmt: skip
            run_recipe(load_recipe(path, overrides))
        stages = json.loads((tmp_path / "run" / "stages.json").read_text())
        assert "generate:explain-train" not in stages  # not done: a rerun runs it again
        assert not (tmp_path / "run" / "train").exists()
        sent = len(fake.log)
        again = run_recipe(load_recipe(path, overrides))  # the server answers now
        assert "generate:explain-train" in again.ran and again.report is not None
        # only the missing row was sent again for the train step (+ dev and test steps)
        train_prompts = [e for e in fake.log[sent:] if row["hypothesis"] in str(e["body"])]
        assert len(train_prompts) == 1
        assert len(read_records(tmp_path / "run" / "generate" / "explain-train.jsonl")) == 24


def test_allow_incomplete_goes_on_with_a_counted_warning_and_is_not_recorded(tmp_path, capsys):
    prices = {"fake-model": {"input": 1000.0, "output": 1000.0}}
    with FakeOpenAI(reply=_reply) as fake:
        path = write_recipe(tmp_path, fake.base_url, teacher_zeroshot={"enabled": False})
        recipe = yaml.safe_load(path.read_text())
        recipe["teacher"]["prices"] = prices
        step = recipe["generate"][0]
        step["allow_incomplete"] = True
        step["config"]["max_cost"] = 0.6  # room for some of the 24 rows only
        path.write_text(yaml.safe_dump(recipe))
        result = run_recipe(load_recipe(path))
        err = " ".join(capsys.readouterr().err.split())  # rich wraps at 80 columns
        assert "WARNING generate:explain-train: 2 of 24 rows answered: 0 failed, 22 not sent" in err
        assert "generate:explain-train" not in result.ran  # ran, but not done
        stages = json.loads((tmp_path / "run" / "stages.json").read_text())
        assert "generate:explain-train" not in stages and "train" in stages
        written = len(read_records(tmp_path / "run" / "generate" / "explain-train.jsonl"))
        assert 0 < written < 24
        n = len(fake.log)
        del step["config"]["max_cost"]
        path.write_text(yaml.safe_dump(recipe))
        again = run_recipe(load_recipe(path))
        assert "generate:explain-train" in again.ran and len(fake.log) == n + 24 - written


def test_synthetic_articles_get_papers_length_filter_counted(tmp_path):
    rows = read_records(sample_path("summarization", "train"))[:20]
    for split, part in (("train", rows[:12]), ("dev", rows[12:16]), ("test", rows[16:])):
        write_jsonl(tmp_path / f"{split}.jsonl", part)

    def reply(messages):  # about one synthetic article in three is too long
        digest = hashlib.sha256(messages[-1]["content"].encode()).digest()
        return ("long " * 500) if digest[0] % 3 == 0 else "A short synthetic article."

    recipe = {
        "name": "rev", "run_dir": str(tmp_path / "run"),
        "task": {"type": "summarization", "input_template": "{article}",
                 "target_field": "summary", "format": "label"},
        "data": {**{k: str(tmp_path / f"{k}.jsonl") for k in ("train", "dev", "test")},
                 "max_chars": {"article": 2048}},
        "teacher": {"kind": "openai", "model": "fake-model"},
        "generate": [{"name": "reverse-train", "split": "train", "use_as": "none",
                      "config": {"recipe": "reverse"}}],
        "teacher_zeroshot": {"enabled": False},
        "variants": [{"name": "gold", "train_from": "data"},
                     {"name": "synthetic", "train_from": "reverse-train"}],
        "train": {"model": "protege:tiny-t5"},
    }  # fmt: skip
    with FakeOpenAI(reply=reply) as fake:
        recipe["teacher"]["base_url"] = fake.base_url
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(recipe))
        cfg = load_recipe(path)
        _, outputs, _ = _data_and_teacher(cfg, Stages(tmp_path / "run"))
    synthetic = read_records(tmp_path / "run" / "generate" / "reverse-train.jsonl")
    long = sum(len(r["article"]) >= 2048 for r in synthetic)
    assert 0 < long < len(synthetic) == 12
    kept = read_records(outputs["reverse-train"])
    assert len(kept) == 12 - long and all(len(r["article"]) < 2048 for r in kept)
    counts = json.loads(
        (tmp_path / "run" / "generate" / "reverse-train.max_chars.json").read_text()
    )
    assert (counts["rows"], counts["kept"], counts["dropped"]) == (12, 12 - long, long)
    assert outputs["data"] == tmp_path / "run" / "data" / "train.jsonl"  # gold: filtered as data


@pytest.mark.slow
def test_two_processes_pay_the_teacher_once_and_evaluate_once(tmp_path, tmp_path_factory):
    with FakeOpenAI(reply=_reply) as fake:
        path = write_recipe(tmp_path, fake.base_url)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        launch = [
            str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), "-m", "protege", "run", str(path),
            "train.batch_size=4",
        ]  # fmt: skip
        res = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        # exactly the calls of a single-process run (tests/test_pipeline.py): 24 + 12 + 12 + 12
        assert len(fake.log) == len(fake.answered()) == 60
    err = res.stderr
    assert err.count("✓ generate:explain-train") == 1 and err.count("✓ data:train") == 1
    assert err.count("✓ train") == 2  # the one distributed stage: both processes
    assert err.count("✓ eval") == 1 and err.count("✓ report") == 1
    assert (tmp_path / "run" / "report" / "report.html").exists()
