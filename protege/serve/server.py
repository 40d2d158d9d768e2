"""`protege serve`: the student behind FastAPI + uvicorn, with micro-batching.

    POST /v1/predict  {"inputs": [record or string, ...], "rationale": false}
                      -> {"predictions": [{"label", "text", "rationale"?}, ...]}
    POST /v1/chat/completions, GET /v1/models
                      OpenAI's chat completions: the student in the teacher's place, with a
                      cascade to the teacher when one is given (`chat_routes.py`)
    GET  /healthz     liveness and what is loaded
    GET  /metrics     Prometheus text: requests, latency histogram, batch sizes, errors

No client can hurt another. Every input is checked before it is queued (one bad input gets
its request a 422, nothing else); concurrent requests share fair, bounded micro-batches
(`batcher.py`: a small request waits at most one batch behind a large one) and a failing model
call is retried input by input; a 500 says only an error id, the traceback goes to the log.
Inputs waiting are bounded (past `max_queued_inputs`, 503 with `Retry-After`) and a client that
hangs up has its waiting inputs dropped.
Bodies are read with a size limit and a deadline; connections that never finish their headers
are timed out and capped (`connections.py`); web pages cannot use a server on this machine
(`origin.py`). On shutdown uvicorn stops accepting, lets in-flight requests finish, then the
batcher drains.
"""

# No `from __future__ import annotations` here: FastAPI reads route annotations at runtime.
import asyncio
import hmac
import ipaddress
import json
import logging
import os
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.errors import DataError, ProtegeError
from protege.serve.batcher import Batcher, ClientGone, QueueFull, until_disconnected
from protege.serve.metrics import Metrics
from protege.serve.predictor import Predictor, no_rationale

log = logging.getLogger("protege.serve")

API_KEY_ENV = "PROTEGE_API_KEY"


