"""Keep web pages away from a server on this machine: Host and Origin checks.

A page in the user's browser can reach 127.0.0.1 two ways: by DNS rebinding (its own name
resolving to 127.0.0.1, so the request carries `Host: evil.example`) and by cross-site
requests (a form or `fetch` posting `text/plain`, which needs no CORS preflight). So:

- the `Host` header must name this server: localhost, 127.0.0.1, [::1], the bound host, or
  one given with `--allowed-host` (checked whenever no API key is set, or hosts are given);
- a request with an `Origin` header is refused unless that origin was allowed with
  `--cors-origin` (which also answers the browser's CORS preflight);
- POST bodies must be sent as `application/json`, which a page cannot send cross-site without
  a preflight.
"""

from __future__ import annotations

import json

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def host_name(header: str) -> str:
    """`Host` header value without its port: `[::1]:8000` -> `::1`, `a.b:80` -> `a.b`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class OriginGuard:
    """ASGI middleware refusing foreign `Host`s (421), origins (403) and non-JSON POSTs (415)."""

    def __init__(
        self,
        app,
        bound_host: str,
        allowed_hosts: list[str] = (),
        cors_origins: list[str] = (),
        check_host: bool = True,
    ):
        self.app = app
        self.hosts = LOOPBACK_NAMES | {host_name(h) for h in [bound_host, *allowed_hosts]}
        self.origins = {o.rstrip("/").lower() for o in cors_origins}
        self.check_host = check_host

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        reason = self.refusal(scope["method"], headers)
        if reason is None:
            return await self.app(scope, receive, send)
        status, message = reason
        body = json.dumps({"error": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def refusal(self, method: str, headers: dict[str, str]) -> tuple[int, str] | None:
        """(status, reason) when the request must be refused, else None."""
        if self.check_host and host_name(headers.get("host", "")) not in self.hosts:
            return 421, "unknown Host header (start the server with --allowed-host NAME)"
        origin = headers.get("origin")
        if origin is not None and origin.rstrip("/").lower() not in self.origins:
            return 403, "cross-origin request refused (start the server with --cors-origin)"
        if method == "POST":
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return 415, "send the body as Content-Type: application/json"
        return None
