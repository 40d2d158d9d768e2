"""A recipe: every stage's config written down in one YAML file, for `protege run`.

    name: demo
    run_dir: runs/demo
    task:     {...}            # formats.TaskConfig, shared by train, eval and serve
    data:     {train: ..., dev: ..., test: ...}
    teacher:  {...}            # teacher.config.TeacherConfig, the default for every step
    imports:  [...]            # recorded teacher answers to load into the store first
    generate: [...]            # teacher steps: each a generate.GenerateConfig + the split it reads
    teacher_zeroshot: {...}    # the teacher itself as a row of the results table
    train:    {...}            # train.config.TrainConfig fields (task, data, output_dir are filled in)
    eval:     {...}
    report:   {...}

Stage configs owned by other modules are kept as plain mappings here and validated by
`validate_recipe`, which builds each stage's typed config without running anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from protege.config import from_dict, load_config, require_positive
from protege.data.hub import HubQuery
from protege.data.io import is_file_source, split_source  # noqa: F401 (re-exported)
from protege.errors import ConfigError
from protege.formats import TaskConfig

SPLITS = ("train", "dev", "test")


@dataclass
class DataConfig:
    """Where the task's rows come from. Sources are file paths (JSONL/CSV/Parquet) or hub
    datasets (`facebook/anli`, `abisee/cnn_dailymail`, or the short `anli`, `cnn_dailymail`);
    `path[a:b]` takes a slice of a file's rows."""

    train: str = ""
    """Training rows (the teacher augments or labels them)."""
    dev: str = ""
    """Selection rows: learning-rate/split/checkpoint choices are made here, never on test."""
    test: str = ""
    """Held-out rows, evaluated once at the end."""
    fields: dict[str, str] = field(default_factory=dict)
    """Rename source fields to the task's names: `{premise: context}`."""
    max_rows: dict[str, int] = field(default_factory=dict)
    """Cap the rows per split, e.g. `{train: 200}` (first rows after slicing/filtering)."""
    max_chars: dict[str, int] = field(default_factory=dict)
    """Keep rows whose field is shorter than N characters, e.g. `{article: 2048}` (Paper B)."""
    splits: dict[str, str] = field(default_factory=dict)
    """Hub datasets: the dataset's own split for a split, e.g. `{train: train_r2}` (default:
    protege's table, e.g. ANLI's `train_r1`/`dev_r1`/`test_r1`, `validation` for dev)."""
    config: str | None = None
    """Hub datasets: the dataset's config, e.g. `3.0.0` (default: protege's table)."""


@dataclass
class ImportConfig:
    """Recorded teacher answers to load into the store (`protege teacher import`)."""

    file: str
    prompt_field: str = "teacher_prompt"
    response_field: str = "rationale"
    model: str = "gpt-3.5-turbo-0125"
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    """The request parameters the answers were made with (temperature, seed, max_tokens)."""


@dataclass
class StepConfig:
    """One teacher step: a generate config applied to one split of the data."""

    name: str
    split: Literal["train", "dev", "test"] = "train"
    use_as: Literal["train", "dev", "test", "none"] | None = None
    """Which split's data this step's output replaces downstream (default: its own split).
    On test it only adds fields (reference rationales for BLEU); the rows stay the same."""
    config: dict[str, Any] = field(default_factory=dict)
    """`GenerateConfig` fields; `input` and `output` are filled in by the pipeline."""
    allow_incomplete: bool = False
    """Go on when some rows have no answer (failed, or over the budget), with a counted
    warning; by default the run stops. Either way a rerun sends only what is missing."""


@dataclass
class ZeroShotConfig:
    """The teacher asked for the answer directly on the test rows (Paper B's ChatGPT row)."""

    enabled: bool = True
    limit: int | None = None
    """Only the first N test rows (the teacher row's own sample; its size is reported)."""
    config: dict[str, Any] = field(default_factory=dict)
    """`GenerateConfig` overrides (teacher, max_tokens ...)."""
    allow_incomplete: bool = False
    """As a teacher step's: go on (warned) when some test rows have no teacher answer."""


