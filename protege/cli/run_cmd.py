"""`protege run`: a whole recipe end to end; `protege samples`: copy the shipped sample data."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from protege.cli.common import overrides_argument


@click.command("run")
@click.argument("recipe", type=click.Path(dir_okay=False))
@overrides_argument
@click.option(
    "--force", is_flag=True, help="Rerun every stage (teacher calls still come from the store)."
)
@click.option(
    "--check", is_flag=True, help="Validate the recipe and every stage config; run nothing."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Price every teacher step (online and batch) and list what would train; call nothing.",
)
def run(recipe: str, overrides: tuple[str, ...], force: bool, check: bool, dry_run: bool) -> None:
    """Run RECIPE end to end: data -> teacher -> train (grid) -> eval -> report.

    Unchanged stages are skipped; KEY=VALUE arguments override any recipe field
    (e.g. `train.epochs=1 run_dir=runs/try`); list items by index or name
    (`variants.0.train.epochs=1`, `generate.explain-train.config.max_cost=2`).
    """
    from protege.pipeline import run_recipe
    from protege.recipe import load_recipe, shadowed_overrides, validate_recipe

    cfg = load_recipe(recipe, list(overrides))
    for line in shadowed_overrides(cfg, list(overrides)):
        click.secho(f"warning: {line}", fg="yellow", err=True)
    if dry_run:
        from protege.plan import plan_lines, plan_recipe

        click.echo("\n".join(plan_lines(*plan_recipe(cfg))))
        return
    if check:
        validate_recipe(cfg)
        click.echo(f"{recipe}: ok ({len(cfg.generate)} teacher steps, run dir {cfg.run_dir})")
        return
    result = run_recipe(cfg, force=force)
    click.echo(f"\nRun directory: {result.run_dir}")
    if result.report:
        click.echo(f"Report: {result.report}  (and {result.report.with_suffix('.md')})")


@click.command("samples")
@click.argument("dest", type=click.Path(file_okay=False))
def samples(dest: str) -> None:
    """Copy protege's shipped sample datasets (nli, summarization) into DEST."""
    from protege.data.samples import SAMPLES_DIR

    out = Path(dest)
    for task_dir in sorted(SAMPLES_DIR.iterdir()):
        if task_dir.is_dir():
            shutil.copytree(task_dir, out / task_dir.name, dirs_exist_ok=True)
            click.echo(
                f"{out / task_dir.name}: {', '.join(p.name for p in sorted(task_dir.glob('*.jsonl')))}"
            )


COMMANDS = [run, samples]
