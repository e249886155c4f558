"""HTTP endpoints of the built-in issuer: discovery, JWKS and the token endpoint.

See: RFC 8414 and OpenID Connect Discovery 1.0 (metadata), RFC 7517 (JWKS), RFC 6749 §3.2, §4.4,
§5 (token endpoint), RFC 7523 §2.2 (client assertions), SMART v2 §"SMART configuration".
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...domain.scopes import DOOR_SCOPES
from ...services.issuer import ASSERTION_ALGORITHMS, ASSERTION_TYPE, ClientAuth, KeyRing, OAuthError, TokenIssuer
from .middleware import PublicRoute

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
TOKEN_PATH = "/oauth/token"
JWKS_PATH = "/oauth/jwks"
MAX_FORM = 64 * 1024


@dataclass(frozen=True)
class IssuerEndpoints:
    issuer: str
    tokens: TokenIssuer
    keys: KeyRing

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.issuer + JWKS_PATH,
            "token_endpoint": self.issuer + TOKEN_PATH,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
            "scopes_supported": [*sorted(DOOR_SCOPES), "system/ImagingStudy.rs", "system/ImagingStudy.c"],
            "response_types_supported": ["token"],
            "capabilities": ["client-confidential-symmetric", "client-confidential-asymmetric",
                             "permission-v1", "permission-v2", "permission-patient", "permission-user"],
            "code_challenge_methods_supported": ["S256"],
        }


def routes(endpoints: IssuerEndpoints) -> list[PublicRoute]:
    async def discovery(_request: Request) -> Response:
        return JSONResponse(endpoints.metadata())

    async def jwks(_request: Request) -> Response:
        return JSONResponse(await endpoints.keys.public_jwks(), headers={"Cache-Control": "max-age=60"})

    async def token(request: Request) -> Response:
        return await _token(endpoints, request)

    return [
        PublicRoute("/.well-known/openid-configuration", discovery),
        PublicRoute("/.well-known/oauth-authorization-server", discovery),
        PublicRoute("/.well-known/smart-configuration", discovery),
        PublicRoute(JWKS_PATH, jwks),
        PublicRoute(TOKEN_PATH, token, methods=["POST"]),
    ]


async def _token(endpoints: IssuerEndpoints, request: Request) -> Response:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        return _error(OAuthError("invalid_request", "the token request must be application/x-www-form-urlencoded"))
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return _error(OAuthError("invalid_request", "the token request is too large"))
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body), max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return _error(OAuthError("invalid_request", "the form body cannot be read"))
    names = [k for k, _v in pairs]
    if len(names) != len(set(names)):  # RFC 6749 §3.2: parameters must not repeat
        return _error(OAuthError("invalid_request", "a parameter is repeated"))
    fields = dict(pairs)
    try:
        auth = client_auth(request.headers.get("authorization"), fields)
        here = str(request.url.replace(query="", fragment=""))
        answer = await endpoints.tokens.token(fields.get("grant_type"), fields.get("scope"), auth,
                                              {endpoints.issuer + TOKEN_PATH, here})
    except OAuthError as exc:
        return _error(exc, basic=request.headers.get("authorization", "").lower().startswith("basic "))
    return JSONResponse(answer, headers=NO_STORE)


def client_auth(authorization: str | None, form: dict[str, str]) -> ClientAuth:
    """How the client authenticated; more than one way at once is an invalid request (RFC 6749 §2.3)."""
    ways: list[Callable[[], ClientAuth]] = []
    if authorization and authorization.lower().startswith("basic "):
        ways.append(lambda: _basic(authorization))
    if "client_secret" in form:
        ways.append(lambda: ClientAuth("client_secret_post", form.get("client_id"), form["client_secret"]))
    if "client_assertion" in form:
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError("invalid_request", "client_assertion_type must be " + ASSERTION_TYPE)
        ways.append(lambda: ClientAuth("private_key_jwt", form.get("client_id"), assertion=form["client_assertion"]))
    if len(ways) > 1:
        raise OAuthError("invalid_request", "use exactly one client authentication method")
    if not ways:
        raise OAuthError("invalid_client", "client authentication is required", 401)
    return ways[0]()


def _basic(header: str) -> ClientAuth:
    try:
        decoded = base64.b64decode(header.split(" ", 1)[1].strip(), validate=True).decode()
        client_id, _, secret = decoded.partition(":")
    except (binascii.Error, UnicodeDecodeError, IndexError) as exc:
        raise OAuthError("invalid_request", "the Basic credentials are malformed") from exc
    return ClientAuth("client_secret_basic", unquote_plus(client_id), unquote_plus(secret))


def _error(exc: OAuthError, basic: bool = False) -> Response:
    headers = dict(NO_STORE)
    if exc.status == 401 and basic:
        headers["WWW-Authenticate"] = 'Basic realm="pacsbridge"'
    return JSONResponse({"error": exc.error, "error_description": exc.description}, status_code=exc.status,
                        headers=headers)
