"""What every request passes before a route sees it: writes are authenticated before their
body is read, bodies have a size limit, validation errors never echo the input, and every
answer carries the usual security headers (the dashboard also a content security policy)."""
from __future__ import annotations

import json
import re

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials

from app.api.auth import check_read, check_write

MAX_BODY_BYTES = 64 * 1024  # the API's bodies are a few hundred bytes; 64 KiB is generous
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# A prediction is a read (the read token answers it) with an image for a body: its own limit
# (DLVM_PREDICT_MAX_BYTES).
PREDICT_PATH = re.compile(r"^/api/models/[^/]+/predict$")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin")]
# The dashboard's pages load their script, style and images from this server only (no inline
# code); /docs and /redoc (Swagger UI, ReDoc from a CDN) are left without one.
DASHBOARD_CSP = (b"default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
                 b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
NO_CSP_PREFIXES = ("/docs", "/redoc", "/openapi.json")


async def _answer(send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()), *SECURITY_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Pure ASGI middleware (it must act before FastAPI reads and parses a body)."""

    def __init__(self, app, max_body: int = MAX_BODY_BYTES):
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        predict = method == "POST" and PREDICT_PATH.match(path) is not None
        max_body = scope["app"].state.settings.predict_max_bytes if predict else self.max_body
        if method in WRITE_METHODS and path.startswith("/api/"):
            request = Request(scope)
            settings = scope["app"].state.settings
            try:
                (check_read if predict else check_write)(settings, request, _bearer(request))
            except HTTPException as exc:
                return await _answer(send, exc.status_code, exc.detail, exc.headers)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body):
            return await _answer(send, 413, f"request body over {max_body} bytes")
        if method in WRITE_METHODS:
            # Chunked bodies have no length: read up to the limit here, then replay.
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > max_body:
                    return await _answer(send, 413, f"request body over {max_body} bytes")
                if not message.get("more_body"):
                    break
            body, replayed = b"".join(chunks), False

            async def receive_again():
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            receive = receive_again

        csp = not path.startswith(("/api/", *NO_CSP_PREFIXES))

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + SECURITY_HEADERS
                if csp:
                    headers.append((b"content-security-policy", DASHBOARD_CSP))
                message = dict(message, headers=headers)
            await send(message)
        return await self.app(scope, receive, send_with_headers)


def _bearer(request: Request) -> HTTPAuthorizationCredentials | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return HTTPAuthorizationCredentials(scheme="Bearer", credentials=token.strip())
    return None


async def validation_problem(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """A 422 that says where and what, without the input (which may be megabytes, or secret)."""
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()[:20]]
    return JSONResponse({"detail": errors}, status_code=422)
