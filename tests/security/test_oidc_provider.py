"""pacsbridge as a resource server for a real OpenID provider (npm oidc-provider on loopback): JWT
access tokens checked against its discovery document and JWKS (key rotation included), and opaque
tokens checked by RFC 7662 introspection."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from pydicom.uid import generate_uid

from pacsbridge.adapters.auth.tokens import RemoteJwks
from pacsbridge.settings import Settings

from ..support.dicom import instance
from ..support.http import stow_body
from ..support.oidc import OidcProvider, oidc_provider
from ..support.servers import RunningServer, serve

CLIENTS = [
    {"client_id": "reader", "client_secret": "reader-secret", "scopes": "dicomweb.read"},
    {"client_id": "writer", "client_secret": "writer-secret", "scopes": "dicomweb.read dicomweb.write"},
    {"client_id": "smart", "client_secret": "smart-secret", "scopes": "system/ImagingStudy.rs"},
    {"client_id": "chart-b", "client_secret": "chart-secret", "scopes": "patient/ImagingStudy.rs",
     "patient": "PAT-B"},
    {"client_id": "opaque", "client_secret": "opaque-secret", "scopes": "dicomweb.read", "opaque": True,
     "patient": "PAT-B"},
    {"client_id": "opaque-writer", "client_secret": "ow-secret", "scopes": "dicomweb.read dicomweb.write",
     "opaque": True},
    {"client_id": "pacsbridge", "client_secret": "introspect-secret", "scopes": "openid"},
]


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with oidc_provider(CLIENTS) as running:
        yield running


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"}


def load(server: RunningServer, token: str) -> None:
    for pid in ("PAT-A", "PAT-B"):
        body, content_type = stow_body([instance(generate_uid(), generate_uid(), PatientID=pid)])
        r = httpx.post(server.dicomweb + "/studies", content=body,
                       headers={**bearer(token), "Content-Type": content_type})
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def oidc_server(provider: OidcProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("oidc") / "data", storage={"fsync": False},
                        auth={"mode": "oidc", "issuer": provider.issuer, "jwks_refetch_seconds": 0})
    with serve(settings) as server:
        load(server, provider.token("writer"))
        yield server


def patients(server: RunningServer, token: str) -> set[str]:
    r = httpx.get(server.dicomweb + "/studies", headers=bearer(token))
    assert r.status_code == 200, r.text
    return {row["00100020"]["Value"][0] for row in r.json()}


def provider_key(provider: OidcProvider) -> RSAKey:
    newest = max(provider.workdir.glob("jwks-*.json"), key=lambda p: p.stat().st_mtime)
    return RSAKey.import_key(json.loads(newest.read_text())["keys"][0])


def forged(provider: OidcProvider, **claims: object) -> str:
    """Signed with the provider's real current key, with claims it would never issue."""
    key = provider_key(provider)
    now = int(time.time())
    body = {"iss": provider.issuer, "aud": "pacsbridge", "sub": "x", "client_id": "x", "scope": "dicomweb.read",
            "iat": now, "exp": now + 300, **claims}
    return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "at+jwt"}, body, key)


def test_provider_tokens_and_their_scopes(provider: OidcProvider, oidc_server: RunningServer) -> None:
    assert patients(oidc_server, provider.token("reader")) == {"PAT-A", "PAT-B"}
    assert patients(oidc_server, provider.token("smart")) == {"PAT-A", "PAT-B"}
    no_write = httpx.post(oidc_server.dicomweb + "/studies", content=b"--b--\r\n", headers={
        **bearer(provider.token("reader")), "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert no_write.status_code == 403 and "insufficient_scope" in no_write.headers["WWW-Authenticate"]
    assert httpx.get(oidc_server.dicomweb + "/studies").status_code == 401


def test_the_patient_claim_limits_every_search(provider: OidcProvider, oidc_server: RunningServer) -> None:
    token = provider.token("chart-b")
    assert patients(oidc_server, token) == {"PAT-B"}
    r = httpx.get(oidc_server.dicomweb + "/series", headers=bearer(token))
    assert r.status_code == 200 and "PAT-A" not in r.text


@pytest.mark.parametrize(("case", "claims"), [
    ("expired", {"iat": int(time.time()) - 900, "exp": int(time.time()) - 600}),
    ("not yet valid", {"nbf": int(time.time()) + 600}),
    ("wrong audience", {"aud": "another-api"}),
    ("wrong issuer", {"iss": "http://127.0.0.1:1/other"}),
])
def test_claims_are_checked_on_provider_signed_tokens(provider: OidcProvider, oidc_server: RunningServer,
                                                      case: str, claims: dict[str, object]) -> None:
    r = httpx.get(oidc_server.dicomweb + "/studies", headers=bearer(forged(provider, **claims)))
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"], case


def test_key_rotation_at_the_provider(provider: OidcProvider, oidc_server: RunningServer) -> None:
    """The provider drops its key: tokens it signed stop working, new ones work at once (unknown kid
    makes pacsbridge fetch the JWKS again)."""
    before = provider.token("reader")
    assert patients(oidc_server, before) == {"PAT-A", "PAT-B"}
    provider.rotate_keys()
    after = provider.token("reader")
    assert patients(oidc_server, after) == {"PAT-A", "PAT-B"}
    # This server remembers ``before`` as verified until it expires; a server that meets it first
    # finds its key gone from the provider's JWKS.
    with serve(oidc_server.settings) as fresh:
        assert httpx.get(fresh.dicomweb + "/studies", headers=bearer(before)).status_code == 401
        assert patients(fresh, after) == {"PAT-A", "PAT-B"}


def test_unknown_kids_refetch_at_most_once_per_interval(provider: OidcProvider) -> None:
    now = [1000.0]

    async def run() -> int:
        async with httpx.AsyncClient() as http:
            keys = RemoteJwks(http, provider.issuer, refetch_s=30, clock=lambda: now[0])
            await keys.key_set(None, refetch=False)
            for _ in range(20):  # a flood of forged kids
                await keys.key_set("forged-kid", refetch=True)
            now[0] += 31
            await keys.key_set("forged-kid", refetch=True)
            return keys.fetches

    assert anyio.run(run) == 2


def test_opaque_tokens_by_introspection(provider: OidcProvider, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", storage={"fsync": False}, auth={
        "mode": "introspection", "issuer": provider.issuer,
        "introspection": {"client_id": "pacsbridge", "client_secret": "introspect-secret"}})
    with serve(settings) as server:
        load(server, provider.token("opaque-writer"))
        token = provider.token("opaque")
        assert token.count(".") != 2  # not a JWT
        assert patients(server, token) == {"PAT-B"}  # the patient claim came from introspection
        assert patients(server, provider.token("opaque-writer")) == {"PAT-A", "PAT-B"}
        assert httpx.get(server.dicomweb + "/studies", headers=bearer("no-such-token")).status_code == 401
