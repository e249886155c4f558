"""A ServiceRequest whose Patient lives at the EMR: pacsbridge reads it from the EMR's FHIR base with OAuth
client credentials. The EMR here is a real FHIR server with its own authorization server: a second,
closed pacsbridge holding the Patient, whose built-in issuer gives our client a token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from pacsbridge.services.issuer import hash_secret
from pacsbridge.settings import Settings

from ..support.servers import RunningServer, free_port, serve
from .test_fhir_door import PID_SYSTEM, order_json, outcome_of, patient_json, unique

SECRET = "emr-client-secret-for-tests"


@pytest.fixture(scope="module")
def emr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("emr") / "data", storage={"fsync": False},
                        dimse={"enabled": False}, fhir={"patient_identifier_system": PID_SYSTEM},
                        auth={"clients": [
                            {"client_id": "registry", "secret_hash": hash_secret(SECRET),
                             "scopes": ["orders.read", "orders.write"]},
                            {"client_id": "pacsbridge", "secret_hash": hash_secret(SECRET),
                             "scopes": ["system/Patient.r"]}]})
    with serve(settings) as running:
        yield running


def token(server: RunningServer, client_id: str, scope: str) -> dict[str, str]:
    r = httpx.post(server.url + "/oauth/token", data={"grant_type": "client_credentials", "scope": scope},
                   auth=(client_id, SECRET))
    assert r.status_code == 200, r.text
    return {"Authorization": "Bearer " + r.json()["access_token"]}


def bridge_settings(tmp: Path, emr_url: str) -> Settings:
    return Settings(data_dir=tmp / "data", storage={"fsync": False}, dimse={"enabled": False},
                    auth={"open_routes": ["/fhir"]}, fhir={
                        "patient_identifier_system": PID_SYSTEM, "emr_base_url": emr_url + "/fhir",
                        "emr_timeout_seconds": 3,
                        "emr_auth": {"type": "client_credentials", "token_url": emr_url + "/oauth/token",
                                     "client_id": "pacsbridge", "client_secret": SECRET,
                                     "scope": "system/Patient.r"}})


def test_a_patient_referenced_at_the_emr_is_read_with_client_credentials(emr: RunningServer, tmp_path: Path) -> None:
    pid = unique("PID-EMR-")
    made = httpx.post(emr.url + "/fhir/Patient", json=patient_json(pid, family="Çelik"),
                      headers=token(emr, "registry", "orders.write"))
    assert made.status_code == 201, made.text
    patient_id = made.json()["id"]
    with serve(bridge_settings(tmp_path, emr.url)) as bridge:
        created = httpx.post(bridge.url + "/fhir/ServiceRequest", json=order_json(f"Patient/{patient_id}"))
        assert created.status_code == 201, created.text
        # Not copied: the Patient stays the EMR's; the worklist entry has its demographics.
        assert httpx.get(f"{bridge.url}/fhir/Patient/{patient_id}").status_code == 404
        records = bridge.app.state.services.orders.records
        stored = anyio.run(records.request, created.json()["id"])
        assert stored is not None and stored.patient_id == pid
        assert stored.attributes["00100010"]["Value"][0]["Alphabetic"].startswith("Çelik^")
        # A Patient the EMR does not know is refused, and says why.
        unknown = httpx.post(bridge.url + "/fhir/ServiceRequest", json=order_json("Patient/no-such-patient"))
        body = outcome_of(unknown, 422)
        assert "neither held here nor known to the EMR" in body["issue"][0]["diagnostics"]


def test_an_emr_that_cannot_be_reached_is_a_503_within_the_timeout(tmp_path: Path) -> None:
    away = f"http://127.0.0.1:{free_port()}"
    with serve(bridge_settings(tmp_path, away)) as bridge:
        r = httpx.post(bridge.url + "/fhir/ServiceRequest", json=order_json("Patient/p1"), timeout=20)
        body = outcome_of(r, 503)
        assert body["issue"][0]["code"] == "transient"
        assert "SECRET" not in r.text and SECRET not in r.text
