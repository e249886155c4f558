"""The one place where every HTTP request is authenticated, and the route type that says what it needs.

See: RFC 6750 §2.1 (Authorization: Bearer), §3 and §3.1 (WWW-Authenticate, error codes).

Rules:
1. Closed by default: a request needs a valid bearer token unless its route is public (health,
   discovery, the built-in issuer's endpoints) or its path lies under a prefix the operator opened in
   settings. A route someone forgets to guard still needs a token.
2. Each door builds its routes as ``GuardedRoute(path, endpoint, need=...)``; the guard answers 403
   ``insufficient_scope`` before the handler runs. ``tests/security`` fails for any route that is
   neither guarded nor listed as public.
3. 401 without ``error`` when no credentials came; 401 ``invalid_token`` for a bad token; 400
   ``invalid_request`` for a malformed Authorization header. Bodies never echo the token.
4. A token on an open or public route is still verified, so its patient context applies.
5. HTML pages (``adapters/web``) authenticate by their session cookie, which only they read; this
   middleware lets them through without a token and never looks at cookies.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ...domain.access import ANONYMOUS, Principal
from ...domain.errors import UpstreamUnavailable
from ...domain.scopes import Need
from ...formats.fhir_rest import Issue, operation_outcome
from .tokens import InvalidToken, TokenVerifier

log = logging.getLogger(__name__)

REALM = "pacsbridge"
SignedUrlVerifier = Callable[[str, str, str, str], Awaitable[Principal]]
OPERATOR = Principal(subject="open-access", operator=True)


ACTIONS = {"s": "search", "c": "create", "u": "update", "d": "delete", "r": "read"}


class GuardedRoute(Route):
    """A route that serves only principals whose scopes meet ``need``. It also tells the audit trail
    (``scope["state"]["audit"]``) which door, action and route template the request reached."""

    def __init__(self, path: str, endpoint: Callable[[Request], Awaitable[Response]], *, need: Need,
                 methods: Sequence[str] = ("GET",), name: str | None = None, action: str | None = None,
                 refuse: Callable[[Need], Response] | None = None) -> None:
        """``refuse`` answers a principal lacking the scope (default: RFC 6750 ``insufficient_scope``
        with a JSON body; the FHIR door sends an OperationOutcome with the same challenge)."""
        self.need = need
        refusal = refuse or insufficient_scope
        self.action = action or ACTIONS.get(need.permissions[:1], "read")
        door = need.scope.split(".")[0]

        async def guarded(request: Request) -> Response:
            request.scope.setdefault("state", {})["audit"] = (
                door, self.action, request.scope.get("root_path", "") + path)
            if not principal_of(request).allows(need):
                return refusal(need)
            return await endpoint(request)

        super().__init__(path, guarded, methods=list(methods), name=name)


class PublicRoute(Route):
    """A route served without a token: health, discovery, the issuer's own endpoints."""


def principal_of(request: Request) -> Principal:
    """The caller, as the access middleware recorded it."""
    return request.scope.get("state", {}).get("principal", ANONYMOUS)  # type: ignore[no-any-return]