@dataclass
class ServeConfig:
    """How `protege serve` listens, batches and limits requests."""

    host: str = "127.0.0.1"
    """Interface to bind; anything but loopback requires an API key."""
    port: int = 8000
    """TCP port."""
    api_key: str | None = None
    """Required as `Authorization: Bearer KEY` or `X-API-Key: KEY`; default $PROTEGE_API_KEY."""
    max_batch_size: int = 32
    """Most inputs per model call."""
    max_batch_tokens: int = 4096
    """Most estimated tokens (encoder + decoder) per model call: bounds how long one batch
    holds the model, so a small request waits at most one such batch."""
    max_wait_ms: float = 5.0
    """Longest an input waits for others to join its micro-batch."""
    max_body_bytes: int = 1_000_000
    """Larger request bodies get 413."""
    max_inputs: int = 256
    """Most inputs in one request (413 beyond)."""
    max_input_chars: int = 10_000
    """Longest rendered input in characters (422 beyond)."""
    max_queued_inputs: int = 4096
    """Most inputs waiting for the model; a request that would pass it gets 503 with
    `Retry-After` (the seconds the waiting inputs take at the recent pace)."""
    body_timeout_s: float = 10.0
    """A client that has not sent its whole body by then gets 408."""
    fast: bool = True
    """Score the closed label set instead of generating, where the task allows."""
    graceful_timeout_s: float = 30.0
    """On shutdown, how long in-flight requests get to finish."""
    header_timeout_s: float = 10.0
    """A connection that has not sent a whole request head by then is closed."""
    max_connections: int = 4096
    """Open connections (at most what the open-files limit allows); past it, the oldest that
    never sent a request is dropped (or the newcomer gets 503)."""
    keep_alive_s: int = 5
    """An idle keep-alive connection is closed after this long."""
    reject_delay_s: float = 0.25
    """A refused request (any 4xx) is answered after this delay, which costs the server
    nothing (an async wait): a client that keeps sending bad requests can then send only a few
    a second, and cannot take the CPU that good clients' requests need."""
    allowed_hosts: list[str] = field(default_factory=list)
    """Host header names accepted besides localhost, 127.0.0.1, [::1] and the bound host."""
    cors_origins: list[str] = field(default_factory=list)
    """Browser origins allowed to call the server (none: cross-origin requests get 403)."""
    served_name: str = ""
    """The model name `/v1/models` lists and chat completions answer with (default: the model
    directory's name)."""
    prompt_template: str | None = None
    """The teacher prompt the chat route reads the student's input from: a recipe name, a
    `.j2` file or `raw` (None: what the model directory recorded, else the task's own)."""

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.port <= 65535, "port: must be 1..65535"),
            (self.max_batch_size >= 1, "max_batch_size: must be at least 1"),
            (self.max_batch_tokens >= 1, "max_batch_tokens: must be at least 1"),
            (0 <= self.max_wait_ms < 60_000, "max_wait_ms: must be 0..60000"),
            (self.max_body_bytes >= 1, "max_body_bytes: must be at least 1"),
            (self.max_inputs >= 1, "max_inputs: must be at least 1"),
            (self.max_input_chars >= 1, "max_input_chars: must be at least 1"),
            (
                self.max_queued_inputs >= self.max_inputs,
                "max_queued_inputs: must be at least max_inputs",
            ),
            (self.body_timeout_s > 0, "body_timeout_s: must be positive"),
            (self.header_timeout_s > 0, "header_timeout_s: must be positive"),
            (self.max_connections >= 1, "max_connections: must be at least 1"),
            (0 <= self.reject_delay_s <= 60, "reject_delay_s: must be 0..60"),
        ]
        for ok, message in checks:
            if not ok:
                raise ProtegeError(f"serve: {message}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_key_policy(host: str, api_key: str | None) -> None:
    """Refuse to expose an unauthenticated model beyond this machine."""
    if not api_key and not is_loopback(host):
        raise ProtegeError(
            f"binding to {host} needs an API key: pass --api-key or set ${API_KEY_ENV}"
        )


def key_given(request, api_key: str | None) -> bool:
    """No key required, or the request carries it (`Authorization: Bearer` or `X-API-Key`)."""
    if not api_key:
        return True
    given = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return hmac.compare_digest(given.encode(), api_key.encode())


class RequestError(Exception):
    """A client error: HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str, kind: str, headers: dict | None = None):
        super().__init__(reason)
        self.status, self.reason, self.kind, self.headers = status, reason, kind, headers


def create_app(predictor: Predictor, cfg: ServeConfig, cascade=None):
    """The ASGI app; `cfg.api_key` (or $PROTEGE_API_KEY) turns authentication on; `cascade`
    (`cascade.Cascade`) puts the teacher behind the chat route."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    from protege.serve.chat_routes import ChatContext, add_chat_routes
    from protege.serve.origin import OriginGuard
    from protege.serve.prompts import MessageReader, resolve_spec

    metrics = Metrics()
    api_key = cfg.api_key or os.environ.get(API_KEY_ENV) or None
    state: dict[str, Batcher] = {}
    model_dir = getattr(predictor, "model_dir", None) or "student"
    reader = MessageReader(resolve_spec(model_dir, predictor.task, cfg.prompt_template),
                           predictor.task)  # fmt: skip
    predictor.text_confidence = True  # summaries carry a confidence (chat header, cascade)

    @asynccontextmanager
    async def lifespan(app):
        state["batcher"] = Batcher(
            predictor, metrics, cfg.max_batch_size, cfg.max_wait_ms, cfg.max_batch_tokens,
            cfg.fast, cfg.max_queued_inputs,
        )  # fmt: skip
        await state["batcher"].start()
        if cascade is not None:
            await cascade.relay.start()
        yield
        await state["batcher"].stop()
        if cascade is not None:
            await cascade.close()

    app = FastAPI(title="protege", lifespan=lifespan)
    app.state.metrics = metrics

    def authorise(request: Request) -> None:
        if not key_given(request, api_key):
            raise RequestError(401, "missing or invalid API key", "unauthorized")

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError):
        metrics.error(e.kind)
        return JSONResponse({"error": e.reason}, status_code=e.status, headers=e.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):
        return internal_error("internal", metrics)  # a bug: only its id goes to the client

    @app.get("/healthz")
    async def healthz():
        task = predictor.task
        return {"status": "ok", "task": task.type, "format": task.format, "labels": task.labels}

    @app.get("/metrics")
    async def prometheus(request: Request):
        authorise(request)
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/predict")
    async def predict(request: Request):
        authorise(request)
        payload = parse_body(await read_body(request, cfg), cfg)
        if payload["rationale"] and no_rationale(predictor.task):
            raise RequestError(422, f"field 'rationale': {no_rationale(predictor.task)}", "invalid")
        sources = [
            input_source(predictor, item, i, cfg) for i, item in enumerate(payload["inputs"])
        ]
        gone = until_disconnected(request.receive)
        try:
            preds = await state["batcher"].submit(sources, payload["rationale"], gone)
        except QueueFull as e:
            after = {"Retry-After": str(e.retry_after_s)}
            raise RequestError(503, f"server busy: {e}", "busy", after) from e
        except ClientGone as e:  # nobody to answer: counted, its inputs dropped
            raise RequestError(499, "client disconnected while waiting", "abandoned") from e
        except Exception:
            return internal_error("model", metrics)
        return {"predictions": preds}

    async def submit(sources: list[str], rationale: bool, request: Request) -> list[dict]:
        """The chat route's predictions: the same batcher, bounds and disconnect watch as
        /v1/predict, its refusals in OpenAI's error shape."""
        from protege.serve.chat import ChatError

        try:
            return await state["batcher"].submit(
                sources, rationale, until_disconnected(request.receive)
            )
        except QueueFull as e:
            raise ChatError(503, f"server busy: {e}", code="busy", type_="server_error",
                            headers={"Retry-After": str(e.retry_after_s)}) from e  # fmt: skip
        except ClientGone as e:  # nobody to answer: counted, its inputs dropped
            raise ChatError(499, "client disconnected while waiting", code="abandoned") from e
        except Exception as e:
            error_id = uuid.uuid4().hex[:12]
            log.exception(f"model error {error_id}")
            metrics.error("model")
            raise ChatError(500, f"internal error (id {error_id})", type_="server_error") from e

    add_chat_routes(app, ChatContext(
        predictor=predictor, reader=reader, metrics=metrics, submit=submit,
        served_name=cfg.served_name or Path(str(model_dir)).name, authorise=authorise,
        read_body=lambda request: read_body(request, cfg),
        source_of=lambda item: input_source(predictor, item, 0, cfg),
        client_error=RequestError, cascade=cascade,
    ))  # fmt: skip

    guarded: Any = app
    if cfg.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        guarded = CORSMiddleware(
            app, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["content-type", "authorization", "x-api-key"],
        )  # fmt: skip
    guarded = OriginGuard(
        guarded, cfg.host, cfg.allowed_hosts, cfg.cors_origins,
        check_host=not api_key or bool(cfg.allowed_hosts),
    )  # fmt: skip
    counted = Counted(guarded, metrics, cfg.reject_delay_s)
    counted.state = app.state
    return counted


