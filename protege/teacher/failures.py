"""What an endpoint's error answer means for the job.

    retry   429 rate_limit_exceeded, 408, 409, 5xx: wait (Retry-After, backoff) and try again
    fix     400 unsupported_parameter / unsupported_value: change the parameter, retry once
    fail    any other 400/422: this request fails (recorded as failed); the job goes on
    fatal   401, 403 (key, access), 404 (model or endpoint not found), 429 insufficient_quota
            (no credit): every other request would get the same answer, so the job stops

OpenAI's error body is `{"error": {"message", "type", "param", "code"}}`; the SDK hands over
the inner object as `APIStatusError.body`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from protege.errors import ProtegeError

RETRY, FIX, FAIL, FATAL = "retry", "fix", "fail", "fatal"


@dataclass
class ApiError:
    """An error answer: HTTP status plus the body's fields."""

    status: int
    message: str
    type: str | None = None
    code: str | None = None
    param: str | None = None

    @classmethod
    def from_sdk(cls, e: Any) -> ApiError:
        body = e.body if isinstance(e.body, dict) else {}
        code = body.get("code")
        return cls(
            status=e.status_code,
            message=str(body.get("message") or e.message),
            type=body.get("type"),
            code=code if isinstance(code, str) else None,
            param=body.get("param"),
        )

    @classmethod
    def from_response(cls, status: int, content: bytes) -> ApiError:
        """An error answer read as the SDK reads it (`_make_status_error_from_response`): the
        JSON body's `error` object where there is one, else its text."""
        text = content.decode("utf-8", "replace").strip()
        try:
            body = json.loads(text)
        except ValueError:
            return cls(status=status, message=text or f"Error code: {status}")
        data = body.get("error", body) if isinstance(body, dict) else body
        if not isinstance(data, dict):
            return cls(status=status, message=f"Error code: {status} - {body}")
        code = data.get("code")
        return cls(
            status=status,
            message=str(data.get("message") or f"Error code: {status} - {body}"),
            type=data.get("type") if isinstance(data.get("type"), str) else None,
            code=code if isinstance(code, str) else None,
            param=data.get("param") if isinstance(data.get("param"), str) else None,
        )

    def as_dict(self) -> dict[str, Any]:
        return {"message": self.message, "type": self.type, "code": self.code, "param": self.param}

    def __str__(self) -> str:
        code = f" {self.code}" if self.code else ""
        return f"HTTP {self.status}{code}: {self.message.rstrip('.')}"


def classify(err: ApiError) -> str:
    """retry, fix, fail or fatal (see the module docstring)."""
    if err.status in (401, 403, 404):
        return FATAL
    if err.status == 429 and "insufficient_quota" in (err.code, err.type):
        return FATAL
    if err.status in (408, 409, 429) or err.status >= 500:
        return RETRY
    if err.status == 400 and err.code in ("unsupported_parameter", "unsupported_value"):
        return FIX
    return FAIL


class TeacherFatal(ProtegeError):
    """The endpoint refuses every request (key, access, model, credit): the job stopped."""


def fatal_message(
    err: ApiError, model: str, url: str, key_env: str | None, served: list[str] | None
) -> str:
    """One line saying what the endpoint refused and what to change."""
    if err.status == 401:
        where = f"${key_env}" if key_env else "no key (set teacher.api_key_env)"
        what = f"refused the API key ({where}): {err}"
        if key_env:
            what += f"; set a valid one (`protege teacher key set {key_env}`)"
    elif err.status == 403:
        what = f"refused access: {err}"
    elif err.status == 404:
        what = f"has no model {model!r}: {err}"
        if served is not None:
            listed = ", ".join(served[:20]) + (" ..." if len(served) > 20 else "")
            what += f"; it serves: {listed or 'no models'} (set teacher.model)"
    else:
        what = f"has no credit left for this key: {err}"
    return f"teacher: {url} {what}"
