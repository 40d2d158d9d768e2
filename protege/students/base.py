"""The student interface: what train/, evaluate/ and serve/ ask of a student, whatever its kind.

A `Student` holds a model and its tokenizer (None for a kind that reads text itself). Four
kinds implement it, one package each (`students.REGISTRY`): `seq2seq` (T5, BART, BERT2BERT),
`causal` (any `AutoModelForCausalLM`), `classifier` (any `AutoModelForSequenceClassification`)
and `classical` (TF-IDF or static embeddings, fitted without gradient steps: `fits_itself`).
Callers never branch on the kind.

Training: `encode` turns `formats.Example`s into `Encoded` rows (ids, target ids, span tags of
the split loss); `lengths` gives the two keys batches are grouped by; `collate` pads a batch;
`logits` runs the model (the prepared, maybe DDP-wrapped one is passed in) and returns logits,
targets and tags aligned as (B, T, V), (B, T), (B, T), so `train.loss.split_loss` serves every
kind. Inference (the predictor's backend interface): `token_logprobs`, `first_logprobs`,
`generate`. Classifying kinds also give `label_probs` (probabilities over the task's labels).
Exports: `exporters` (format -> exporter) and `runtimes` (an export's marker file -> the
backend that runs it), so that nothing outside a kind's package names a runtime.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from protege.formats import Example, TaskConfig
from protege.students.options import StudentOptions
from protege.train.data import TAGS, Encoded, fit_segments, label_reach


def eos_id(tok) -> int:
    """BERT tokenizers have no eos; their [SEP] ends a sequence."""
    return tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id


def encode_targets(
    examples: list[Example], tok, max_target_len: int
) -> list[tuple[list[int], list[int], int]]:
    """Targets as (ids, tags, label_reach), built as `train.data.encode` builds seq2seq targets:
    each segment tokenized without special tokens, only the rationale cut to fit, eos
    appended, every token tagged with its segment's span."""
    texts = [text for e in examples for _, text in e.segments]
    seg_ids = iter(tok(texts, add_special_tokens=False)["input_ids"]) if texts else iter([])
    eos = eos_id(tok)
    out = []
    for example in examples:
        pieces = fit_segments([(k, next(seg_ids)) for k, _ in example.segments], max_target_len - 1)
        ids = [i for _, piece in pieces for i in piece]
        tags = [TAGS[kind] for kind, piece in pieces for _ in piece]
        last = tags[-1] if tags else TAGS[example.segments[-1][0]]
        out.append((ids + [eos], tags + [last], label_reach(pieces, 1)))
    return out


@dataclass
class Fitted:
    """One candidate a self-fitting kind trained: its dev metrics (`eval_accuracy`,
    `eval_loss`, its hyper-parameters under `params`) and the fitted model."""

    metrics: dict[str, Any]
    model: Any


def require_label_task(kind: str, writer: str, task: TaskConfig) -> None:
    """A kind that only picks a label: a text task or a rationale format is a clear error."""
    from protege.errors import ConfigError

    if task.type != "classification":
        raise ConfigError(
            f"student kind {kind}: a {task.type} task needs generated text; "
            "use a seq2seq or causal student"
        )
    if task.format != "label":
        raise ConfigError(
            f"student kind {kind}: format {task.format!r} asks for rationales, which {writer} "
            "cannot write; use format: label, or a seq2seq/causal student"
        )


def set_decoding(model, settings: dict, prefix: list[int]) -> None:
    """Make the model's generation config say exactly `settings` (replacing what a pretrained
    checkpoint brought, e.g. bart-base's `num_beams: 4`, `no_repeat_ngram_size: 3`), and force
    the target prefix the trainer puts before every target (BART's `<s>`) as the first
    generated token; with no prefix, nothing is forced."""
    gen = model.generation_config
    for key, value in settings.items():
        setattr(gen, key, value)
    gen.forced_bos_token_id = prefix[0] if prefix else None


