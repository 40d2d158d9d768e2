"""`protege eval` and `protege report`: thin wrappers over protege.evaluate / protege.report."""

from __future__ import annotations

from pathlib import Path

import click

from protege.errors import ProtegeError

HOURLY = click.option(
    "--hourly-price",
    type=float,
    default=0.10,
    show_default=True,
    help="Assumed $/hour of the machine a student runs on (student cost = latency x price).",
)


def _fmt(value, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if pct else f"{value:.2f}"


def _print_metrics(title: str, metrics: dict, speed: dict | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    pct = metrics["type"] == "classification"
    keys = (
        ["accuracy", "coverage", "macro_f1", "bleu", "sentence_bleu_nltk"]
        if pct
        else ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    )
    for k in keys:
        ci = metrics.get(f"{k}_ci")
        scale = pct and k in ("accuracy", "coverage", "macro_f1")
        ci_text = f"{_fmt(ci[0], scale)}–{_fmt(ci[1], scale)}" if ci else ""
        table.add_row(k + (" (%)" if scale else ""), _fmt(metrics.get(k), scale), ci_text)
    table.add_row("gen len (words)", _fmt(metrics.get("gen_len_words")), "")
    if speed and speed.get("latency_ms_per_example") is not None:
        table.add_row("latency (ms/example)", _fmt(speed["latency_ms_per_example"]), "")
    Console().print(table)


@click.command("eval")
@click.argument("target", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", "data", help="Test file (JSONL/CSV/Parquet) for a single model dir.")
@click.option("--test", "test", help="Test file for a run dir (default: data.test in recipe.yaml).")
@click.option(
    "--teacher",
    "teacher",
    help="Teacher zero-shot answers (default: RUN_DIR/generate/teacher-zeroshot.jsonl).",
)
@click.option("--out", type=click.Path(path_type=Path), help="Metrics JSON path (model dir mode).")
@click.option("--batch-size", default=16, show_default=True)
@click.option(
    "--max-new-tokens", type=int, default=None, help="Default: as the checkpoint recorded it."
)
@click.option("--num-beams", type=int, default=None, help="Default: as the checkpoint recorded it.")
@HOURLY
@click.pass_context
def eval_command(
    ctx: click.Context,
    target: Path,
    data: str | None,
    test: str | None,
    teacher: str | None,
    out: Path | None,
    batch_size: int,
    max_new_tokens: int | None,
    num_beams: int | None,
    hourly_price: float,
) -> None:
    """Score a student MODEL_DIR on --data, or every checkpoint of a RUN_DIR.

    A model dir (it has protege_task.json) writes metrics JSON and predictions JSONL next to
    --out (default: MODEL_DIR/eval/). A run dir of `protege run` writes RUN_DIR/eval/summary.json
    (with variants: each RUN_DIR/<variant>/eval/summary.json), with paired tests against the
    baseline and the teacher row; decoding as the recipe's `eval:` says, unless given here.
    """
    from protege.evaluate import Decoding, evaluate_model, evaluate_run
    from protege.formats import TASK_FILE

    decoding = Decoding(batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams)
    if (target / TASK_FILE).exists():
        if not data:
            raise ProtegeError(f"{target}: a model dir needs --data TEST_FILE")
        from protege.data.io import read_records, write_json

        out = out or target / "eval" / "metrics.json"
        result = evaluate_model(
            target,
            read_records(data, "test"),
            decoding=decoding,
            out_dir=out.parent,
            source=data,
            hourly_price_usd=hourly_price,
        )
        if out.name != "metrics.json":
            write_json(out, {k: v for k, v in result.items() if k != "per_example"})
        _print_metrics(f"{target} on {data}", result["metrics"], result["speed"])
        click.echo(f"metrics: {out}\npredictions: {out.parent / 'predictions.jsonl'}")
        return
    given = {name: value for name, value in (("batch_size", batch_size),
             ("max_new_tokens", max_new_tokens), ("num_beams", num_beams))
             if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT}  # fmt: skip
    for sub in run_dirs(target):
        teacher_file = teacher or _teacher_file(target)
        summary = evaluate_run(sub, test or data, teacher_file=teacher_file,
                               decoding=run_decoding(target, sub, given),
                               hourly_price_usd=hourly_price)  # fmt: skip
        _print_run(summary)
        click.echo(f"summary: {sub / 'eval' / 'summary.json'}")


def run_dirs(target: Path) -> list[Path]:
    """The run dirs under TARGET: itself, or its variants' sub-runs (`protege run` with
    `variants:`); a `protege train` output dir or anything else is refused in one line."""
    from protege.config import read_yaml
    from protege.formats import TASK_FILE

    if (target / "train" / "results.json").exists():
        return [target]
    recipe = read_yaml(target / "recipe.yaml") if (target / "recipe.yaml").exists() else {}
    names = [v.get("name") for v in recipe.get("variants") or [] if isinstance(v, dict)]
    subs = [target / n for n in names if (target / n / "train" / "results.json").exists()]
    if subs:
        return subs
    if (target / "results.json").exists():
        raise ProtegeError(
            f"{target}: a `protege train` output; score a checkpoint with `protege eval "
            f"{target}/<id>/best-accuracy --data TEST` (ids in {target}/results.md); a whole "
            "run's evaluation and report come with `protege run RECIPE`"
        )
    raise ProtegeError(
        f"{target}: neither a model dir ({TASK_FILE}) nor a run dir of `protege run` "
        "(train/results.json, or variants with theirs)"
    )


def _teacher_file(run_dir: Path) -> Path | None:
    from protege.evaluate.run_eval import TEACHER_FILE

    return run_dir / TEACHER_FILE if (run_dir / TEACHER_FILE).exists() else None


def run_decoding(run_dir: Path, sub: Path, given: dict):
    """Decoding for a run's evaluation: as `protege run` decoded (`pipeline.eval_decoding`), so
    the checkpoints it scored are read back, with what the command line gave on top."""
    from protege.config import from_dict, read_yaml
    from protege.evaluate import Decoding
    from protege.pipeline import eval_decoding
    from protege.recipe import RecipeConfig

    if not (run_dir / "recipe.yaml").exists():
        return from_dict(Decoding, given, "decoding")
    recipe = from_dict(RecipeConfig, read_yaml(run_dir / "recipe.yaml"), "recipe.yaml")
    extra = next((v.train for v in recipe.variants if v.name == sub.name and sub != run_dir), None)
    return eval_decoding(recipe, extra, given)


def _print_run(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    key = summary["headline"]
    pct = key == "accuracy"
    table = Table(title=f"test: {summary['test']} ({summary['n_test']} rows)")
    for col in ("model", f"test {key}", "95% CI", "vs baseline (p)"):
        table.add_column(col)
    rows = list(summary["models"])
    if summary.get("teacher"):
        rows.append({"name": "teacher (zero-shot)", "test": summary["teacher"]["metrics"]})
    for e in rows:
        m = e["test"]
        ci = m.get(f"{key}_ci") or [None, None]
        paired = e.get("paired") or {}
        boot = paired.get("paired_bootstrap")
        vs = f"{_fmt(boot['diff'], pct)} (p={boot['p_value']:.3f})" if boot else ""
        table.add_row(
            e["name"], _fmt(m.get(key), pct), f"{_fmt(ci[0], pct)}–{_fmt(ci[1], pct)}", vs
        )
    Console().print(table)
    for pair in summary["hygiene"]["pairs"]:
        click.echo(
            f"warning: splits {pair['splits'][0]} and {pair['splits'][1]} share "
            f"{pair['same_uid']} uids and {pair['same_input']} inputs",
            err=True,
        )


@click.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--hourly-price",
    type=float,
    default=None,
    help="Assumed $/hour of the student's machine (default: the one eval used).",
)
def report_command(run_dir: Path, hourly_price: float | None) -> None:
    """Write RUN_DIR/report/report.md and report.html (plots embedded) for a run; with
    variants, each variant's report and the report that compares them."""
    from protege.report import build_report, build_variants_report

    subs = run_dirs(run_dir)
    for sub in subs:
        out = build_report(sub, hourly_price_usd=hourly_price)
    if subs != [run_dir]:
        names = [sub.name for sub in subs]
        out = build_variants_report(run_dir, names, hourly_price_usd=hourly_price)
    click.echo(f"report: {out / 'report.html'}\n        {out / 'report.md'}")


COMMANDS = [eval_command, report_command]
