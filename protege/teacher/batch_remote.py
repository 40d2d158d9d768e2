"""One endpoint's Files and Batches calls, as batch mode makes them (`batch.py`).

Every call goes through `BatchAPI.call`: retried on 429, 5xx, timeouts and dropped connections
with backoff; a fatal answer (key, access) stops the job; any other error is one line. Every
message is redacted first: a proxy that echoes the `Authorization` header never gets the key
printed. A batch the endpoint no longer knows (404 on retrieve) is `BatchGone`, so its rows can
be released and sent again.
"""

from __future__ import annotations

import asyncio
from typing import Any

from protege.errors import ProtegeError
from protege.redact import redact
from protege.teacher.failures import FATAL, RETRY, ApiError, TeacherFatal, classify

MAX_POLL_S = 600.0


class BatchGone(ProtegeError):
    """The endpoint has no such batch (404): it was deleted, or lives on another endpoint."""


class BatchAPI:
    """Files and Batches calls to `client`'s endpoint (its SDK, headers and key)."""

    def __init__(self, cfg: Any, client: Any):
        self.cfg, self.client = cfg, client
        self.url = client.base_url

    def _line(self, what: str, error: Any) -> str:
        return redact(f"teacher: {self.url} batch API ({what}): {error}", self.client.secrets)

    async def call(self, what: str, fn, *args: Any, headers: bool = True, **kw: Any) -> Any:
        """`fn(*args, **kw)`, retried as the module docstring says; `what` names it in errors.
        `headers`: send the client's (a next page carries its first page's already)."""
        o = self.client.openai
        if headers:
            kw["extra_headers"] = self.client.headers
        for attempt in range(self.cfg.max_retries + 1):
            try:
                return await fn(*args, **kw)
            except o.APIStatusError as e:
                error = ApiError.from_sdk(e)
                kind = classify(error)
                if error.status == 404 and what == "retrieve":
                    raise BatchGone(self._line(what, error)) from None
                if kind == FATAL:
                    raise TeacherFatal(self._line(what, error)) from None
                if kind != RETRY or attempt == self.cfg.max_retries:
                    raise ProtegeError(self._line(what, error)) from None
            except (o.APITimeoutError, o.APIConnectionError) as e:
                if attempt == self.cfg.max_retries:
                    raise ProtegeError(self._line(what, f"unreachable: {e}")) from None
            await asyncio.sleep(min(MAX_POLL_S, self.cfg.backoff_s * 2**attempt))
        raise AssertionError("unreachable")

    async def upload(self, name: str, data: bytes) -> str:
        sdk = self.client.sdk
        f = await self.call("upload", sdk.files.create, file=(name, data, "application/jsonl"),
                            purpose="batch")  # fmt: skip
        return f.id

    async def create(self, input_file_id: str, bid: str) -> Any:
        return await self.call(
            "create", self.client.sdk.batches.create, input_file_id=input_file_id,
            endpoint="/v1/chat/completions", completion_window="24h",
            metadata={"protege_batch": bid},
        )  # fmt: skip

    async def retrieve(self, remote_id: str) -> Any:
        return await self.call("retrieve", self.client.sdk.batches.retrieve, remote_id)

    async def content(self, file_id: str) -> bytes:
        return (await self.call("download", self.client.sdk.files.content, file_id)).content

    async def find(self, bid: str, since: float) -> Any:
        """The endpoint's batch created for `bid` (killed before its id was recorded), or None:
        its list, newest first, read page by page until batches older than `since`."""
        page = await self.call("list", self.client.sdk.batches.list, limit=100)
        while True:
            for remote in page.data:
                if (remote.metadata or {}).get("protege_batch") == bid:
                    return remote
                if remote.created_at < since - 3600:
                    return None
            if not page.has_next_page():
                return None
            page = await self.call("list", page.get_next_page, headers=False)
