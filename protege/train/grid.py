"""The grid: learning rates x splits (+ a `label`-format baseline) x seeds, run one after
another into one output dir, then one results table (results.json + results.md).

A configuration whose DONE exists is skipped on rerun and one killed part way resumes, but
only when its directory was written by the same configuration on the same data: each run dir
keeps `point.json` (config + data fingerprint); on a mismatch the old directory is set aside
(renamed `<id>.old-N`, never deleted) and the point trains anew.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protege.config import fingerprint, save_config, to_dict
from protege.data.io import atomic_write_text, write_json
from protege.train.config import TrainConfig


@dataclass
class GridPoint:
    """One configuration of the grid."""

    id: str
    cfg: TrainConfig
    baseline: bool


def format_lr(lr: float) -> str:
    """6e-4, 1.2e-3: short and readable in directory names."""
    mantissa, exponent = f"{lr:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def format_split(split: list[float]) -> str:
    return "-".join(f"{x:g}" for x in split)


def expand_grid(cfg: TrainConfig) -> list[GridPoint]:
    """Every configuration of `cfg.grid` (or just `cfg` when the grid is empty), in run order.
    A self-fitting student (it chooses its own candidates, without epochs or a learning rate)
    gets one point per seed (`seed42`), whatever `grid.learning_rates` lists."""
    from protege.students import fits_itself

    if fits_itself(cfg.model, cfg.student.kind):
        return [GridPoint(f"seed{seed}", _variant(cfg, seed=seed), cfg.grid.baseline)
                for seed in cfg.grid.seeds or [cfg.seed]]  # fmt: skip
    lrs = cfg.grid.learning_rates or [cfg.lr]
    splits = cfg.grid.splits or [cfg.split]
    seeds = cfg.grid.seeds or [cfg.seed]
    has_split = cfg.task.format != "label"
    points = []
    for seed in seeds:
        for lr in lrs:
            if cfg.grid.baseline and has_split:
                c = _variant(cfg, lr=lr, seed=seed)
                c.task.format = "label"
                points.append(GridPoint(f"baseline_lr{format_lr(lr)}_seed{seed}", c, True))
            for split in splits if has_split else [cfg.split]:
                c = _variant(cfg, lr=lr, seed=seed, split=list(split))
                name = f"_split{format_split(split)}" if has_split else ""
                points.append(
                    GridPoint(
                        f"lr{format_lr(lr)}{name}_seed{seed}",
                        c,
                        not has_split and cfg.grid.baseline,
                    )
                )
    return points


def _variant(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    c = copy.deepcopy(cfg)
    for key, value in changes.items():
        setattr(c, key, value)
    return c


POINT_FILE = "point.json"


def point_key(cfg: TrainConfig) -> dict[str, str]:
    """What a run dir's results depend on: the point's whole config (but where it is written)
    and the bytes of its data."""
    from protege.train.data import data_fingerprint

    conf = {k: v for k, v in to_dict(cfg).items() if k not in ("output_dir", "grid")}
    data = data_fingerprint(cfg.train_data, cfg.dev_data, max_rows=cfg.max_train_rows)
    return {"config": fingerprint(conf), "data": data}


def claim_run_dir(run_dir: Path, key: dict[str, str]) -> str:
    """Make `run_dir` this point's: `done` (finished by the same config on the same data),
    `resume` (same, unfinished) or `new`; a dir of another config or data (or one from before
    `point.json` existed) is renamed aside first. Returns the status; main process only."""
    if run_dir.exists() and any(run_dir.iterdir()):
        point = run_dir / POINT_FILE
        old = json.loads(point.read_text()) if point.exists() else None
        if old == key:
            return (
                "done"
                if (run_dir / "DONE").exists() and (run_dir / "result.json").exists()
                else "resume"
            )
        n = 1
        while run_dir.with_name(f"{run_dir.name}.old-{n}").exists():
            n += 1
        aside = run_dir.rename(run_dir.with_name(f"{run_dir.name}.old-{n}"))
        what = "config or data changed" if old else "no record of its config"
        print(f"[{run_dir.name}] {what}: earlier results set aside in {aside}; training anew")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / POINT_FILE, key)
    return "new"


def run_grid(cfg: TrainConfig) -> Path:
    """Run every configuration (skipping finished ones), then write the results table."""
    from accelerate import PartialState

    from protege.train.trainer import cpu_ddp, train_one

    require_data_files(cfg)  # before any model is built or downloaded
    out = Path(cfg.output_dir)
    state = PartialState(cpu=cpu_ddp())
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "train_config.yaml")
    results = []
    for point in expand_grid(cfg):
        run_dir = out / point.id
        status = [claim_run_dir(run_dir, point_key(point.cfg)) if state.is_main_process else ""]
        if state.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(status)
        if status[0] == "done":
            if state.is_main_process:
                print(f"[{point.id}] already done, skipping")
            results.append(json.loads((run_dir / "result.json").read_text()))
            continue
        results.append(train_one(point.cfg, run_dir, point.id, point.baseline))
    if state.is_main_process:
        write_json(out / "results.json", results)
        atomic_write_text(out / "results.md", results_markdown(results))
        print(results_markdown(results))
    state.wait_for_everyone()
    return out


def require_data_files(cfg: TrainConfig) -> None:
    """A train or dev file that is not there stops the run at once, naming the field."""
    from protege.data.io import is_file_source, split_source
    from protege.errors import DataError

    for name in ("train_data", "dev_data"):
        path, _ = split_source(getattr(cfg, name))
        if not path:
            raise DataError(name, "not set (a data file or a hub dataset name)")
        if is_file_source(path) and not Path(path).is_file():
            raise DataError(path, f"no such file ({name})")


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.1f}" if pct else f"{value:.3f}"
    return str(value)


def results_markdown(results: list[dict[str, Any]]) -> str:
    """One row per configuration: the best-loss and best-accuracy checkpoints on dev."""
    summ = any(r["best"]["accuracy"] and "eval_rougeL" in r["best"]["accuracy"] for r in results)
    metric = "ROUGE-L" if summ else "acc %"
    key = "eval_rougeL" if summ else "eval_accuracy"
    lines = [
        f"| id | format | lr | split | seed | steps | best-loss step | label CE | {metric} @loss "
        f"| best-acc step | {metric} | coverage % | BLEU |",
        "|" + " --- |" * 13,
    ]
    for r in results:
        lo, ac = r["best"]["loss"] or {}, r["best"]["accuracy"] or {}
        split = format_split(r["split"]) if r["split"] else "-"
        lines.append(
            f"| {r['id']} | {r['format']} | {format_lr(r['lr']) if r['lr'] is not None else '-'} | {split} | {r['seed']} "
            f"| {r['steps']}{' (early stop)' if r.get('early_stopped') else ''} "
            f"| {_fmt(lo.get('step'))} | {_fmt(lo.get('eval_loss_label_span'))} "
            f"| {_fmt(lo.get(key), not summ)} "
            f"| {_fmt(ac.get('step'))} | {_fmt(ac.get(key), not summ)} "
            f"| {_fmt(ac.get('eval_coverage'), True)} | {_fmt(ac.get('eval_bleu'))} |"
        )
    note = (
        "\nDev split only (the test split is never used here). best-loss: the checkpoint of "
        "lowest eval loss, the loss each run optimises (a baseline's mean CE over all tokens, a "
        "split run's weighted sum of two span means), which differs between formats and splits; "
        "label CE, shown instead, is the mean cross-entropy on the label's own tokens of the dev "
        "targets (end token excluded), the same quantity in every row. Accuracy counts "
        "malformed outputs as wrong; BLEU is rationale_bleu (sacrebleu corpus BLEU, no "
        "smoothing) of generated vs teacher rationales.\n"
    )
    return "\n".join(lines) + "\n" + note
