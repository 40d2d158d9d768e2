"""The JSONL lines of the Batch API: the requests sent, and each result line read on its own.

A result line is what the API promises (`{"custom_id", "response": {"status_code", "body"},
"error"}`) or it is no result at all: a truncated or garbage line, one without `custom_id`, or a
200 body without `choices` is a failed try of its request (sent again, then recorded failed),
never an error of the whole batch.
"""

from __future__ import annotations

import json
import time
from typing import Any

from protege.teacher.chat import token_logprobs
from protege.teacher.failures import FIX, RETRY, ApiError, classify
from protege.teacher.prices import usage_counts
from protege.teacher.store import Answer


def chunks(lines: list[tuple[str, bytes]], max_n: int, max_bytes: int) -> list[list]:
    """Split (key, line) pairs into batches of at most max_n lines and max_bytes bytes."""
    out: list[list] = [[]]
    size = 0
    for key, line in lines:
        if out[-1] and (len(out[-1]) >= max_n or size + len(line) > max_bytes):
            out.append([])
            size = 0
        out[-1].append((key, line))
        size += len(line)
    return [c for c in out if c]


def request_line(key: str, request: dict[str, Any]) -> bytes:
    body = {"model": request["model"], "messages": request["messages"], **request["sent"]}
    row = {"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def result_of(line: bytes) -> dict[str, Any] | None:
    """One output or error line as the API promises it (an object with a string `custom_id`),
    or None: a truncated or garbage line is no result, so its request is tried again."""
    if not line.strip():
        return None
    try:
        item = json.loads(line)
    except ValueError:
        return None
    if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
        return None
    if not isinstance(item.get("response") or {}, dict) or not isinstance(
        (item.get("response") or {}).get("body") or {}, dict
    ):
        return None
    return item


def answer_of(runner: Any, key: str, item: dict[str, Any] | None, status: str,
              failed_batch: str | None, attempt: int) -> tuple[Answer | None, bool]:  # fmt: skip
    """One result line of `runner`'s batch (`batch.BatchRunner`) as an answer to store, and
    whether to send the request again."""
    last = attempt > runner.cfg.max_retries
    if item is None or item.get("error"):
        why = failed_batch or (item or {}).get("error", {}).get("message") or f"batch {status}"
        if failed_batch or last:
            return failed_answer(runner, key, f"batch: {why}", attempt), False
        return None, True
    response = item.get("response") or {}
    body = response.get("body") or {}
    code = response.get("status_code", 0)
    if code != 200:
        err = body.get("error") if isinstance(body.get("error"), dict) else {}
        error = ApiError(code, str(err.get("message") or f"HTTP {code}"), err.get("type"),
                         err.get("code"), err.get("param"))  # fmt: skip
        kind = classify(error)
        if kind == FIX and (fix := runner.rules.learn(error.as_dict())):
            runner.store.put_param_rule(
                runner.rules.endpoint, runner.rules.model, *fix, error.message
            )
            runner.report.learned.append(f"{runner.cfg.model_name}: {fix[0]} -> {fix[1]}")
            return None, True
        if kind == RETRY and not last:
            return None, True
        return failed_answer(runner, key, str(error), attempt), False
    try:
        choice = body["choices"][0]
        text = choice["message"]["content"] or ""
    except (KeyError, IndexError, TypeError) as e:
        if last:
            return failed_answer(runner, key, f"batch: unreadable answer ({type(e).__name__})",
                                attempt), False  # fmt: skip
        return None, True
    tin, tout, cached, reasoning = usage_counts(body.get("usage") or {})
    cost = runner.pricing.cost(tin or 0, tout or 0, cached, batch=True) if runner.pricing else 0.0
    return Answer(
        key=key, model=runner.cfg.model_name, status="ok",
        text=text, finish_reason=choice.get("finish_reason"),
        input_tokens=tin, output_tokens=tout, cost_usd=cost, latency_s=None,
        system_fingerprint=body.get("system_fingerprint"), attempts=attempt,
        created_at=time.time(), source="batch", cached_tokens=cached,
        reasoning_tokens=reasoning, run_id=runner.run_id, logprobs=token_logprobs(choice),
    ), False  # fmt: skip


def failed_answer(runner: Any, key: str, error: str, attempt: int) -> Answer:
    return Answer(key, runner.cfg.model_name, "failed", error=error, attempts=attempt,
                  source="batch", run_id=runner.run_id)  # fmt: skip
