"""Relaying an application's chat request to the teacher, with the teacher store behind it.

Used by `protege proxy` (every request) and by the cascade of `protege serve --teacher ...`
(the requests the student is unsure of). Each request is keyed as `generate` keys its own
(model, messages, canonical parameters, and the endpoint: `endpoint_ids.py`): an identical request
this endpoint already answered is served from the store at no cost; a new answer is stored as it arrives, with its usage and cost, so stored
traffic becomes training data (`protege traffic export`). The key is never stored.

What the teacher answers goes back to the application unchanged (its status, body and
rate-limit headers). Spending goes through the same budget and per-store cap as `generate`
(`Budget`, `spend.StoreCap`): a request that could pass them is not sent. Retries are few and
short (the application is waiting): 429, 5xx and dropped connections are tried again twice,
waiting what `Retry-After` says up to 5 s; a refused connection is not retried.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from protege.redact import redact
from protege.teacher.config import TeacherConfig
from protege.teacher.cost import Budget, worst_prompt_tokens
from protege.teacher.failures import ApiError
from protege.teacher.prices import Pricing, pricing, usage_counts
from protege.teacher.ratelimit import retry_after
from protege.teacher.store import Answer, TeacherStore, request_key

log = logging.getLogger("protege.serve")

TRANSPORT = {
    "model",
    "messages",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "n",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "logprobs",
    "top_logprobs",
}
"""Request fields that do not change the answer's text: not part of the store key."""
FORWARD_HEADERS = (
    "x-request-id",
    "openai-processing-ms",
    "openai-organization",
    "openai-version",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "retry-after",
)
MAX_TRIES = 3
MAX_WAIT_S = 5.0


def canonical_params(body: dict[str, Any]) -> dict[str, Any]:
    """The parameters that make an answer (the store key), named as `generate` names them:
    `max_completion_tokens` is stored as `max_tokens`."""
    params = {k: v for k, v in body.items() if k not in TRANSPORT and v is not None}
    if "max_completion_tokens" in params:
        params["max_tokens"] = params.pop("max_completion_tokens")
    return params


@dataclass
class Relayed:
    """The teacher's answer (or why there is none) for one request."""

    status: int
    payload: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    cost_usd: float = 0.0
    cached: bool = False
    unavailable: str | None = None
    """Why the teacher could not answer (outage, quota, cap): the cascade's student answers."""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.unavailable is None


