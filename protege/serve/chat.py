"""OpenAI's chat completions contract, as the student speaks it: requests read and checked the
way the API checks them, answers and stream chunks shaped the way the API shapes them.

Pure functions and small dataclasses; the route that uses them is `chat_routes.py`.

What the teacher would have answered is what the student answers: the label (as the `label`
recipe asks for it), a JSON object that fits the request's `response_format` schema (so the
SDK's `chat.completions.parse(response_format=Model)` works), the rationale where the student
writes one and the prompt or schema asks for it, or the generated text (summarization).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from protege.generate.schema import validate

PARAMS = {
    "model", "messages", "temperature", "top_p", "seed", "max_tokens", "max_completion_tokens",
    "n", "logprobs", "top_logprobs", "response_format", "stream", "stream_options", "user",
    "metadata", "store", "stop", "presence_penalty", "frequency_penalty", "logit_bias",
    "service_tier", "reasoning_effort", "parallel_tool_calls", "tools", "tool_choice",
    "functions", "function_call", "modalities", "prediction", "audio", "verbosity",
    "prompt_cache_key", "safety_identifier", "web_search_options",
}  # fmt: skip
"""Every parameter the chat completions API takes today; anything else is a 400, as there."""

RATIONALE_NAMES = ("rationale", "reason", "reasoning", "explanation", "justification")
LABEL_NAMES = ("label", "class", "category", "answer", "prediction", "sentiment")


class ChatError(Exception):
    """An answer in OpenAI's error shape: `{"error": {message, type, param, code}}`."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type_: str = "invalid_request_error"):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status, message, param, code, type_)  # fmt: skip

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}  # fmt: skip


@dataclass
class ChatRequest:
    """A checked chat completions request."""

    body: dict[str, Any]
    messages: list[dict[str, Any]]
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    schema: dict[str, Any] | None = None
    """The JSON schema the answer must fit (json_schema, or a json_object's schema)."""
    json_mode: bool = False
    """`response_format: json_object` (a JSON object, no schema)."""
    max_tokens: int | None = None


