"""`protege proxy`: an OpenAI-compatible pass-through to the teacher, from day one.

An application points its `base_url` here instead of at the teacher and changes nothing else.
Every request goes to the teacher (`relay.py`: the store answers identical ones at no cost)
and its answer comes back unchanged; every answer is stored, so the traffic becomes training
data (`protege traffic export`). A streamed request is answered from the teacher's whole
answer as `chat.completion.chunk` events (the answer must be whole to be stored). Auth,
body limits, Host/Origin checks and the connection guards are `protege serve`'s.
"""

# No `from __future__ import annotations`: FastAPI reads route annotations at runtime.
import os
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from protege.serve.chat import ChatError, chunks, parse_request, sse
from protege.serve.chat_routes import ROUTE_HEADER, _error, _json
from protege.serve.metrics import Metrics
from protege.serve.relay import TeacherRelay
from protege.serve.server import (
    API_KEY_ENV,
    Counted,
    RequestError,
    ServeConfig,
    check_key_policy,
    key_given,
    read_body,
    uvicorn_config,
)


def create_proxy_app(relay: TeacherRelay, cfg: ServeConfig):
    """The proxy's ASGI app (module docstring)."""
    from protege.serve.origin import OriginGuard

    metrics = Metrics()
    api_key = cfg.api_key or os.environ.get(API_KEY_ENV) or None

    @asynccontextmanager
    async def lifespan(app):
        await relay.start()
        yield
        await relay.close()

    app = FastAPI(title="protege proxy", lifespan=lifespan)
    app.state.metrics = metrics

    def authorise(request: Request) -> None:
        if not key_given(request, api_key):
            raise ChatError(401, "missing or invalid API key", code="invalid_api_key")

    def denied(request: Request) -> JSONResponse | None:
        """The 401 for a request without the key (OpenAI's shape), else None."""
        try:
            authorise(request)
        except ChatError as e:
            return _error(e)
        return None

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "teacher": relay.cfg.model_name, "endpoint": relay.base_url}

    @app.get("/metrics")
    async def prometheus(request: Request):
        if refused := denied(request):
            return refused
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        if refused := denied(request):
            return refused
        entry = {"id": relay.cfg.model_name, "object": "model", "created": int(time.time()),
                 "owned_by": "protege-proxy"}  # fmt: skip
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            authorise(request)
            req = parse_request(_json(await read_body(request, cfg)))
        except RequestError as e:
            return _error(ChatError(400 if e.status == 422 else e.status, e.reason, code=e.kind),
                          metrics)  # fmt: skip
        except ChatError as e:
            return _error(e, metrics)
        relayed = await relay.answer(req.body)
        metrics.teacher_spend(relayed.cost_usd)
        route = "cache" if relayed.cached else "teacher"
        if relayed.status != 200:
            metrics.error(f"teacher_{relayed.status}")
            return JSONResponse(relayed.payload, relayed.status, headers=relayed.headers)
        metrics.route(route)
        headers = {**relayed.headers, ROUTE_HEADER: route}
        if req.stream:
            events = sse(chunks(relayed.payload, req.include_usage))
            return Response(events, media_type="text/event-stream", headers=headers)
        return JSONResponse(relayed.payload, headers=headers)

    guarded = OriginGuard(app, cfg.host, cfg.allowed_hosts, cfg.cors_origins,
                          check_host=not api_key or bool(cfg.allowed_hosts))  # fmt: skip
    counted = Counted(guarded, metrics, cfg.reject_delay_s)
    counted.state = app.state
    return counted


def run_proxy(relay: TeacherRelay, cfg: ServeConfig) -> None:
    """Serve the proxy until interrupted."""
    import uvicorn

    api_key = cfg.api_key or os.environ.get(API_KEY_ENV) or None
    check_key_policy(cfg.host, api_key)
    cfg.api_key = api_key
    uvicorn.Server(uvicorn_config(create_proxy_app(relay, cfg), cfg)).run()
