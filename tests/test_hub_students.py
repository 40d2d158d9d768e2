"""Hub students as a user names them (`t5-small`, `google-t5/t5-small`, `facebook/bart-base`),
loaded through the hub replica and trained a few steps by `protege train`; T5's task prefix."""

from __future__ import annotations

import json

import pytest
from hub_util import hub_env, run_cli

from protege.config import save_config
from protege.formats import TaskConfig, model_task_prefix, render_input
from protege.train.config import TrainConfig


def test_task_prefix_comes_from_the_model_config_and_is_rendered():
    class T5Config:
        task_specific_params = {"summarization": {"prefix": "summarize: "}}

    assert model_task_prefix(T5Config(), "summarization") == "summarize: "
    assert model_task_prefix(T5Config(), "classification") == ""
    assert model_task_prefix(object(), "summarization") == ""
    task = TaskConfig(type="summarization", input_template="{article}", input_prefix="summarize: ")
    assert render_input(task, {"article": "A cat sat."}) == "summarize: A cat sat."


@pytest.mark.slow
@pytest.mark.parametrize(
    "model,task_type",
    [
        ("t5-small", "summarization"),
        ("google-t5/t5-small", "classification"),
        ("facebook/bart-base", "summarization"),
    ],
)
def test_hub_students_load_and_train(hub, tmp_path, model, task_type):
    from protege.data.samples import sample_path

    kind = "summarization" if task_type == "summarization" else "nli"
    task = (
        {"type": "summarization", "input_template": "{article}", "format": "label"}
        if task_type == "summarization"
        else {"format": "label"}
    )
    cfg = TrainConfig(
        model=model,
        task=TaskConfig(**task),
        train_data=str(sample_path(kind, "train")),
        dev_data=str(sample_path(kind, "dev")),
        output_dir=str(tmp_path / "out"),
        max_train_rows=16,
        max_dev_rows=4,
        max_steps=2,
        batch_size=8,
        warmup_steps=0,
        evals_per_epoch=1,
    )
    cfg.generation.max_new_tokens = 4
    save_config(cfg, tmp_path / "train.yaml")
    res = run_cli(["train", str(tmp_path / "train.yaml")], hub_env(hub, tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    (result,) = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["steps"] == 2 and result["decoding"]["num_beams"] == 1
    saved = tmp_path / "out" / result["best"]["loss"]["path"]
    prefix = json.loads((saved / "protege_task.json").read_text())["input_prefix"]
    t5_summary = model.endswith("t5-small") and task_type == "summarization"
    assert prefix == ("summarize: " if t5_summary else "")
    gen = json.loads((saved / "generation_config.json").read_text())
    assert gen["num_beams"] == 1 and gen.get("no_repeat_ngram_size", 0) == 0
