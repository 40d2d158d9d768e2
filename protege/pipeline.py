"""`protege run RECIPE.yaml`: data -> teacher steps -> train (grid) -> eval -> report.

Each stage is fingerprinted (its config and the hashes of its inputs) in RUN_DIR/stages.json
and skipped when unchanged, so changing one field reruns only what depends on it. Paid
teacher calls are never repeated in any case: the teacher store answers them. A teacher step is
done only when every row has its answer; otherwise the run stops with the counts (or, with the
step's `allow_incomplete: true`, goes on with a counted warning) and a rerun sends the rest.

Under `accelerate launch` (several processes) only training runs in every process: data, the
teacher, evaluation and the report run on the main process while the others wait (`Processes`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    hub_query,
    split_source,
    step_generate_dict,
    train_dict,
    validate_recipe,
    zeroshot_dict,
)
from protege.stages import Processes, Stages, console


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
    rows = read_records(path, split=split, hub=hub_query(recipe.data, split))
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
    procs = Processes()
    stages = Stages(run, force, writer=procs.main)
    inputs, outputs, teacher_file = procs.main_only(lambda: _data_and_teacher(recipe, stages))
    if not procs.main:
        stages = Stages(run, force, writer=False)  # what the main process recorded

    # 3. train the grid (every process); 4. evaluate every checkpoint on test; 5. report (main
    # process). With variants, each student gets its own sub-run directory.
    targets = [(run, None)] if not recipe.variants else [(run / v.name, v) for v in recipe.variants]
    report = None
    for sub, variant in targets:
        train_path = outputs[variant.train_from] if variant else inputs["train"]
        prefix = f"{variant.name}:" if variant else ""
        report = _student_stages(
            recipe, stages, procs, prefix, sub, train_path, inputs["dev"], inputs["test"],
            teacher_file, variant.train if variant else None,
        )  # fmt: skip
    if recipe.variants:
        report = procs.main_only(lambda: _variants_report(recipe, run))
    procs.end()
    return RunResult(
        run, report if report and report.exists() else None, stages.ran, stages.skipped
    )


def _data_and_teacher(
    recipe: RecipeConfig, stages: Stages
) -> tuple[dict[str, Path], dict[str, Path], Path | None]:
    """Stages 1-2 (main process only): the data splits, recorded answers, the teacher steps.
    Returns the files each split's rows now come from, each step's output, and the teacher's
    zero-shot answers."""
    run = Path(recipe.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    import yaml

    from protege.data.io import atomic_write_text

    atomic_write_text(run / "recipe.yaml", yaml.safe_dump(to_dict(recipe), sort_keys=False))

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
        name = f"generate:{step.name}"
        stages.run(
            name, fp, [out], lambda c=cfg, n=name, a=step.allow_incomplete: _generate(c, n, a)
        )
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
        allow = recipe.teacher_zeroshot.allow_incomplete
        name = "generate:teacher-zeroshot"
        stages.run(name, fp, [teacher_file], lambda: _generate(cfg, name, allow))
    outputs = {"data": inputs["train"]}
    for s in recipe.generate:
        outputs[s.name] = run / "generate" / f"{s.name}.jsonl"
        if recipe.data.max_chars and any(v.train_from == s.name for v in recipe.variants):
            outputs[s.name] = filter_synthetic(recipe, outputs[s.name])
    return inputs, outputs, teacher_file


def filter_synthetic(recipe: RecipeConfig, path: Path) -> Path:
    """The recipe's `data.max_chars` applied to a teacher step's rows a variant trains on (Paper
    B: synthetic articles under 2,048 characters, as the gold ones); counted and reported."""
    rows = read_records(path)
    kept = [
        r for r in rows
        if all(len(str(r.get(f, ""))) < limit for f, limit in recipe.data.max_chars.items())
    ]  # fmt: skip
    out = path.with_name(f"{path.stem}.max_chars.jsonl")
    write_jsonl(out, [clean(r) for r in kept])
    counts = {"rows": len(rows), "kept": len(kept), "dropped": len(rows) - len(kept),
              "max_chars": dict(recipe.data.max_chars), "file": str(out)}  # fmt: skip
    write_json(path.with_name(f"{path.stem}.max_chars.json"), counts)
    limits = ", ".join(f"{f} < {n:,} chars" for f, n in recipe.data.max_chars.items())
    console.print(
        f"{path.stem}: kept {len(kept)} of {len(rows)} synthetic rows ({limits}); "
        f"dropped {len(rows) - len(kept)}"
    )
    if not kept:
        raise DataError(str(path), f"no rows left after data.max_chars ({limits})")
    return out


def _student_stages(
    recipe, stages, procs, prefix, sub, train_path, dev_path, test_path, teacher_file, extra
) -> Path:
    run = Path(recipe.run_dir)
    train_dir = sub / "train"
    tcfg = train_dict(recipe, str(train_path), str(dev_path), str(train_dir), extra)
    train_fp = fingerprint(tcfg, file_sha256(train_path), file_sha256(dev_path))
    old = stages.done.get(f"{prefix}train")
    if old not in (None, train_fp) and train_dir.exists():
        procs.main_only(lambda: _set_aside(train_dir, old))
    # every process: training is the one distributed stage
    stages.run(f"{prefix}train", train_fp, [train_dir / "results.json"], lambda: _train(tcfg))
    procs.main_only(lambda: _record_prompt(recipe, train_dir))
    cal_fp = fingerprint(train_fp, file_sha256(dev_path))
    done = train_dir / "calibration.json"
    procs.main_only(lambda: stages.run(f"{prefix}calibrate", cal_fp, [done],
                                       lambda: _calibrate(train_dir, dev_path)))  # fmt: skip

    def evaluate_and_report() -> Path:
        teacher_fp = file_sha256(teacher_file) if teacher_file and teacher_file.exists() else None
        eval_fp = fingerprint(train_fp, recipe.eval, file_sha256(test_path), teacher_fp)
        stages.run(
            f"{prefix}eval",
            eval_fp,
            [sub / "eval" / "summary.json"],
            lambda: _evaluate(recipe, sub, test_path, teacher_file, extra),
        )
        report = sub / "report" / "report.html"
        gen_fps = [stages.done.get(k) for k in sorted(stages.done) if k.startswith("generate:")]
        report_fp = fingerprint(eval_fp, recipe.report, gen_fps)
        stages.run(f"{prefix}report", report_fp, [report], lambda: _report(recipe, sub, run))
        write_best(sub)
        return report

    return procs.main_only(evaluate_and_report)


def _record_prompt(recipe: RecipeConfig, train_dir: Path) -> None:
    """Every model directory of the run records the teacher prompt its task answers (the
    teacher's own row: `label` or `summarize` with the recipe's labels and input template),
    so `protege serve` reads an application's chat requests without being told."""
    from protege.generate import GenerateConfig
    from protege.serve.prompts import save_prompt, spec_from_generate

    cfg = from_dict(GenerateConfig, zeroshot_dict(recipe, "in", "out"), "teacher_zeroshot")
    spec = spec_from_generate(
        {"recipe": cfg.recipe, "labels": cfg.labels, "input_template": cfg.input_template}
    )
    for task_file in sorted(train_dir.rglob("protege_task.json")):
        save_prompt(spec, task_file.parent)


