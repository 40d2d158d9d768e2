"""Training on tiny random students: parameters move, outputs and checkpoints are laid out
as the contract says, a killed run resumes, a finished grid is skipped, bad configs fail."""

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from protege.config import from_dict, load_config
from protege.data.samples import sample_path
from protege.errors import ConfigError
from protege.train import TrainConfig, run_train, trainer
from protege.train import checkpoint as ckpt
from protege.train.grid import expand_grid, format_lr

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def protege_home(tmp_path_factory):
    """One PROTEGE_HOME for the module, so the tiny students are built once."""
    old = os.environ.get("PROTEGE_HOME")
    os.environ["PROTEGE_HOME"] = str(tmp_path_factory.getbasetemp() / "protege_home")
    yield
    if old is None:
        os.environ.pop("PROTEGE_HOME", None)
    else:
        os.environ["PROTEGE_HOME"] = old


def nli_with_rationales(path: Path, split: str, n: int) -> str:
    """A few sample NLI rows with a fake teacher rationale added."""
    rows = [json.loads(line) for line in sample_path("nli", split).read_text().splitlines()[:n]]
    for r in rows:
        r["rationale"] = f"The premise says where {r['hypothesis'].split()[0]} was born."
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def tiny_config(tmp_path: Path, **changes) -> TrainConfig:
    data = dict(
        model="protege:tiny-t5",
        task={"format": "label+rationale"},
        train_data=nli_with_rationales(tmp_path / "train.jsonl", "train", 16),
        dev_data=nli_with_rationales(tmp_path / "dev.jsonl", "dev", 4),
        output_dir=str(tmp_path / "out"),
        lr=1e-3,
        epochs=2,
        batch_size=8,
        warmup_steps=1,
        max_target_len=32,
        eval_batch_size=8,
        generation={"max_new_tokens": 4},
    )
    data.update(changes)
    return from_dict(TrainConfig, data)


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("protege:tiny-t5", "label+rationale"),
        ("protege:tiny-bart", "label+rationale"),
        ("protege:tiny-llama", "label+rationale"),
        ("protege:minilm-cls", "label"),
    ],
)
def test_a_few_steps_change_every_trainable_parameter(tmp_path, name, fmt):
    from protege.students import load_student
    from protege.train.data import load_examples

    cfg = tiny_config(tmp_path, model=name, task={"format": fmt})
    trainer.set_seed(0)
    student = load_student(name, cfg.task)
    model = student.model
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    accelerator = trainer.make_accelerator("no")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = trainer.linear_schedule(optimizer, 0, 10)
    model, optimizer = accelerator.prepare(model, optimizer)
    items = student.encode(load_examples(cfg.train_data, cfg.task).examples, 64, 32)
    weights = (0.5, 0.5) if fmt != "label" else None
    for _ in range(3):
        micro = [student.collate(items[:4]), student.collate(items[4:8])]
        loss, sums, tokens = trainer.train_step(
            model, optimizer, scheduler, micro, weights, accelerator, 1.0, student.n_suffix,
            logits_fn=student.logits,
        )  # fmt: skip
        label, rationale, span = sums.means()
        assert loss > 0 and label > 0 and span > 0 and tokens > 0
        assert rationale > 0 if fmt != "label" else rationale is None
    unchanged = [n for n, p in model.named_parameters() if torch.equal(before[n], p.detach())]
    assert unchanged == []


def test_checkpoint_selection_from_a_known_history():
    history = [
        {"step": 10, "eval_loss": 2.0, "eval_accuracy": 0.40},
        {"step": 20, "eval_loss": 1.5, "eval_accuracy": 0.55},
        {"step": 30, "eval_loss": 1.2, "eval_accuracy": 0.55},  # tie on accuracy: 20 wins
        {"step": 40, "eval_loss": 1.3, "eval_accuracy": 0.50},
        {"step": 50, "eval_loss": 1.2, "eval_accuracy": None},  # tie on loss: 30 wins
    ]
    assert ckpt.select_best(history, "eval_loss", False)["step"] == 30
    assert ckpt.select_best(history, "eval_accuracy", True)["step"] == 20
    assert ckpt.evals_since_best(history) == 2
    assert ckpt.should_stop(history, patience=2) and not ckpt.should_stop(history, patience=3)
    assert ckpt.select_best([], "eval_loss", False) is None


