"""What OpenAI's chat completions API answers today (late 2026), as data for the replica server.

Per-model parameter rules, the error bodies (`{"error": {"message", "type", "param", "code"}}`,
word for word as the API sends them), the usage block with reasoning and cached tokens, and
the response headers (`x-ratelimit-*`, `x-request-id`, `openai-processing-ms`).

Model kinds:
    legacy     gpt-4o / gpt-4.1 style: `max_tokens` and `max_completion_tokens` both accepted,
               any temperature
    reasoning  gpt-5 / o-series style: `max_tokens` rejected (use `max_completion_tokens`),
               temperature other than 1 rejected, reasoning tokens billed inside
               `completion_tokens`
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """How one model treats request parameters."""

    kind: str = "legacy"  # legacy | reasoning
    reasoning_tokens: int = 0
    """Hidden reasoning tokens a reasoning model spends on every answer (billed as output)."""

    @property
    def reasoning(self) -> bool:
        return self.kind == "reasoning"


LEGACY = ModelSpec("legacy")
REASONING = ModelSpec("reasoning", reasoning_tokens=64)

DEFAULT_MODELS: dict[str, ModelSpec] = {
    "fake-model": LEGACY,
    "gpt-4.1-mini": LEGACY,
    "gpt-4o-mini": LEGACY,
    "gpt-5-mini": REASONING,
    "gpt-5.4-nano": REASONING,
    "o4-mini": REASONING,
}

CACHE_MIN_TOKENS = 1024  # prompts shorter than this are never cached
CACHE_STEP = 128  # cached prefixes grow in steps of 128 tokens


def error(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    ).encode()


def unsupported_max_tokens() -> tuple[int, bytes]:
    return 400, error(
        "Unsupported parameter: 'max_tokens' is not supported with this model. "
        "Use 'max_completion_tokens' instead.",
        "invalid_request_error",
        "max_tokens",
        "unsupported_parameter",
    )


def unsupported_temperature(value: Any) -> tuple[int, bytes]:
    return 400, error(
        f"Unsupported value: 'temperature' does not support {value} with this model. "
        "Only the default (1) value is supported.",
        "invalid_request_error",
        "temperature",
        "unsupported_value",
    )


def invalid_api_key(key: str) -> tuple[int, bytes]:
    shown = f"{key[:3]}*****{key[-4:]}" if len(key) > 8 else "*****"
    return 401, error(
        f"Incorrect API key provided: {shown}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        None,
        "invalid_api_key",
    )


def missing_api_key() -> tuple[int, bytes]:
    return 401, error(
        "You didn't provide an API key. You need to provide your API key in an Authorization "
        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password "
        "field (with blank username) if you're accessing the API from your browser and are "
        "prompted for a username and password. You can obtain an API key from "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        None,
        None,
    )


def forbidden() -> tuple[int, bytes]:
    return 403, error(
        "Country, region, or territory not supported",
        "request_forbidden",
        None,
        "unsupported_country_region_territory",
    )


def model_not_found(model: str) -> tuple[int, bytes]:
    return 404, error(
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        None,
        "model_not_found",
    )


def rate_limited(
    model: str, wait_s: float, which: str = "requests", limit: float = 500, asked: int = 1
) -> tuple[int, bytes]:
    unit = "requests per min (RPM)" if which == "requests" else "tokens per min (TPM)"
    return 429, error(
        f"Rate limit reached for {model} in organization org-replica on {unit}: "
        f"Limit {limit:g}, Used {limit:g}, Requested {asked}. Please try again in {wait_s:g}s. "
        "Visit https://platform.openai.com/account/rate-limits to learn more.",
        which,
        None,
        "rate_limit_exceeded",
    )


def insufficient_quota() -> tuple[int, bytes]:
    return 429, error(
        "You exceeded your current quota, please check your plan and billing details. For "
        "more information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "insufficient_quota",
        None,
        "insufficient_quota",
    )


def bad_request() -> tuple[int, bytes]:
    return 400, error(
        "Invalid 'messages[0].content': string too long. Expected a string with maximum "
        "length 10485760, but got a string with length 10485761 instead.",
        "invalid_request_error",
        "messages[0].content",
        "string_above_max_length",
    )


def server_error() -> tuple[int, bytes]:
    return 500, error(
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
    )


def overloaded() -> tuple[int, bytes]:
    return 503, error("The engine is currently overloaded, please try again later.", "server_error")


def check_params(spec: ModelSpec, body: dict[str, Any]) -> tuple[int, bytes] | None:
    """The 400 a model sends for parameters it does not take, or None."""
    if not spec.reasoning:
        return None
    if "max_tokens" in body:
        return unsupported_max_tokens()
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        return unsupported_temperature(temperature)
    return None


def usage(spec: ModelSpec, prompt_tokens: int, answer_tokens: int, cached: bool) -> dict[str, Any]:
    """The usage block: reasoning tokens are inside completion_tokens, cached inside prompt."""
    cached_tokens = 0
    if cached and prompt_tokens >= CACHE_MIN_TOKENS:
        cached_tokens = prompt_tokens // CACHE_STEP * CACHE_STEP
    completion = answer_tokens + spec.reasoning_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": spec.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


UNLIMITED_RPM, UNLIMITED_TPM = 1_000_000, 10_000_000_000
"""What a replica without configured limits states (`replica_limits.py` enforces real ones)."""


def headers(processing_ms: int, limits: str | None = None) -> str:
    """Response headers every answer carries (as raw HTTP lines); `limits`: the
    x-ratelimit-* lines of a rate-limited replica."""
    if limits is None:
        limits = (
            f"x-ratelimit-limit-requests: {UNLIMITED_RPM}\r\n"
            f"x-ratelimit-limit-tokens: {UNLIMITED_TPM}\r\n"
            f"x-ratelimit-remaining-requests: {UNLIMITED_RPM - 1}\r\n"
            f"x-ratelimit-remaining-tokens: {UNLIMITED_TPM - 1}\r\n"
            "x-ratelimit-reset-requests: 0s\r\n"
            "x-ratelimit-reset-tokens: 0s\r\n"
        )
    return (
        limits + f"x-request-id: req_{uuid.uuid4().hex}\r\n"
        f"openai-processing-ms: {processing_ms}\r\n"
        "openai-version: 2020-10-01\r\n"
    )


def models_list(models: dict[str, ModelSpec]) -> bytes:
    return json.dumps(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "system"}
                for m in models
            ],
        }
    ).encode()


def token_logprobs(text: str) -> list[dict[str, Any]]:
    """`choices[].logprobs.content` for an answer: word-ish tokens, each with a log-probability
    fixed by its text and position (so tests know the numbers), no alternatives."""
    out = []
    for i, token in enumerate(re.findall(r"\s*\w+|\s*[^\w\s]", text)):
        digest = hashlib.sha256(f"{i}:{token}".encode()).digest()
        logprob = -digest[0] / 512  # in (-0.5, 0]: probabilities between 0.61 and 1
        out.append({"token": token, "logprob": logprob, "bytes": list(token.encode()),
                    "top_logprobs": []})  # fmt: skip
    return out


def schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a request asks its answer to fit (`json_schema`, or llama-cpp-python's
    `json_object` + schema), or None."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema")
    if fmt.get("type") == "json_object":
        return fmt.get("schema")
    return None


def instance(schema: dict[str, Any], text: str) -> Any:
    """A value that fits `schema`, chosen by `text` (structured outputs never break theirs):
    enum members picked by a hash of the prompt, strings from the plain answer."""
    if "enum" in schema:
        digest = hashlib.sha256(text.encode()).digest()
        return schema["enum"][digest[0] % len(schema["enum"])]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: instance(sub, f"{text}/{name}") for name, sub in props.items()}
    if kind == "array":
        return [instance(schema.get("items", {}), text)]
    if kind in ("integer", "number"):
        return hashlib.sha256(text.encode()).digest()[0] % 10
    if kind == "boolean":
        return True
    return text
