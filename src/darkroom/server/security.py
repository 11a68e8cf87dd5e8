"""Request guards as one ASGI middleware: access token, origin check, DNS-rebinding check and body-size limits.

- Token: when configured, every HTTP request and websocket handshake must carry it — `Authorization: Bearer T`,
  HTTP Basic with T as the password (what `webuiapi` and browsers send), `X-Darkroom-Token: T` or `?token=T`.
- Origin: a request whose `Origin` differs from its `Host` (a web page on another site) is refused with 403
  (ComfyUI's origin check, applied to websockets too, and to the opaque `null` origin), unless the origin is
  allowed by `--enable-cors-header`; then CORS headers are added and preflights answered.
- Host: on a loopback server without a token, a `Host` that is not a loopback name is refused (DNS rebinding:
  a page on evil.example resolving to 127.0.0.1 would otherwise look same-origin).
- Size: bodies beyond the limit are refused with 413 (Content-Length up front, or while streaming).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .config import ServerConfig, is_loopback

Scope = dict[str, Any]


class BodyTooLarge(Exception):
    """The request body went past the configured limit."""


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def presented_tokens(headers: dict[str, str], query_string: bytes) -> list[str]:
    """Every token-like credential the request carries."""
    found: list[str] = []
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value:
        found.append(value.strip())
    elif scheme.lower() == "basic" and value:
        try:
            user, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
            found.extend(p for p in (password, user) if p)
        except (binascii.Error, UnicodeDecodeError):
            pass
    if headers.get("x-darkroom-token"):
        found.append(headers["x-darkroom-token"])
    q = parse_qs(query_string.decode("latin-1"))
    found.extend(q.get("token", []))
    return found


def token_ok(expected: str, headers: dict[str, str], query_string: bytes) -> bool:
    """Constant-time check of any presented credential against the token."""
    want = expected.encode("utf-8")
    ok = False
    for t in presented_tokens(headers, query_string):
        ok |= secrets.compare_digest(t.encode("utf-8"), want)
    return ok


def _host_and_port(netloc: str) -> tuple[str, str]:
    parts = urlsplit("//" + netloc)
    try:
        port = str(parts.port or "")
    except ValueError:
        port = "?"
    return (parts.hostname or "").lower(), port


class SecurityMiddleware:
    """The guards above, in front of the whole application."""

    def __init__(self, app: Any, config: ServerConfig) -> None:
        self.app = app
        self.config = config
        self.cors_any = "*" in config.cors_origins
        self.cors = {o.rstrip("/").lower() for o in config.cors_origins if o != "*"}

    def origin_allowed(self, origin: str) -> bool:
        return self.cors_any or origin.rstrip("/").lower() in self.cors

    def problem(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        """(status, message) if the request must be refused, else None."""
        host = headers.get("host", "")
        origin = headers.get("origin")
        if self.config.loopback and not self.config.token:
            hostname, _ = _host_and_port(host)
            if host and not is_loopback(hostname):
                return 403, (f"Host {host!r} is not this computer; darkroom only answers requests addressed to "
                             "localhost or 127.0.0.1 (use --token to serve other names)")
        if origin is not None and not (self.config.cors_origins and self.origin_allowed(origin)):
            same = False
            if origin.lower() != "null":
                o = urlsplit(origin)
                same = bool(o.netloc) and _host_and_port(o.netloc) == _host_and_port(host)
            if not same:
                return 403, (f"cross-origin request from {origin} refused; start darkroom with "
                             "--enable-cors-header ORIGIN to allow that site")
        if self.config.token and not (scope["type"] == "http" and scope.get("method") == "OPTIONS"
                                      and self.config.cors_origins):
            if not token_ok(self.config.token, headers, scope.get("query_string", b"")):
                return 401, "an access token is required (Authorization: Bearer TOKEN, or HTTP Basic password)"
        return None

    def body_limit(self, scope: Scope) -> int:
        path = scope.get("path", "")
        limits = self.config.limits
        if path.endswith("/upload/image") or path.endswith("/upload/mask"):
            return limits.max_upload_bytes + 1024 * 1024  # the file plus the other form fields
        return limits.max_body_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        refused = self.problem(scope, headers)
        if refused is not None:
            status, message = refused
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
                return
            extra = [(b"www-authenticate", b'Basic realm="darkroom"')] if status == 401 else []
            await _json_response(send, status, {"error": message}, extra)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        origin = headers.get("origin")
        cors_headers: list[tuple[bytes, bytes]] = []
        if origin and self.config.cors_origins and self.origin_allowed(origin):
            allow = "*" if self.cors_any and not self.config.token else origin
            cors_headers = [(b"access-control-allow-origin", allow.encode("latin-1")),
                            (b"access-control-allow-methods", b"GET, POST, PUT, PATCH, DELETE, OPTIONS"),
                            (b"access-control-allow-headers", b"Content-Type, Authorization, X-Darkroom-Token"),
                            (b"access-control-allow-credentials", b"true"), (b"vary", b"Origin")]
            if scope.get("method") == "OPTIONS" and "access-control-request-method" in headers:
                await send({"type": "http.response.start", "status": 200, "headers": cors_headers})
                await send({"type": "http.response.body", "body": b""})
                return
        limit = self.body_limit(scope)
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _json_response(send, 413, {"error": f"request body too large ({int(length)} bytes; the limit "
                                                      f"is {limit} bytes)"}, cors_headers)
            return
        seen = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(f"request body too large (more than {limit} bytes)")
            return message

        async def send_with_headers(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if cors_headers:
                    message = {**message, "headers": [*message.get("headers", []), *cors_headers]}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except BodyTooLarge as ex:
            if not started:
                await _json_response(send, 413, {"error": str(ex)}, cors_headers)


async def _json_response(send: Any, status: int, body: dict[str, Any],
                         extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
               *(extra_headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
