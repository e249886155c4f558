"""One HTTP client per remote we call (an upstream archive, a notification subscriber), authenticated.

See: RFC 7617 (basic), RFC 6750 §2.1 (bearer header), RFC 6749 §4.4 (client credentials).

Rules:
1. One httpx client per remote, with its own connection limit and timeouts; redirects are not followed.
2. Authentication is none, basic, a fixed bearer token, or a client-credentials token kept by authlib:
   fetched when first needed, renewed 30 s before it expires, and fetched again once when the remote
   answers 401 (unless the body is a stream, which cannot be sent twice).
3. httpx errors are translated here, once: unreachable → UpstreamUnavailable, no answer in time →
   UpstreamTimeout, anything else (a broken exchange, a refused token request) → UpstreamFailed. The
   message names the remote, never a credential.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client

from ..domain.errors import PacsbridgeError, UpstreamFailed, UpstreamTimeout, UpstreamUnavailable

LEEWAY_S = 30


@dataclass(frozen=True)
class ClientCredentials:
    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None
    audience: str | None = None


@dataclass(frozen=True)
class Auth:
    """How a remote wants us to authenticate: at most one of these; none of them is no authentication."""

    basic: tuple[str, str] | None = None
    bearer: str | None = None
    client_credentials: ClientCredentials | None = None

    def __repr__(self) -> str:  # dataclass' repr would print the secrets into logs and tracebacks
        kind = "basic" if self.basic else "bearer" if self.bearer else \
            "client_credentials" if self.client_credentials else "none"
        return f"Auth({kind})"


class AuthorizedClient:
    """An httpx client for one remote; ``remote`` is how error messages name it ("upstream pacs")."""

    def __init__(self, remote: str, base_url: str, auth: Auth | None = None, *, timeout_s: float = 30,
                 connect_timeout_s: float = 5, max_connections: int = 8,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.remote = remote
        self.auth = auth = auth or Auth()
        timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        options: dict[str, Any] = {
            "base_url": base_url.rstrip("/"),
            "timeout": timeout,
            "limits": httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            "follow_redirects": False,
            "transport": transport,
        }
        if auth.basic:
            options["auth"] = httpx.BasicAuth(*auth.basic)
        if auth.bearer:
            options["headers"] = {"Authorization": f"Bearer {auth.bearer}"}
        self.client = httpx.AsyncClient(**options)
        cc = auth.client_credentials
        # authlib keeps the token; requests carry it as a plain header, because its auth flow rewrites a
        # streamed (chunked) body's headers into an invalid request.
        self.tokens = None if cc is None else AsyncOAuth2Client(
            client_id=cc.client_id, client_secret=cc.client_secret, scope=cc.scope, token_endpoint=cc.token_url,
            grant_type="client_credentials", leeway=LEEWAY_S, timeout=timeout, follow_redirects=False)
        self._token_lock = anyio.Lock()

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        """A streamed request (``path`` relative to the base URL, or absolute) with failures translated,
        also those raised while the caller reads the body inside the block."""
        attempts = 2 if self.tokens is not None and not _is_stream(kwargs.get("content")) else 1
        for attempt in range(1, attempts + 1):
            headers = dict(kwargs.pop("headers", None) or {})
            bearer = await self._token(renew=attempt == 2)
            if bearer:
                headers["Authorization"] = f"Bearer {bearer}"
            kwargs["headers"] = headers
            try:
                async with self.client.stream(method, path, **kwargs) as response:
                    if response.status_code == 401 and attempt < attempts:
                        continue
                    yield response
                    return
            except httpx.HTTPError as exc:
                raise self.failure(exc) from None

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request whose answer is read whole (for small bodies)."""
        async with self.stream(method, path, **kwargs) as response:
            await response.aread()
        return response

    async def close(self) -> None:
        await self.client.aclose()
        if self.tokens is not None:
            await self.tokens.aclose()

    def failure(self, exc: httpx.HTTPError, what: str = "it") -> PacsbridgeError:
        """The domain error for an httpx error in an exchange with this remote (``what``: which part)."""
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamTimeout(f"{self.remote} did not answer in time ({what}: {type(exc).__name__})")
        if isinstance(exc, httpx.ConnectError):
            return UpstreamUnavailable(f"{self.remote} cannot be reached ({what})")
        return UpstreamFailed(f"{self.remote} broke off the exchange ({what}: {type(exc).__name__})")

    async def _token(self, renew: bool) -> str | None:
        """The client-credentials access token, fetched when missing, about to expire or ``renew``."""
        tokens, cc = self.tokens, self.auth.client_credentials
        if tokens is None or cc is None:
            return None
        async with self._token_lock:
            token = tokens.token
            if renew or not token or token.is_expired(leeway=LEEWAY_S):
                extra = {"audience": cc.audience} if cc.audience else {}
                try:
                    token = await tokens.fetch_token(cc.token_url, grant_type="client_credentials", **extra)
                except httpx.HTTPError as exc:
                    raise self.failure(exc, "its token endpoint") from None
                except Exception as exc:  # authlib's OAuthError: the provider refused our client
                    raise UpstreamFailed(f"{self.remote}: no token from its token endpoint "
                                         f"({type(exc).__name__})") from None
            return str(token["access_token"])


def _is_stream(content: object) -> bool:
    return content is not None and not isinstance(content, bytes | str)