def test_grid_expands_to_readable_ids(tmp_path):
    cfg = tiny_config(
        tmp_path,
        grid={
            "learning_rates": [6e-4, 1.2e-3],
            "splits": [[0.25, 0.75], [0.5, 0.5]],
            "baseline": True,
            "seeds": [42],
        },
    )
    points = expand_grid(cfg)
    assert [p.id for p in points] == [
        "baseline_lr6e-4_seed42",
        "lr6e-4_split0.25-0.75_seed42",
        "lr6e-4_split0.5-0.5_seed42",
        "baseline_lr1.2e-3_seed42",
        "lr1.2e-3_split0.25-0.75_seed42",
        "lr1.2e-3_split0.5-0.5_seed42",
    ]
    assert points[0].cfg.task.format == "label" and points[0].baseline
    assert points[4].cfg.lr == 1.2e-3 and points[4].cfg.split == [0.25, 0.75]
    assert cfg.task.format == "label+rationale"  # the original is untouched
    assert format_lr(2.4e-3) == "2.4e-3"


def test_grid_run_writes_the_contract_layout_and_skips_finished(tmp_path, capsys):
    cfg = tiny_config(tmp_path, grid={"baseline": True})
    out = run_train(cfg)
    results = json.loads((out / "results.json").read_text())
    assert [r["id"] for r in results] == ["baseline_lr1e-3_seed42", "lr1e-3_split0.5-0.5_seed42"]
    base, split = results
    assert base["baseline"] and base["split"] is None and base["format"] == "label"
    assert split["split"] == [0.5, 0.5] and split["status"] == "done"
    for r in results:
        run = out / r["id"]
        history = [json.loads(x) for x in (out / r["history"]).read_text().splitlines()]
        assert [h["step"] for h in history] == [1, 2, 3, 4]  # 2 batches/epoch, 2 evals/epoch
        for key in ("eval_loss", "eval_accuracy", "eval_coverage", "train_loss_label", "lr"):
            assert all(h[key] is not None for h in history), key
        # a baseline has no rationale token: its term is missing, never averaged in as 0
        assert all(h["train_loss_rationale"] is None for h in history) == r["baseline"]
        assert all(h["eval_loss_label_span"] > 0 for h in history)
        for which in ("loss", "accuracy"):
            best = r["best"][which]
            model_dir = out / best["path"]
            assert (model_dir / "config.json").exists() and (
                model_dir / "protege_task.json"
            ).exists()
            meta = json.loads((model_dir / "protege_meta.json").read_text())
            assert meta["step"] == best["step"] and meta["seed"] == 42
            assert meta["config"]["lr"] == 1e-3 and len(meta["data_fingerprint"]) == 16
            assert set(meta["versions"]) >= {"torch", "transformers", "accelerate", "protege"}
        assert (run / "DONE").exists() and not (run / "last").exists()
    assert split["best"]["loss"]["eval_bleu"] is not None
    table = (out / "results.md").read_text()
    assert "| lr1e-3_split0.5-0.5_seed42 |" in table and "| label CE |" in table

    capsys.readouterr()
    run_train(cfg)  # everything finished: nothing is retrained
    assert capsys.readouterr().out.count("already done, skipping") == 2


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    # 6 steps, evaluation (and last/) every step; killed in the grid's second configuration.
    cfg = tiny_config(tmp_path, epochs=3, grid={"baseline": True})
    real_save = ckpt.save_last

    def save_then_die(accelerator, state, dest):
        real_save(accelerator, state, dest)
        if state["step"] == 3 and not dest.parent.name.startswith("baseline"):
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ckpt, "save_last", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg)
    run_dir = Path(cfg.output_dir) / "lr1e-3_split0.5-0.5_seed42"
    assert not (run_dir / "DONE").exists()
    assert json.loads((run_dir / "last" / "trainer_state.json").read_text())["step"] == 3

    monkeypatch.setattr(ckpt, "save_last", real_save)
    steps = []
    real_step = trainer.train_step
    monkeypatch.setattr(
        trainer, "train_step", lambda *a, **k: steps.append(1) or real_step(*a, **k)
    )
    run_train(cfg)
    assert len(steps) == 3  # the baseline is done; only the steps after the checkpoint
    history = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert (run_dir / "DONE").exists()
    steps_log = [json.loads(x) for x in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps_log] == [1, 2, 3, 4, 5, 6]
    assert all(s["loss_label"] > 0 and s["loss_rationale"] > 0 for s in steps_log)


