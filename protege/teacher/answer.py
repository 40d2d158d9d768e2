"""One row of the teacher store: an answer (status ok) or a failure, as `TeacherStore` reads
and writes it and as a rescue file (`rescue.py`) keeps it when the store cannot."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class Answer:
    """One stored answer (status ok) or failure (status failed)."""

    key: str
    model: str
    status: str
    text: str | None = None
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float = 0.0
    latency_s: float | None = None
    system_fingerprint: str | None = None
    error: str | None = None
    attempts: int = 1
    created_at: float = 0.0
    source: str = "live"
    cached_tokens: int | None = None
    """Input tokens served from the prompt cache (part of input_tokens, billed cheaper)."""
    reasoning_tokens: int | None = None
    """Hidden reasoning tokens (part of output_tokens, billed as output)."""
    run_id: str | None = None
    """The run (or batch:<id>) that paid for it."""
    logprobs: str | None = None
    """The answer's token log-probabilities, JSON [[token, logprob], ...], where returned."""
    endpoint: str | None = None
    """The endpoint that gave it (`endpoint_ids.endpoint_id`); None: stored before they were kept."""


COLUMNS = ", ".join(f.name for f in fields(Answer))
"""The `responses` columns an `Answer` is built from, in its fields' order: `Answer(*row)`."""