@dataclass
class VariantConfig:
    """One student trained on one training set: Paper B's gold vs synthetic x T5 vs BART."""

    name: str
    train_from: str = "data"
    """`data` (the recipe's own train split, after teacher steps) or a generate step's name."""
    train: dict[str, Any] = field(default_factory=dict)
    """`TrainConfig` overrides for this variant (model, lr ...)."""


@dataclass
class EvalSection:
    """A recipe's `eval:` section: the keyword arguments of `evaluate_run`."""

    decoding: dict[str, Any] = field(default_factory=dict)
    """`evaluate.Decoding` fields (batch_size, max_new_tokens, num_beams, max_source_len)."""
    hourly_price_usd: float = 0.10
    """The student machine's assumed price, for the cost per 1,000 predictions."""
    device: str | None = None


@dataclass
class ReportSection:
    """A recipe's `report:` section: the keyword arguments of `build_report`."""

    hourly_price_usd: float | None = None


@dataclass
class RecipeConfig:
    """A whole run: generate -> train (grid) -> eval -> report."""

    name: str = "run"
    run_dir: str = "runs/run"
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: dict[str, Any] = field(default_factory=dict)
    imports: list[ImportConfig] = field(default_factory=list)
    generate: list[StepConfig] = field(default_factory=list)
    teacher_zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    variants: list[VariantConfig] = field(default_factory=list)
    """Several students in one run, each in RUN_DIR/<name>/ (empty: one, in RUN_DIR/train)."""
    train: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> RecipeConfig:
    recipe = load_config(RecipeConfig, path, overrides)
    for split in SPLITS:
        if not getattr(recipe.data, split):
            raise ConfigError(f"{path}: data.{split} is required")
    for what in ("max_rows", "splits"):
        unknown = sorted(set(getattr(recipe.data, what)) - set(SPLITS))
        if unknown:
            raise ConfigError(
                f"{path}: data.{what}.{unknown[0]}: unknown split (use {', '.join(SPLITS)})"
            )
    for split in recipe.data.splits:
        if is_file_source(split_source(getattr(recipe.data, split))[0]):
            raise ConfigError(
                f"{path}: data.splits.{split}: data.{split} is a file, not a hub dataset"
            )
    names = [s.name for s in recipe.generate]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: generate step names must be unique (got {names})")
    variants = [v.name for v in recipe.variants]
    if len(set(variants)) != len(variants):
        raise ConfigError(f"{path}: variant names must be unique (got {variants})")
    for v in recipe.variants:
        if v.train_from != "data" and v.train_from not in names:
            raise ConfigError(
                f"{path}: variants.{v.name}.train_from: no generate step named {v.train_from!r}"
            )
    return recipe


def shadowed_overrides(recipe: RecipeConfig, overrides: list[str]) -> list[str]:
    """One line per override a variant or a teacher step sets for itself, so that it does not
    reach them (`train.epochs=1` when a variant's `train` sets `epochs`): said, not ignored."""
    lines = []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        section, _, rest = key.partition(".")
        if not rest:
            continue
        if section == "train":
            owners = [("variants", v.name, v.train) for v in recipe.variants]
        elif section == "teacher":
            owners = [("generate", s.name, s.config.get("teacher") or {}) for s in recipe.generate]
            owners.append(
                ("teacher_zeroshot", "", recipe.teacher_zeroshot.config.get("teacher") or {})
            )
        else:
            continue
        hit = [(kind, name) for kind, name, own in owners if _has_path(own, rest.split("."))]
        if not hit:
            continue
        kind = hit[0][0]
        where = f"{kind}.{hit[0][1]}." if hit[0][1] else f"{kind}."
        inner = f"train.{rest}" if section == "train" else f"config.teacher.{rest}"
        names = ", ".join(n or kind for _, n in hit)
        reach = "has no effect" if len(hit) == len(owners) else "does not reach them"
        lines.append(
            f"override {key}: {names} set{'s' if len(hit) == 1 else ''} it themselves, so it "
            f"{reach} (override theirs: {where}{inner}=...)"
        )
    return lines


