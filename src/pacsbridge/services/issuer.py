"""The built-in token issuer, for sites without an identity provider: client_credentials only.

See: RFC 6749 §4.4 (client credentials), §2.3.1 (client_secret_basic/post); RFC 7523 and SMART v2
Backend Services (private_key_jwt); RFC 9068 (JWT access tokens); standards.md §F.3.

Rules:
1. Client secrets are kept as scrypt hashes and compared in constant time; the secret is shown once,
   when the client is created.
2. Signing keys are generated on first start and kept in the records database, so every worker and
   every instance sharing the database signs and verifies with the same keys. ``rotate`` adds a new key
   and retires the others; a retired key stays published (JWKS) until the tokens it signed have expired.
3. A private_key_jwt assertion is accepted once: its ``jti`` is remembered until it expires, and it may
   not live longer than five minutes.
4. Scopes granted are those asked for that the client may have (all of them when none are asked for);
   asking only for scopes it may not have is ``invalid_scope``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey

from ..domain.clock import utc_stamp
from ..domain.scopes import narrow
from .ports import ClientRecord, SecurityRecords, SigningKeyRecord

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ["RS384", "ES384", "RS256", "ES256", "PS384", "PS256"]
ASSERTION_MAX_SECONDS = 300
_SCRYPT = (2**14, 8, 1)


class OAuthError(Exception):
    """An RFC 6749 §5.2 error answer: ``error`` code, a description without secrets, HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status


