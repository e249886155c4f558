"""The one place where every HTTP request gets its principal.

Authentication itself (OAuth 2.0 bearer tokens, scopes, patient context) is the security issue's work;
until then the embedded default serves every route to an anonymous principal with all scopes, which
the README and the configuration guide call out. Handlers read ``request.state.principal`` only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from ..domain.access import Principal

PrincipalResolver = Callable[[Scope], Awaitable[Principal]]


class AccessMiddleware:
    """Resolves the principal of each HTTP request before any route runs."""

    def __init__(self, app: ASGIApp, resolve: PrincipalResolver) -> None:
        self.app = app
        self.resolve = resolve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["principal"] = await self.resolve(scope)
        await self.app(scope, receive, send)


def open_access(everyone: Principal) -> PrincipalResolver:
    async def resolve(_scope: Scope) -> Principal:
        return everyone

    return resolve
