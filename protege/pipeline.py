"""`protege run RECIPE.yaml`: data -> teacher steps -> train (grid) -> eval -> report.

Each stage is fingerprinted (its config and the hashes of its inputs) in RUN_DIR/stages.json
and skipped when unchanged, so changing one field reruns only what depends on it. Paid
teacher calls are never repeated in any case: the teacher store answers them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from protege.config import fingerprint, from_dict, to_dict
from protege.data.io import (
    clean,
    file_sha256,
    is_file_source,
    read_records,
    rename_fields,
    write_json,
    write_jsonl,
)
from protege.errors import DataError
from protege.recipe import (
    SPLITS,
    RecipeConfig,
    split_source,
    step_generate_dict,
    train_dict,
    validate_recipe,
    zeroshot_dict,
)

console = Console(stderr=True)


class Stages:
    """The fingerprints of finished stages, kept in RUN_DIR/stages.json (written atomically)."""

    def __init__(self, run_dir: Path, force: bool = False):
        self.path = run_dir / "stages.json"
        self.done: dict[str, str] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.force = force
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def run(self, name: str, fp: str, outputs: list[Path], fn: Callable[[], Any]) -> bool:
        """Run `fn` unless stage `name` already finished with fingerprint `fp`. True if it ran."""
        if not self.force and self.done.get(name) == fp and all(p.exists() for p in outputs):
            console.print(f"[dim]= {name}: unchanged, skipped[/dim]")
            self.skipped.append(name)
            return False
        console.rule(f"[bold]{name}")
        start = time.perf_counter()
        fn()
        self.done[name] = fp
        write_json(self.path, self.done)
        self.ran.append(name)
        console.print(f"[green]✓ {name}[/green] ({time.perf_counter() - start:.1f}s)")
        return True


@dataclass
class RunResult:
    run_dir: Path
    report: Path | None
    ran: list[str]
    skipped: list[str]


def source_hash(source: str) -> str:
    path, _ = split_source(source)
    return file_sha256(path) if Path(path).is_file() else path


def prepare_split(recipe: RecipeConfig, split: str) -> list[dict[str, Any]]:
    """Read one split's rows: slice, rename fields, filter by length, cap."""
    source = getattr(recipe.data, split)
    path, sl = split_source(source)
    rows = read_records(path, split=split)
    if sl is not None:
        if not is_file_source(path):
            raise DataError(source, "slices are for files; use data.max_rows for hub datasets")
        rows = rows[sl]
    rows = rename_fields(rows, recipe.data.fields)
    for fname, limit in recipe.data.max_chars.items():
        rows = [r for r in rows if len(str(r.get(fname, ""))) < limit]
    if split in recipe.data.max_rows:
        rows = rows[: recipe.data.max_rows[split]]
    if not rows:
        raise DataError(source, f"no rows left for the {split} split")
    return [clean(r) for r in rows]


