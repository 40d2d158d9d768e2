"""A lean HTTP/1.1 keep-alive transport for the openai SDK's httpx client, for plain-HTTP
endpoints (llama.cpp, vLLM, Ollama on a local or in-cluster address).

Why: at hundreds of requests per second the general-purpose connection pool (httpcore: h11
state machines, anyio streams, a pool scan per request) costs more CPU than everything else
in a call, and protege then cannot keep 64 requests in flight on a small machine. This
transport keeps a stack of idle asyncio connections and writes each request in one send.
HTTPS endpoints keep the SDK's default transport (TLS, proxies, HTTP/2 negotiation).
Errors are raised as the httpx exceptions the SDK maps to its own (timeout, connection).
"""

from __future__ import annotations

import asyncio
from typing import Any


def lean_transport(hx: Any, max_connections: int) -> Any:
    """A transport class instance built on the SDK's httpx flavour `hx` (httpx or httpx2)."""

    class LeanTransport(hx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.idle: dict[tuple[str, int], list[tuple[Any, Any]]] = {}
            self.slots: asyncio.Semaphore | None = None

        async def handle_async_request(self, request: Any) -> Any:
            if self.slots is None:
                self.slots = asyncio.Semaphore(max_connections)
            timeout = request.extensions.get("timeout") or {}
            connect_s, read_s = timeout.get("connect"), timeout.get("read")
            url = request.url
            address = (url.host, url.port or 80)
            body = await request.aread()
            target = url.raw_path.decode("ascii") if hasattr(url, "raw_path") else url.path
            head = [f"{request.method} {target} HTTP/1.1\r\n".encode()]
            has_length = False
            for name, value in request.headers.raw:
                has_length |= name.lower() == b"content-length"
                head.append(name + b": " + value + b"\r\n")
            if body and not has_length:
                head.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
            payload = b"".join(head) + b"\r\n" + body
            async with self.slots:
                pool = self.idle.setdefault(address, [])
                conn = None
                while pool and conn is None:
                    reader, writer = pool.pop()
                    if reader.at_eof() or writer.is_closing():  # the server closed it while idle
                        writer.close()
                    else:
                        conn = reader, writer
                if conn is None:
                    try:
                        async with asyncio.timeout(connect_s):
                            conn = await asyncio.open_connection(*address)
                    except TimeoutError as e:
                        raise hx.ConnectTimeout(
                            f"connect timeout: {address}", request=request
                        ) from e
                    except OSError as e:
                        raise hx.ConnectError(str(e), request=request) from e
                # A request once sent is never resent here: the server may have acted on it.
                # protege's own retry loop decides, and counts it.
                return await self._exchange(request, conn, payload, read_s, address)

        async def _exchange(self, request, conn, payload, read_s, address) -> Any:
            reader, writer = conn
            try:
                writer.write(payload)
                async with asyncio.timeout(read_s):  # one timer per exchange, no extra task
                    head = await reader.readuntil(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    status = int(lines[0].split(" ", 2)[1])
                    headers = []
                    length, chunked, close = None, False, False
                    for line in lines[1:]:
                        if not line:
                            continue
                        name, _, value = line.partition(":")
                        name, value = name.strip(), value.strip()
                        headers.append((name, value))
                        low = name.lower()
                        if low == "content-length":
                            length = int(value)
                        elif low == "transfer-encoding" and "chunked" in value.lower():
                            chunked = True
                        elif low == "connection" and value.lower() == "close":
                            close = True
                    if chunked:
                        content = await _read_chunked(reader)
                    elif length is not None:
                        content = await reader.readexactly(length)
                    else:
                        content, close = await reader.read(), True
            except TimeoutError as e:
                writer.close()
                raise hx.ReadTimeout("read timeout", request=request) from e
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
                writer.close()
                raise hx.RemoteProtocolError(
                    f"bad or dropped response: {e}", request=request
                ) from e
            if close:
                writer.close()
            else:
                self.idle.setdefault(address, []).append(conn)
            return hx.Response(status, headers=headers, content=content, request=request)

        async def aclose(self) -> None:
            for pool in self.idle.values():
                for _, writer in pool:
                    writer.close()
            self.idle.clear()

    return LeanTransport()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers expected; the final CRLF
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