class TeacherRelay:
    """One teacher endpoint, its store and its spending limits, for many requests at once.

    `start()` and `close()` run inside the server's event loop; `answer(body)` relays one."""

    def __init__(self, cfg: TeacherConfig, base_url: str, api_key: str | None,
                 source: str, max_cost: float | None = None, label: str = "serve"):  # fmt: skip
        self.cfg, self.base_url, self.api_key, self.source = cfg, base_url, api_key, source
        self.max_cost, self.label = max_cost, label
        self.price: Pricing | None = pricing(cfg)
        self.endpoint = cfg.endpoint_id(api_key)  # answers are this endpoint's (endpoint_ids.py)
        self.store: TeacherStore | None = None
        self.spent = 0.0
        self.calls = 0

    async def start(self) -> None:
        from protege.teacher.chat import ChatClient
        from protege.teacher.leases import new_run_id, start_run
        from protege.teacher.spend import StoreCap

        self.store = TeacherStore()
        self.run_id = new_run_id()
        start_run(self.store, self.run_id, self.label)
        self.cap = StoreCap(self.store, self.run_id, self.cfg.lease_s)
        self.budget = Budget(self.max_cost, cap=self.cap if self.cap.cap is not None else None)
        self.client = ChatClient(self.cfg, self.base_url, self.api_key)
        self.beat = asyncio.ensure_future(self._heartbeat())

    async def close(self) -> None:
        self.beat.cancel()
        await self.client.close()
        if self.store is not None:
            try:
                self.cap.close(self.budget.reserved)  # requests sent, never answered: claimed
            except sqlite3.Error:
                pass
            self.store.close()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.lease_s / 3)
            try:
                self.cap.heartbeat()  # the spending claim stays this server's while it runs
            except sqlite3.Error as e:
                log.warning(f"teacher store: could not renew the spending claim ({e})")

    def estimate_cost(self, messages: list[dict[str, Any]], output_tokens: int) -> float:
        """What the teacher would charge for `messages` and an answer of `output_tokens`."""
        from protege.teacher.cost import estimate_prompt_tokens

        if self.price is None:
            return 0.0
        return self.price.cost(estimate_prompt_tokens(_plain(messages)), output_tokens)

    async def answer(self, body: dict[str, Any]) -> Relayed:
        """The teacher's answer to a checked chat request body (see the module docstring)."""
        model, messages = self.cfg.model_name, body["messages"]
        from protege.teacher.endpoints import lookup

        params = canonical_params(body)
        prompt_key = request_key(model, messages, params)
        key = request_key(model, messages, params, self.endpoint)
        stored = lookup(self.store, {key: prompt_key}, self.endpoint,
                        self.cfg.reuse_answers_from).get(key)  # fmt: skip
        if (
            stored is not None
            and stored.status == "ok"
            and (stored.logprobs or not body.get("logprobs"))
        ):
            return Relayed(200, from_store(stored), {"x-protege-cache": "hit"}, cached=True)
        max_out = params.get("max_tokens") or self.cfg.max_tokens
        worst = self.price.cost(worst_prompt_tokens(_plain(messages)), max_out) if self.price else 0
        if self.price is None and (self.budget.cap is not None or self.max_cost is not None):
            return _refused(f"no price known for {model}, so the spending cap cannot be kept")
        if not self.budget.reserve(worst):
            why = self.cap.refused or f"the budget of ${self.max_cost} is spent"
            return _refused(why)
        cost = 0.0
        try:
            relayed, answer = await self._send(key, model, body)
            cost = answer.cost_usd if answer is not None else 0.0
            relayed.cost_usd = cost
            if answer is not None:
                request = {"model": model, "messages": messages, "params": params,
                           "sent": {k: v for k, v in body.items() if k not in ("messages",)},
                           "endpoint": self.endpoint}  # fmt: skip
                try:
                    self.store.put(answer, request)
                except sqlite3.Error as e:  # the application still gets its answer
                    log.error(f"teacher store {self.store.path}: answer not stored ({e})")
            return relayed
        finally:
            self.budget.settle(worst, cost)
            self.spent += cost

    async def _send(self, key: str, model: str, body: dict[str, Any]):
        import aiohttp

        wire = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        wire["model"] = model
        client = self.client
        error = ""
        for attempt in range(MAX_TRIES):
            start = time.monotonic()
            try:
                async with client._session().post(
                    client.url, data=json.dumps(wire), headers=client.wire_headers,
                    allow_redirects=False, proxy=client.proxy, proxy_auth=client.proxy_auth,
                ) as response:  # fmt: skip
                    status, headers = response.status, response.headers
                    content = await response.read()
            except (aiohttp.ClientConnectorError, OSError) as e:
                why = redact(f"cannot connect to {self.base_url} ({type(e).__name__})",
                             [self.api_key])  # fmt: skip
                return _unavailable(502, why), None
            except (TimeoutError, aiohttp.ClientError) as e:
                error = redact(f"{type(e).__name__}: {e}", [self.api_key])
                await asyncio.sleep(random.uniform(0, 0.5 * 2**attempt))
                continue
            kept = {h: headers[h] for h in FORWARD_HEADERS if h in headers}
            latency = time.monotonic() - start
            if status == 200:
                try:
                    payload = json.loads(content)
                    choice = payload["choices"][0]
                    text = choice["message"]["content"] or ""
                except (ValueError, KeyError, IndexError, TypeError):
                    error = "unreadable answer"
                    continue
                self.calls += 1
                return Relayed(200, payload, kept), self._answer(key, model, payload, text, latency)
            err = ApiError.from_response(status, content)
            message = redact(err.message, [self.api_key])
            if (status == 429 and err.code != "insufficient_quota") or status >= 500:
                error = f"{status} {message}"
                wait = retry_after(headers) or random.uniform(0, 0.5 * 2**attempt)
                if attempt + 1 < MAX_TRIES and wait <= MAX_WAIT_S:
                    await asyncio.sleep(wait)
                    continue
            payload = _error_body(status, content, message)
            return Relayed(status, payload, kept, unavailable=f"{status} {message}"), None
        return _unavailable(502, f"no answer after {MAX_TRIES} tries: {error}"), None

    def _answer(self, key: str, model: str, payload: dict[str, Any], text: str,
                latency: float) -> Answer:  # fmt: skip
        from protege.teacher.chat import token_logprobs

        choice = payload["choices"][0]
        tin, tout, cached, reasoning = usage_counts(payload.get("usage") or {})
        cost = self.price.cost(tin or 0, tout or 0, cached) if self.price else 0.0
        return Answer(
            key=key, model=model, status="ok", text=text,
            finish_reason=choice.get("finish_reason"), input_tokens=tin, output_tokens=tout,
            cost_usd=cost, latency_s=latency, system_fingerprint=payload.get("system_fingerprint"),
            created_at=time.time(), source=self.source, cached_tokens=cached,
            reasoning_tokens=reasoning, run_id=self.run_id, logprobs=token_logprobs(choice),
        )  # fmt: skip


def from_store(a: Answer) -> dict[str, Any]:
    """A `chat.completion` rebuilt from a stored answer (served again at no cost)."""
    from protege.serve.chat import completion, usage

    logprobs = None
    if a.logprobs:
        logprobs = [{"token": t, "logprob": lp, "bytes": list(str(t).encode()), "top_logprobs": []}
                    for t, lp in json.loads(a.logprobs)]  # fmt: skip
    out = completion(a.model, a.text or "", usage(a.input_tokens or 0, a.output_tokens or 0),
                     logprobs, a.finish_reason or "stop")  # fmt: skip
    out["system_fingerprint"] = a.system_fingerprint
    return out


def _plain(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Messages with text content, for token estimates (content parts joined)."""
    out = []
    for m in messages:
        c = m.get("content")
        if isinstance(c, list):
            c = "".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
        out.append({"role": str(m.get("role")), "content": c if isinstance(c, str) else ""})
    return out


def _error_body(status: int, content: bytes, message: str) -> dict[str, Any]:
    """The teacher's error body as sent (key redacted), or one in OpenAI's shape."""
    try:
        body = json.loads(content)
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            body["error"]["message"] = message
            return body
    except ValueError:
        pass
    return {"error": {"message": message, "type": "api_error", "param": None, "code": None}}


def _unavailable(status: int, why: str) -> Relayed:
    body = {"error": {"message": f"teacher unavailable: {why}", "type": "api_error",
                      "param": None, "code": "teacher_unavailable"}}  # fmt: skip
    return Relayed(status, body, unavailable=why)


def _refused(why: str) -> Relayed:
    body = {"error": {"message": f"protege: {why}", "type": "insufficient_quota", "param": None,
                      "code": "insufficient_quota"}}  # fmt: skip
    return Relayed(429, body, unavailable=why)