def test_summarization_tracks_rouge(tmp_path):
    cfg = tiny_config(
        tmp_path,
        model="protege:tiny-bart",
        task={"type": "summarization", "input_template": "{article}", "target_field": "summary"},
        train_data=str(sample_path("summarization", "train")),
        dev_data=str(sample_path("summarization", "dev")),
        max_train_rows=8,
        max_dev_rows=3,
        epochs=1,
        evals_per_epoch=1,
    )
    (result,) = json.loads((run_train(cfg) / "results.json").read_text())
    assert result["id"] == "lr1e-3_seed42" and not result["baseline"]
    assert result["best"]["accuracy"]["eval_rougeL"] is not None
    assert result["best"]["accuracy"]["eval_accuracy"] is None


def test_malformed_config_gives_clear_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: protege:tiny-t5\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate: unknown field"):
        load_config(TrainConfig, path)
    path.write_text("batch_size: many\n")
    with pytest.raises(ConfigError, match="batch_size: expected int"):
        load_config(TrainConfig, path)
    with pytest.raises(ConfigError, match="split"):
        load_config(TrainConfig, None, ["split=[0.5, 0.6]"])
    with pytest.raises(ConfigError, match="task.format"):
        load_config(TrainConfig, None, ["task.format=rationale-only"])
    from protege.cli import main

    res = CliRunner().invoke(main, ["train", str(path)])
    assert res.exit_code != 0 and "batch_size: expected int" in res.output


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("train-*.yaml")))
def test_shipped_configs_load_and_say_how_to_run(path):
    assert path.read_text().startswith(f"# protege train configs/{path.name}")
    cfg = load_config(TrainConfig, path)
    assert cfg.train_data and cfg.dev_data and cfg.output_dir


def test_cli_trains_with_overrides(tmp_path):
    from protege.cli import main

    cfg = tiny_config(tmp_path)
    path = tmp_path / "c.yaml"
    from protege.config import save_config

    save_config(cfg, path)
    out = tmp_path / "cli-out"
    res = CliRunner().invoke(main, ["train", str(path), f"output_dir={out}", "max_steps=1"])
    assert res.exit_code == 0, res.output
    (result,) = json.loads((out / "results.json").read_text())
    assert result["steps"] == 1


@pytest.mark.slow
def test_default_minilm_student_trains_two_steps(tmp_path):
    cfg = tiny_config(tmp_path, model="protege:minilm-encdec", max_steps=2, evals_per_epoch=1)
    (result,) = json.loads((run_train(cfg) / "results.json").read_text())
    assert result["steps"] == 2 and result["best"]["loss"]["eval_loss"] > 0


def test_early_stopping_and_kept_checkpoints_follow_the_eval_history(tmp_path, monkeypatch):
    scripted = iter(
        [  # (eval_loss, eval_accuracy) per evaluation
            (2.0, 0.30),
            (1.0, 0.40),
            (1.5, 0.60),
            (1.2, 0.60),  # second evaluation without a lower loss: patience 2 stops here
            (0.5, 0.90),  # never reached
        ]
    )

    def fake_evaluate(*args, **kwargs):
        loss, acc = next(scripted)
        return {"eval_loss": loss, "eval_accuracy": acc, "eval_coverage": 1.0, "eval_bleu": 1.0}

    monkeypatch.setattr(trainer, "evaluate", fake_evaluate)
    cfg = tiny_config(tmp_path, epochs=5, patience=2)  # 10 steps, evaluation every step
    (result,) = json.loads((run_train(cfg) / "results.json").read_text())
    assert result["early_stopped"] and result["steps"] == 4
    assert result["best"]["loss"]["step"] == 2 and result["best"]["accuracy"]["step"] == 3
    out = Path(cfg.output_dir)
    for which, step in (("loss", 2), ("accuracy", 3)):
        meta = json.loads((out / result["best"][which]["path"] / "protege_meta.json").read_text())
        assert meta["step"] == step


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_never_select_on_training_rows(path):
    """Same file for train and dev: the row slices must be disjoint (checked on the rows
    themselves where the data is present, as `protege train` does)."""
    from protege.data.io import split_source

    cfg = load_config(TrainConfig, path)
    (train, a), (dev, b) = split_source(cfg.train_data), split_source(cfg.dev_data)
    if train != dev:
        return
    assert a is not None and b is not None, "same file, no disjoint row slices"
    n = 10**6
    rows_a = set(range(n)[a][: cfg.max_train_rows])
    rows_b = set(range(n)[b][: cfg.max_dev_rows])
    assert rows_a and rows_b and not rows_a & rows_b


