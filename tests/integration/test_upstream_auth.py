"""A DICOMweb upstream that wants OAuth tokens (a second, closed pacsbridge with its built-in issuer):
client-credentials and bearer authentication, refusals as 502, and patient context enforced by the
proxy over the upstream's results (one patient: passed on as a key; several: matched here).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from pacsbridge.services.issuer import hash_secret
from pacsbridge.settings import Settings

from ..support.dicom import instance
from ..support.http import stow_body
from ..support.servers import RunningServer, serve

SECRET = "proxy-secret-for-tests"
JSON = {"Accept": "application/dicom+json"}
ENV = {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class Chain:
    upstream: RunningServer
    studies: dict[str, str]


def token(upstream: RunningServer) -> str:
    answer = httpx.post(upstream.url + "/oauth/token", auth=("proxy", SECRET),
                        data={"grant_type": "client_credentials", "scope": "dicomweb.read dicomweb.write"})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    tmp = tmp_path_factory.mktemp("upstream-auth")
    settings = Settings(data_dir=tmp / "up", storage={"fsync": False}, dimse={"enabled": False}, auth={"clients": [
        {"client_id": "proxy", "secret_hash": hash_secret(SECRET), "scopes": ["dicomweb.read", "dicomweb.write"]}]})
    with serve(settings) as upstream:
        studies = {}
        for pid in ("PAT-A", "PAT-B", "PAT-C"):
            studies[pid] = generate_uid()
            body, content_type = stow_body([instance(studies[pid], PatientID=pid)])
            stored = httpx.post(upstream.dicomweb + "/studies", content=body, headers={
                "Content-Type": content_type, "Authorization": f"Bearer {token(upstream)}", **JSON})
            assert stored.status_code == 200, stored.text
        yield Chain(upstream, studies)


def front(chain: Chain, tmp_path: Path, auth: dict[str, object], **over: object) -> Settings:
    return Settings(data_dir=tmp_path / "front", storage={"fsync": False}, archive="up",
                    auth={"open_routes": ["/dicomweb"]},
                    upstreams=[{"name": "up", "kind": "dicomweb", "url": chain.upstream.dicomweb, "auth": auth,
                                "timeout_seconds": 5}], **over)


def test_client_credentials_reach_a_closed_upstream(chain: Chain, tmp_path: Path) -> None:
    auth = {"type": "client_credentials", "token_url": chain.upstream.url + "/oauth/token", "client_id": "proxy",
            "client_secret": SECRET, "scope": "dicomweb.read dicomweb.write"}
    with serve(front(chain, tmp_path, auth, dimse={"enabled": False})) as server:
        found = httpx.get(server.dicomweb + "/studies", headers=JSON).json()
        assert {s["0020000D"]["Value"][0] for s in found} >= set(chain.studies.values())
        metadata = httpx.get(f"{server.dicomweb}/studies/{chain.studies['PAT-A']}/metadata", headers=JSON)
        assert metadata.status_code == 200 and len(metadata.json()) == 1
        study = generate_uid()
        body, content_type = stow_body([instance(study, PatientID="PAT-NEW")])
        stored = httpx.post(server.dicomweb + "/studies", content=body, headers={"Content-Type": content_type, **JSON})
        assert stored.status_code == 200, stored.text
    direct = httpx.get(chain.upstream.dicomweb + "/studies", params={"PatientID": "PAT-NEW"},
                       headers={"Authorization": f"Bearer {token(chain.upstream)}", **JSON}).json()
    assert [s["0020000D"]["Value"][0] for s in direct] == [study]


def test_refused_credentials_are_502(chain: Chain, tmp_path: Path) -> None:
    wrong = {"type": "client_credentials", "token_url": chain.upstream.url + "/oauth/token", "client_id": "proxy",
             "client_secret": "not-the-secret"}
    with serve(front(chain, tmp_path, wrong, dimse={"enabled": False})) as server:
        answer = httpx.get(server.dicomweb + "/studies", headers=JSON)
        assert answer.status_code == 502 and "no token" in answer.json()["message"]
    garbage = {"type": "bearer", "token": "not-a-token"}
    with serve(front(chain, tmp_path, garbage, dimse={"enabled": False})) as server:
        answer = httpx.get(server.dicomweb + "/studies", headers=JSON)
        assert answer.status_code == 502 and "refused our credentials (401)" in answer.json()["message"]
        assert "not-a-token" not in answer.text


def test_patient_context_is_enforced_over_the_upstream(chain: Chain, tmp_path: Path) -> None:
    bearer = {"type": "bearer", "token": token(chain.upstream)}
    peers = [{"ae_title": "WARD1", "host": "127.0.0.1", "patient_ids": ["PAT-B"]},
             {"ae_title": "WARD2", "host": "127.0.0.1", "patient_ids": ["PAT-A", "PAT-C"]}]
    with serve(front(chain, tmp_path, bearer, dimse={"peers": peers})) as server:
        for aet, expected in (("WARD1", {"PAT-B"}), ("WARD2", {"PAT-A", "PAT-C"})):
            out = tmp_path / aet
            out.mkdir()
            done = subprocess.run(
                ["findscu", "-S", "-aet", aet, "-aec", "PACSBRIDGE", "-X", "-od", str(out), "-k",
                 "QueryRetrieveLevel=STUDY", "-k", "PatientID", "-k", "StudyInstanceUID", "127.0.0.1",
                 str(server.dimse_port)], capture_output=True, text=True, timeout=60, env=ENV)
            assert done.returncode == 0, done.stderr
            seen = {str(pydicom.dcmread(p).PatientID) for p in out.glob("rsp*.dcm")}
            assert seen == expected, aet
