"""The endpoint a job talks to: where it is, with which key, and one chat completion sent to it.

`endpoint` says where a live teacher is (the local kind's llama.cpp server runs for the block);
`ChatClient.once` sends one try and sorts what comes back: an answer, a try that may succeed
later (`RetryableError`: 429, 5xx, timeouts, dropped connections, unreadable answers) or an
answer that retrying as is cannot fix (`RequestError`, `failures.classify`). Retrying, pacing,
budgets and storing are `client.call_all`'s.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from protege.errors import ConfigError
from protege.redact import redact
from protege.teacher.config import TeacherConfig
from protege.teacher.failures import RETRY, ApiError, classify
from protege.teacher.keys import get_key
from protege.teacher.ratelimit import retry_after


@contextmanager
def endpoint(cfg: TeacherConfig) -> Iterator[tuple[str | None, str | None]]:
    """(base_url, api_key) for a live teacher; the local kind runs llama.cpp for the block.

    The key is read from the endpoint's own variable (`TeacherConfig.key_env`): OpenAI's key
    goes to api.openai.com only, unless `api_key_env` names it for another endpoint.
    """
    if cfg.kind == "local" and not cfg.base_url:
        from protege.teacher.local import local_server

        with local_server(cfg.gguf, model_alias=cfg.model_name) as url:
            yield url, "local"
        return
    env = cfg.key_env
    key = get_key(env) if env else None
    if env and not key and (cfg.api_key_env or cfg.is_openai):
        raise ConfigError(
            f"teacher: no API key for {cfg.endpoint_url}; set ${env} or run "
            f"`protege teacher key set {env}`"
        )
    yield cfg.base_url or cfg.endpoint_url, key


class RetryableError(Exception):
    """A try that may succeed later; `wait_s` is the server's Retry-After when it gave one."""

    def __init__(self, message: str, wait_s: float | None = None, headers: Any = None,
                 status: int = 0):  # fmt: skip
        super().__init__(message)
        self.wait_s, self.headers, self.status = wait_s, headers, status


class Unreachable(RetryableError):
    """No connection at all (refused, name not resolved, TLS failed): fatal until the endpoint
    has answered once in the job, a passing failure after that."""


class RequestError(Exception):
    """An error answer that retrying as is cannot fix: a parameter to fix, a failed request, or
    a fatal one (`failures.classify`)."""

    def __init__(self, error: ApiError, kind: str, headers: Any = None):
        super().__init__(str(error))
        self.error, self.kind, self.headers = error, kind, headers


