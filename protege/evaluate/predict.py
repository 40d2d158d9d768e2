"""Batched generation for evaluation, with the decoding settings and the time it took.

Decoding settings change every generated-text metric (ROUGE length, BLEU), so they are part
of every result; the wall time per example is what the cost-per-1,000 estimate is made from.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protege.config import require_positive
from protege.formats import TaskConfig, clip_sources


@dataclass
class Decoding:
    """How a student generates during evaluation; None: as the checkpoint recorded it."""

    batch_size: int = 16
    """Inputs per generate() call; latency per example is measured at this batch size."""
    max_new_tokens: int | None = None
    """Generated-token cap; None: the checkpoint's recorded `generation.max_new_tokens` (what
    dev selection decoded with), else by task: 16 label, 160 rationale, 128 summary."""
    num_beams: int | None = None
    """1 = greedy decoding (Paper A); None: the checkpoint's recorded beam width, else 1."""
    max_source_len: int = 512
    """Inputs are truncated to this many tokens."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_new_tokens", "num_beams", "max_source_len"):
            require_positive(name, getattr(self, name))

    def resolved(self, task: TaskConfig, recorded: dict[str, Any] | None = None) -> Decoding:
        """Every field set: what was asked, else what the checkpoint `recorded`
        (`formats.recorded_decoding`), else the task's default."""
        recorded = recorded or {}
        n = self.max_new_tokens or recorded.get("max_new_tokens")
        if n is None:
            if task.type == "summarization":
                n = 128
            else:
                n = 16 if task.format in ("label", "multitask") else 160
        beams = self.num_beams or recorded.get("num_beams") or 1
        return Decoding(self.batch_size, int(n), int(beams), self.max_source_len)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Generation:
    """Generated texts in input order, and how long generating them took."""

    texts: list[str]
    seconds: float
    """Wall time of all generate() calls (tokenisation and decoding included)."""
    n_tokens: list[int] = field(default_factory=list)
    """Generated tokens per example (special tokens excluded)."""

    @property
    def seconds_per_example(self) -> float:
        return self.seconds / len(self.texts) if self.texts else 0.0


def load_for_eval(model_dir: str | Path, device: str | None = None):
    """The student of `model_dir` (any kind), on `device`, ready for inference."""
    import torch

    from protege.formats import load_task
    from protege.students import load_student

    student = load_student(model_dir, load_task(model_dir))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return student.to(device)


SINGLE_REQUESTS = 16
"""Inputs timed one at a time for the p50 single-request latency..."""
SINGLE_BUDGET_S = 3.0
"""...or fewer once this much time is spent (at least 3): a student that writes long
rationales slowly must not stretch an evaluation by a minute."""


def single_request_ms(
    student: Any, inputs: list[str], decoding: Decoding, n: int = SINGLE_REQUESTS
) -> list[float]:
    """Milliseconds for each of the first `n` inputs generated alone (batch of one, as a
    served request arrives), after one warm-up call; stops early past `SINGLE_BUDGET_S`."""
    inputs = clip_sources(inputs[:n], decoding.max_source_len)
    if not inputs:
        return []
    student.max_source_len = decoding.max_source_len
    student.generate_ids(inputs[:1], decoding.max_new_tokens, decoding.num_beams)
    out: list[float] = []
    for text in inputs:
        if len(out) >= 3 and sum(out) / 1000 > SINGLE_BUDGET_S:
            break
        start = time.perf_counter()
        student.generate_ids([text], decoding.max_new_tokens, decoding.num_beams)
        out.append(1000 * (time.perf_counter() - start))
    return out


def generate(student: Any, inputs: list[str], decoding: Decoding, desc: str = "") -> Generation:
    """Generate for `inputs` in batches (longest first, so padding stays small), with a
    progress bar; texts come back in input order."""
    from tqdm import tqdm

    inputs = clip_sources(inputs, decoding.max_source_len)
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
    texts: list[str] = [""] * len(inputs)
    n_tokens: list[int] = [0] * len(inputs)
    seconds = 0.0
    student.max_source_len = decoding.max_source_len
    bs = max(1, decoding.batch_size)
    batches = [order[i : i + bs] for i in range(0, len(order), bs)]
    if batches:  # warm-up (first-call allocation) kept out of the measured latency
        student.generate_ids([inputs[batches[0][0]]], 2, 1)
    for batch in tqdm(batches, desc=desc or "generating", unit="batch", leave=False):
        start = time.perf_counter()
        out, counts = student.generate_ids(
            [inputs[i] for i in batch], decoding.max_new_tokens, decoding.num_beams
        )
        seconds += time.perf_counter() - start
        for i, text, n in zip(batch, out, counts, strict=True):
            texts[i] = text.strip()
            n_tokens[i] = n
    return Generation(texts, seconds, n_tokens)