def _calibrate(train_dir: Path, dev_path: Path) -> None:
    """The cascade's threshold for each student's best checkpoint, chosen on (up to 200) dev
    rows: the labels it learned stand for the teacher's answers (`protege calibrate`)."""
    from protege.serve.calibrate import DEFAULT_TARGET, calibrate

    rows = read_records(dev_path)[:200]
    found = {}
    for point in sorted(p for p in train_dir.iterdir() if (p / "DONE").exists()):
        best = next((point / c for c in ("best-accuracy", "best-loss")
                     if (point / c / "protege_task.json").exists()), None)  # fmt: skip
        if best is None:
            continue
        cal = calibrate(best, rows, DEFAULT_TARGET, data=str(dev_path))
        found[str(best.relative_to(train_dir))] = {
            "threshold": cal.threshold, "coverage": cal.coverage, "agreement": cal.agreement,
        }  # fmt: skip
    write_json(train_dir / "calibration.json", found)


def write_best(sub: Path) -> Path | None:
    """`RUN_DIR/best.json`: the checkpoint with the best dev score (the one the report leads
    with, chosen without looking at test), to serve or export; None before evaluation."""
    from protege.report.sections import RunFiles
    from protege.report.views import best_student

    run = RunFiles(sub, sub / "report")
    best = best_student(run)
    if best is None:
        return None
    model_dir = sub / "train" / best["name"]
    write_json(sub / "best.json", {
        "model_dir": str(model_dir), "checkpoint": best["name"], "model": best.get("model"),
        "chosen_by": f"dev {run.metric}", "dev": best.get("dev"),
        f"test_{run.metric}": (best.get("test") or {}).get(run.metric),
        "serve": f"protege serve {model_dir}",
    })  # fmt: skip
    return sub / "best.json"


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


