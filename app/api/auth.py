"""Bearer-token checks: writes always need DLVM_API_TOKEN; reads need DLVM_API_READ_TOKEN
(or the write token) only when that is set, and a wrong token sent anyway is refused. Dashboard pages may carry the token in the
``dlvm_token`` cookie instead of the header, since a browser link cannot set headers."""
from __future__ import annotations

import secrets

from fastapi import HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from components.settings import Settings

COOKIE = "dlvm_token"
bearer = HTTPBearer(auto_error=False, description="DLVM_API_TOKEN for writes; DLVM_API_READ_TOKEN for reads when set")


def _given(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is not None:
        return credentials.credentials
    if "authorization" in request.headers:
        raise _unauthorized("malformed Authorization header: send 'Authorization: Bearer <token>'")
    return request.cookies.get(COOKIE, "")


def _matches(given: str, *expected: str) -> bool:
    # compare_digest on every configured token, so timing does not tell which one was close.
    return any([secrets.compare_digest(given.encode(), token.encode()) for token in expected if token])


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


def check_write(settings: Settings, request: Request, credentials: HTTPAuthorizationCredentials | None) -> None:
    token = settings.api_token.get_secret_value()
    if not token:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            "writes are disabled on this server: start it with DLVM_API_TOKEN set")
    given = _given(request, credentials)
    if not given:
        raise _unauthorized("this request changes the registry: send 'Authorization: Bearer <DLVM_API_TOKEN>'")
    if not _matches(given, token):
        raise _unauthorized("the token was refused")


def check_read(settings: Settings, request: Request, credentials: HTTPAuthorizationCredentials | None) -> None:
    read_token = settings.api_read_token.get_secret_value()
    if not read_token:
        # Reads are open, but a token that was sent and is wrong is still refused: the
        # client believes it is authenticated and should hear that it is not.
        sent = credentials is not None or "authorization" in request.headers
        if sent and not _matches(_given(request, credentials), settings.api_token.get_secret_value()):
            raise _unauthorized("the token was refused")
        return
    given = _given(request, credentials)
    if not given:
        raise _unauthorized("reads on this server need a token: send 'Authorization: Bearer <DLVM_API_READ_TOKEN>'")
    if not _matches(given, read_token, settings.api_token.get_secret_value()):
        raise _unauthorized("the token was refused")
