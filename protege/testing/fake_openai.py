"""A replica of OpenAI's chat completions API on 127.0.0.1, for tests and benchmarks.

A plain asyncio HTTP/1.1 server (keep-alive, no framework) so one core answers thousands of
requests per second; it runs on its own event loop in a thread (`FakeOpenAI().start()`) or in
its own process (`python -m protege.testing.fake_openai --latency 0.1`, which prints
`PORT <n>`). It answers as the API does today (`openai_api.py`): per-model parameter rules
(reasoning models reject `max_tokens` and a non-default temperature), usage with reasoning
and cached tokens, `x-ratelimit-*` / `x-request-id` / `openai-processing-ms` headers, the real
error bodies, `GET /v1/models`, a 404 `model_not_found` for a model it does not serve, and a
401 `invalid_api_key` when `api_key` is set and the request's Bearer key differs. With `rpm` /
`tpm` it enforces those limits and states them (`replica_limits.py`); `/v1/files` and
`/v1/batches` run Batch API jobs over `batch_delay` seconds (`batch_api.py`); a request with a
JSON schema (`response_format`) gets an answer that fits it, and `logprobs: true` gets
token log-probabilities.

It answers after `latency` seconds and can inject faults, taken in order from a global queue
or from a queue per prompt substring:

    429[:S]    HTTP 429 rate_limit_exceeded with Retry-After: S (default 1)
    quota      HTTP 429 insufficient_quota (no credit: not worth retrying)
    500, 503   server errors
    400        HTTP 400 a request error (not worth retrying)
    401, 403   a bad key, a forbidden region
    404        model_not_found
    echo-key   HTTP 400 whose message repeats the request's Authorization header (as some
               proxies do): a key must never be stored or printed from an error
    timeout    never answers (the client's timeout fires)
    drop       closes the connection without a response
    malformed  HTTP 200 whose body is not JSON
    truncated  a half answer with finish_reason "length"
    ok         a normal answer (a placeholder in a queue)

Every request is logged (`.log`, or GET /_log): body, fault (or the error code it got),
Authorization header, time. Answers are deterministic per prompt, so two runs over the same
prompts write the same file.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from protege.testing import openai_api as api
from protege.testing.batch_api import BatchService
from protege.testing.openai_api import DEFAULT_MODELS, LEGACY, ModelSpec
from protege.testing.replica_limits import Limits

Responder = Callable[[list[dict[str, str]]], str]


def default_reply(messages: list[dict[str, str]]) -> str:
    digest = hashlib.sha256(json.dumps(messages).encode()).hexdigest()[:8]
    return f"Fake teacher answer {digest}: the text supports this in a few words."


class FakeOpenAI:
    def __init__(
        self,
        latency: float = 0.0,
        reply: Responder = default_reply,
        faults: list[str] | None = None,
        prompt_faults: dict[str, list[str]] | None = None,
        model: str = "fake-model",
        models: dict[str, ModelSpec] | None = None,
        api_key: str | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        batch_delay: float = 0.0,
    ):
        self.latency = latency
        self.reply = reply
        self.faults: deque[str] = deque(faults or [])
        self.prompt_faults = {k: deque(v) for k, v in (prompt_faults or {}).items()}
        self.model = model
        self.models = dict(DEFAULT_MODELS if models is None else models)
        self.models.setdefault(model, LEGACY)
        self.api_key = api_key
        self.limits = Limits(rpm, tpm)
        self.batches = BatchService(self._complete_for_batch, batch_delay)
        self._prefixes: set[str] = set()  # prompt prefixes seen: their tokens are cached
        self.log: list[dict[str, Any]] = []
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def serve(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> FakeOpenAI:
        """Serve on a free port from a background thread with its own event loop."""
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.serve())
            ready.set()
            self.loop.run_forever()
            tasks = asyncio.all_tasks(self.loop)  # handlers still holding connections
            for task in tasks:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self.loop and self._server:

            async def close() -> None:
                self._server.close()

            asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what it saw ----------------------------------------------------------------------------
    def answered(self) -> list[list[dict[str, str]]]:
        """The messages of every request that got a full, good answer."""
        return [e["body"]["messages"] for e in self.log if e["fault"] is None]

    def stats(self) -> dict[str, int]:
        """Counts for benchmarks: requests, 429s, good answers, prompts answered more than
        once, and custom_ids submitted in more than one batch."""
        good = Counter(json.dumps(e["body"]["messages"]) for e in self.log if e["fault"] is None)
        submitted = self.batches.submitted
        return {
            "requests": len(self.log),
            "rate_limited": self.limits.limited,
            "answered": sum(good.values()),
            "answered_more_than_once": sum(1 for n in good.values() if n > 1),
            "batches": len(self.batches.batches),
            "batch_ids": len(submitted),
            "batch_ids_submitted_twice": sum(1 for n in submitted.values() if n > 1),
        }

    def _next_fault(self, messages: list[dict[str, str]]) -> str | None:
        text = "\n".join(m.get("content", "") for m in messages)
        for needle, queue in self.prompt_faults.items():
            if needle in text and queue:
                fault = queue.popleft()
                return None if fault == "ok" else fault
        fault = self.faults.popleft() if self.faults else None
        return None if fault == "ok" else fault

    # -- HTTP ---------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    body = await _read_chunked(reader)
                else:
                    body = await reader.readexactly(int(headers.get("content-length", 0) or 0))
                if not await self._route(method, path, body, writer, headers):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def _send(
        self, writer: asyncio.StreamWriter, status: int, payload: bytes, extra: str = "",
        content_type: str = "application/json",
    ) -> None:  # fmt: skip
        reason = {
            200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error",
            409: "Conflict", 503: "Service Unavailable",
        }  # fmt: skip
        head = api.headers(int(self.latency * 1000), self.limits.headers())
        writer.write(
            f"HTTP/1.1 {status} {reason.get(status, 'X')}\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(payload)}\r\n{head}{extra}\r\n".encode()
            + payload
        )

    def _unauthorized(self, headers: dict[str, str]) -> tuple[int, bytes] | None:
        if self.api_key is None:
            return None
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return api.missing_api_key()
        if auth[7:] != self.api_key:
            return api.invalid_api_key(auth[7:])
        return None

    def _refuse(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, bytes] | None:
        """The API's answer to a request it will not run: bad key, unknown model, bad params."""
        if refused := self._unauthorized(headers):
            return refused
        spec = self.models.get(body.get("model", ""))
        if spec is None:
            return api.model_not_found(body.get("model", ""))
        return api.check_params(spec, body)

    async def _route(
        self, method: str, path: str, raw: bytes, writer: asyncio.StreamWriter,
        headers: dict[str, str] | None = None,
    ) -> bool:  # fmt: skip
        """Answer one request; False closes the connection."""
        headers = headers or {}
        if method == "GET" and path == "/_log":
            self._send(writer, 200, json.dumps(self.log).encode())
            return True
        if method == "GET" and path == "/_stats":
            self._send(writer, 200, json.dumps(self.stats()).encode())
            return True
        if method == "GET" and path.endswith("/models"):
            status, payload = self._unauthorized(headers) or (200, api.models_list(self.models))
            self._send(writer, status, payload)
            return True
        if "/files" in path or "/batches" in path:
            if method == "POST" and path.rstrip("/").endswith("/files"):
                await asyncio.sleep(self.batches.upload_delay)
            fault = self.batches.api_fault(_batch_op(method, path), headers.get("authorization"))
            status, payload = (
                self._unauthorized(headers)
                or fault
                or self._batch_route(method, path, raw, headers)
            )
            octet = path.endswith("/content") and status == 200
            self._send(writer, status, payload,
                       content_type="application/octet-stream" if octet else "application/json")  # fmt: skip
            return True
        if not (method == "POST" and path.endswith("/chat/completions")):
            self._send(
                writer, 404, api.error(f"Invalid URL ({method} {path})", "invalid_request_error")
            )
            return True
        body = json.loads(raw)
        messages = body["messages"]
        entry = {"body": body, "fault": None, "auth": headers.get("authorization"),
                 "time": time.time()}  # fmt: skip
        self.log.append(entry)
        refused = self._refuse(body, headers)
        if refused:
            status, payload = refused
            entry["fault"] = json.loads(payload)["error"]["code"] or str(status)
            self._send(writer, status, payload)
            await writer.drain()
            return True
        if over := self.limits.take(body):
            which, wait = over
            bucket = getattr(self.limits, which)
            _, payload = api.rate_limited(body["model"], round(wait, 3), which,
                                          bucket.per_minute, self.limits.cost(body))  # fmt: skip
            entry["fault"] = "rate_limit_exceeded"
            self._send(writer, 429, payload, f"retry-after-ms: {max(1, round(wait * 1000))}\r\n")
            await writer.drain()
            return True
        fault = entry["fault"] = self._next_fault(messages)
        if self.latency:
            await asyncio.sleep(self.latency)
        if fault == "drop":
            return False
        if fault == "timeout":
            await asyncio.sleep(3600)
            return False
        model = body["model"]
        if fault and fault.startswith("429"):
            wait = fault.partition(":")[2] or "1"
            _, payload = api.rate_limited(model, float(wait))
            self._send(writer, 429, payload, f"retry-after: {wait}\r\n")
            await writer.drain()
            return True
        if fault == "echo-key":  # a proxy repeating the request's credentials
            auth = headers.get("authorization")
            status, payload = (
                400,
                api.error(
                    f"upstream refused the request (Authorization: {auth})", "invalid_request_error"
                ),
            )
        else:
            status, payload = self._complete(body, fault)
        self._send(writer, status, payload)
        await writer.drain()
        return True

    def _complete(self, body: dict[str, Any], fault: str | None) -> tuple[int, bytes]:
        """The answer to a chat body that was let through: an injected error, or a completion."""
        model, messages = body["model"], body["messages"]
        errors = {
            "400": api.bad_request, "401": lambda: api.invalid_api_key("sk-wrong-key-0000"),
            "403": api.forbidden, "404": lambda: api.model_not_found(model),
            "quota": api.insufficient_quota, "500": api.server_error, "503": api.overloaded,
        }  # fmt: skip
        if fault in errors:
            return errors[fault]()
        if fault == "malformed":
            return 200, b'{"id": "x", "choices": [{"message": '
        text = self.reply(messages)
        schema = api.schema_of(body)
        if schema is not None and self.reply is default_reply:
            text = json.dumps(api.instance(schema, f"{text}|seed={body.get('seed')}"))
        finish = "stop"
        if fault == "truncated":
            text, finish = text[: len(text) // 2], "length"
        joined = "\n".join(m.get("content", "") for m in messages)
        prompt_tokens = len(joined) // 4 + 3
        prefix = joined[: api.CACHE_MIN_TOKENS * 4]
        cached = prefix in self._prefixes
        self._prefixes.add(prefix)
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "finish_reason": finish,
        }
        if body.get("logprobs"):
            choice["logprobs"] = {"content": api.token_logprobs(text), "refusal": None}
        payload = {
            "id": f"chatcmpl-{len(self.log)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
            "service_tier": "default",
            "choices": [choice],
            "usage": api.usage(self.models[model], prompt_tokens, len(text) // 4 + 1, cached),
        }
        return 200, json.dumps(payload).encode()

    def _complete_for_batch(self, body: dict[str, Any]) -> tuple[int, bytes]:
        """One line of a batch: logged like a chat request, refused or answered the same way."""
        entry = {"body": body, "fault": None, "auth": None, "time": time.time(), "batch": True}
        self.log.append(entry)
        spec = self.models.get(body.get("model", ""))
        refused = api.model_not_found(body.get("model", "")) if spec is None else None
        refused = refused or api.check_params(spec, body)
        if refused:
            entry["fault"] = json.loads(refused[1])["error"]["code"] or str(refused[0])
            return refused
        fault = entry["fault"] = self._next_fault(body["messages"])
        if fault in ("drop", "timeout") or (fault or "").startswith("429"):
            fault = "500"  # no connection to drop inside a batch: a server error line
            entry["fault"] = fault
        return self._complete(body, fault)

    def _batch_route(
        self, method: str, path: str, raw: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        """/v1/files and /v1/batches (`batch_api.py`)."""
        path, _, query = path.partition("?")
        parts = path.rstrip("/").split("/")
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        b = self.batches
        if parts[-1] == "files" and method == "POST":
            return b.upload(headers.get("content-type", ""), raw)
        if parts[-2] == "files" and method == "GET":
            return b.get_file(parts[-1], content=False)
        if parts[-1] == "content" and parts[-3] == "files":
            return b.get_file(parts[-2], content=True)
        if parts[-1] == "batches" and method == "POST":
            return b.create(json.loads(raw))
        if parts[-1] == "batches" and method == "GET":
            return b.list(params)
        if parts[-2] == "batches" and method == "GET":
            return b.get(parts[-1])
        if parts[-1] == "cancel" and method == "POST":
            return b.cancel(parts[-2])
        return 404, api.error(f"Invalid URL ({method} {path})", "invalid_request_error")


def _batch_op(method: str, path: str) -> str:
    """Which Files/Batches call a request is (the names `BatchService.api_faults` use)."""
    parts = path.partition("?")[0].rstrip("/").split("/")
    if parts[-1] == "files":
        return "upload"
    if parts[-1] == "content":
        return "content"
    if parts[-2] == "files":
        return "file"
    if parts[-1] == "batches":
        return "create" if method == "POST" else "list"
    return "cancel" if parts[-1] == "cancel" else "retrieve"


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rpm", type=float, help="enforce a requests-per-minute limit")
    parser.add_argument("--tpm", type=float, help="enforce a tokens-per-minute limit")
    parser.add_argument("--batch-delay", type=float, default=0.0, help="seconds a batch takes")
    args = parser.parse_args()
    server = FakeOpenAI(latency=args.latency, rpm=args.rpm, tpm=args.tpm,
                        batch_delay=args.batch_delay)  # fmt: skip

    async def run() -> None:
        await server.serve(args.port)
        print(f"PORT {server.port}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
