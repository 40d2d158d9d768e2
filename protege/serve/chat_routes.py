"""`POST /v1/chat/completions` and `GET /v1/models` on `protege serve`: the student in the
teacher's place, behind the same auth, limits and micro-batches as `/v1/predict`.

A request is checked as the API checks it (`chat.py`), its messages are read back into the
student's input (`prompts.py`), the student predicts (labels by scoring, the served fast path;
a rationale by generation where the prompt or schema asks for one), and the answer is shaped
as the teacher's would be. Its confidence goes out in `x-protege-confidence` and into
/metrics. With a cascade (`cascade.py`) an unsure answer is replaced by the teacher's.
"""

# No `from __future__ import annotations`: FastAPI reads route annotations at runtime.
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from protege.serve.cascade import Cascade
from protege.serve.chat import (
    ChatError,
    ChatRequest,
    Content,
    chunks,
    completion,
    label_content,
    logprobs_content,
    needs_rationale,
    parse_request,
    sse,
    text_content,
    usage,
)
from protege.serve.metrics import Metrics
from protege.serve.predictor import Predictor
from protege.serve.prompts import MessageReader, PromptMismatch

CONFIDENCE_HEADER = "x-protege-confidence"
ROUTE_HEADER = "x-protege-route"
TEACHER_HEADER = "x-protege-teacher"


@dataclass
class ChatContext:
    """What the chat routes need from the server that mounts them."""

    predictor: Predictor
    reader: MessageReader
    served_name: str
    metrics: Metrics
    submit: Callable[[list[str], bool, Request], Awaitable[list[dict[str, Any]]]]
    """The server's micro-batcher: predictions for sources (with rationale or not) of a
    request (its inputs dropped if the client leaves)."""
    authorise: Callable[[Request], None]
    read_body: Callable[[Request], Awaitable[bytes]]
    source_of: Callable[[Any], str]
    """The student's input (checked as /v1/predict checks one) for a record or a string."""
    client_error: type
    """The server's client error (status, reason, kind), answered here in OpenAI's shape."""
    cascade: Cascade | None = None


def add_chat_routes(app, ctx: ChatContext) -> None:
    @app.get("/v1/models")
    async def models(request: Request):
        try:
            ctx.authorise(request)
        except ctx.client_error as e:
            return _error(ChatError(e.status, e.reason, code="invalid_api_key"))
        entry = {"id": ctx.served_name, "object": "model", "created": int(time.time()),
                 "owned_by": "protege"}  # fmt: skip
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            ctx.authorise(request)
            req = parse_request(_json(await ctx.read_body(request)))
            answer, headers = await respond(ctx, req, request)
        except ctx.client_error as e:
            status = 400 if e.status == 422 else e.status
            code = "invalid_api_key" if e.status == 401 else e.kind
            return _error(ChatError(status, e.reason, code=code), ctx.metrics)
        except ChatError as e:
            return _error(e, ctx.metrics)
        if req.stream:
            events = sse(chunks(answer, req.include_usage))
            return Response(events, media_type="text/event-stream", headers=headers)
        return JSONResponse(answer, headers=headers)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ChatError(400, f"We could not parse the JSON body of your request ({e}).") from e
    except RecursionError as e:
        raise ChatError(400, "We could not parse the JSON body of your request (nested too "
                        "deeply).") from e  # fmt: skip


def _error(e: ChatError, metrics: Metrics | None = None) -> JSONResponse:
    if metrics is not None:
        metrics.error(f"chat_{e.code or e.status}")
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def respond(
    ctx: ChatContext, req: ChatRequest, request: Request
) -> tuple[dict[str, Any], dict[str, str]]:
    """The answer to a checked request, and its headers (module docstring)."""
    task = ctx.predictor.task
    try:
        read = ctx.reader.read(req.messages)
    except PromptMismatch as e:
        raise ChatError(400, str(e), "messages", "invalid_prompt") from e
    try:
        source = ctx.source_of(read.item)
    except ctx.client_error as e:
        raise ChatError(400, e.reason, "messages", e.kind) from e
    if task.type == "classification":
        pred, content = await _classify(ctx, req, source, read.with_rationale, request)
    else:
        pred = (await ctx.submit([source], False, request))[0]
        content = text_content(pred, req)
    confidence = pred.get("score")
    cascade = ctx.cascade
    headers = {} if confidence is None else {CONFIDENCE_HEADER: f"{confidence:.4f}"}
    if cascade is not None and cascade.unsure(confidence):
        relayed = await cascade.relay.answer(req.body)
        ctx.metrics.teacher_spend(relayed.cost_usd)
        if relayed.ok:
            route = "cache" if relayed.cached else "teacher"
            ctx.metrics.route(route, confidence)
            return relayed.payload, {**headers, **relayed.headers, ROUTE_HEADER: route}
        headers[TEACHER_HEADER] = f"unavailable: {relayed.unavailable}"[:300]
        route = "student_teacher_unavailable"
    else:
        route = "student"
    tok = ctx.predictor.backend.tok
    finish = "stop"
    text = content.text
    if req.max_tokens is not None and task.type != "classification":
        ids = tok(text, add_special_tokens=False).input_ids
        if len(ids) > req.max_tokens:  # cut as the teacher's answer would have been
            text, finish = tok.decode(ids[: req.max_tokens], skip_special_tokens=True), "length"
            content.text = text
    n_in, n_out = token_count(tok, source, True), token_count(tok, text, False)
    logprobs = logprobs_content(content, pred, req.top_logprobs) if req.logprobs else None
    answer = completion(ctx.served_name, text, usage(n_in, n_out), logprobs, finish)
    ctx.metrics.route(route, confidence)
    if cascade is not None:
        ctx.metrics.saved(cascade.relay.estimate_cost(req.messages, n_out))
        if route == "student":
            cascade.maybe_shadow(req.body, task, pred, req.schema, ctx.metrics)
    return answer, {**headers, ROUTE_HEADER: route}


def token_count(tok, text: str, special: bool) -> int:
    """Tokens of `text` for `usage`; a student without a tokenizer (it reads text) counts
    whitespace-separated words."""
    if tok is None:
        return len(text.split())
    return len(tok(text, add_special_tokens=special).input_ids)


async def _classify(ctx: ChatContext, req: ChatRequest, source: str, asked: bool, request):
    """The label by scoring (the served path) with its probabilities; where a rationale is
    asked for and the student writes one, its generated label and rationale (scored alike)."""
    task = ctx.predictor.task
    pred = (await ctx.submit([source], False, request))[0]
    want = needs_rationale(req, asked)
    if want and task.format != "label":
        gen = (await ctx.submit([source], True, request))[0]
        if gen.get("label"):
            scores = pred.get("scores") or {}
            pred = {
                **pred,
                "label": gen["label"],
                "score": scores.get(gen["label"], pred.get("score")),
            }
        pred["rationale"] = gen.get("rationale")
    if pred.get("label") is None:  # free generation (--generate) that did not parse
        return pred, Content(pred.get("text") or "")
    return pred, label_content(pred, req, want, task.labels)
