"""`protege run RECIPE --dry-run`: what a recipe would pay and train, calling nothing.

Every teacher step (and the teacher's zero-shot row) is priced as `protege generate --dry-run`
prices a job: its split's rows read and rendered, the store asked what is already answered by
this endpoint, the rest priced online and at the Batch API price. Then each student the run
would train: model, format, grid points, rows. Nothing is called, imported or written: a replay
step whose answers come from the recipe's `imports:` is free, whatever the store holds yet.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from protege.config import from_dict
from protege.data.io import write_jsonl
from protege.recipe import (
    RecipeConfig,
    step_generate_dict,
    train_dict,
    validate_recipe,
    zeroshot_dict,
)


@dataclass
class StepPlan:
    """One teacher step's dry run."""

    name: str
    split: str
    kind: str
    model: str
    records: int
    prompts: int
    cached: int
    est_cost_usd: float | None
    est_batch_cost_usd: float | None
    mode: str
    elsewhere: dict[str, int] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return self.prompts - self.cached


@dataclass
class TrainPlan:
    """One student the run would train."""

    name: str
    model: str
    format: str
    points: list[str]
    train_from: str
    epochs: float | None
    """None for a student that fits itself (no epochs)."""


def plan_recipe(recipe: RecipeConfig) -> tuple[list[StepPlan], list[TrainPlan]]:
    """Price every teacher step and list every training; reads data, calls nothing."""
    from protege.generate import GenerateConfig, run_generate
    from protege.pipeline import prepare_split
    from protege.students import fits_itself
    from protege.train.config import TrainConfig
    from protege.train.grid import expand_grid

    validate_recipe(recipe)
    steps: list[StepPlan] = []
    with tempfile.TemporaryDirectory(prefix="protege-plan-") as tmp:
        splits: dict[str, str] = {}

        def split_file(split: str) -> str:
            if split not in splits:
                splits[split] = str(Path(tmp) / f"{split}.jsonl")
                write_jsonl(splits[split], prepare_split(recipe, split))
            return splits[split]

        jobs = [(s.name, s.split, step_generate_dict(recipe, s, split_file(s.split), "-"))
                for s in recipe.generate]  # fmt: skip
        if recipe.teacher_zeroshot.enabled:
            jobs.append(
                ("teacher-zeroshot", "test", zeroshot_dict(recipe, split_file("test"), "-"))
            )
        for name, split, cfg in jobs:
            gen = from_dict(GenerateConfig, {**cfg, "dry_run": True, "progress": False},
                            f"generate.{name}")  # fmt: skip
            r = run_generate(gen)
            t = gen.teacher
            free = t.kind == "replay"
            steps.append(StepPlan(
                name, split, t.kind, t.model_name, r.n_records, r.n_requests,
                r.n_requests if free else r.n_cached,
                0.0 if free else r.est_cost_usd, 0.0 if free else r.est_batch_cost_usd,
                t.mode, r.answered_elsewhere,
            ))  # fmt: skip
    trains: list[TrainPlan] = []
    targets = [(v.name, v.train_from, v.train) for v in recipe.variants] or [("train", "data", {})]
    for name, source, extra in targets:
        cfg = from_dict(TrainConfig, train_dict(recipe, "t", "d", "o", extra), name)
        points = [p.id for p in expand_grid(cfg)]
        epochs = None if fits_itself(cfg.model, cfg.student.kind) else cfg.epochs
        trains.append(TrainPlan(name, cfg.model, cfg.task.format, points, source, epochs))
    return steps, trains


def plan_lines(steps: list[StepPlan], trains: list[TrainPlan]) -> list[str]:
    """The dry run as plain lines: one per teacher step, the totals, one per student."""

    def dollars(x: float | None) -> str:
        return "unknown price" if x is None else f"${x:.4f}"

    lines = ["dry run: nothing was called, imported or written", "teacher steps:"]
    for s in steps:
        lines.append(
            f"  {s.name} ({s.split}, {s.kind} {s.model}, {s.mode}): {s.records} rows, "
            f"{s.prompts} prompts, {s.cached} answered already, {s.calls} calls; est. "
            f"{dollars(s.est_cost_usd)} online, {dollars(s.est_batch_cost_usd)} batch"
        )
        for eid, n in s.elsewhere.items():
            lines.append(f"    {n} of them answered by {eid or 'an unrecorded endpoint'} "
                         "(not used; teacher.reuse_answers_from would)")  # fmt: skip
    online = [s.est_cost_usd for s in steps]
    batch = [s.est_batch_cost_usd for s in steps]
    known = None not in online
    lines.append(
        f"total: {sum(s.calls for s in steps)} calls, est. "
        f"{dollars(sum(online)) if known else 'unknown (a step has no known price)'} online, "
        f"{dollars(sum(batch)) if None not in batch else 'unknown'} batch (upper bounds)"
    )
    lines.append("would train:")
    for t in trains:
        how = "fits its own candidates" if t.epochs is None else f"{t.epochs:g} epochs"
        lines.append(
            f"  {t.name}: {t.model}, format {t.format}, {how}, on {t.train_from}; "
            f"{len(t.points)} grid points ({', '.join(t.points)})"
        )
    return lines