def run_recipe(recipe: RecipeConfig, force: bool = False) -> RunResult:
    """Run every stage of `recipe`, skipping those whose fingerprint is unchanged."""
    validate_recipe(recipe)
    run = Path(recipe.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    import yaml

    from protege.data.io import atomic_write_text

    atomic_write_text(run / "recipe.yaml", yaml.safe_dump(to_dict(recipe), sort_keys=False))
    stages = Stages(run, force)

    # 1. data: each split materialised under RUN/data, so every later stage reads plain files.
    data: dict[str, Path] = {}
    for split in SPLITS:
        out = run / "data" / f"{split}.jsonl"
        fp = fingerprint(
            getattr(recipe.data, split),
            source_hash(getattr(recipe.data, split)),
            to_dict(recipe.data),
        )
        stages.run(
            f"data:{split}",
            fp,
            [out],
            lambda s=split, o=out: write_jsonl(o, prepare_split(recipe, s)),
        )
        data[split] = out
    _check_hygiene(data)

    # 2. recorded teacher answers, then the teacher steps.
    for imp in recipe.imports:
        fp = fingerprint(to_dict(imp), source_hash(imp.file))
        stages.run(f"import:{Path(imp.file).name}", fp, [], lambda i=imp: _import(i))
    inputs = dict(data)
    for step in recipe.generate:
        out = run / "generate" / f"{step.name}.jsonl"
        cfg = step_generate_dict(recipe, step, str(data[step.split]), str(out))
        fp = fingerprint(cfg, file_sha256(data[step.split]))
        stages.run(
            f"generate:{step.name}", fp, [out], lambda c=cfg, n=step.name: _generate(c, run, n)
        )
        use_as = step.use_as or step.split
        if use_as != "none":
            inputs[use_as] = out
    teacher_file = None
    if recipe.teacher_zeroshot.enabled:
        teacher_file = run / "generate" / "teacher-zeroshot.jsonl"
        cfg = zeroshot_dict(recipe, str(data["test"]), str(teacher_file))
        fp = fingerprint(cfg, file_sha256(data["test"]))
        stages.run(
            "generate:teacher-zeroshot",
            fp,
            [teacher_file],
            lambda c=cfg: _generate(c, run, "teacher-zeroshot"),
        )

    # 3. train the grid; 4. evaluate every checkpoint on test; 5. report.
    train_dir = run / "train"
    tcfg = train_dict(recipe, str(inputs["train"]), str(inputs["dev"]), str(train_dir))
    train_fp = fingerprint(tcfg, file_sha256(inputs["train"]), file_sha256(inputs["dev"]))
    if stages.done.get("train") not in (None, train_fp) and train_dir.exists():
        _set_aside(train_dir, stages.done["train"])
    stages.run("train", train_fp, [train_dir / "results.json"], lambda: _train(tcfg))

    eval_fp = fingerprint(
        train_fp,
        recipe.eval,
        file_sha256(data["test"]),
        file_sha256(teacher_file) if teacher_file and teacher_file.exists() else None,
    )
    stages.run(
        "eval",
        eval_fp,
        [run / "eval" / "summary.json"],
        lambda: _evaluate(recipe, run, data["test"], teacher_file),
    )
    report_fp = fingerprint(
        eval_fp, recipe.report, [stages.done.get(k) for k in sorted(stages.done)]
    )
    report = run / "report" / "report.html"
    stages.run("report", report_fp, [report], lambda: _report(recipe, run))
    return RunResult(run, report if report.exists() else None, stages.ran, stages.skipped)


def _set_aside(path: Path, old_fp: str) -> None:
    """A changed stage never deletes earlier results: they move aside, named by fingerprint."""
    dest = path.with_name(f"{path.name}.{old_fp}")
    if dest.exists():
        dest = path.with_name(f"{path.name}.{old_fp}.{int(time.time())}")
    path.rename(dest)
    console.print(f"[yellow]{path.name}: config changed; earlier results kept in {dest}[/yellow]")


def _check_hygiene(data: dict[str, Path]) -> None:
    from protege.evaluate.hygiene import check_splits

    check_splits({k: str(v) for k, v in data.items()}, console=console)


def _import(imp) -> None:
    from protege.teacher.importer import import_answers

    import_answers(
        imp.file,
        prompt_field=imp.prompt_field,
        response_field=imp.response_field,
        model=imp.model,
        system=imp.system,
        params=imp.params,
    )


def _generate(cfg: dict[str, Any], run: Path, name: str) -> None:
    from protege.generate import GenerateConfig, run_generate

    result = run_generate(from_dict(GenerateConfig, cfg))
    summary = {k: v for k, v in vars(result).items()}
    write_json(run / "generate" / f"{name}.summary.json", summary)


def _train(cfg: dict[str, Any]) -> None:
    from protege.train import run_train
    from protege.train.config import TrainConfig

    run_train(from_dict(TrainConfig, cfg))


def _evaluate(recipe: RecipeConfig, run: Path, test: Path, teacher_file: Path | None) -> None:
    from protege.evaluate import evaluate_run

    evaluate_run(run, test, recipe.task, teacher_file=teacher_file, **recipe.eval)


def _report(recipe: RecipeConfig, run: Path) -> None:
    from protege.report import build_report

    build_report(run, **recipe.report)
