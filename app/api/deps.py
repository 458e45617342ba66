"""What the API routes and the dashboard pages share: path parameters, the access
dependencies (token checks) and the settings-derived rules. One module both import, so
neither imports the other."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Optional

from fastapi import Depends, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials

from app.api import schemas
from app.api.auth import bearer, check_read, check_write
from app.api.cache import ResponseCache
from components.registry import monitoring
from components.registry.db import read_session
from components.settings import Settings

Name = Annotated[str, PathParam(pattern=schemas.NAME_PATTERN, description="model or dataset name")]
Version = Annotated[int, PathParam(ge=1, le=2**31 - 1)]
Id = Annotated[int, PathParam(ge=1, le=2**31 - 1)]
Limit = Annotated[int, Query(ge=1, le=500)]
AliasQuery = Annotated[str, Query(pattern=schemas.ALIAS_PATTERN, description="the alias whose version predicts")]


async def settings_dep(request: Request) -> Settings:
    return request.app.state.settings


@dataclass(frozen=True)
class Reads:
    """What a read route needs: the settings and the response cache of this app."""

    settings: Settings
    cache: ResponseCache

    def value(self, query: Callable[..., Any], *args: Any) -> Any:
        """One registry query in a read-only session, uncached."""
        with read_session(self.settings) as session:
            return query(session, *args)

    def json(self, response_type: Any, query: Callable[..., Any], *args: Any, key: tuple = ()) -> Response:
        """A query's result as a JSON response, reused until the registry changes."""
        with read_session(self.settings) as session:
            stamp = monitoring.registry_stamp(session)
            body = self.cache.body((stamp, query.__module__, query.__qualname__, args, key),
                                   lambda: query(session, *args), response_type)
        return Response(body, media_type="application/json")


# The auth dependencies are async (no I/O): each request then costs one threadpool hop,
# the route's own, which matters at hundreds of requests/s on 2 cores.
async def read_access(request: Request,
                      credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> Reads:
    check_read(request.app.state.settings, request, credentials)
    return Reads(request.app.state.settings, request.app.state.cache)


async def write_access(request: Request,
                       credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> Settings:
    check_write(request.app.state.settings, request, credentials)
    return request.app.state.settings


ReadAccess = Annotated[Reads, Depends(read_access)]
Writer = Annotated[Settings, Depends(write_access)]


def alert_rules(settings: Settings) -> monitoring.AlertRules:
    return monitoring.AlertRules(stale_after_days=settings.alert_stale_days, metric_drop=settings.alert_metric_drop)
