"""Signing a browser in at the site's OpenID provider: authorization code flow with PKCE.

See: OpenID Connect Core 1.0 §3.1 (code flow, ID token validation §3.1.3.7), RFC 7636 (PKCE S256),
RFC 9700 (OAuth 2.0 security BCP: state, nonce and PKCE together; exact redirect URI).

Rules:
1. We are a client of the provider (``auth.web.client_id``), public with PKCE or confidential with a
   secret. ``state``, ``nonce`` and the PKCE verifier are random per sign-in and kept server-side.
2. The ID token says who signed in (checked like any JWT: signature from the provider's JWKS, ``iss``,
   ``aud`` = our client_id, ``exp``, and ``nonce`` = ours). The access token says what the session may do:
   it is checked by the deployment's own token verifier, exactly as a bearer token would be, so a page
   gets no more than the same user's API calls would (scopes and patient context).
3. Every refusal is a ``SignInRefused`` whose reason names the step, never a token.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from ...domain.access import Principal
from ...domain.errors import UpstreamUnavailable
from ...services.web_login import SignInRefused
from .tokens import InvalidToken, JwtVerifier, RemoteJwks, TokenVerifier


@dataclass(frozen=True)
class OidcClient:
    """How we are registered at the provider."""

    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    client_secret: str | None = None
    extra_params: tuple[tuple[str, str], ...] = ()  # added to the authorization and token requests


class OidcSignIn:
    def __init__(self, http: httpx.AsyncClient, provider: RemoteJwks, client: OidcClient,
                 access: TokenVerifier, algorithms: list[str], leeway_s: int) -> None:
        self.http = http
        self.provider = provider
        self.client = client
        self.access = access
        self.id_tokens = JwtVerifier(provider, provider.issuer, client.client_id, algorithms, leeway_s)

    async def start(self, next_page: str) -> tuple[str, dict[str, str]]:
        """The provider's authorization URL to send the browser to, and what to keep until it returns."""
        endpoint = (await self.provider.metadata()).get("authorization_endpoint")
        if not isinstance(endpoint, str):
            raise UpstreamUnavailable("the provider publishes no authorization_endpoint")
        kept = {"state": secrets.token_urlsafe(24), "nonce": secrets.token_urlsafe(24),
                "verifier": secrets.token_urlsafe(48), "next": next_page}
        params = {
            "response_type": "code", "client_id": self.client.client_id, "redirect_uri": self.client.redirect_uri,
            "scope": " ".join(self.client.scopes), "state": kept["state"], "nonce": kept["nonce"],
            "code_challenge": create_s256_code_challenge(kept["verifier"]), "code_challenge_method": "S256",
            **dict(self.client.extra_params),
        }
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}", kept

    async def finish(self, code: str, kept: dict[str, str]) -> tuple[Principal, str, str | None]:
        """The principal, display name and ID token of the user the provider sent back with ``code``."""
        answer = await self._exchange(code, kept["verifier"])
        id_token, access_token = answer.get("id_token"), answer.get("access_token")
        if not isinstance(id_token, str) or not isinstance(access_token, str):
            raise SignInRefused("the provider's token answer lacks an id_token or access_token")
        try:
            claims = await self.id_tokens.claims(id_token)
        except InvalidToken as exc:
            raise SignInRefused(f"the ID token is not acceptable: {exc.description}") from exc
        if not secrets.compare_digest(str(claims.get("nonce", "")), kept["nonce"]):
            raise SignInRefused("the ID token's nonce is not the one we sent")
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.client.client_id:
            raise SignInRefused("the ID token has several audiences and another azp")
        try:
            principal = await self.access.verify(access_token)
        except InvalidToken as exc:
            raise SignInRefused(f"the access token is not accepted for pacsbridge: {exc.description}") from exc
        subject = str(claims.get("sub") or principal.subject)
        name = _display_name(claims) or subject
        return replace(principal, subject=subject), name, id_token

    async def _exchange(self, code: str, verifier: str) -> dict[str, Any]:
        endpoint = (await self.provider.metadata()).get("token_endpoint")
        if not isinstance(endpoint, str):
            raise UpstreamUnavailable("the provider publishes no token_endpoint")
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.client.redirect_uri,
                "code_verifier": verifier, **dict(self.client.extra_params)}
        auth: httpx.BasicAuth | None = None
        if self.client.client_secret is None:
            form["client_id"] = self.client.client_id
        else:
            auth = httpx.BasicAuth(self.client.client_id, self.client.client_secret)
        try:
            response = await self.http.post(endpoint, data=form, auth=auth or httpx.USE_CLIENT_DEFAULT,
                                            headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"the provider's token endpoint did not answer ({type(exc).__name__})") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            raise SignInRefused(f"the token endpoint refused the code: HTTP {response.status_code} {error or '-'}")
        return body

    async def end_session_url(self, id_token: str | None, after: str | None) -> str | None:
        """RP-initiated logout at the provider (OpenID Connect RP-Initiated Logout 1.0), if it offers it."""
        try:
            endpoint = (await self.provider.metadata()).get("end_session_endpoint")
        except UpstreamUnavailable:
            return None
        if not isinstance(endpoint, str):
            return None
        params = {"client_id": self.client.client_id}
        if id_token:
            params["id_token_hint"] = id_token
        if after:
            params["post_logout_redirect_uri"] = after
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}"


def _display_name(claims: dict[str, Any]) -> str | None:
    for claim in ("name", "preferred_username", "email"):
        value = claims.get(claim)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None