class Counted:
    """ASGI middleware counting every response by path and status, and /v1/predict latency;
    a refused request's answer (4xx) waits `reject_delay_s` first (`ServeConfig`).
    (Plain ASGI: Starlette's `@app.middleware` costs a task per request.) An exception that
    left the app was already answered with a 500 and logged with its id: it stops here."""

    PATHS = ("/v1/predict", "/v1/chat/completions", "/v1/models", "/healthz", "/metrics")
    TIMED = ("/v1/predict", "/v1/chat/completions")

    def __init__(self, app, metrics: Metrics, reject_delay_s: float = 0.0):
        self.app, self.metrics, self.reject_delay_s = app, metrics, reject_delay_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), None

        async def send_counted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if 400 <= status < 500 and self.reject_delay_s:
                    await asyncio.sleep(self.reject_delay_s)
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        except Exception:
            if status is None:  # not answered by the app's handler: log it here
                log.exception("internal error before any response")
        finally:
            path = scope["path"]
            seconds = time.perf_counter() - t0 if path in self.TIMED else None
            known = path if path in self.PATHS else "other"
            self.metrics.request(known, status or 500, seconds)


def internal_error(kind: str, metrics: Metrics):
    """A 500 that names an error id; the traceback is logged under that id."""
    from fastapi.responses import JSONResponse

    error_id = uuid.uuid4().hex[:12]
    log.exception(f"{kind} error {error_id}")  # its own text: never folded with others
    metrics.error(kind)
    return JSONResponse({"error": f"internal error (id {error_id})"}, status_code=500)


