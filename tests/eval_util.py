"""A fabricated, small run directory for the eval and report tests: two configurations
(baseline and a label+rationale split) with tiny T5 checkpoints trained for a few steps to
emit a fixed answer, histories, a recipe, a teacher zero-shot file and a generate summary."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

from protege.data.io import read_records, write_json, write_jsonl
from protege.data.samples import sample_path
from protege.formats import TaskConfig, save_task

N_TEST = 12


def fit_tiny(out_dir: Path, target: str, task: TaskConfig, steps: int = 60) -> Path:
    """A tiny random T5, trained a few steps so that it answers `target` to any input."""
    with one_thread():
        return _fit(out_dir, target, task, steps)


def _fit(out_dir: Path, target: str, task: TaskConfig, steps: int) -> Path:
    import torch

    from protege.students.seq2seq.build import build_random_student, load_student

    build_random_student("t5", out_dir)
    model, tok = load_student(out_dir)
    torch.manual_seed(0)
    ids = tok(target, add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    enc = tok(
        ["Premise: a b Hypothesis: c", "Premise: x y z Hypothesis: w"],
        return_tensors="pt",
        padding=True,
    )
    labels = torch.tensor([ids, ids])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out_dir)
    save_task(task, out_dir)
    return out_dir


@contextmanager
def one_thread():
    """Tiny models run faster on one torch thread when the CPU is shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_models() -> dict[str, Path]:
    """The two fitted tiny students, built once per session under PROTEGE_HOME."""
    from protege.paths import user_dir

    root = user_dir() / "eval-test-models"
    specs = {
        "baseline": ("Neutral", TaskConfig()),
        "rationale": (
            "Neutral Explanation: the text says so",
            TaskConfig(format="label+rationale"),
        ),
    }
    out = {}
    for name, (target, task) in specs.items():
        out[name] = root / name
        if not (out[name] / "protege_task.json").exists():
            fit_tiny(out[name], target, task)
    return out


def sample_test_rows() -> list[dict]:
    """The first N_TEST sample test rows, with a teacher rationale to score BLEU against."""
    rows = read_records(sample_path("nli", "test"))[:N_TEST]
    for r in rows:
        r["rationale"] = "the text says so"
    return rows


def make_run(root: Path, models: dict[str, Path]) -> Path:
    """A run dir: `models` maps "baseline"/"rationale" to a trained tiny model dir."""
    run = root / "run"
    test = sample_test_rows()
    write_jsonl(run / "data" / "test.jsonl", test)
    task = {"type": "classification", "format": "label+rationale", "rationale_name": "Explanation"}
    recipe = {
        "task": task,
        "data": {
            "train": str(sample_path("nli", "train")),
            "dev": str(sample_path("nli", "dev")),
            "test": str(run / "data" / "test.jsonl"),
        },
    }
    import yaml

    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    configs = [
        ("baseline-lr0.001-s0", True, None, "label", models["baseline"], [0.40, 0.45, 0.50]),
        (
            "ab25-lr0.001-s0",
            False,
            [0.25, 0.75],
            "label+rationale",
            models["rationale"],
            [0.45, 0.55, 0.60],
        ),
    ]
    results = []
    for cid, baseline, split, fmt, model_dir, accs in configs:
        best = {}
        for kind, dirname, step, acc in (
            ("loss", "best-loss", 4, accs[1]),
            ("accuracy", "best-accuracy", 6, accs[2]),
        ):
            shutil.copytree(model_dir, run / "train" / cid / dirname)
            meta = {"data": {"dev": {"records": 120}}, "step": step}
            write_json(run / "train" / cid / dirname / "protege_meta.json", meta)
            best[kind] = {
                "step": step,
                "epoch": step / 4,
                "eval_loss": 1.0 / step,
                "eval_accuracy": acc,
                "path": f"{cid}/{dirname}",
            }
        history = [
            {
                "step": 2 * (i + 1),
                "epoch": (i + 1) / 2,
                "eval_loss": 1.0 / (i + 1),
                "eval_accuracy": acc,
                "eval_coverage": 1.0,
                "eval_bleu": None if baseline else 10.0 * (i + 1),
                "train_loss": 1.0 / (i + 1),
                "train_loss_label": None,
                "train_loss_rationale": None,
                "lr": 1e-3,
                "tokens_per_s": 1000.0,
            }
            for i, acc in enumerate(accs)
        ]
        write_jsonl(run / "train" / cid / "history.jsonl", history)
        (run / "train" / cid / "DONE").write_text("")
        results.append(
            {
                "id": cid,
                "model": "protege:tiny-t5",
                "format": fmt,
                "lr": 1e-3,
                "split": split,
                "seed": 0,
                "baseline": baseline,
                "status": "done",
                "best": best,
                "history": f"{cid}/history.jsonl",
            }
        )
    write_json(run / "train" / "results.json", results)
    # Teacher zero-shot answers: gold for the first 8 rows, one flagged, one missing, 2 wrong.
    answers = []
    for i, r in enumerate(test[: N_TEST - 1]):
        a = {k: v for k, v in r.items() if k != "_line"}
        prov = {"model": "gpt-test", "cost_usd": 0.0002, "latency_s": 0.8, "cached": False}
        if i == 8:
            a.update(teacher_label="maybe", flagged="label outside the set")
        elif i >= 9:
            a["teacher_label"] = "entailment" if r["label"] != "entailment" else "neutral"
        else:
            a["teacher_label"] = r["label"]
        a["teacher_text"] = a["teacher_label"]
        a["provenance"] = prov
        answers.append(a)
    write_jsonl(run / "generate" / "teacher-zeroshot.jsonl", answers)
    # As the pipeline writes it: vars(GenerateResult), which names no model (it is read
    # from the output's provenance).
    write_json(
        run / "generate" / "teacher-zeroshot.summary.json",
        {
            "output": str(run / "generate" / "teacher-zeroshot.jsonl"),
            "n_records": N_TEST,
            "n_requests": N_TEST,
            "n_written": N_TEST - 1,
            "n_failed": 1,
            "n_flagged": 1,
            "n_calls": N_TEST,
            "n_cached": 0,
            "cost_usd": 0.0022,
            "mean_latency_s": 0.8,
        },
    )
    return run
