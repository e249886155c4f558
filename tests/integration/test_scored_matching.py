"""Scored matching in the running loop: studies that name no request (no accession, no worklist
attributes) are scored against the open requests by mappings/matching/default.yaml. A clear match is
linked at once (auto-certain: the order completes, basedOn is set); a doubtful one waits for a person
(auto-unsure: nothing acts); every link change has its history."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date
from typing import Any

import anyio
import httpx
import pytest
from pydicom.uid import generate_uid

from pacsbridge.settings import Settings

from ..support.dicom import instance
from ..support.http import stow_body
from ..support.servers import RunningServer, serve
from .test_fhir_door import PID_SYSTEM, order_json, patient_json, unique

TODAY = date.today()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("matching") / "data", storage={"fsync": False},
                        dimse={"enabled": False}, auth={"open_routes": ["/fhir", "/dicomweb"]},
                        fhir={"patient_identifier_system": PID_SYSTEM}, orders={"stable_seconds": 0.5})
    with serve(settings) as running:
        yield running


def order_for(server: RunningServer, patient_id: str, family: str, birth_date: str) -> str:
    patient = httpx.post(server.url + "/fhir/Patient", json={
        **patient_json(patient_id, family=family, birth_date=birth_date), "gender": "female"})
    assert patient.status_code == 201, patient.text
    return another_order(server, f"Patient/{patient.json()['id']}")


def another_order(server: RunningServer, patient: str, at: str = "09:00") -> str:
    order = httpx.post(server.url + "/fhir/ServiceRequest", json=order_json(
        patient, occurrenceDateTime=f"{TODAY.isoformat()}T{at}:00Z"))
    assert order.status_code == 201, order.text
    return str(order.json()["id"])


def stow_study(server: RunningServer, **attributes: Any) -> str:
    study_uid = generate_uid()
    body, content_type = stow_body([instance(study_uid, number=n, StudyDate=TODAY.strftime("%Y%m%d"),
                                             Modality="CT", PatientSex="F", **attributes) for n in (1, 2)])
    r = httpx.post(server.url + "/dicomweb/studies", content=body, headers={"Content-Type": content_type})
    assert r.status_code == 200, r.text
    return study_uid


def links_of(server: RunningServer, study_uid: str) -> list[Any]:
    records = server.app.state.services.orders.records
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = anyio.run(lambda: records.links(study_uid=study_uid))
        if found:
            return list(found)
        time.sleep(0.25)
    return []


def test_a_clear_match_without_any_reference_is_linked_and_acts(server: RunningServer) -> None:
    pid = unique("PID-")
    order = order_for(server, pid, "Schneider", "1958-07-14")
    study_uid = stow_study(server, PatientID=pid, PatientName="Schneider^Jane", PatientBirthDate="19580714",
                           AccessionNumber=None)
    links = links_of(server, study_uid)
    assert [(link.request_id, link.status) for link in links] == [(order, "auto-certain")]
    assert links[0].confidence is not None and links[0].confidence >= 0.9
    study = httpx.get(f"{server.url}/fhir/ImagingStudy/{study_uid}").json()
    assert study["basedOn"] == [{"reference": f"ServiceRequest/{order}"}]
    assert httpx.get(f"{server.url}/fhir/ServiceRequest/{order}").json()["status"] == "completed"
    history = anyio.run(lambda: server.app.state.services.orders.records.link_history(study_uid))
    assert [(e.status, e.actor) for e in history] == [("auto-certain", "pacsbridge")]
    assert "confidence" in (history[0].reason or "")


def test_a_doubtful_match_waits_for_a_person_and_does_not_act(server: RunningServer) -> None:
    pid = unique("PID-")
    order = order_for(server, pid, "Yilmaz", "1990-03-02")
    # The patient agrees, but the accession number typed at the modality is not the order's: probably this
    # order, but not surely (it might answer another order of hers).
    study_uid = stow_study(server, PatientID=pid, PatientName="Yilmaz^Jane", PatientBirthDate="19900302",
                           AccessionNumber="TYPO" + pid[-6:])
    links = links_of(server, study_uid)
    assert [(link.request_id, link.status) for link in links] == [(order, "auto-unsure")]
    assert any(d["field"] for d in links[0].differences)
    study = httpx.get(f"{server.url}/fhir/ImagingStudy/{study_uid}").json()
    assert "basedOn" not in study
    assert httpx.get(f"{server.url}/fhir/ServiceRequest/{order}").json()["status"] == "active"


def test_another_patients_study_is_never_linked(server: RunningServer) -> None:
    pid = unique("PID-")
    order_for(server, pid, "Nguyen", "1975-11-30")
    # Same family name, same day, another patient (other birth date, other ID).
    study_uid = stow_study(server, PatientID=unique("PID-"), PatientName="Nguyen^Jane",
                           PatientBirthDate="19751103", AccessionNumber=None)
    time.sleep(2)  # stable (0.5 s) and handled
    links = anyio.run(lambda: server.app.state.services.orders.records.links(study_uid=study_uid))
    assert [link.status for link in links if link.status == "auto-certain"] == []


def test_two_open_orders_of_one_patient_that_barely_differ_wait_for_a_person(server: RunningServer) -> None:
    pid = unique("PID-")
    morning = order_for(server, pid, "Weber", "1970-02-03")
    patient = httpx.get(f"{server.url}/fhir/ServiceRequest/{morning}").json()["subject"]["reference"]
    afternoon = another_order(server, patient, at="14:00")
    # The same CT for the same patient, twice today; the study (no accession) began at 10:00. The
    # morning order scores higher (performed within hours of it) but leads by less than the margin.
    study_uid = stow_study(server, PatientID=pid, PatientName="Weber^Jane", PatientBirthDate="19700203",
                           AccessionNumber=None, StudyTime="100000")
    links = links_of(server, study_uid)
    assert [(link.request_id, link.status) for link in links] == [(morning, "auto-unsure")]
    history = anyio.run(lambda: server.app.state.services.orders.records.link_history(study_uid))
    assert "another request came within the margin of 0.05" in (history[-1].reason or "")
    candidates = anyio.run(lambda: server.app.state.services.orders.review.candidates(study_uid))
    assert [c.request.request_id for c in candidates[:2]] == [morning, afternoon]
    assert 0 < candidates[0].result.confidence - candidates[1].result.confidence < 0.05
    for order in (morning, afternoon):
        assert httpx.get(f"{server.url}/fhir/ServiceRequest/{order}").json()["status"] == "active"

    # The EMR saves the morning order again: it is matched retroactively once more and the study makes the
    # same choice, so the proposal waiting for a person stands as it was (no second event in its history).
    records = server.app.state.services.orders.records
    resaved = httpx.put(f"{server.url}/fhir/ServiceRequest/{morning}",
                        json={**httpx.get(f"{server.url}/fhir/ServiceRequest/{morning}").json(), "priority": "urgent"})
    assert resaved.status_code == 200, resaved.text
    deadline = time.monotonic() + 20
    while any(rid == morning for rid, _ in anyio.run(lambda: records.pending_matches(100))):
        assert time.monotonic() < deadline, "the re-saved order was never matched"
        time.sleep(0.25)
    assert len(anyio.run(lambda: records.link_history(study_uid))) == len(history)


def test_a_person_confirms_an_unsure_link_then_undoes_it(server: RunningServer) -> None:
    orders = server.app.state.services.orders
    pid = unique("PID-")
    order = order_for(server, pid, "Kowalska", "1983-08-19")
    study_uid = stow_study(server, PatientID=pid, PatientName="Kowalska^Jane", PatientBirthDate="19830819",
                           AccessionNumber="TYPO" + pid[-6:])
    assert [link.status for link in links_of(server, study_uid)] == ["auto-unsure"]
    candidates = anyio.run(lambda: orders.review.candidates(study_uid))
    assert candidates[0].request.request_id == order
    assert {d.field for d in candidates[0].result.differences} >= {"accession"}

    anyio.run(lambda: orders.review.confirm(study_uid, order, "dr.lee", "accession typed wrong at the CT"))
    assert httpx.get(f"{server.url}/fhir/ServiceRequest/{order}").json()["status"] == "completed"
    assert httpx.get(f"{server.url}/fhir/ImagingStudy/{study_uid}").json()["basedOn"] == [
        {"reference": f"ServiceRequest/{order}"}]

    anyio.run(lambda: orders.review.unlink(study_uid, order, "dr.lee", "wrong patient after all"))
    assert httpx.get(f"{server.url}/fhir/ServiceRequest/{order}").json()["status"] == "active"
    assert "basedOn" not in httpx.get(f"{server.url}/fhir/ImagingStudy/{study_uid}").json()
    history = anyio.run(lambda: orders.records.link_history(study_uid))
    assert [(e.status, e.actor) for e in history] == [
        ("auto-unsure", "pacsbridge"), ("manual", "dr.lee"), ("unlinked", "dr.lee")]
    assert history[-1].reason == "wrong patient after all"


def test_a_request_arriving_after_its_study_is_matched_retroactively(server: RunningServer) -> None:
    pid = unique("PID-")
    # The study comes first (an emergency scan); nothing to match yet: it waits with its blocking keys.
    study_uid = stow_study(server, PatientID=pid, PatientName="Hoffmann^Jane", PatientBirthDate="19660101",
                           AccessionNumber=None)
    time.sleep(2)
    records = server.app.state.services.orders.records
    assert anyio.run(lambda: records.links(study_uid=study_uid)) == []
    assert anyio.run(lambda: records.studies_by_keys([f"0:{pid}"])) == [study_uid]
    order = order_for(server, pid, "Hoffmann", "1966-01-01")  # the EMR enters the order afterwards
    links = links_of(server, study_uid)
    assert [(link.request_id, link.status) for link in links] == [(order, "auto-certain")]
    assert httpx.get(f"{server.url}/fhir/ServiceRequest/{order}").json()["status"] == "completed"
    assert anyio.run(lambda: records.studies_by_keys([f"0:{pid}"])) == []


def test_choosing_another_request_turns_down_the_unsure_proposal(server: RunningServer) -> None:
    orders = server.app.state.services.orders
    pid = unique("PID-")
    first = order_for(server, pid, "Weber", "1971-05-05")
    study_uid = stow_study(server, PatientID=pid, PatientName="Weber^Jane", PatientBirthDate="19710505",
                           AccessionNumber="TYPO" + pid[-6:])
    proposed = links_of(server, study_uid)
    assert [(link.request_id, link.status) for link in proposed] == [(first, "auto-unsure")]
    second = order_for(server, pid, "Weber", "1971-05-05")  # the person knows the study answers this one
    anyio.run(lambda: orders.review.confirm(study_uid, second, "dr.lee", "the second order"))
    links = {link.request_id: link.status for link in anyio.run(lambda: orders.records.links(study_uid=study_uid))}
    assert links == {first: "unlinked", second: "manual"}
    assert httpx.get(f"{server.url}/fhir/ServiceRequest/{first}").json()["status"] == "active"
    assert httpx.get(f"{server.url}/fhir/ServiceRequest/{second}").json()["status"] == "completed"
