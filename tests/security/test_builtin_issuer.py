"""The built-in issuer, used by an independent OAuth client (authlib over httpx): client_secret_basic,
client_secret_post and private_key_jwt (SMART Backend Services), discovery, JWKS and key rotation."""

from __future__ import annotations

import time
import uuid
import warnings

import anyio
import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from pacsbridge.services.ports import ClientRecord

from .conftest import SECRET, Closed

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # authlib announces its move to httpx2
    from authlib.integrations.httpx_client import OAuth2Client


def studies(closed: Closed, token: str) -> httpx.Response:
    return httpx.get(closed.server.dicomweb + "/studies", headers={"Authorization": f"Bearer {token}",
                                                                   "Accept": "application/dicom+json"})


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_authlib_client_gets_a_token_that_opens_dicomweb(closed: Closed, method: str) -> None:
    with OAuth2Client("reader", SECRET, scope="dicomweb.read", token_endpoint_auth_method=method) as client:
        token = client.fetch_token(closed.base + "/oauth/token", grant_type="client_credentials")
    assert token["token_type"] == "Bearer" and token["scope"] == "dicomweb.read" and token["expires_in"] == 300
    r = studies(closed, token["access_token"])
    assert r.status_code == 200 and len(r.json()) == 2


def test_token_errors_follow_rfc6749(closed: Closed) -> None:
    url = closed.base + "/oauth/token"
    wrong = httpx.post(url, data={"grant_type": "client_credentials"}, auth=("reader", "nope"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert wrong.headers["WWW-Authenticate"].startswith("Basic") and wrong.headers["Cache-Control"] == "no-store"
    grant = httpx.post(url, data={"grant_type": "password"}, auth=("reader", SECRET))
    assert grant.status_code == 400 and grant.json()["error"] == "unsupported_grant_type"
    scope = httpx.post(url, data={"grant_type": "client_credentials", "scope": "admin"}, auth=("reader", SECRET))
    assert scope.status_code == 400 and scope.json()["error"] == "invalid_scope"
    both = httpx.post(url, data={"grant_type": "client_credentials", "client_id": "reader",
                                 "client_secret": SECRET}, auth=("reader", SECRET))
    assert both.status_code == 400 and both.json()["error"] == "invalid_request"
    narrowed = httpx.post(url, data={"grant_type": "client_credentials", "scope": "dicomweb.read dicomweb.write"},
                          auth=("reader", SECRET))
    assert narrowed.status_code == 200 and narrowed.json()["scope"] == "dicomweb.read"


def test_discovery_and_jwks(closed: Closed) -> None:
    for path in ("/.well-known/openid-configuration", "/.well-known/smart-configuration"):
        meta = httpx.get(closed.base + path).json()
        assert meta["issuer"] == closed.server.settings.resolved_issuer()
        assert "private_key_jwt" in meta["token_endpoint_auth_methods_supported"]
        assert {"RS384", "ES384"} <= set(meta["token_endpoint_auth_signing_alg_values_supported"])
    jwks = httpx.get(closed.base + "/oauth/jwks").json()
    assert jwks["keys"] and all("d" not in k for k in jwks["keys"])  # public halves only


def _register_asymmetric(closed: Closed, key: ECKey | RSAKey, client_id: str) -> None:
    record = ClientRecord(client_id=client_id, name=client_id, scopes=frozenset({"system/ImagingStudy.rs"}),
                          jwks={"keys": [key.as_dict(private=False)]})
    anyio.run(closed.server.app.state.services.records.add_client, record)


def _assertion(closed: Closed, key: ECKey | RSAKey, client_id: str, alg: str, **over: object) -> str:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": closed.base + "/oauth/token",
              "exp": now + 240, "jti": str(uuid.uuid4()), **over}
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_private_key_jwt_backend_services(closed: Closed, alg: str) -> None:
    key: ECKey | RSAKey = (ECKey.generate_key("P-384", parameters={"kid": alg}, private=True) if alg == "ES384"
                           else RSAKey.generate_key(2048, parameters={"kid": alg}, private=True))
    client_id = f"backend-{alg.lower()}"
    _register_asymmetric(closed, key, client_id)
    url = closed.base + "/oauth/token"
    form = {"grant_type": "client_credentials", "scope": "system/ImagingStudy.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}
    assertion = _assertion(closed, key, client_id, alg)
    r = httpx.post(url, data={**form, "client_assertion": assertion})
    assert r.status_code == 200, r.text
    assert studies(closed, r.json()["access_token"]).status_code == 200
    replay = httpx.post(url, data={**form, "client_assertion": assertion})
    assert replay.status_code == 401 and "used before" in replay.json()["error_description"]
    bad_aud = httpx.post(url, data={**form, "client_assertion": _assertion(closed, key, client_id, alg,
                                                                           aud="https://elsewhere/token")})
    assert bad_aud.status_code == 401
    too_long = httpx.post(url, data={**form, "client_assertion": _assertion(closed, key, client_id, alg,
                                                                            exp=int(time.time()) + 3600)})
    assert too_long.status_code == 401
    other = ECKey.generate_key("P-384", parameters={"kid": alg}, private=True) if alg == "ES384" else \
        RSAKey.generate_key(2048, parameters={"kid": alg}, private=True)
    forged = httpx.post(url, data={**form, "client_assertion": _assertion(closed, other, client_id, alg)})
    assert forged.status_code == 401


def test_rotation_keeps_old_tokens_valid_and_signs_with_the_new_key(closed: Closed) -> None:
    before = closed.token("reader")
    old_kid = jwt.decode(before, KeySet.import_key_set(httpx.get(closed.base + "/oauth/jwks").json())).header["kid"]
    new = anyio.run(closed.server.app.state.services.keys.rotate)
    assert new.kid != old_kid
    after = closed.token("reader")
    jwks = httpx.get(closed.base + "/oauth/jwks").json()
    assert {old_kid, new.kid} <= {k["kid"] for k in jwks["keys"]}  # the old key stays published
    assert jwt.decode(after, KeySet.import_key_set(jwks)).header["kid"] == new.kid
    assert studies(closed, before).status_code == 200
    assert studies(closed, after).status_code == 200