def _generate(cfg: dict[str, Any], name: str, allow_incomplete: bool = False) -> bool:
    """One teacher step; `run_generate` writes its output and `<output>.summary.json`.

    Done (True) only when every row has its answer. Otherwise it stops the run with the counts,
    or, when the step allows it, warns loudly and returns False (not recorded as done: the next
    run sends only what is missing)."""
    from protege.generate import GenerateConfig, run_generate

    r = run_generate(from_dict(GenerateConfig, cfg))
    if not (r.n_failed or r.n_skipped):
        return True
    counts = (
        f"{r.n_records - r.n_failed - r.n_skipped} of {r.n_records} rows answered: "
        f"{r.n_failed} failed, {r.n_skipped} not sent (budget)"
    )
    errors = f" (first error: {r.errors[0]})" if r.errors else ""
    if not allow_incomplete:
        raise ProtegeError(
            f"{name}: {counts}{errors}; rerun to send only the missing ones, or set "
            "allow_incomplete: true on the step to go on without them"
        )
    console.print(
        f"[bold yellow]WARNING {name}: {counts}; going on WITHOUT them (allow_incomplete); "
        f"a rerun sends only what is missing{errors}[/bold yellow]"
    )
    return False


def _train(cfg: dict[str, Any]) -> None:
    from protege.train import run_train
    from protege.train.config import TrainConfig

    run_train(from_dict(TrainConfig, cfg))


def _evaluate(
    recipe: RecipeConfig,
    run: Path,
    test: Path,
    teacher_file: Path | None,
    extra: dict | None = None,
) -> None:
    from protege.evaluate import evaluate_run

    kwargs = {**recipe.eval, "decoding": eval_decoding(recipe, extra)}
    evaluate_run(run, test, recipe.task, teacher_file=teacher_file, **kwargs)


def eval_decoding(recipe: RecipeConfig, extra: dict | None = None, given: dict | None = None):
    """How a student (a variant's: `extra` is its `train`) decodes on test: `eval.decoding`,
    with the number of beams dev selection used (`train.generation`) unless it says otherwise,
    and `given` (the command line's) on top. Its `max_new_tokens` is for students that write
    rationales: a label-only student (format `label`) decodes within its label budget."""
    from protege.evaluate import Decoding

    decoding = dict(recipe.eval.get("decoding") or {})
    train = {**recipe.train, **(extra or {})}
    decoding.setdefault("num_beams", (train.get("generation") or {}).get("num_beams", 1))
    fmt = {**to_dict(recipe.task), **(train.get("task") or {})}.get("format")
    if recipe.task.type == "classification" and fmt == "label":
        decoding.pop("max_new_tokens", None)
    return from_dict(Decoding, {**decoding, **(given or {})}, "eval.decoding")


def _report(recipe: RecipeConfig, sub: Path, run: Path) -> None:
    from protege.report import build_report

    build_report(sub, **recipe.report)


def _variants_report(recipe: RecipeConfig, run: Path) -> Path:
    """One table over the variants (Paper B's Table 2), linking each variant's own report."""
    from protege.report.variants import build_variants_report

    names = [v.name for v in recipe.variants]
    return build_variants_report(run, names, **recipe.report) / "report.html"
