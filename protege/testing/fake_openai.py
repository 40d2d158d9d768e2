"""A fake OpenAI-compatible chat server for tests and benchmarks.

A plain asyncio HTTP/1.1 server (keep-alive, no framework) so one core answers thousands of
requests per second; it runs on its own event loop in a thread (`FakeOpenAI().start()`) or in
its own process (`python -m protege.testing.fake_openai --latency 0.1`, which prints
`PORT <n>`). It answers after `latency` seconds and can inject faults, taken in order from a
global queue or from a queue per prompt substring:

    429[:S]    HTTP 429 with Retry-After: S (default 1)
    500        HTTP 500
    400        HTTP 400 (a request error: not worth retrying)
    timeout    never answers (the client's timeout fires)
    drop       closes the connection without a response
    malformed  HTTP 200 whose body is not JSON
    truncated  a half answer with finish_reason "length"
    ok         a normal answer (a placeholder in a queue)

Every request is logged (`.log`, or GET /_log): body, fault, time. Answers are deterministic
per prompt, so two runs over the same prompts write the same file.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

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
    ):
        self.latency = latency
        self.reply = reply
        self.faults: deque[str] = deque(faults or [])
        self.prompt_faults = {k: deque(v) for k, v in (prompt_faults or {}).items()}
        self.model = model
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
                body = await reader.readexactly(int(headers.get("content-length", 0) or 0))
                if not await self._route(method, path, body, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def _send(
        self, writer: asyncio.StreamWriter, status: int, payload: bytes, extra: str = ""
    ) -> None:
        reason = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            429: "Too Many Requests",
            500: "Server Error",
        }
        writer.write(
            f"HTTP/1.1 {status} {reason.get(status, 'X')}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\n{extra}\r\n".encode()
            + payload
        )

    async def _route(
        self, method: str, path: str, raw: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False closes the connection."""
        if method == "GET" and path.endswith("/models"):
            payload = {"object": "list", "data": [{"id": self.model, "object": "model"}]}
            self._send(writer, 200, json.dumps(payload).encode())
            return True
        if method == "GET" and path == "/_log":
            self._send(writer, 200, json.dumps(self.log).encode())
            return True
        if not (method == "POST" and path.endswith("/chat/completions")):
            self._send(writer, 404, b'{"error": {"message": "not found"}}')
            return True
        body = json.loads(raw)
        messages = body["messages"]
        fault = self._next_fault(messages)
        self.log.append({"body": body, "fault": fault, "time": time.time()})
        if self.latency:
            await asyncio.sleep(self.latency)
        if fault == "drop":
            return False
        if fault == "timeout":
            await asyncio.sleep(3600)
            return False
        if fault and fault.startswith("429"):
            wait = fault.partition(":")[2] or "1"
            self._send(
                writer, 429, b'{"error": {"message": "rate limited"}}', f"retry-after: {wait}\r\n"
            )
            await writer.drain()
            return True
        if fault in ("400", "500"):
            message = (
                b'{"error": {"message": "bad request"}}'
                if fault == "400"
                else b'{"error": {"message": "internal error"}}'
            )
            self._send(writer, int(fault), message)
            await writer.drain()
            return True
        if fault == "malformed":
            self._send(writer, 200, b'{"id": "x", "choices": [{"message": ')
            await writer.drain()
            return True
        text = self.reply(messages)
        finish = "stop"
        if fault == "truncated":
            text, finish = text[: len(text) // 2], "length"
        prompt_tokens = sum(len(m.get("content", "")) for m in messages) // 4 + 3
        payload = {
            "id": f"chatcmpl-{len(self.log)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(text) // 4 + 1,
                "total_tokens": prompt_tokens + len(text) // 4 + 1,
            },
        }
        self._send(writer, 200, json.dumps(payload).encode())
        await writer.drain()
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    server = FakeOpenAI(latency=args.latency)

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
