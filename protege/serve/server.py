"""`protege serve`: the student behind FastAPI + uvicorn, with micro-batching.

    POST /v1/predict  {"inputs": [record or string, ...], "rationale": false}
                      -> {"predictions": [{"label", "text", "rationale"?}, ...]}
    GET  /healthz     liveness and what is loaded
    GET  /metrics     Prometheus text: requests, latency histogram, batch sizes, errors

Concurrent requests are gathered into micro-batches: the first queued input opens a window of
at most `max_wait_ms`, closed early once `max_batch_size` inputs are waiting; the model runs
in one worker thread so the event loop keeps accepting and reading other clients meanwhile.
Bodies are read with a size limit and a deadline, so an oversized or slow client costs only
its own connection. On shutdown uvicorn stops accepting, lets in-flight requests finish, then
the batcher drains.
"""

# No `from __future__ import annotations` here: FastAPI reads route annotations at runtime.
import asyncio
import hmac
import ipaddress
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from protege.errors import DataError, ProtegeError
from protege.serve.metrics import Metrics
from protege.serve.predictor import Predictor

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
    max_wait_ms: float = 5.0
    """Longest an input waits for others to join its micro-batch."""
    max_body_bytes: int = 1_000_000
    """Larger request bodies get 413."""
    max_inputs: int = 256
    """Most inputs in one request (413 beyond)."""
    max_input_chars: int = 10_000
    """Longest rendered input in characters (422 beyond)."""
    body_timeout_s: float = 10.0
    """A client that has not sent its whole body by then gets 408."""
    fast: bool = True
    """Score the closed label set instead of generating, where the task allows."""
    graceful_timeout_s: float = 30.0
    """On shutdown, how long in-flight requests get to finish."""


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


class RequestError(Exception):
    """A client error: HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str, kind: str):
        super().__init__(reason)
        self.status, self.reason, self.kind = status, reason, kind


class Batcher:
    """Gathers queued inputs into micro-batches and runs the model in one worker thread."""

    def __init__(self, predictor: Predictor, cfg: ServeConfig, metrics: Metrics):
        self.predictor, self.cfg, self.metrics = predictor, cfg, metrics
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="protege-model")
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Finish everything queued, then stop the worker."""
        await self.queue.join()
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=True)

    async def submit(self, sources: list[str], rationale: bool) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in sources]
        for source, future in zip(sources, futures, strict=True):
            self.queue.put_nowait((source, rationale, future))
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.cfg.max_wait_ms / 1000
            while len(batch) < self.cfg.max_batch_size:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            for rationale in (False, True):
                group = [item for item in batch if item[1] is rationale]
                if group:
                    await self._predict(group, rationale)
            for _ in batch:
                self.queue.task_done()

    async def _predict(self, group: list, rationale: bool) -> None:
        sources = [source for source, _, _ in group]
        self.metrics.batch(len(sources))
        try:
            preds = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.predictor.predict, sources, rationale, self.cfg.fast
            )
        except Exception as e:  # a model failure answers these requests, not the server
            for _, _, future in group:
                if not future.done():
                    future.set_exception(e)
            return
        for (_, _, future), pred in zip(group, preds, strict=True):
            if not future.done():  # the client may have gone away
                future.set_result(pred)


def create_app(predictor: Predictor, cfg: ServeConfig):
    """The FastAPI app; `cfg.api_key` (or $PROTEGE_API_KEY) turns authentication on."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    metrics = Metrics()
    api_key = cfg.api_key or os.environ.get(API_KEY_ENV) or None
    state: dict[str, Batcher] = {}

    @asynccontextmanager
    async def lifespan(app):
        state["batcher"] = Batcher(predictor, cfg, metrics)
        await state["batcher"].start()
        yield
        await state["batcher"].stop()

    app = FastAPI(title="protege", lifespan=lifespan)
    app.state.metrics = metrics

    def authorise(request: Request) -> None:
        if not api_key:
            return
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise RequestError(401, "missing or invalid API key", "unauthorized")

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError):
        metrics.error(e.kind)
        return JSONResponse({"error": e.reason}, status_code=e.status)

    @app.middleware("http")
    async def count(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        path = request.url.path
        known = path in ("/v1/predict", "/healthz", "/metrics")
        seconds = time.perf_counter() - t0 if path == "/v1/predict" else None
        metrics.request(path if known else "other", response.status_code, seconds)
        return response

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
        sources = []
        for i, item in enumerate(payload["inputs"]):
            if not isinstance(item, dict | str):
                raise RequestError(422, f"inputs[{i}]: expected a record or a string", "invalid")
            try:
                source = predictor.source(item, source=f"inputs[{i}]")
            except DataError as e:
                raise RequestError(422, str(e), "invalid") from e
            if len(source) > cfg.max_input_chars:
                raise RequestError(
                    422,
                    f"inputs[{i}]: {len(source)} characters, over the limit of "
                    f"{cfg.max_input_chars}",
                    "input_too_long",
                )
            sources.append(source)
        try:
            preds = await state["batcher"].submit(sources, payload["rationale"])
        except Exception as e:
            metrics.error("model")
            return JSONResponse({"error": f"prediction failed: {e}"}, status_code=500)
        return {"predictions": preds}

    return app


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

    try:
        await asyncio.wait_for(receive(), cfg.body_timeout_s)
    except TimeoutError as e:
        raise RequestError(
            408, f"body not received within {cfg.body_timeout_s:g}s", "timeout"
        ) from e
    return b"".join(chunks)


def parse_body(body: bytes, cfg: ServeConfig) -> dict[str, Any]:
    """Validate `{"inputs": [...], "rationale": bool}` with one-line reasons."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        raise RequestError(400, f"body is not valid JSON ({msg})", "bad_json") from e
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


def serve(predictor: Predictor, cfg: ServeConfig) -> None:
    """Run the server until interrupted (SIGINT/SIGTERM shut it down gracefully)."""
    import uvicorn

    api_key = cfg.api_key or os.environ.get(API_KEY_ENV) or None
    check_key_policy(cfg.host, api_key)
    cfg.api_key = api_key
    uvicorn.run(
        create_app(predictor, cfg),
        host=cfg.host,
        port=cfg.port,
        log_level="warning",
        timeout_graceful_shutdown=int(cfg.graceful_timeout_s),
    )
