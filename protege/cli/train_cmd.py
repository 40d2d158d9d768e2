"""`protege train CONFIG.yaml [KEY=VALUE ...]`: fine-tune a student (grid, split loss)."""

from __future__ import annotations

import click

from protege.cli.common import overrides_argument


@click.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@overrides_argument
def train(config: str, overrides: tuple[str, ...]) -> None:
    """Train the student(s) described by CONFIG (a TrainConfig YAML).

    Any field can be overridden: `protege train configs/train-demo.yaml lr=1e-3
    grid.seeds=[1,2] output_dir=runs/x`. Runs every grid configuration one after another
    into output_dir (finished ones are skipped, an interrupted one resumes) and writes
    results.json and results.md. Runs unchanged under `accelerate launch` (DDP).
    """
    from protege.config import load_config
    from protege.train import TrainConfig, run_train
    from protege.train.trainer import end_processes

    cfg = load_config(TrainConfig, config, list(overrides))
    out = run_train(cfg)
    end_processes()
    click.echo(f"results: {out / 'results.md'}")


COMMANDS = [train]
