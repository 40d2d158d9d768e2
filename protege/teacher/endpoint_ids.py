"""Which endpoint gave an answer: part of its key, so that answers never cross endpoints.

The same request to a local stub, to vLLM and to api.openai.com gives three different answers;
a store keyed by the request alone handed the stub's text to a later job against OpenAI as
"cached". So a stored answer is keyed by its request *and* its endpoint (`endpoint_id`):

- any endpoint: its base URL, normalised (`http://localhost:8000/v1`);
- api.openai.com: the base URL and the account, `https://api.openai.com/v1#<sha256(key)[:12]>`
  (accounts on one URL differ; the key itself is never stored). Azure OpenAI's resource URL is
  already its account (its two keys rotate within it), so it is the URL alone;
- the local teacher: `local` (the bundled SmolLM2 GGUF) or `local:<gguf path>`;
- `protege teacher import`: `import`.

These are the ids and keys alone; which endpoints' answers a job reads is `endpoints.py`.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit, urlunsplit

ANY = "any"
"""In `reuse_answers_from`: the answers of any endpoint, including unattributed old ones."""

IMPORTED = "import"
"""The endpoint id of answers recorded with `protege teacher import`."""

_ACCOUNT_HOSTS = ("api.openai.com",)
"""Hosts where the account (the key) is part of the endpoint id."""


def normalise_url(base_url: str) -> str:
    """A base URL as one string per endpoint: scheme and host lower-case, no trailing slash."""
    parts = urlsplit(base_url.strip())
    if not parts.scheme:
        return base_url.strip().rstrip("/")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"),
                       parts.query, ""))  # fmt: skip


def key_digest(api_key: str | None) -> str:
    """Who the key belongs to, without the key: the first 12 hex digits of its sha256."""
    return hashlib.sha256((api_key or "").encode()).hexdigest()[:12]


def endpoint_id(base_url: str, api_key: str | None = None) -> str:
    """The identity of an endpoint that answers requests, as stored with its answers.

    `base_url` is the OpenAI-compatible base URL (`.../v1`). For api.openai.com the account
    counts as well: `https://api.openai.com/v1#<sha256(api_key)[:12]>`; for every other
    endpoint (Azure OpenAI, whose resource URL is its account, vLLM, Ollama, a proxy) the
    normalised URL alone. Pass the result as `request_key(..., endpoint=...)` and as the
    `"endpoint"` of the request dict given to `TeacherStore.put_many`.
    """
    url = normalise_url(base_url)
    if urlsplit(url).hostname in _ACCOUNT_HOSTS:
        return f"{url}#{key_digest(api_key)}"
    return url


def endpoint_key(prompt_key: str, endpoint: str) -> str:
    """The store key of `endpoint`'s answer to the request whose endpoint-free key is
    `prompt_key` (`request_key` without an endpoint)."""
    return hashlib.sha256(f"{endpoint}\n{prompt_key}".encode()).hexdigest()


def fallbacks(endpoint: str) -> list[str]:
    """Ids whose answers are this endpoint's own: for an account on api.openai.com, the URL
    without an account (answers stored before the account was recorded)."""
    return [endpoint.split("#", 1)[0]] if "#" in endpoint else []


def describe(endpoint: str) -> str:
    """An endpoint id as said to a user ("" is an answer stored before endpoints were)."""
    return endpoint or "an unrecorded endpoint (stored before protege kept endpoints)"