class Student(ABC):
    """A model of one kind and its tokenizer, behind the calls the rest of protege makes."""

    kind: ClassVar[str]
    start_id: int | None = None
    """The decoder start token (seq2seq only): what a target prefix is told apart from."""

    def __init__(self, model, tok, task: TaskConfig | None = None, device: str = "cpu"):
        self.model, self.tok, self.task, self.device = model, tok, task, device
        self.max_source_len = 512

    # ---- loading ---------------------------------------------------------------------------

    n_suffix: int = 1
    """End tokens closing every target (eos), left out of the label span's loss."""

    @classmethod
    @abstractmethod
    def load(
        cls, path: str, task: TaskConfig | None, options: StudentOptions, seed: int | None = None
    ) -> Student:
        """Load from a resolved path (local dir or hub name); `seed`: random parts' seed."""

    @classmethod
    def check_task(cls, task: TaskConfig) -> None:
        """Raise ConfigError, in one line, when this kind cannot learn `task`."""
        return None  # generative kinds learn every task type and format

    def to(self, device: str) -> Student:
        self.model.to(device).eval()
        self.device = device
        return self

    @property
    def pad_id(self) -> int:
        return self.tok.pad_token_id if self.tok.pad_token_id is not None else 0

    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # ---- training --------------------------------------------------------------------------

    fits_itself: ClassVar[bool] = False
    """A kind trained without gradient steps (classical): `train.fit` asks its `fit` for
    candidates, where the other kinds go through the training loop."""

    def fit(self, train: list[Example], dev: list[Example], seed: int) -> list[Fitted]:
        """Candidates fitted on `train` and scored on `dev` (a kind's small grid)."""
        raise NotImplementedError(f"a {self.kind} student trains in the training loop")

    @abstractmethod
    def encode(self, examples: list[Example], max_source_len: int, max_target_len: int) -> list:
        """Training rows (`Encoded`) for `examples`."""

    def lengths(self, items: list[Encoded]) -> tuple[list[int], list[int]]:
        """The two keys of `train.data.length_grouped_batches`: what a batch pads to."""
        return [len(e.input_ids) for e in items], [len(e.target_ids) for e in items]

    @abstractmethod
    def collate(self, items: list[Encoded]) -> dict[str, torch.Tensor]:
        """Pad a batch (to its own longest row)."""

    @abstractmethod
    def logits(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """(logits (B, T, V), targets (B, T) with -100 at ignored positions, tags (B, T))."""

    def configure_decoding(self, settings: dict[str, Any]) -> None:
        """Make the model's generation config say exactly `settings` (generative kinds)."""
        set_decoding(self.model, settings, [])

    @classmethod
    def exporters(cls) -> dict[str, Callable[..., Path]]:
        """Export formats of this kind: name -> f(model_dir, output, quantization) -> dir."""
        return {}

    @classmethod
    def runtimes(cls) -> dict[str, Callable[..., Any]]:
        """This kind's exported runtimes: marker file of an export dir -> f(model_dir, device,
        threads) -> the predictor backend that runs it."""
        return {}

    def save(self, model, dest: Path) -> None:
        """Save `model` (the trained, unwrapped one) and the tokenizer as a plain HF dir."""
        model.save_pretrained(dest)
        self.tok.save_pretrained(dest)

    # ---- inference -------------------------------------------------------------------------

    @abstractmethod
    def generate(self, sources: list[str], max_new_tokens: int, num_beams: int = 1) -> list[str]:
        """Greedy (or beam) decoding, special tokens removed."""

    def generate_ids(
        self, sources: list[str], max_new_tokens: int, num_beams: int = 1
    ) -> tuple[list[str], list[int]]:
        """Texts and the number of generated (non-special) tokens of each."""
        texts = self.generate(sources, max_new_tokens, num_beams)
        return texts, [len(self.tok(t, add_special_tokens=False).input_ids) for t in texts]

    @classmethod
    def backend(
        cls,
        model_dir: str | Path,
        task: TaskConfig,
        device: str = "cpu",
        threads: int | None = None,
    ):
        """What `serve.predictor.Predictor` runs a saved student with (default: the student)."""
        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has no per-model setting
        return cls.load(str(model_dir), task, StudentOptions()).to(device)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": self.n_params()}