class AccessMiddleware:
    """Resolves the principal of each HTTP request before any route runs (closed by default)."""

    def __init__(self, app: ASGIApp, verifier: TokenVerifier | None, public: Callable[[], list[BaseRoute]],
                 open_prefixes: Sequence[str] = (), signed: SignedUrlVerifier | None = None,
                 pages: Callable[[], list[BaseRoute]] = list, outcome_prefixes: Sequence[str] = ()) -> None:
        """Refusals of paths under ``outcome_prefixes`` (the FHIR door) carry an OperationOutcome body."""
        self.app = app
        self.outcome_prefixes = tuple(p.rstrip("/") for p in outcome_prefixes)
        self.verifier = verifier
        self.public = public
        self.pages = pages
        self.open_prefixes = tuple(p.rstrip("/") for p in open_prefixes)
        self.signed = signed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response, principal = await self._principal(scope)
        if response is not None:
            path = scope["path"]
            if any(path == p or path.startswith(p + "/") for p in self.outcome_prefixes):
                response = as_outcome(response)
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    async def _principal(self, scope: Scope) -> tuple[Response | None, Principal]:
        header = _authorization(scope)
        if header is not None:
            scheme, _, token = header.partition(" ")
            token = token.strip()
            if scheme.lower() == "bearer":
                if not token or " " in token:
                    return _challenge(400, "invalid_request", "the Authorization header is malformed"), ANONYMOUS
                if self.verifier is None:
                    return _challenge(401, "invalid_token", "this server accepts no tokens"), ANONYMOUS
                try:
                    return None, await self.verifier.verify(token)
                except InvalidToken as exc:
                    return _challenge(401, "invalid_token", exc.description), ANONYMOUS
                except UpstreamUnavailable as exc:
                    log.warning("token verification unavailable: %s", exc.message)
                    return _plain(503, "temporarily_unavailable", "the identity provider cannot be reached"), ANONYMOUS
        elif self.signed is not None and b"pb-sig=" in scope.get("query_string", b""):
            query = scope["query_string"].decode("latin-1")
            signature = dict(parse_qsl(query)).get("pb-sig", "")
            try:
                return None, await self.signed(signature, scope["method"], scope["path"], query)
            except InvalidToken as exc:
                return _challenge(401, "invalid_token", exc.description), ANONYMOUS
        if self._is_public(scope) or self._is_page(scope):
            return None, ANONYMOUS  # a page checks its session cookie itself (adapters/web/pages.py)
        if self._is_open(scope["path"]):
            return None, OPERATOR
        return _challenge(401, None, "a bearer token is required"), ANONYMOUS

    def _is_public(self, scope: Scope) -> bool:
        return any(route.matches(scope)[0] != Match.NONE for route in self.public())

    def _is_page(self, scope: Scope) -> bool:
        return any(route.matches(scope)[0] != Match.NONE for route in self.pages())

    def _is_open(self, path: str) -> bool:
        return any(p == "" or path == p or path.startswith(p + "/") for p in self.open_prefixes)


def _authorization(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            return str(value.decode("latin-1"))
    return None


def as_outcome(response: Response) -> Response:
    """The same refusal (status, WWW-Authenticate) with a FHIR OperationOutcome body."""
    try:
        description = json.loads(bytes(response.body)).get("error_description", "")
    except ValueError:
        description = ""
    code = {401: "login", 403: "forbidden"}.get(response.status_code, "security")
    body = operation_outcome([Issue("error", code, description or "access refused")])
    headers = {k: v for k, v in response.headers.items() if k.lower() == "www-authenticate"}
    return Response(json.dumps(body), status_code=response.status_code, headers=headers,
                    media_type="application/fhir+json; charset=utf-8")


def insufficient_scope_outcome(need: Need) -> Response:
    """``insufficient_scope`` as the FHIR door answers it."""
    return as_outcome(insufficient_scope(need))


def insufficient_scope(need: Need) -> Response:
    return _challenge(403, "insufficient_scope", "the token lacks the scope this route needs", scope=need.describe())


def _challenge(status: int, error: str | None, description: str, scope: str | None = None) -> Response:
    """An RFC 6750 §3 answer: WWW-Authenticate with the realm and, for a presented token, the error."""
    params = [f'realm="{REALM}"']
    if error:
        params.append(f'error="{error}"')
        params.append(f'error_description="{description}"')
    if scope:
        params.append(f'scope="{scope}"')
    return _plain(status, error or "unauthorized", description, {"WWW-Authenticate": "Bearer " + ", ".join(params)})


def _plain(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"error": error, "error_description": description}
    return Response(json.dumps(body), status_code=status, headers=headers, media_type="application/json")