def input_source(predictor: Predictor, item: Any, i: int, cfg: ServeConfig) -> str:
    """The encoder input for `inputs[i]`, or a 422 naming what is wrong with it."""
    where = f"inputs[{i}]"
    if not isinstance(item, dict | str):
        raise RequestError(422, f"{where}: expected a record or a string", "invalid")
    try:
        source = predictor.source(item, source=where)
    except DataError as e:
        raise RequestError(422, str(e), "invalid") from e
    except (TypeError, ValueError, KeyError, RecursionError) as e:
        raise RequestError(422, f"{where}: cannot render this record", "invalid") from e
    if len(source) > cfg.max_input_chars:
        raise RequestError(
            422,
            f"{where}: {len(source)} characters, over the limit of {cfg.max_input_chars}",
            "input_too_long",
        )
    if not source.strip() or (isinstance(item, str) and not item.strip()):
        raise RequestError(422, f"{where}: empty input", "invalid")
    try:
        source.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RequestError(
            422, f"{where}: not valid Unicode (a lone surrogate at character {e.start})", "invalid"
        ) from e
    return source


async def read_body(request, cfg: ServeConfig) -> bytes:
    """The body, or 413 past `max_body_bytes`, or 408 when it takes over `body_timeout_s`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cfg.max_body_bytes:
        raise RequestError(
            413, f"body of {declared} bytes is over the limit of {cfg.max_body_bytes}", "too_large"
        )
    chunks: list[bytes] = []
    size = 0

    async def receive() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > cfg.max_body_bytes:
                raise RequestError(
                    413, f"body is over the limit of {cfg.max_body_bytes} bytes", "too_large"
                )
            chunks.append(chunk)

    from starlette.requests import ClientDisconnect

    try:
        await asyncio.wait_for(receive(), cfg.body_timeout_s)
    except TimeoutError as e:
        raise RequestError(
            408, f"body not received within {cfg.body_timeout_s:g}s", "timeout"
        ) from e
    except ClientDisconnect as e:  # nobody to answer: counted, not logged
        raise RequestError(
            400, "client disconnected before sending the body", "disconnected"
        ) from e
    await asyncio.sleep(0)  # a hang-up right after the body: seen before any parsing
    if await request.is_disconnected():
        raise RequestError(499, "client disconnected after sending its body", "abandoned")
    return b"".join(chunks)


def parse_body(body: bytes, cfg: ServeConfig) -> dict[str, Any]:
    """Validate `{"inputs": [...], "rationale": bool}` with one-line reasons."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        raise RequestError(400, f"body is not valid JSON ({msg})", "bad_json") from e
    except RecursionError as e:
        raise RequestError(400, "body is nested too deeply", "bad_json") from e
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise RequestError(422, "missing field 'inputs' (a list of records or strings)", "invalid")
    inputs = payload["inputs"]
    if isinstance(inputs, dict | str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(422, "field 'inputs': expected a non-empty list", "invalid")
    if len(inputs) > cfg.max_inputs:
        raise RequestError(
            413, f"{len(inputs)} inputs, over the limit of {cfg.max_inputs}", "too_large"
        )
    rationale = payload.get("rationale", False)
    if not isinstance(rationale, bool):
        raise RequestError(422, "field 'rationale': expected true or false", "invalid")
    return {"inputs": inputs, "rationale": rationale}


def uvicorn_config(app, cfg: ServeConfig, **kw: Any):
    """uvicorn's config with the connection guards (`connections.py`); `kw` overrides."""
    import uvicorn

    from protege.serve.connections import guarded_protocol, quiet_repeats, raise_fd_limit

    quiet_repeats()
    files = raise_fd_limit(cfg.max_connections + 256)  # room for the model, logs, the store
    cap = max(1, min(cfg.max_connections, files - 256))
    options = dict(
        host=cfg.host, port=cfg.port, log_level="warning",
        timeout_graceful_shutdown=int(cfg.graceful_timeout_s),
        http=guarded_protocol(cfg.header_timeout_s, cap),
        timeout_keep_alive=cfg.keep_alive_s, h11_max_incomplete_event_size=16 * 1024,
        backlog=2048,
    )  # fmt: skip
    return uvicorn.Config(app, **{**options, **kw})


def serve(predictor: Predictor, cfg: ServeConfig, cascade=None) -> None:
    """Run the server until interrupted (SIGINT/SIGTERM shut it down gracefully)."""
    import uvicorn

    api_key = cfg.api_key or os.environ.get(API_KEY_ENV) or None
    check_key_policy(cfg.host, api_key)
    cfg.api_key = api_key
    uvicorn.Server(uvicorn_config(create_app(predictor, cfg, cascade), cfg)).run()
