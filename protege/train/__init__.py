"""Student training: the split loss, the loop (or a kind's own fit), checkpoints and the grid.

`run_train(cfg)` runs every configuration of `cfg` into `cfg.output_dir` and returns it.
Heavy imports (torch, transformers) happen only when training starts.
"""

from __future__ import annotations

from pathlib import Path

from protege.train.config import GenerationConfig, GridConfig, TrainConfig

__all__ = ["GenerationConfig", "GridConfig", "TrainConfig", "run_train"]


def run_train(cfg: TrainConfig) -> Path:
    """Train every grid configuration (resuming or skipping finished ones); the output dir."""
    from protege.train.grid import run_grid

    return run_grid(cfg)
