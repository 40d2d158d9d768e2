"""Typed options of `protege train`: one `TrainConfig`, with an optional grid inside it.

A YAML file is just this dataclass written down; any field can be overridden on the command
line (`lr=1e-3`, `grid.seeds=[1,2]`). The resolved config is saved next to every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from protege.config import require_positive
from protege.formats import TaskConfig
from protege.students.options import StudentOptions


@dataclass
class GridConfig:
    """Configurations run one after another into one output dir (Paper A's Table 1)."""

    learning_rates: list[float] = field(default_factory=list)
    """Learning rates to try; empty: just `lr`."""
    splits: list[list[float]] = field(default_factory=list)
    """[F_label, F_rationale] pairs to try; empty: just `split`."""
    baseline: bool = False
    """Also train the `label`-format baseline at every learning rate and seed."""
    seeds: list[int] = field(default_factory=list)
    """Seeds to repeat every configuration with; empty: just `seed`."""


@dataclass
class GenerationConfig:
    """How the student generates: at dev evaluation, and (written into every checkpoint's
    generation_config.json, replacing what the pretrained model brought, e.g. bart-base's
    `num_beams: 4, no_repeat_ngram_size: 3`) at test, predict and serve time."""

    max_new_tokens: int = 128
    """Upper bound on generated tokens (a label+rationale target is ~100-200)."""
    num_beams: int = 1
    """Beam width; 1 = greedy, the fast default for selection during training."""
    no_repeat_ngram_size: int = 0
    """Forbid repeating n-grams of this size; 0 = off (bart-base's checkpoint says 3)."""
    length_penalty: float = 1.0
    """Beam search: exponent of the length normalisation of scores."""
    early_stopping: bool = False
    """Beam search: stop when `num_beams` finished candidates exist."""

    def settings(self) -> dict[str, Any]:
        """Every decoding setting, explicit: what `generate` is called with and what is
        recorded. Sampling, repetition penalties and minimum lengths are off."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "length_penalty": self.length_penalty,
            "early_stopping": self.early_stopping,
            "do_sample": False,
            "repetition_penalty": 1.0,
            "min_length": 0,
        }


@dataclass
class TrainConfig:
    """Everything one training run (or grid of runs) needs."""

    model: str = "protege:minilm-encdec"
    """Student: hub name (`t5-small`), local model dir, or a `protege:` name."""
    student: StudentOptions = field(default_factory=StudentOptions)
    """Student kind (auto from the model's config) and loading options (LoRA, checkpointing)."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """What goes in and out (fields, labels, target format)."""
    train_data: str = ""
    """Training records (JSONL/CSV/Parquet or a hub dataset name)."""
    dev_data: str = ""
    """Dev records, used for evaluation and checkpoint selection (the test split never is)."""
    output_dir: str = "runs/train"
    """Where results.json, results.md and one directory per configuration go."""
    lr: float = 6e-4
    """Peak learning rate of AdamW."""
    split: list[float] = field(default_factory=lambda: [0.5, 0.5])
    """[F_label, F_rationale] of the split loss; ignored by the `label` format (plain mean CE)."""
    epochs: float = 5.0
    """Training epochs (Paper A: 5)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps, whatever `epochs` says."""
    batch_size: int = 32
    """Examples per device per micro-batch (Paper A: 32 per GPU)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    evals_per_epoch: int = 2
    """Dev evaluations (and checkpoints) per epoch (Paper A: 2)."""
    patience: int = 8
    """Early stopping: evaluations without a lower eval loss before stopping (Paper A: 8)."""
    warmup_steps: int = 100
    """Linear warm-up steps, then linear decay to zero."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 disables it."""
    max_source_len: int = 512
    """Source tokens kept (truncation, never padding to this length)."""
    max_target_len: int = 256
    """Target tokens kept, eos included."""
    seed: int = 42
    """Seed of random, numpy and torch (model init of random students, data order)."""
    max_train_rows: int | None = None
    """Use only the first N training rows."""
    max_dev_rows: int | None = None
    """Use only the first N dev rows (evaluation cost grows with generation)."""
    allow_dev_overlap: bool = False
    """Train even when dev rows are training rows (a shared uid, or every dev input also a
    training input); refused by default, a partial input overlap is only reported.
    `train_data` / `dev_data` take a row slice of a file: `dev.jsonl[:800]`, `dev.jsonl[800:]`."""
    min_confidence: float | None = None
    """Leave out training rows whose teacher `confidence` (label probability from logprobs, or
    self-consistency share: `protege generate --recipe label`) is below this; rows without a
    confidence are kept."""
    eval_batch_size: int = 64
    """Examples per device per evaluation batch."""
    mega_batch: int = 50
    """Length grouping window, in batches: sort by length within it, then shuffle batches."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """`auto`: bf16 on GPUs with native bf16, fp16 on older GPUs (fp32 for T5, which overflows
    in fp16), full precision on CPU (`trainer.choose_precision`)."""
    grid: GridConfig = field(default_factory=GridConfig)
    """Optional grid of learning rates x splits (+ baseline) x seeds."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """Generation settings for dev evaluation."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "evals_per_epoch", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")
        for s in [self.split, *self.grid.splits]:
            if len(s) != 2 or min(s) < 0 or abs(sum(s) - 1.0) > 1e-6:
                raise ValueError(f"split {s}: expected [F_label, F_rationale], >= 0, summing to 1")
        if self.patience < 1:
            raise ValueError("patience: must be at least 1")
        for name in ("lr", "epochs", "max_grad_norm", "max_steps", "max_source_len",
                     "max_target_len", "mega_batch", "max_train_rows", "max_dev_rows"):  # fmt: skip
            require_positive(name, getattr(self, name))
        for name in ("warmup_steps", "weight_decay"):
            require_positive(name, getattr(self, name), zero_ok=True)
        for i, lr in enumerate(self.grid.learning_rates):
            require_positive(f"grid.learning_rates[{i}]", lr)
        require_positive("generation.max_new_tokens", self.generation.max_new_tokens)
        require_positive("generation.num_beams", self.generation.num_beams)
