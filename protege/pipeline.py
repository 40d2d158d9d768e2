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
from protege.errors import DataError, ProtegeError
from protege.recipe import (
    SPLITS,
    RecipeConfig,
    split_source,
    step_generate_dict,
    train_dict,
    validate_recipe,
    zeroshot_dict,
)

console = Console(stderr=True, emoji=False)  # "data:train:" is not an emoji


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
    _check_hygiene(recipe, data, run)

    # 2. recorded teacher answers, then the teacher steps.
    for imp in recipe.imports:  # always: cheap, idempotent, and the store may be a new one
        _import(recipe, imp)
    inputs = dict(data)
    for step in recipe.generate:
        out = run / "generate" / f"{step.name}.jsonl"
        cfg = step_generate_dict(recipe, step, str(data[step.split]), str(out))
        fp = fingerprint(cfg, file_sha256(data[step.split]))
        stages.run(f"generate:{step.name}", fp, [out], lambda c=cfg: _generate(c))
        use_as = step.use_as or step.split
        if use_as == "test":
            _require_every_row(out, data["test"], step.name)
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
            lambda c=cfg: _generate(c),
        )

    # 3. train the grid; 4. evaluate every checkpoint on test; 5. report. With variants, each
    # student gets its own sub-run directory (RUN/<variant>/train, eval, report).
    outputs = {
        "data": inputs["train"],
        **{s.name: run / "generate" / f"{s.name}.jsonl" for s in recipe.generate},
    }
    targets = [(run, None)] if not recipe.variants else [(run / v.name, v) for v in recipe.variants]
    report = None
    for sub, variant in targets:
        train_path = outputs[variant.train_from] if variant else inputs["train"]
        prefix = f"{variant.name}:" if variant else ""
        report = _student_stages(
            recipe,
            stages,
            prefix,
            sub,
            run,
            train_path,
            inputs["dev"],
            inputs["test"],
            teacher_file,
            variant.train if variant else None,
        )
    if recipe.variants:
        report = _variants_report(recipe, run)
    return RunResult(
        run, report if report and report.exists() else None, stages.ran, stages.skipped
    )


def _student_stages(
    recipe, stages, prefix, sub, run, train_path, dev_path, test_path, teacher_file, extra
) -> Path:
    train_dir = sub / "train"
    tcfg = train_dict(recipe, str(train_path), str(dev_path), str(train_dir), extra)
    train_fp = fingerprint(tcfg, file_sha256(train_path), file_sha256(dev_path))
    old = stages.done.get(f"{prefix}train")
    if old not in (None, train_fp) and train_dir.exists():
        _set_aside(train_dir, old)
    stages.run(f"{prefix}train", train_fp, [train_dir / "results.json"], lambda: _train(tcfg))

    teacher_fp = file_sha256(teacher_file) if teacher_file and teacher_file.exists() else None
    eval_fp = fingerprint(train_fp, recipe.eval, file_sha256(test_path), teacher_fp)
    stages.run(
        f"{prefix}eval",
        eval_fp,
        [sub / "eval" / "summary.json"],
        lambda: _evaluate(recipe, sub, test_path, teacher_file),
    )
    report = sub / "report" / "report.html"
    gen_fps = [stages.done.get(k) for k in sorted(stages.done) if k.startswith("generate:")]
    report_fp = fingerprint(eval_fp, recipe.report, gen_fps)
    stages.run(f"{prefix}report", report_fp, [report], lambda: _report(recipe, sub, run))
    return report


def _require_every_row(out: Path, test: Path, step: str) -> None:
    """A teacher step that adds fields to the test split (reference rationales for BLEU) must
    cover every test row: evaluating on fewer rows would quietly change the test set."""
    missing = len(read_records(test)) - len(read_records(out))
    if missing:
        raise ProtegeError(
            f"generate:{step}: {missing} test rows have no teacher answer yet (failed calls are "
            f"retried by the next run); the test set is evaluated whole or not at all"
        )


def _set_aside(path: Path, old_fp: str) -> None:
    """A changed stage never deletes earlier results: they move aside, named by fingerprint."""
    dest = path.with_name(f"{path.name}.{old_fp}")
    if dest.exists():
        dest = path.with_name(f"{path.name}.{old_fp}.{int(time.time())}")
    path.rename(dest)
    console.print(f"[yellow]{path.name}: config changed; earlier results kept in {dest}[/yellow]")


def _check_hygiene(recipe: RecipeConfig, data: dict[str, Path], run: Path) -> None:
    """Training or selecting on test is refused; rows shared by two splits are reported."""
    from protege.evaluate.hygiene import check_splits, refuse_test_use, same_file

    test_path, test_slice = split_source(recipe.data.test)
    for role, split in (("training", "train"), ("selection (dev)", "dev")):
        refuse_test_use(data[split], data["test"], role)
        path, sl = split_source(getattr(recipe.data, split))
        if is_file_source(path) and same_file(path, test_path):
            n = len(read_records(path))
            rows = set(range(n)[sl or slice(None)]) & set(range(n)[test_slice or slice(None)])
            if rows:
                raise ProtegeError(
                    f"data.{split}: {len(rows)} of its rows are test rows of {test_path}; "
                    f"{role} on test is refused (use disjoint slices, e.g. [:800] and [800:])"
                )
    found = check_splits({k: read_records(v) for k, v in data.items()}, recipe.task)
    write_json(run / "data" / "hygiene.json", found)
    for pair in found["pairs"]:
        a, b = pair["splits"]
        console.print(
            f"[yellow]split hygiene: {a} and {b} share {pair['same_uid']} uids and "
            f"{pair['same_input']} inputs (see {run / 'data' / 'hygiene.json'})[/yellow]"
        )


def _import(recipe: RecipeConfig, imp) -> None:
    from protege.teacher.importer import import_answers

    n = import_answers(
        imp.file, imp.prompt_field, imp.response_field, imp.model, imp.system, imp.params
    )
    console.print(f"imported {n} recorded answers of {imp.model} from {imp.file}")


def _generate(cfg: dict[str, Any]) -> None:
    """One teacher step; `run_generate` writes its output and `<output>.summary.json`."""
    from protege.generate import GenerateConfig, run_generate

    run_generate(from_dict(GenerateConfig, cfg))


def _train(cfg: dict[str, Any]) -> None:
    from protege.train import run_train
    from protege.train.config import TrainConfig

    run_train(from_dict(TrainConfig, cfg))


def _evaluate(recipe: RecipeConfig, run: Path, test: Path, teacher_file: Path | None) -> None:
    from protege.evaluate import Decoding, evaluate_run

    kwargs = dict(recipe.eval)
    if "decoding" in kwargs:
        kwargs["decoding"] = from_dict(Decoding, kwargs["decoding"], "eval.decoding")
    evaluate_run(run, test, recipe.task, teacher_file=teacher_file, **kwargs)


def _report(recipe: RecipeConfig, sub: Path, run: Path) -> None:
    from protege.report import build_report

    build_report(sub, **recipe.report)


def _variants_report(recipe: RecipeConfig, run: Path) -> Path:
    """One table over the variants (Paper B's Table 2), linking each variant's own report."""
    from protege.report.variants import build_variants_report

    names = [v.name for v in recipe.variants]
    return build_variants_report(run, names, **recipe.report) / "report.html"