class ChatClient:
    """The endpoint, spoken to through the official `openai` SDK, except for the hot path.

    Every call but one goes through the SDK (`models()`, and the Batch API's files and batches
    in `batch.py`). `once()`, the chat completion sent hundreds of times a second, posts the
    SDK's request (its headers, URL and body) through one pooled `aiohttp` session
    instead: measured against the replica, the SDK's per-request layers (httpx2 request and
    response objects, URL and header handling) cost 1.57 ms of CPU per request against 0.48 ms
    for the same exchange through aiohttp, and one core then caps a job near 600 requests/s.
    Error answers are read the way the SDK reads them (`ApiError.from_response`).
    """

    def __init__(self, cfg: TeacherConfig, base_url: str | None, api_key: str | None):
        import openai

        self.cfg = cfg
        self.secrets = [api_key]  # redacted from every error kept or shown
        self.openai = openai
        self.base_url, self.api_key = base_url or cfg.endpoint_url, api_key
        self.endpoint = cfg.endpoint_id(api_key)  # what its answers are stored under
        self.headers = {} if api_key else {"Authorization": openai.Omit()}
        self.url = self.base_url.rstrip("/") + "/chat/completions"
        # The headers the SDK sends (its platform telemetry aside); no key: no Authorization.
        wire = {"Accept": "application/json", "Content-Type": "application/json",
                "User-Agent": f"AsyncOpenAI/Python {openai.__version__}"}  # fmt: skip
        for header, env in (("OpenAI-Organization", "OPENAI_ORG_ID"),
                            ("OpenAI-Project", "OPENAI_PROJECT_ID")):  # fmt: skip
            if os.environ.get(env):
                wire[header] = os.environ[env]
        if api_key:
            wire["Authorization"] = f"Bearer {api_key}"
        self.wire_headers = wire
        self.session = None  # aiohttp.ClientSession, made inside the running event loop
        self.proxy = self.proxy_auth = None

    @functools.cached_property
    def sdk(self):
        """The SDK client, built on first use (about 0.1 s: an SSL context and its pool)."""
        return self.openai.AsyncOpenAI(
            base_url=self.base_url,
            # No key: no Authorization header at all (the SDK would otherwise read
            # $OPENAI_API_KEY itself and send it to whatever server this is).
            api_key=self.api_key or "",
            _enforce_credentials=False,
            max_retries=0,  # protege retries itself, so it can record and budget every try
            timeout=self.cfg.timeout_s,
        )

    def _session(self):
        import aiohttp

        if self.session is None:
            from aiohttp.helpers import get_env_proxy_for_url
            from yarl import URL

            # $HTTP(S)_PROXY / $NO_PROXY, as the SDK honours them, looked up once here: the
            # session's own `trust_env` looks them (and ~/.netrc) up in a thread per request.
            try:
                self.proxy, self.proxy_auth = get_env_proxy_for_url(URL(self.url))
            except LookupError:
                self.proxy, self.proxy_auth = None, None
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.cfg.concurrency),
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
            )
        return self.session

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        if "sdk" in self.__dict__:
            await self.sdk.close()

    async def models(self) -> list[str] | None:
        """The model ids the endpoint serves (`GET /models`), or None if it will not say."""
        try:
            page = await self.sdk.models.list(extra_headers=self.headers)
            return sorted(m.id for m in page.data)
        except self.openai.OpenAIError:
            return None

    async def once(
        self, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> tuple[dict[str, Any], Any]:
        """One try. Returns the parsed JSON body and the response headers; raises
        RetryableError or RequestError (each carrying the headers, where there was an answer)."""
        import aiohttp

        body = {"model": self.cfg.model_name, "messages": messages, **params}
        try:
            async with self._session().post(
                self.url,
                data=json.dumps(body),
                headers=self.wire_headers,
                allow_redirects=False,
                proxy=self.proxy,
                proxy_auth=self.proxy_auth,
            ) as response:
                status, headers, content = response.status, response.headers, await response.read()
        except TimeoutError as e:
            raise RetryableError(f"timeout after {self.cfg.timeout_s:g}s") from e
        except aiohttp.ClientConnectorError as e:
            raise Unreachable(redact(f"{type(e).__name__}: {e}", self.secrets)) from e
        except aiohttp.ClientError as e:
            cause = redact(f"{type(e).__name__}: {e}", self.secrets)
            raise RetryableError(f"connection error: {cause}") from e
        if status >= 300:
            error = ApiError.from_response(status, content)
            error.message = redact(error.message, self.secrets)
            kind = classify(error)
            if kind == RETRY:
                raise RetryableError(str(error), retry_after(headers), headers, status)
            raise RequestError(error, kind, headers)
        try:
            answer = json.loads(content)
            choice = answer["choices"][0]
            _ = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            what = redact(f"{type(e).__name__}: {e}", self.secrets)
            raise RetryableError(f"unreadable answer: {what}", headers=headers) from e
        return answer, headers


def limits_account(client: ChatClient) -> str:
    """Whose limits: the endpoint and a digest of the key (accounts on one endpoint differ;
    the key itself is never stored)."""
    digest = hashlib.sha256((client.api_key or "").encode()).hexdigest()[:12]
    return f"{client.base_url.rstrip('/')}#{digest}"


def token_logprobs(choice: dict[str, Any]) -> str | None:
    """The answer's tokens and their log-probabilities as compact JSON, where returned."""
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        return None
    pairs = [[t.get("token", ""), t.get("logprob")] for t in content]
    return json.dumps(pairs, ensure_ascii=False, separators=(",", ":"))
