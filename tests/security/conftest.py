"""A closed pacsbridge (the default: built-in issuer, every route needs a token) with two patients'
studies, a client per scope set, and a way to mint tokens that the issuer would never issue."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from pydicom.uid import generate_uid

from pacsbridge.services.issuer import hash_secret
from pacsbridge.settings import Settings

from ..support.dicom import instance
from ..support.http import stow_body
from ..support.oidc import OidcProvider, oidc_provider
from ..support.servers import RunningServer, serve

SECRET = "s3cret-for-tests"
CLIENTS = {
    "reader": ["dicomweb.read"],
    "writer": ["dicomweb.read", "dicomweb.write"],
    "smart": ["system/ImagingStudy.rs"],
    "admin": ["admin"],
    "orders": ["orders.read", "orders.write"],
    "links": ["links.review"],
}


@dataclass(frozen=True)
class Study:
    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    sop_uid: str


@dataclass
class Closed:
    """A closed server and the issuer of its tokens: pacsbridge's built-in one, or a real OpenID
    provider (``provider``) whose tokens it checks in ``oidc`` mode."""

    server: RunningServer
    studies: dict[str, Study]  # "A" and "B"
    provider: OidcProvider | None = None

    @property
    def base(self) -> str:
        return self.server.url

    @property
    def issuer(self) -> str:
        return self.provider.issuer if self.provider else self.server.settings.resolved_issuer()

    def token(self, client: str, scope: str | None = None) -> str:
        if self.provider is not None:
            return self.provider.token(client, scope)
        data = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
        r = httpx.post(self.base + "/oauth/token", data=data, auth=(client, SECRET))
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    def signing_key(self) -> tuple[str, ECKey | RSAKey]:
        """The key the issuer signs with right now (read from its storage, as only a test may)."""
        if self.provider is not None:
            newest = max(self.provider.workdir.glob("jwks-*.json"), key=lambda p: p.stat().st_mtime)
            key = RSAKey.import_key(json.loads(newest.read_text())["keys"][0])
            return str(key.kid), key
        records = self.server.app.state.services.records
        keys = anyio.run(records.signing_keys)
        active = [k for k in keys if k.retired_at is None][-1]
        return active.kid, ECKey.import_key(active.private_jwk)

    def mint(self, key: ECKey | None = None, kid: str | None = None, **claims: Any) -> str:
        """A token signed with the issuer's own key (or ``key``), with these claims over sane defaults."""
        own_kid, own_key = self.signing_key()
        now = int(time.time())
        body = {"iss": self.issuer, "aud": "pacsbridge", "sub": "minted",
                "client_id": "minted", "scope": "dicomweb.read", "iat": now, "nbf": now, "exp": now + 300}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        signer = key or own_key
        alg = "ES256" if isinstance(signer, ECKey) else "RS256"
        return jwt.encode({"alg": alg, "kid": kid or own_kid, "typ": "at+jwt"}, body, signer)


def closed_settings(tmp: Path) -> Settings:
    return Settings(data_dir=tmp / "data", storage={"fsync": False}, auth={"clients": [
        {"client_id": name, "secret_hash": hash_secret(SECRET), "scopes": scopes} for name, scopes in CLIENTS.items()
    ]})


def _loaded(stack: Closed) -> Closed:
    auth = {"Authorization": "Bearer " + stack.token("writer", "dicomweb.write")}
    for key, pid, name in (("A", "PAT-ALPHA-1", "Alpha^Anna"), ("B", "PAT-BETA-2", "Beta^Bert")):
        study, series = generate_uid(), generate_uid()
        ds = instance(study, series, PatientID=pid, PatientName=name)
        body, content_type = stow_body([ds])
        r = httpx.post(stack.server.dicomweb + "/studies", content=body,
                       headers={"Content-Type": content_type, **auth})
        assert r.status_code == 200, r.text
        stack.studies[key] = Study(pid, name, study, series, str(ds.SOPInstanceUID))
    return stack


@pytest.fixture(scope="module")
def closed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Closed]:
    """pacsbridge with its built-in issuer (the default)."""
    with serve(closed_settings(tmp_path_factory.mktemp("closed"))) as server:
        yield _loaded(Closed(server, {}))


@pytest.fixture(scope="module", params=["builtin", "oidc-provider"])
def any_closed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Closed]:
    """The built-in issuer, then a real OpenID provider (npm oidc-provider) as the issuer of tokens."""
    if request.param == "builtin":
        yield request.getfixturevalue("closed")
        return
    clients = [{"client_id": name, "client_secret": SECRET, "scopes": " ".join(scopes)}
               for name, scopes in CLIENTS.items()]
    with oidc_provider(clients) as provider:
        settings = Settings(data_dir=tmp_path_factory.mktemp("oidc-closed") / "data", storage={"fsync": False},
                            auth={"mode": "oidc", "issuer": provider.issuer, "jwks_refetch_seconds": 0})
        with serve(settings) as server:
            yield _loaded(Closed(server, {}, provider))