def parse_request(payload: Any) -> ChatRequest:
    """Check a request body as the API does; raise ChatError naming the parameter."""
    if not isinstance(payload, dict):
        raise ChatError(400, "The request body must be a JSON object.")
    unknown = sorted(set(payload) - PARAMS)
    if unknown:
        raise ChatError(400, f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    if not isinstance(payload.get("model"), str) or not payload["model"]:
        raise ChatError(
            400, "you must provide a model parameter", "model", "missing_required_parameter"
        )
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatError(400, "'messages' must be a non-empty array.", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in (
            "system",
            "developer",
            "user",
            "assistant",
            "tool",
            "function",
        ):
            raise ChatError(400, f"Invalid value for 'messages[{i}].role'.", f"messages[{i}].role")
    n = payload.get("n", 1)
    if n is not None and n != 1:
        raise ChatError(400, "n: this student answers one choice per request (n=1)", "n",
                        "unsupported_value")  # fmt: skip
    for name in ("tools", "functions"):
        if payload.get(name):
            raise ChatError(400, f"{name}: this student does not call tools", name,
                            "unsupported_parameter")  # fmt: skip
    for name in ("tool_choice", "function_call"):
        if payload.get(name) not in (None, "none"):
            raise ChatError(400, f"{name}: this student does not call tools", name,
                            "unsupported_parameter")  # fmt: skip
    _number(payload, "temperature", 0, 2)
    _number(payload, "top_p", 0, 1)
    max_tokens = None
    for name in ("max_tokens", "max_completion_tokens"):
        value = payload.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ChatError(400, f"Invalid '{name}': integer below minimum value. Expected a "
                                f"value >= 1, but got {value!r} instead.", name,
                                "integer_below_min_value")  # fmt: skip
            max_tokens = value
    seed = payload.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ChatError(400, "Invalid type for 'seed': expected an integer.", "seed")
    logprobs = payload.get("logprobs") or False
    top = payload.get("top_logprobs")
    if top is not None:
        if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= 20:
            raise ChatError(400, "Invalid 'top_logprobs': expected an integer 0..20.",
                            "top_logprobs")  # fmt: skip
        if not logprobs:
            raise ChatError(400, "Invalid value for 'top_logprobs': 'logprobs' must be true to "
                            "use 'top_logprobs'.", "top_logprobs")  # fmt: skip
    metadata = payload.get("metadata")
    if metadata is not None and (
        not isinstance(metadata, dict)
        or len(metadata) > 16
        or not all(isinstance(v, str) for v in metadata.values())
    ):
        raise ChatError(400, "Invalid 'metadata': at most 16 string values.", "metadata")
    options = payload.get("stream_options") or {}
    if options and not payload.get("stream"):
        raise ChatError(400, "The 'stream_options' parameter is only allowed when 'stream' is "
                        "enabled.", "stream_options")  # fmt: skip
    schema, json_mode = _response_format(payload.get("response_format"))
    return ChatRequest(
        body=payload, messages=messages, stream=bool(payload.get("stream")),
        include_usage=bool(options.get("include_usage")), logprobs=bool(logprobs),
        top_logprobs=top or 0, schema=schema, json_mode=json_mode, max_tokens=max_tokens,
    )  # fmt: skip


def _number(payload: dict[str, Any], name: str, lo: float, hi: float) -> None:
    value = payload.get(name)
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
        raise ChatError(400, f"Invalid '{name}': expected a number between {lo} and {hi}, got "
                        f"{value!r}.", name, "invalid_value")  # fmt: skip


def _response_format(fmt: Any) -> tuple[dict[str, Any] | None, bool]:
    if fmt is None:
        return None, False
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise ChatError(400, "Invalid 'response_format.type': expected text, json_object or "
                        "json_schema.", "response_format.type")  # fmt: skip
    if fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ChatError(
                400,
                "Missing required parameter: 'response_format.json_schema.name'.",
                "response_format.json_schema.name",
                "missing_required_parameter",
            )
        schema = spec.get("schema") or {}
        if not isinstance(schema, dict):
            raise ChatError(400, "Invalid 'response_format.json_schema.schema': expected an "
                            "object.", "response_format.json_schema.schema")  # fmt: skip
        return schema, False
    if fmt["type"] == "json_object":  # llama-cpp-python's servers take a schema here too
        schema = fmt.get("schema")
        return (schema, False) if isinstance(schema, dict) else (None, True)
    return None, False


@dataclass
class Content:
    """The answer text and where its label sits in it (for logprobs)."""

    text: str
    label_span: tuple[int, int] | None = None


def needs_rationale(req: ChatRequest, asked_in_prompt: bool) -> bool:
    """Does the request ask for a reason with the label (the prompt, or a required schema field)?"""
    if req.schema is not None:
        props = req.schema.get("properties") or {}
        return any(n in props for n in RATIONALE_NAMES if n in (req.schema.get("required") or []))
    return asked_in_prompt


def label_content(pred: dict[str, Any], req: ChatRequest, with_rationale: bool,
                  labels: list[str]) -> Content:  # fmt: skip
    """The teacher-shaped answer for a classification prediction (ChatError when the request's
    schema cannot be filled with a label and, where asked, a rationale)."""
    label = pred["label"]
    rationale = pred.get("rationale")
    if req.schema is None and not req.json_mode:
        if with_rationale and rationale:
            return Content(f"{label}\n{rationale}", (0, len(label)))
        return Content(label, (0, len(label)))
    obj: dict[str, Any] = {}
    label_key = "label"
    if req.schema is not None:
        label_key, obj = _fill(req.schema, label, rationale, labels)
    else:
        obj = {"label": label} | ({"rationale": rationale} if with_rationale and rationale else {})
    text = json.dumps(obj, ensure_ascii=False)
    value = json.dumps(obj[label_key], ensure_ascii=False)[1:-1]
    start = text.index(f'"{label_key}": "') + len(label_key) + 5
    return Content(text, (start, start + len(value)))


def _fill(schema: dict[str, Any], label: str, rationale: str | None,
          labels: list[str]) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """(the label's property, an object that fits `schema`), or ChatError saying why not."""
    props: dict[str, Any] = schema.get("properties") or {}
    if schema.get("type", "object") != "object" or not props:
        raise ChatError(
            400,
            "response_format: this student answers a JSON object with a label "
            "property; the schema has no properties",
            "response_format",
        )
    lower = {x.lower() for x in labels}
    label_key = next((n for n, p in props.items() if isinstance(p, dict) and p.get("enum")
                      and {str(v).lower() for v in p["enum"]} <= lower), None)  # fmt: skip
    label_key = label_key or next((n for n in LABEL_NAMES if n in props), None)
    if label_key is None:
        raise ChatError(400, f"response_format: no property of the schema takes a label of "
                        f"{', '.join(labels)} (name one 'label', or give it an enum of them)",
                        "response_format")  # fmt: skip
    value: Any = label
    enum = props[label_key].get("enum") if isinstance(props[label_key], dict) else None
    if enum:
        value = next((v for v in enum if str(v).lower() == label.lower()), label)
    obj: dict[str, Any] = {}
    for name, _sub in props.items():
        if name == label_key:
            obj[name] = value
        elif name in RATIONALE_NAMES and (rationale or name in (schema.get("required") or [])):
            if not rationale:
                raise ChatError(400, f"response_format: the schema requires {name!r}, and this "
                                "student writes no rationale", "response_format")  # fmt: skip
            obj[name] = rationale
        elif name in (schema.get("required") or []):
            raise ChatError(400, f"response_format: the schema requires {name!r}, which this "
                            "student does not write", "response_format")  # fmt: skip
    if problem := validate(obj, schema):
        raise ChatError(400, f"response_format: the student's answer cannot fit the schema "
                        f"({problem})", "response_format")  # fmt: skip
    return label_key, obj


def text_content(pred: dict[str, Any], req: ChatRequest) -> Content:
    """A generated text (summarization) as the answer; a JSON format wraps it in `{"text"}`."""
    text = pred.get("text") or ""
    if req.schema is not None or req.json_mode:
        props = (req.schema or {}).get("properties") or {"text": {}}
        key = next((n for n in ("summary", "text", "output", "answer") if n in props), None)
        if key is None:
            raise ChatError(400, "response_format: this student writes text; give the schema "
                            "a 'summary' or 'text' property", "response_format")  # fmt: skip
        return Content(json.dumps({key: text}, ensure_ascii=False))
    return Content(text)


def logprobs_content(content: Content, pred: dict[str, Any], top: int) -> list[dict[str, Any]]:
    """`choices[0].logprobs.content`: the answer as tokens whose text joins to the content. The
    label is one token carrying the student's label probabilities (its `top_logprobs`: the
    `top` most likely labels); the text around it is certain (log-probability 0)."""
    if content.label_span is None:
        lp = math.log(max(pred.get("score") or 1.0, 1e-300))
        return [_token(content.text, lp, [])]
    a, b = content.label_span
    scores = pred.get("scores") or {pred["label"]: pred.get("score") or 1.0}
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])[:top]
    label_text = content.text[a:b]
    alts = [_token(label_text if k == pred["label"] else k, _log(p), None) for k, p in ranked]
    out = [_token(content.text[:a], 0.0, [])] if a else []
    out.append(_token(label_text, _log(scores.get(pred["label"], pred.get("score") or 1.0)), alts))
    if b < len(content.text):
        out.append(_token(content.text[b:], 0.0, []))
    return out


