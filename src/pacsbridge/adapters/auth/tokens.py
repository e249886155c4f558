"""Bearer token verification: JWTs against an issuer's keys, or opaque tokens by introspection.

See: RFC 9068 (JWT access tokens), RFC 7519 §4.1, RFC 8725 (JWT best practices), RFC 8414 / OpenID
Connect Discovery, RFC 7662 (introspection); standards.md §F.4.

Rules:
1. The algorithm comes from an allow-list (asymmetric only: never ``none``, never HS*, so a public
   key can never be used as an HMAC secret); ``iss`` must match exactly; ``aud`` must contain ours;
   ``exp`` is required; ``exp``/``nbf``/``iat`` are checked with a small leeway.
2. Issuer keys are cached; a token naming an unknown ``kid`` makes us fetch the keys again at most
   once per ``refetch_s`` (key rotation just works, a flood of forged kids costs one fetch).
3. A verified token is remembered until it expires (bounded cache), so a viewer's thousand frame
   requests cost one signature check.
4. Failures say what was wrong in words safe to show the caller; they never echo the token.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import httpx
from joserfc import jws, jwt
from joserfc.errors import ExpiredTokenError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from ...domain.access import Principal, principal_from_claims
from ...domain.errors import UpstreamUnavailable

FORBIDDEN_ALGORITHMS = {"none", "HS256", "HS384", "HS512"}


class InvalidToken(Exception):
    """The bearer token cannot be accepted; ``description`` is safe to send back."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Principal: ...


class KeySource(Protocol):
    async def key_set(self, kid: str | None, refetch: bool) -> KeySet:
        """The issuer's public keys; with ``refetch``, fetched again if ``kid`` is not among them
        (subject to the source's rate limit)."""
        ...


class RemoteJwks:
    """An OpenID provider's keys, found through its discovery document and cached."""

    def __init__(self, http: httpx.AsyncClient, issuer: str, discovery_url: str | None = None,
                 cache_s: float = 3600.0, refetch_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.http = http
        self.issuer = issuer.rstrip("/")
        self.discovery_url = discovery_url or f"{self.issuer}/.well-known/openid-configuration"
        self.cache_s = cache_s
        self.refetch_s = refetch_s
        self.clock = clock
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._kids: set[str] = set()
        self._fetched_at = float("-inf")
        self.fetches = 0

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            self._metadata = await self._get_json(self.discovery_url)
            if str(self._metadata.get("issuer", "")).rstrip("/") != self.issuer:
                self._metadata = None
                raise UpstreamUnavailable("the discovery document names another issuer")
        return self._metadata

    async def key_set(self, kid: str | None, refetch: bool) -> KeySet:
        now = self.clock()
        stale = self._keys is None or now - self._fetched_at > self.cache_s
        unknown = kid is not None and kid not in self._kids and refetch and now - self._fetched_at >= self.refetch_s
        if stale or unknown:
            try:
                await self._fetch()
            except UpstreamUnavailable:
                if self._keys is None:
                    raise
        assert self._keys is not None
        return self._keys

    async def _fetch(self) -> None:
        jwks_uri = (await self.metadata()).get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise UpstreamUnavailable("the discovery document has no jwks_uri")
        data = await self._get_json(jwks_uri)
        self.fetches += 1
        try:
            keys = KeySet.import_key_set(data)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise UpstreamUnavailable("the provider's JWKS cannot be read") from exc
        self._keys = keys
        self._kids = {str(k.get("kid")) for k in data.get("keys", []) if isinstance(k, dict) and k.get("kid")}
        self._fetched_at = self.clock()

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = await self.http.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise UpstreamUnavailable(f"the identity provider did not answer ({type(exc).__name__})") from exc
        if not isinstance(data, dict):
            raise UpstreamUnavailable("the identity provider sent no JSON object")
        return data


class LocalKeys:
    """The built-in issuer's own published keys (``services.issuer.KeyRing``)."""

    def __init__(self, key_set: Callable[[str | None, bool], Awaitable[KeySet]]) -> None:
        self._key_set = key_set

    async def key_set(self, kid: str | None, refetch: bool) -> KeySet:
        return await self._key_set(kid, refetch)


class _Remembered:
    """Verified tokens until they expire; keyed by a hash so no token sits in memory as a key."""

    def __init__(self, size: int = 4096, clock: Callable[[], float] = time.time) -> None:
        self.size = size
        self.clock = clock
        self._items: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()

    def recall(self, token: str) -> tuple[bytes, Principal | None]:
        """The token's cache key, and its principal if it was verified and has not expired since."""
        key = hashlib.sha256(token.encode()).digest()
        return key, self.get(key)

    def get(self, key: bytes) -> Principal | None:
        item = self._items.get(key)
        if item is None:
            return None
        principal, until = item
        if self.clock() >= until:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return principal

    def put(self, key: bytes, principal: Principal, until: float) -> None:
        self._items[key] = (principal, until)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


class JwtVerifier:
    """Verifies JWT access tokens of one issuer for one audience."""

    def __init__(self, keys: KeySource, issuer: str, audience: str, algorithms: list[str],
                 leeway_s: int = 30, patient_claim: str = "patient", clock: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.algorithms = [a for a in algorithms if a not in FORBIDDEN_ALGORITHMS]
        self.leeway_s = leeway_s
        self.patient_claim = patient_claim
        self.clock = clock
        self._remembered = _Remembered(clock=clock)

    async def verify(self, token: str) -> Principal:
        key, known = self._remembered.recall(token)
        if known is not None:
            return known
        claims = await self.claims(token)
        principal = principal_from_claims(claims, self.patient_claim)
        self._remembered.put(key, principal, float(claims["exp"]) + self.leeway_s)
        return principal

    async def claims(self, token: str) -> dict[str, Any]:
        """The claims of a token whose signature, algorithm, iss, aud and times check out."""
        try:
            header = jws.extract_compact(token.encode()).headers()
        except (JoseError, ValueError, TypeError) as exc:
            raise InvalidToken("the token is not a JWT") from exc
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise InvalidToken(f"the token's algorithm {alg!r} is not accepted")
        kid = header.get("kid")
        kid = kid if isinstance(kid, str) else None
        decoded = None
        for refetch in (False, True):
            keys = await self.keys.key_set(kid, refetch)
            try:
                decoded = jwt.decode(token, keys, algorithms=self.algorithms)
                break
            except InvalidKeyIdError:
                continue
            except (JoseError, ValueError, TypeError) as exc:
                raise InvalidToken("the token's signature does not verify") from exc
        if decoded is None:
            raise InvalidToken("the token is signed with a key the issuer does not publish")
        claims = dict(decoded.claims)
        self._check_claims(claims)
        return claims

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(self.clock()), leeway=self.leeway_s,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.audience},
            exp={"essential": True},
        )
        try:
            registry.validate(dict(claims))
        except ExpiredTokenError as exc:
            raise InvalidToken("the token has expired") from exc
        except JoseError as exc:
            claim = getattr(exc, "claim", None) or str(exc).rsplit(":", 1)[-1].strip(" '\"")
            raise InvalidToken(f"the token's {claim} claim is not acceptable") from exc
        iat = claims.get("iat")
        if isinstance(iat, int | float) and iat > self.clock() + self.leeway_s:
            raise InvalidToken("the token was issued in the future")


