"""Short-lived signed URLs, for links a browser opens without headers (WADO-URI, rendered images,
downloads), so that no long-lived token ever sits in a query string, a history or a proxy log.

A caller with a token asks ``POST /auth/signed-url`` for one path and query; the answer is the same
URL plus ``pb-sig``: a JWT signed with pacsbridge's own key (the built-in issuer's key ring, used in
every auth mode) that binds the exact path and query, GET only, the caller's identity, scopes and
patient context, and an expiry of at most ``MAX_TTL_S``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from urllib.parse import parse_qsl, urlencode

from joserfc import jws, jwt
from joserfc.errors import JoseError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...domain.access import Principal, principal_from_claims
from ...domain.scopes import DICOMWEB_READ
from ...services.issuer import KeyRing
from .middleware import GuardedRoute, principal_of
from .tokens import InvalidToken

PARAM = "pb-sig"
AUDIENCE = "pacsbridge-signed-url"
MAX_TTL_S = 300
DEFAULT_TTL_S = 60


def query_digest(query: str) -> str:
    """The query string without ``pb-sig``, as a digest (parameter order kept)."""
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != PARAM]
    return hashlib.sha256(urlencode(pairs).encode()).hexdigest()


class UrlSigner:
    def __init__(self, keys: KeyRing, issuer: str) -> None:
        self.keys = keys
        self.issuer = issuer

    async def sign(self, principal: Principal, path: str, query: str, ttl_s: int) -> str:
        record, key = await self.keys.signing_key()
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": self.issuer, "aud": AUDIENCE, "sub": principal.subject, "scope": " ".join(sorted(principal.scopes)),
            "path": path, "qh": query_digest(query), "iat": now, "exp": now + min(ttl_s, MAX_TTL_S),
        }
        if principal.client_id:
            claims["client_id"] = principal.client_id
        if principal.patient_ids is not None:
            claims["patient"] = sorted(principal.patient_ids)
        return jwt.encode({"alg": record.algorithm, "kid": record.kid}, claims, key, algorithms=[record.algorithm])

    async def verify(self, token: str, method: str, path: str, query: str) -> Principal:
        if method not in ("GET", "HEAD"):
            raise InvalidToken("a signed URL is for GET only")
        try:
            header = jws.extract_compact(token.encode()).headers()
            kid = header.get("kid")
            keys = await self.keys.verification_keys(kid if isinstance(kid, str) else None, refetch=True)
            claims = jwt.decode(token, keys, algorithms=["ES256", "RS256"]).claims
            jwt.JWTClaimsRegistry(leeway=2, iss={"essential": True, "value": self.issuer},
                                  aud={"essential": True, "value": AUDIENCE}, exp={"essential": True}).validate(claims)
        except (JoseError, ValueError, TypeError) as exc:
            raise InvalidToken("the signed URL is invalid or has expired") from exc
        if claims.get("path") != path or claims.get("qh") != query_digest(query):
            raise InvalidToken("the signed URL was made for another address")
        principal = principal_from_claims(claims)
        patients = claims.get("patient")
        if isinstance(patients, list):  # the signer's patient context, exactly (an empty list sees no one)
            principal = dataclasses.replace(principal, patient_ids=frozenset(str(p) for p in patients))
        return principal


def routes(signer: UrlSigner) -> list[GuardedRoute]:
    async def create(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            target = str(body["path"])
            ttl = int(body.get("expires_in", DEFAULT_TTL_S))
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "send JSON {\"path\": \"/dicomweb/...?...\", \"expires_in\": 60}"},
                                status_code=400)
        path, _, query = target.partition("?")
        if not path.startswith("/") or "//" in path or not 0 < ttl <= MAX_TTL_S:
            return JSONResponse({"error": f"path must be an absolute path here; expires_in 1..{MAX_TTL_S}"},
                                status_code=400)
        token = await signer.sign(principal_of(request), path, query, ttl)
        base = str(request.base_url).rstrip("/")
        url = f"{base}{path}?{query + '&' if query else ''}{PARAM}={token}"
        return JSONResponse({"url": url, "expires_in": min(ttl, MAX_TTL_S)}, headers={"Cache-Control": "no-store"})

    return [GuardedRoute("/auth/signed-url", create, need=DICOMWEB_READ, methods=("POST",), action="read")]