def _log(p: float) -> float:
    return math.log(max(p, 1e-300))


def _token(text: str, logprob: float, top: list | None) -> dict[str, Any]:
    tok: dict[str, Any] = {"token": text, "logprob": round(logprob, 6),
                           "bytes": list(text.encode("utf-8"))}  # fmt: skip
    if top is not None:
        tok["top_logprobs"] = top
    return tok


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion(model: str, text: str, usage: dict[str, int], logprobs: list | None = None,
               finish_reason: str = "stop") -> dict[str, Any]:  # fmt: skip
    """A `chat.completion` object."""
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
        "logprobs": {"content": logprobs, "refusal": None} if logprobs is not None else None,
        "finish_reason": finish_reason,
    }
    return {"id": new_id(), "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": usage, "service_tier": "default",
            "system_fingerprint": None}  # fmt: skip


def chunks(answer: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """A completion as `chat.completion.chunk` events: the role, the content in pieces, the
    finish reason, and (with `stream_options.include_usage`) a last chunk with the usage."""
    choice = answer["choices"][0]
    text = choice["message"]["content"] or ""
    logprobs = (choice.get("logprobs") or {}).get("content")
    base = {"id": answer["id"], "object": "chat.completion.chunk", "created": answer["created"],
            "model": answer["model"], "system_fingerprint": answer.get("system_fingerprint"),
            "service_tier": answer.get("service_tier")}  # fmt: skip

    def chunk(delta: dict[str, Any], finish: str | None = None, lp: list | None = None):
        c = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        if lp is not None:
            c["logprobs"] = {"content": lp, "refusal": None}
        out = {**base, "choices": [c]}
        if include_usage:
            out["usage"] = None
        return out

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    if logprobs:
        events += [chunk({"content": t["token"]}, lp=[t]) for t in logprobs]
    else:
        events += [chunk({"content": piece}) for piece in _pieces(text)]
    events.append(chunk({}, choice["finish_reason"]))
    if include_usage:
        events.append({**base, "choices": [], "usage": answer.get("usage")})
    return events


def _pieces(text: str, size: int = 16) -> list[str]:
    """Split text into word-ish pieces for streaming (joined, they are the text)."""
    if not text:
        return []
    words = text.split(" ")
    pieces, cur = [], ""
    for i, w in enumerate(words):
        cur += (" " if i else "") + w
        if len(cur) >= size:
            pieces.append(cur)
            cur = ""
    if cur:
        pieces.append(cur)
    return pieces


def sse(events: list[dict[str, Any]]) -> bytes:
    """Server-sent events, ending with `data: [DONE]`."""
    lines = [f"data: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events]
    return ("".join(lines) + "data: [DONE]\n\n").encode("utf-8")


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
    }  # fmt: skip