class Introspector:
    """Opaque tokens checked with the provider's RFC 7662 introspection endpoint."""

    def __init__(self, http: httpx.AsyncClient, endpoint: str | Callable[[], Awaitable[str]], client_id: str,
                 client_secret: str, audience: str, issuer: str | None, cache_s: float = 60.0,
                 patient_claim: str = "patient", clock: Callable[[], float] = time.time) -> None:
        self.http = http
        self.endpoint = endpoint
        self.auth = (client_id, client_secret)
        self.audience = audience
        self.issuer = issuer.rstrip("/") if issuer else None
        self.cache_s = cache_s
        self.patient_claim = patient_claim
        self.clock = clock
        self._remembered = _Remembered(clock=clock)

    async def verify(self, token: str) -> Principal:
        key, known = self._remembered.recall(token)
        if known is not None:
            return known
        endpoint = self.endpoint if isinstance(self.endpoint, str) else await self.endpoint()
        try:
            response = await self.http.post(endpoint, data={"token": token, "token_type_hint": "access_token"},
                                            auth=self.auth, headers={"Accept": "application/json"})
            response.raise_for_status()
            answer = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise UpstreamUnavailable(f"token introspection failed ({type(exc).__name__})") from exc
        if not isinstance(answer, dict) or answer.get("active") is not True:
            raise InvalidToken("the token is not active")
        now = self.clock()
        exp = answer.get("exp")
        if isinstance(exp, int | float) and exp <= now:
            raise InvalidToken("the token has expired")
        audiences = answer.get("aud")
        if audiences is not None:
            audiences = [audiences] if isinstance(audiences, str) else audiences
            if self.audience not in audiences:
                raise InvalidToken("the token's aud claim is not acceptable")
        if self.issuer and answer.get("iss") and str(answer["iss"]).rstrip("/") != self.issuer:
            raise InvalidToken("the token's iss claim is not acceptable")
        principal = principal_from_claims(answer, self.patient_claim)
        until = now + self.cache_s
        if isinstance(exp, int | float):
            until = min(until, float(exp))
        if self.cache_s > 0:
            self._remembered.put(key, principal, until)
        return principal
