"""Keep secrets out of everything stored, written or printed: API keys, bearer tokens and the
password in a URL's `user:pass@`. An endpoint may echo the key it was sent in its error body."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "[redacted]"
_PATTERNS = [
    (re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-]{16,}"), MASK),  # OpenAI-style secret keys
    (re.compile(r"(?i)\b(bearer\s+)[^\s\"',;)]+"), r"\1" + MASK),
    (re.compile(r"(\b[a-z][a-z0-9+.\-]*://)[^/\s:@]*:[^/\s@]*@", re.I), r"\1" + MASK + "@"),
]


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every given secret (8 characters or more) and anything shaped like a key,
    a bearer token or URL credentials replaced by `[redacted]`."""
    for secret in secrets:
        if secret and len(secret) >= 8:
            text = text.replace(secret, MASK)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text