def hash_secret(secret: str) -> str:
    """A salted scrypt hash of a client secret, as stored."""
    n, r, p = _SCRYPT
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        computed = hashlib.scrypt(secret.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                                  dklen=len(_unb64(digest)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, _unb64(digest))


def new_client_secret() -> str:
    return secrets.token_urlsafe(32)


def new_signing_key(algorithm: str, now: datetime | None = None) -> SigningKeyRecord:
    """A fresh private key for ``algorithm`` (ES256 or RS256)."""
    kid = secrets.token_urlsafe(12)
    parameters = {"kid": kid, "alg": algorithm, "use": "sig"}
    key: ECKey | RSAKey
    if algorithm == "ES256":
        key = ECKey.generate_key("P-256", parameters=parameters, private=True)
    elif algorithm == "RS256":
        key = RSAKey.generate_key(2048, parameters=parameters, private=True)
    else:
        raise ValueError(f"unsupported signing algorithm {algorithm}")
    return SigningKeyRecord(kid=kid, algorithm=algorithm, private_jwk=dict(key.as_dict(private=True)),
                            created_at=utc_stamp(now or datetime.now(UTC)))


class KeyRing:
    """The issuer's signing keys, read from the records and cached briefly (another worker or the
    ``keys rotate`` command may add one)."""

    def __init__(self, records: SecurityRecords, algorithm: str, token_lifetime_s: int,
                 refresh_s: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        self.records = records
        self.algorithm = algorithm
        self.token_lifetime_s = token_lifetime_s
        self.refresh_s = refresh_s
        self.clock = clock
        self._keys: list[SigningKeyRecord] = []
        self._loaded_at = float("-inf")

    async def _load(self, force: bool = False) -> list[SigningKeyRecord]:
        if force or self.clock() - self._loaded_at > self.refresh_s:
            self._keys = await self.records.signing_keys()
            self._loaded_at = self.clock()
        return self._keys

    async def ensure(self) -> None:
        """Create the first signing key if there is none (first start)."""
        if not [k for k in await self._load(force=True) if k.retired_at is None]:
            await self.records.add_signing_key(new_signing_key(self.algorithm), retire_others_at=None)
            await self._load(force=True)

    async def rotate(self) -> SigningKeyRecord:
        """A new signing key; the old ones are retired and pruned once their tokens have expired."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        key = new_signing_key(self.algorithm, now)
        await self.records.add_signing_key(key, retire_others_at=utc_stamp(now))
        horizon = datetime.fromtimestamp(self.clock() - 2 * self.token_lifetime_s, UTC)
        await self.records.drop_signing_keys(utc_stamp(horizon))
        await self._load(force=True)
        return key

    async def signing_key(self) -> tuple[SigningKeyRecord, ECKey | RSAKey]:
        active = [k for k in await self._load() if k.retired_at is None]
        if not active:
            active = [k for k in await self._load(force=True) if k.retired_at is None]
        if not active:
            raise OAuthError("server_error", "the issuer has no signing key", 500)
        record = max(active, key=lambda k: (k.created_at, k.kid))
        return record, _import(record.private_jwk)

    async def public_jwks(self) -> dict[str, object]:
        """Keys that sign, and retired keys whose tokens may still be valid."""
        horizon = datetime.fromtimestamp(self.clock() - self.token_lifetime_s - 60, UTC)
        keys = [k for k in await self._load() if k.retired_at is None or k.retired_at >= utc_stamp(horizon)]
        return {"keys": [_import(k.private_jwk).as_dict(private=False) for k in keys]}

    async def verification_keys(self, kid: str | None, refetch: bool) -> KeySet:
        """The published keys as a KeySet; reloaded at once when ``kid`` is unknown and ``refetch``."""
        jwks = await self.public_jwks()
        known = {k.get("kid") for k in jwks["keys"]}  # type: ignore[union-attr]
        if kid is not None and kid not in known and refetch:
            await self._load(force=True)
            jwks = await self.public_jwks()
        return KeySet.import_key_set(jwks)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ClientAuth:
    """How the client authenticated at the token endpoint (RFC 6749 §2.3, RFC 7523 §2.2)."""

    method: str  # client_secret_basic | client_secret_post | private_key_jwt | none
    client_id: str | None = None
    secret: str | None = None
    assertion: str | None = None


class TokenIssuer:
    """Issues JWT access tokens for the client_credentials grant."""

    def __init__(self, records: SecurityRecords, keys: KeyRing, issuer: str, audience: str, lifetime_s: int,
                 declared: Iterable[ClientRecord] = (), clock: Callable[[], float] = time.time) -> None:
        self.records = records
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.lifetime_s = lifetime_s
        self.declared = {c.client_id: c for c in declared}
        self.clock = clock

    async def client(self, client_id: str) -> ClientRecord | None:
        return self.declared.get(client_id) or await self.records.client(client_id)

    async def token(self, grant_type: str | None, scope: str | None, auth: ClientAuth,
                    token_endpoints: set[str]) -> dict[str, object]:
        """The token response (RFC 6749 §5.1) or an OAuthError."""
        if grant_type != "client_credentials":
            raise OAuthError("unsupported_grant_type", "only client_credentials is supported here")
        client = await self._authenticate(auth, token_endpoints)
        requested = frozenset(scope.split()) if scope else client.scopes
        granted = narrow(requested, client.scopes)
        if not granted:
            raise OAuthError("invalid_scope", "none of the requested scopes is allowed for this client")
        record, key = await self.keys.signing_key()
        now = int(self.clock())
        claims = {
            "iss": self.issuer, "sub": client.client_id, "aud": self.audience, "client_id": client.client_id,
            "scope": " ".join(sorted(granted)), "iat": now, "nbf": now, "exp": now + self.lifetime_s,
            "jti": secrets.token_urlsafe(16),
        }
        header = {"alg": record.algorithm, "kid": record.kid, "typ": "at+jwt"}
        token = jwt.encode(header, claims, key, algorithms=[record.algorithm])
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime_s,
                "scope": claims["scope"]}

    async def _authenticate(self, auth: ClientAuth, token_endpoints: set[str]) -> ClientRecord:
        if auth.method == "private_key_jwt":
            return await self._authenticate_assertion(auth, token_endpoints)
        if auth.method not in ("client_secret_basic", "client_secret_post") or not auth.client_id:
            raise OAuthError("invalid_client", "client authentication is required", 401)
        client = await self.client(auth.client_id)
        if (client is None or client.disabled or client.secret_hash is None or auth.secret is None
                or not verify_secret(auth.secret, client.secret_hash)):
            raise OAuthError("invalid_client", "unknown client or wrong secret", 401)
        return client

    async def _authenticate_assertion(self, auth: ClientAuth, token_endpoints: set[str]) -> ClientRecord:
        assert auth.assertion is not None
        issuer = _unverified_issuer(auth.assertion)
        if not isinstance(issuer, str) or (auth.client_id and auth.client_id != issuer):
            raise OAuthError("invalid_client", "the assertion's iss must be the client_id", 401)
        client = await self.client(issuer)
        if client is None or client.disabled or not client.jwks:
            raise OAuthError("invalid_client", "unknown client or no registered keys", 401)
        try:
            token = jwt.decode(auth.assertion, KeySet.import_key_set(client.jwks),  # type: ignore[arg-type]
                               algorithms=ASSERTION_ALGORITHMS)
        except (JoseError, ValueError) as exc:
            raise OAuthError("invalid_client", f"the assertion's signature does not verify ({_name(exc)})",
                             401) from exc
        claims = token.claims
        now = int(self.clock())
        audiences = claims.get("aud")
        audiences = [audiences] if isinstance(audiences, str) else audiences or []
        exp = claims.get("exp")
        problems = [
            claims.get("sub") != issuer and "sub must equal iss",
            not set(audiences) & token_endpoints and "aud must be the token endpoint",
            not isinstance(exp, int) and "exp is required",
            isinstance(exp, int) and exp < now - 30 and "the assertion has expired",
            isinstance(exp, int) and exp > now + ASSERTION_MAX_SECONDS + 30 and "exp is more than 5 minutes ahead",
            not isinstance(claims.get("jti"), str) and "jti is required",
        ]
        problem = next((p for p in problems if p), None)
        if problem:
            raise OAuthError("invalid_client", str(problem), 401)
        assert isinstance(exp, int)
        if not await self.records.use_assertion(f"{issuer} {claims['jti']}", exp):
            raise OAuthError("invalid_client", "this assertion (jti) was used before", 401)
        return client


def _unverified_issuer(assertion: str) -> object:
    """The ``iss`` of a compact JWS, read before verification only to find whose keys verify it."""
    import json

    try:
        payload = assertion.split(".")[1]
        return json.loads(_unb64(payload)).get("iss")
    except (IndexError, ValueError, AttributeError):
        return None


def _import(jwk: dict[str, object]) -> ECKey | RSAKey:
    if jwk.get("kty") == "EC":
        return ECKey.import_key(jwk)  # type: ignore[arg-type]
    return RSAKey.import_key(jwk)  # type: ignore[arg-type]


def _name(exc: Exception) -> str:
    return getattr(exc, "error", None) or type(exc).__name__


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
