"""The link review API against a running pacsbridge: a doubtful study waits (auto-unsure), a reviewer
holding ``links.review`` reads its candidates and differences, confirms (the order completes) and
unlinks with a reason (the order is active again); every change is audited under the reviewer's name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pacsbridge.services.issuer import hash_secret
from pacsbridge.settings import Settings

from ..support.servers import RunningServer, serve
from .test_fhir_door import FHIR_JSON, PID_SYSTEM, SECRET, bearer, unique
from .test_scored_matching import links_of, order_for, stow_study

CLIENTS = {"reviewer": ["links.review"], "reader": ["dicomweb.read", "orders.read"], "auditor": ["admin"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("links-api") / "data", storage={"fsync": False},
                        dimse={"enabled": False}, fhir={"patient_identifier_system": PID_SYSTEM},
                        orders={"stable_seconds": 0.5}, auth={"open_routes": ["/fhir", "/dicomweb"], "clients": [
                            {"client_id": name, "secret_hash": hash_secret(SECRET), "scopes": scopes}
                            for name, scopes in CLIENTS.items()]})
    with serve(settings) as running:
        yield running


@pytest.fixture(scope="module")
def reviewer(server: RunningServer) -> dict[str, str]:
    return bearer(server, "reviewer")


def unsure_study(server: RunningServer, family: str, birth_date: str) -> tuple[str, str, str]:
    """(patient ID, order, study): the patient agrees, the accession typed at the modality does not."""
    pid = unique("PID-")
    order = order_for(server, pid, family, birth_date)
    study = stow_study(server, PatientID=pid, PatientName=f"{family}^Jane",
                       PatientBirthDate=birth_date.replace("-", ""), AccessionNumber="TYPO" + pid[-6:])
    assert [(link.request_id, link.status) for link in links_of(server, study)] == [(order, "auto-unsure")]
    return pid, order, study


def order_status(server: RunningServer, order: str) -> str:
    return str(httpx.get(f"{server.url}/fhir/ServiceRequest/{order}").json()["status"])


def test_list_and_detail_show_the_candidates_with_their_differences(server: RunningServer,
                                                                   reviewer: dict[str, str]) -> None:
    pid, order, study = unsure_study(server, "Okafor", "1969-02-11")
    listed = httpx.get(server.url + "/api/links", params={"status": "auto-unsure", "limit": 500}, headers=reviewer)
    assert listed.status_code == 200, listed.text
    page = listed.json()
    assert page["total"] >= 1 and page["limit"] == 500
    row = next(x for x in page["links"] if x["study"] == study)
    assert row["request"] == order and row["status"] == "auto-unsure" and 0 < row["confidence"] < 1
    assert row["linked_at"]
    assert {x["status"] for x in page["links"]} == {"auto-unsure"}

    detail = httpx.get(f"{server.url}/api/links/studies/{study}", headers=reviewer)
    assert detail.status_code == 200, detail.text
    body = detail.json()
    assert body["study"]["uid"] == study and body["study"]["fields"]["patient_id"] == pid
    assert [(x["request"], x["status"]) for x in body["links"]] == [(order, "auto-unsure")]
    assert [(e["status"], e["actor"]) for e in body["history"]] == [("auto-unsure", "pacsbridge")]
    best = body["candidates"][0]
    assert best["request"] == order and best["confidence"] == pytest.approx(row["confidence"])
    assert best["decision"] == "auto-unsure"
    accession = next(d for d in best["differences"] if d["field"] == "accession")
    assert accession["study"] == "TYPO" + pid[-6:] and accession["request"] != accession["study"]
    weights = {c["field"]: c for c in best["contributions"]}
    assert weights["patient_id"]["compared"] and weights["patient_id"]["score"] == 1.0
    assert best["fields"]["patient_name"].startswith("Okafor")

    # The other way round: the waiting studies an order may be the answer to.
    studies = httpx.get(f"{server.url}/api/links/requests/{order}", headers=reviewer)
    assert studies.status_code == 200, studies.text
    assert studies.json()["studies"][0]["study"] == study
    assert studies.json()["studies"][0]["confidence"] == pytest.approx(row["confidence"])
    assert httpx.get(f"{server.url}/api/links/requests/no-such-order", headers=reviewer).status_code == 404

    bad = httpx.get(server.url + "/api/links", params={"status": "maybe"}, headers=reviewer)
    assert bad.status_code == 400 and "maybe" in bad.json()["error"]


def test_confirm_completes_the_order_and_unlink_with_a_reason_reopens_it(server: RunningServer,
                                                                         reviewer: dict[str, str]) -> None:
    _pid, order, study = unsure_study(server, "Lindqvist", "1977-06-05")
    url = f"{server.url}/api/links/studies/{study}"
    confirmed = httpx.post(url + "/confirm", json={"request": order, "reason": "accession typed wrong"},
                           headers=reviewer)
    assert confirmed.status_code == 200, confirmed.text
    assert [(x["request"], x["status"], x["actor"]) for x in confirmed.json()["links"]] == [
        (order, "manual", "reviewer")]
    assert order_status(server, order) == "completed"

    no_reason = httpx.post(url + "/unlink", json={"request": order}, headers=reviewer)
    assert no_reason.status_code == 422 and "reason" in no_reason.json()["error"]
    assert order_status(server, order) == "completed"

    unlinked = httpx.post(url + "/unlink", json={"request": order, "reason": "another patient's images"},
                          headers=reviewer)
    assert unlinked.status_code == 200, unlinked.text
    assert order_status(server, order) == "active"
    history = unlinked.json()["history"]
    assert [(e["status"], e["actor"], e["reason"]) for e in history][1:] == [
        ("manual", "reviewer", "accession typed wrong"), ("unlinked", "reviewer", "another patient's images")]

    auditor = bearer(server, "auditor")
    events = httpx.get(server.url + "/admin/audit", params={"door": "links", "study": study}, headers=auditor).json()
    changes = [(e["action"], e["route"], e["status"], e["subject"]) for e in events if e["method"] == "POST"]
    assert changes == [  # newest first
        ("update", "/api/links/studies/{study}/unlink", 200, "reviewer"),
        ("update", "/api/links/studies/{study}/unlink", 422, "reviewer"),
        ("update", "/api/links/studies/{study}/confirm", 200, "reviewer")]
    assert not any("another patient" in str(e) for e in events)  # the reason stays in the link history


def test_without_a_token_401_and_without_the_scope_403(server: RunningServer) -> None:
    assert httpx.get(server.url + "/api/links").status_code == 401
    refused = httpx.get(server.url + "/api/links", headers=bearer(server, "reader"))
    assert refused.status_code == 403
    assert 'scope="links.review"' in refused.headers["WWW-Authenticate"]
    posted = httpx.post(server.url + "/api/links/studies/1.2.3/confirm", json={"request": "x"},
                        headers=bearer(server, "reader"))
    assert posted.status_code == 403


def test_an_unknown_study_or_request_is_404(server: RunningServer, reviewer: dict[str, str]) -> None:
    unknown = httpx.get(server.url + "/api/links/studies/1.2.826.0.1.999999", headers=reviewer)
    assert unknown.status_code == 404 and unknown.json()["status"] == 404
    posted = httpx.post(server.url + "/api/links/studies/1.2.826.0.1.999999/confirm", json={"request": "x"},
                        headers=reviewer)
    assert posted.status_code == 404
    _pid, _order, study = unsure_study(server, "Haddad", "1981-12-24")
    no_request = httpx.post(f"{server.url}/api/links/studies/{study}/confirm", json={"request": "no-such-order"},
                            headers=reviewer)
    assert no_request.status_code == 404
    malformed = httpx.post(f"{server.url}/api/links/studies/{study}/confirm", content=b"not json", headers=reviewer)
    assert malformed.status_code == 400


def test_confirming_to_a_revoked_request_is_422(server: RunningServer, reviewer: dict[str, str]) -> None:
    _pid, order, study = unsure_study(server, "Moreau", "1988-09-09")
    stored: dict[str, Any] = httpx.get(f"{server.url}/fhir/ServiceRequest/{order}").json()
    revoked = httpx.put(f"{server.url}/fhir/ServiceRequest/{order}", json={**stored, "status": "revoked"},
                        headers={"If-Match": f'W/"{stored["meta"]["versionId"]}"', "Content-Type": FHIR_JSON})
    assert revoked.status_code == 200, revoked.text
    answer = httpx.post(f"{server.url}/api/links/studies/{study}/confirm", json={"request": order}, headers=reviewer)
    assert answer.status_code == 422, answer.text
    assert answer.json() == {"status": 422, "error": f"ServiceRequest/{order} is revoked: it answers no study"}
    assert order_status(server, order) == "revoked"
