"""A closed pacsbridge (the default: built-in issuer, every route needs a token) with two patients'
studies, a client per scope set, and a way to mint tokens that the issuer would never issue."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from pydicom.uid import generate_uid

from pacsbridge.services.issuer import hash_secret
from pacsbridge.settings import Settings

from ..support.dicom import instance
from ..support.http import stow_body
from ..support.servers import RunningServer, serve

SECRET = "s3cret-for-tests"
CLIENTS = {
    "reader": ["dicomweb.read"],
    "writer": ["dicomweb.read", "dicomweb.write"],
    "smart": ["system/ImagingStudy.rs"],
    "admin": ["admin"],
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
    server: RunningServer
    studies: dict[str, Study]  # "A" and "B"

    @property
    def base(self) -> str:
        return self.server.url

    def token(self, client: str, scope: str | None = None) -> str:
        data = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
        r = httpx.post(self.base + "/oauth/token", data=data, auth=(client, SECRET))
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    def signing_key(self) -> tuple[str, ECKey]:
        records = self.server.app.state.services.records
        keys = anyio.run(records.signing_keys)
        active = [k for k in keys if k.retired_at is None][-1]
        return active.kid, ECKey.import_key(active.private_jwk)

    def mint(self, key: ECKey | None = None, kid: str | None = None, **claims: Any) -> str:
        """A token signed with the issuer's own key (or ``key``), with these claims over sane defaults."""
        own_kid, own_key = self.signing_key()
        now = int(time.time())
        body = {"iss": self.server.settings.resolved_issuer(), "aud": "pacsbridge", "sub": "minted",
                "client_id": "minted", "scope": "dicomweb.read", "iat": now, "nbf": now, "exp": now + 300}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode({"alg": "ES256", "kid": kid or own_kid, "typ": "at+jwt"}, body, key or own_key)


def closed_settings(tmp: Path) -> Settings:
    return Settings(data_dir=tmp / "data", storage={"fsync": False}, auth={"clients": [
        {"client_id": name, "secret_hash": hash_secret(SECRET), "scopes": scopes} for name, scopes in CLIENTS.items()
    ]})


@pytest.fixture(scope="module")
def closed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Closed]:
    with serve(closed_settings(tmp_path_factory.mktemp("closed"))) as server:
        stack = Closed(server, {})
        auth = {"Authorization": "Bearer " + stack.token("writer", "dicomweb.write")}
        for key, pid, name in (("A", "PAT-ALPHA-1", "Alpha^Anna"), ("B", "PAT-BETA-2", "Beta^Bert")):
            study, series = generate_uid(), generate_uid()
            ds = instance(study, series, PatientID=pid, PatientName=name)
            body, content_type = stow_body([ds])
            r = httpx.post(server.dicomweb + "/studies", content=body, headers={"Content-Type": content_type, **auth})
            assert r.status_code == 200, r.text
            stack.studies[key] = Study(pid, name, study, series, str(ds.SOPInstanceUID))
        yield stack