def _has_path(data: Any, parts: list[str]) -> bool:
    for part in parts:
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def hub_query(data: DataConfig, split: str) -> HubQuery:
    """How to read `split` when its source is a hub dataset: the recipe's split and config
    names, and its length filter and row cap applied before rows are read (columns by their
    source names, so `max_chars: {article: ...}` works whatever `fields` renames)."""
    sources = {ours: theirs for ours, theirs in data.fields.items()}
    return HubQuery(
        split=split,
        hub_split=data.splits.get(split),
        config=data.config,
        max_chars={sources.get(k, k): n for k, n in data.max_chars.items()},
        max_rows=data.max_rows.get(split),
    )


def validate_recipe(recipe: RecipeConfig) -> None:
    """Build every stage's typed config (raises ConfigError naming the bad field)."""
    from protege.generate import GenerateConfig
    from protege.train.config import TrainConfig

    for step in recipe.generate:
        from_dict(
            GenerateConfig, step_generate_dict(recipe, step, "in", "out"), f"generate.{step.name}"
        )
    if recipe.teacher_zeroshot.enabled:
        from_dict(GenerateConfig, zeroshot_dict(recipe, "in", "out"), "teacher_zeroshot")
    from_dict(TrainConfig, train_dict(recipe, "train", "dev", "out"), "train")
    for v in recipe.variants:
        from_dict(TrainConfig, train_dict(recipe, "t", "d", "o", v.train), f"variants.{v.name}")
    from protege.evaluate import Decoding

    section = from_dict(EvalSection, recipe.eval, "eval")
    from_dict(Decoding, section.decoding, "eval.decoding")
    require_positive_field("eval.hourly_price_usd", section.hourly_price_usd)
    report = from_dict(ReportSection, recipe.report, "report")
    require_positive_field("report.hourly_price_usd", report.hourly_price_usd)


def require_positive_field(name: str, value: float | None) -> None:
    try:
        require_positive(name, value, zero_ok=True)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def step_generate_dict(recipe: RecipeConfig, step: StepConfig, inp: str, out: str) -> dict:
    cfg = dict(step.config)
    teacher = {**recipe.teacher, **cfg.pop("teacher", {})}
    if recipe.task.type == "classification":
        cfg.setdefault("labels", list(recipe.task.labels))
    return {**cfg, "teacher": teacher, "input": inp, "output": out}


def zeroshot_dict(recipe: RecipeConfig, inp: str, out: str) -> dict:
    cfg = dict(recipe.teacher_zeroshot.config)
    teacher = {**recipe.teacher, **cfg.pop("teacher", {})}
    if recipe.task.type == "classification":
        cfg.setdefault("recipe", "label")
        cfg.setdefault("labels", list(recipe.task.labels))
        cfg.setdefault("output_field", "teacher_label")
    else:
        cfg.setdefault("recipe", "summarize")
        cfg.setdefault("output_field", "teacher_summary")
    if recipe.teacher_zeroshot.limit is not None:
        cfg.setdefault("limit", recipe.teacher_zeroshot.limit)
    return {**cfg, "teacher": teacher, "input": inp, "output": out}


def train_dict(
    recipe: RecipeConfig, train: str, dev: str, out: str, extra: dict | None = None
) -> dict:
    """The TrainConfig mapping of a recipe: its train section, a variant's overrides (a
    classifier variant's `task: {format: label}` included), and the task, data and output
    paths the pipeline fills in."""
    from protege.config import to_dict

    extra = dict(extra or {})
    task = {**to_dict(recipe.task), **extra.pop("task", {})}  # a variant may change the format
    return {
        **recipe.train,
        **extra,
        "task": task,
        "train_data": train,
        "dev_data": dev,
        "output_dir": out,
    }
