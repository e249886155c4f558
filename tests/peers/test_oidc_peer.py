"""The OpenID provider peer (npm oidc-provider) issues the tokens pacsbridge must validate.

These tests check the peer itself, without pacsbridge: token format (RFC 9068), claims, introspection
and key rotation, verifying signatures with joserfc against the JWKS the provider publishes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError
from joserfc.jwk import KeySet

from ..support.oidc import OidcProvider, oidc_provider

AUDIENCE = "pacsbridge"
TTL = 300
SYSTEM = {"client_id": "system-client", "client_secret": "system-secret",
          "scopes": "dicomweb.read dicomweb.write system/ImagingStudy.rs"}
PATIENT = {"client_id": "patient-client", "client_secret": "patient-secret",
           "scopes": "dicomweb.read patient/ImagingStudy.rs", "patient": "PAT-1"}
OPAQUE = {"client_id": "opaque-client", "client_secret": "opaque-secret", "scopes": "dicomweb.read",
          "opaque": True, "patient": "PAT-2"}


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with oidc_provider([SYSTEM, PATIENT, OPAQUE], audience=AUDIENCE, token_ttl=TTL,
                       viewer_redirect_uris=["http://127.0.0.1:9/callback"]) as running:
        yield running


def published_keys(provider: OidcProvider) -> KeySet:
    """The JWKS found through discovery, as any relying party would fetch it."""
    discovery = httpx.get(provider.issuer + "/.well-known/openid-configuration", timeout=10).json()
    assert discovery["issuer"] == provider.issuer
    return KeySet.import_key_set(httpx.get(discovery["jwks_uri"], timeout=10).json())


def verified(token: str, keys: KeySet) -> jwt.Token:
    return jwt.decode(token, keys, algorithms=["RS256"])


def check_access_token(decoded: jwt.Token, provider: OidcProvider, client: dict[str, Any], scope: str) -> None:
    assert decoded.header["typ"] == "at+jwt"
    assert decoded.header["alg"] == "RS256"
    assert decoded.header["kid"] == provider.kid
    claims = decoded.claims
    assert claims["iss"] == provider.issuer
    assert claims["aud"] == AUDIENCE
    assert claims["client_id"] == claims["sub"] == client["client_id"]
    assert claims["scope"] == scope
    now = time.time()
    assert claims["iat"] <= now + 5
    assert claims["exp"] - claims["iat"] == TTL
    assert claims["exp"] > now
    assert claims["jti"]
    jwt.JWTClaimsRegistry(iss={"essential": True, "value": provider.issuer},
                          aud={"essential": True, "value": AUDIENCE}).validate(claims)


def test_client_credentials_jwt_access_tokens(provider: OidcProvider) -> None:
    keys = published_keys(provider)

    system = verified(provider.token("system-client", "dicomweb.read system/ImagingStudy.rs"), keys)
    check_access_token(system, provider, SYSTEM, "dicomweb.read system/ImagingStudy.rs")
    assert "patient" not in system.claims

    patient = verified(provider.token("patient-client", "patient/ImagingStudy.rs"), keys)
    check_access_token(patient, provider, PATIENT, "patient/ImagingStudy.rs")
    assert patient.claims["patient"] == "PAT-1"

    everything = verified(provider.token("system-client"), keys)
    assert set(everything.claims["scope"].split()) == set(SYSTEM["scopes"].split())


def test_client_secret_post_and_scope_limits(provider: OidcProvider) -> None:
    answer = provider.token_response("patient-client", "dicomweb.read", auth="post")
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] == TTL
    assert answer["scope"] == "dicomweb.read"
    assert verified(answer["access_token"], published_keys(provider)).claims["patient"] == "PAT-1"
    with pytest.raises(RuntimeError, match="invalid_scope"):
        provider.token("system-client", "patient/ImagingStudy.rs")
    refused = httpx.post(provider.token_endpoint, data={"grant_type": "client_credentials"},
                         auth=("system-client", "wrong-secret"), timeout=10)
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"


def test_introspection(provider: OidcProvider) -> None:
    opaque = provider.token("opaque-client")
    assert opaque.count(".") == 0
    info = provider.introspect(opaque, "system-client")
    assert info["active"] is True
    assert info["client_id"] == "opaque-client"
    assert info["aud"] == AUDIENCE
    assert info["iss"] == provider.issuer
    assert info["scope"] == "dicomweb.read"
    assert info["patient"] == "PAT-2"
    assert info["exp"] - info["iat"] == TTL
    assert provider.introspect("not-a-token", "system-client") == {"active": False}
    # oidc-provider keeps no JWT access tokens, so it refuses to introspect one.
    with pytest.raises(RuntimeError, match="unsupported_token_type"):
        provider.introspect(provider.token("system-client"), "patient-client")


def test_discovery_lists_the_viewer_flow(provider: OidcProvider) -> None:
    discovery = provider.discovery
    assert provider.introspection_endpoint == discovery["introspection_endpoint"]
    assert "authorization_code" in discovery["grant_types_supported"]
    assert "client_credentials" in discovery["grant_types_supported"]
    assert discovery["code_challenge_methods_supported"] == ["S256"]
    assert {"dicomweb.read", "patient/ImagingStudy.rs"} <= set(discovery["scopes_supported"])


def test_key_rotation(provider: OidcProvider) -> None:
    old_keys = published_keys(provider)
    old_kid = provider.kid
    assert [key.kid for key in old_keys.keys] == [old_kid]
    old_token = provider.token("system-client", "dicomweb.read")
    verified(old_token, old_keys)

    new_kid = provider.rotate_keys()

    new_keys = published_keys(provider)
    assert new_kid != old_kid
    assert [key.kid for key in new_keys.keys] == [new_kid]
    new_token = provider.token("system-client", "dicomweb.read")
    check_access_token(verified(new_token, new_keys), provider, SYSTEM, "dicomweb.read")
    with pytest.raises(InvalidKeyIdError):
        verified(old_token, new_keys)
    (new_key,) = new_keys.keys
    with pytest.raises(BadSignatureError):
        jwt.decode(old_token, new_key, algorithms=["RS256"])