def test_train_refuses_to_select_on_training_rows(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    cfg.dev_data = cfg.train_data + "[:4]"
    with pytest.raises(ConfigError, match="4 inputs with train_data .* refused"):
        trainer.train_one(cfg, tmp_path / "run", "x")
    assert not (tmp_path / "run" / "DONE").exists()
    train_file = cfg.train_data
    rows = [json.loads(x) for x in Path(train_file).read_text().splitlines()]
    half = tmp_path / "half.jsonl"  # 2 of the 4 dev inputs under other uids, and 4 new rows
    half.write_text(
        "".join(
            json.dumps({**r, "uid": f"copy-{i}"}) + "\n" for i, r in enumerate(rows[:2] + rows[4:8])
        )
    )
    cfg.train_data, cfg.max_steps = str(half), 1
    trainer.train_one(cfg, tmp_path / "partial", "x")  # reported, not refused
    assert "split hygiene: dev_data" in capsys.readouterr().out
    cfg.train_data = train_file
    cfg.allow_dev_overlap = True
    result = trainer.train_one(cfg, tmp_path / "run", "x")
    assert result["steps"] == 1
    # max_new_tokens=4 cannot reach past " Explanation:" after "Contradiction": raised, recorded
    assert result["decoding"]["max_new_tokens"] > 4


def test_rerun_with_another_config_or_data_sets_old_results_aside(tmp_path, capsys):
    cfg = tiny_config(tmp_path, max_steps=1, evals_per_epoch=1)
    out = run_train(cfg)
    run = out / "lr1e-3_split0.5-0.5_seed42"
    assert json.loads((run / "point.json").read_text()).keys() == {"config", "data"}
    capsys.readouterr()
    run_train(cfg)
    assert "already done, skipping" in capsys.readouterr().out

    bart = tiny_config(tmp_path, max_steps=1, evals_per_epoch=1, model="protege:tiny-bart")
    run_train(bart)
    assert "config or data changed" in capsys.readouterr().out
    (result,) = json.loads((out / "results.json").read_text())
    assert result["model"] == "protege:tiny-bart"
    aside = out / "lr1e-3_split0.5-0.5_seed42.old-1"
    assert json.loads((aside / "result.json").read_text())["model"] == "protege:tiny-t5"

    with open(bart.train_data, "a") as f:  # same config, changed data
        f.write(Path(bart.train_data).read_text().splitlines()[0] + "\n")
    run_train(bart)
    assert "config or data changed" in capsys.readouterr().out
    assert (out / "lr1e-3_split0.5-0.5_seed42.old-2" / "DONE").exists()


def test_every_process_gets_batches_or_all_stop_with_one_error(tmp_path):
    from protege.train.data import Encoded

    items = [Encoded([1] * (i + 2), [2] * (i + 3), [1] * (i + 3)) for i in range(5)]
    cfg = tiny_config(tmp_path, batch_size=2)  # 3 batches
    per_rank = [trainer.local_batches(items, cfg, 0, r, 2) for r in range(2)]
    assert [len(b) for b in per_rank] == [1, 1]  # trimmed to 2: the same steps everywhere
    for rank in range(4):  # 3 batches, 4 processes: one would wait forever
        with pytest.raises(ConfigError, match="3 batches .* fewer than the 4 processes"):
            trainer.local_batches(items, cfg, 0, rank, 4)


def test_evaluations_fall_on_epoch_boundaries():
    steps = trainer.eval_steps(265, 2, 5 * 265)
    assert len(steps) == 10 and {265 * e for e in range(1, 6)} <= steps  # was 11, drifting
    assert trainer.eval_steps(3, 2, 6) == {2, 3, 5, 6}
    assert trainer.eval_steps(2, 4, 5) == {1, 2, 3, 4, 5}  # capped at one per step; final step


def test_window_losses_skip_missing_terms_and_reduce():
    from accelerate import Accelerator

    from protege.train.loss import TokenSums

    acc = Accelerator(cpu=True)
    # two steps: one of only predict: rows (label 2.0 over 4 tokens), one of only explain: rows
    sums = TokenSums(label_sum=8.0, label_n=4, rationale_sum=3.0, rationale_n=3)
    out = trainer.window_losses(acc, [1.0, 2.0], sums)
    assert out["train_loss"] == 1.5
    assert out["train_loss_label"] == 2.0 and out["train_loss_rationale"] == 1.0  # not 1.0, 0.5
    assert trainer.window_losses(acc, [1.0], TokenSums(1.0, 1))["train_loss_rationale"] is None
