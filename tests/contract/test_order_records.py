"""The order records (``OrderRecords``) on SQLite and PostgreSQL: versioned resources and their search,
requests with steps, the worklist pre-selection, MPPS, links, stable studies, and one transaction for a
change and its outbox jobs."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from pacsbridge.backends.orders import SqlOrderRecords
from pacsbridge.backends.outbox.jobs import Subscriber, enqueue
from pacsbridge.domain.errors import Conflict
from pacsbridge.domain.orders import ImagingRequest, RequestStatus, ScheduledStep, StepStatus
from pacsbridge.formats.fhir_search import parse_search
from pacsbridge.services.fhir_index import SERVICE_REQUEST_PARAMS, index_entries
from pacsbridge.services.ports import (
    Notification,
    OrderChange,
    PerformedStep,
    ResourceVersion,
    ResourceWrite,
    StudyLink,
    WorklistFilter,
)

pytestmark = pytest.mark.anyio
HOOK = Subscriber("emr", "webhook", "http://127.0.0.1:9/hook")


@pytest.fixture
def records(engine: Engine) -> SqlOrderRecords:
    return SqlOrderRecords(engine, enqueue=lambda conn, notes: enqueue(conn, notes, [HOOK]))


def order(id_: str, version: int, status: str = "active", patient: str = "Patient/p1",
          authored: str = "2026-01-05T10:00:00+01:00") -> ResourceVersion:
    resource = {"resourceType": "ServiceRequest", "id": id_, "status": status, "intent": "order",
                "subject": {"reference": patient}, "authoredOn": authored,
                "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                     "code": "ACSN"}]}, "system": "urn:acc", "value": f"A-{id_}"}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2"}]},
                "meta": {"versionId": str(version), "lastUpdated": f"2026-01-05T10:00:0{version}.000+00:00"}}
    return ResourceVersion("ServiceRequest", id_, version, resource["meta"]["lastUpdated"], resource)


def write(v: ResourceVersion, expected: int) -> ResourceWrite:
    return ResourceWrite(v, expected, index_entries(v.resource or {}))


def imaging(id_: str, *steps: ScheduledStep, status: RequestStatus = RequestStatus.ACTIVE,
            patient: str = "P1") -> ImagingRequest:
    return ImagingRequest(id_, status, f"A-{id_}", f"A-{id_}", f"2.25.{len(id_)}{ord(id_[-1])}", patient,
                          {"00100020": {"vr": "LO", "Value": [patient]}}, steps)


def step(sps: str, status: StepStatus = StepStatus.SCHEDULED, ae: str = "CT01",
         date: str = "20260105") -> ScheduledStep:
    return ScheduledStep(sps, status, ae, "CT", date, "100000", {"00400009": {"vr": "SH", "Value": [sps]}})


def jobs(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM outbox_jobs")).scalar_one())


async def test_versions_history_and_a_stale_writer(records: SqlOrderRecords, engine: Engine) -> None:
    await records.commit(OrderChange(resources=(write(order("sr1", 1), 0),)))
    await records.commit(OrderChange(resources=(write(order("sr1", 2, "on-hold"), 1),)))
    current = await records.resource("ServiceRequest", "sr1")
    assert current is not None and current.version == 2 and (current.resource or {})["status"] == "on-hold"
    first = await records.resource("ServiceRequest", "sr1", 1)
    assert first is not None and (first.resource or {})["status"] == "active"
    assert [v.version for v in await records.history("ServiceRequest", "sr1")] == [2, 1]
    with pytest.raises(Conflict):  # written over version 1, which is no longer current
        await records.commit(OrderChange(resources=(write(order("sr1", 2, "revoked"), 1),),
                                         notifications=(Notification("servicerequest.status", {}),)))
    with pytest.raises(Conflict):  # created again
        await records.commit(OrderChange(resources=(write(order("sr1", 1), 0),)))
    assert jobs(engine) == 0, "a refused change left its notification behind"
    gone = ResourceVersion("ServiceRequest", "sr1", 3, "2026-01-05T11:00:00.000+00:00", None, "DELETE")
    await records.commit(OrderChange(resources=(ResourceWrite(gone, 2),)))
    deleted = await records.resource("ServiceRequest", "sr1")
    assert deleted is not None and deleted.resource is None
    assert (await records.find_resources("ServiceRequest", [], [], 0, 10)) == ([], 0)


async def test_search_by_token_reference_date_and_paging(records: SqlOrderRecords) -> None:
    for n, (patient, authored, status) in enumerate([("Patient/p1", "2026-01-05", "active"),
                                                     ("Patient/p2", "2026-01-06", "active"),
                                                     ("Patient/p1", "2026-02-01", "completed")]):
        await records.commit(OrderChange(resources=(write(order(f"sr{n}", 1, status, patient, authored), 0),)))

    async def ids(*params: tuple[str, str]) -> tuple[list[str], int]:
        request = parse_search(list(params), SERVICE_REQUEST_PARAMS, strict=True, default_count=10, max_count=10)
        found, total = await records.find_resources("ServiceRequest", request.criteria, request.sort,
                                                    request.offset, request.count)
        return [v.id for v in found], total

    assert sorted((await ids(("patient", "Patient/p1")))[0]) == ["sr0", "sr2"]
    assert (await ids(("patient", "Patient/p1"), ("status", "active")))[0] == ["sr0"]
    assert (await ids(("status", "active,completed"), ("_sort", "authored")))[0] == ["sr0", "sr1", "sr2"]
    assert (await ids(("authored", "ge2026-01-06"), ("_sort", "-authored")))[0] == ["sr2", "sr1"]
    assert (await ids(("authored", "lt2026-01-06")))[0] == ["sr0"]
    assert (await ids(("identifier", "urn:acc|A-sr1")))[0] == ["sr1"]
    assert (await ids(("identifier:of-type", "http://terminology.hl7.org/CodeSystem/v2-0203|ACSN|A-sr2")))[0] == ["sr2"]
    assert (await ids(("code", "http://loinc.org|24627-2"), ("_count", "2"), ("_sort", "authored"))) == (
        ["sr0", "sr1"], 3)
    assert (await ids(("code", "http://loinc.org|24627-2"), ("_count", "2"), ("_offset", "2"),
                      ("_sort", "authored"))) == (["sr2"], 3)
    assert (await ids(("status:not", "active")))[0] == ["sr2"]
    assert (await ids(("patient", "Patient/nobody"))) == ([], 0)


async def test_requests_steps_and_the_worklist_preselection(records: SqlOrderRecords) -> None:
    await records.commit(OrderChange(request=imaging("r1", step("A-r1-1"), step("A-r1-2", ae="MR01"))))
    await records.commit(OrderChange(request=imaging("r2", step("A-r2-1", date="20260107"), patient="P2")))
    await records.commit(OrderChange(request=imaging("r3", step("A-r3-1"), status=RequestStatus.ON_HOLD)))
    found = await records.request("r1")
    assert found is not None and [s.sps_id for s in found.steps] == ["A-r1-1", "A-r1-2"]
    everything = await records.worklist(WorklistFilter())
    assert sorted(s.sps_id for _r, s in everything) == ["A-r1-1", "A-r1-2", "A-r2-1"]  # not the on-hold one
    assert [s.sps_id for _r, s in await records.worklist(WorklistFilter(station_ae="MR01"))] == ["A-r1-2"]
    assert [s.sps_id for _r, s in await records.worklist(WorklistFilter(date_low="20260106"))] == ["A-r2-1"]
    assert [s.sps_id for _r, s in await records.worklist(WorklistFilter(patient_id="P2"))] == ["A-r2-1"]
    # A step that moved on leaves the worklist once it ended.
    await records.commit(OrderChange(request=imaging("r1", step("A-r1-1", StepStatus.COMPLETED), step("A-r1-2"))))
    assert [s.sps_id for _r, s in await records.worklist(WorklistFilter(accession_number="A-r1"))] == ["A-r1-2"]
    assert [r.request_id for r in await records.requests_for(sps_ids=["A-r2-1"])] == ["r2"]
    assert [r.request_id for r in await records.requests_for(accession_numbers=["A-r1"])] == ["r1"]
    assert await records.requests_for() == []


async def test_mpps_links_and_settled_studies(records: SqlOrderRecords, engine: Engine) -> None:
    performed = PerformedStep("1.2.3", "IN PROGRESS", "CT01", ("A-1",), {"00400252": {"vr": "CS",
                              "Value": ["IN PROGRESS"]}}, "2026-01-05T10:00:00Z", "2026-01-05T10:00:00Z")
    await records.commit(OrderChange(performed=performed,
                                     notifications=(Notification("procedurestep.status", {"status": "x"}),)))
    assert await records.performed("1.2.3") == performed
    assert jobs(engine) == 1
    await records.commit(OrderChange(link=StudyLink("2.25.7", "r1", "reference", "2026-01-05T10:00:00Z")))
    assert [link.request_id for link in await records.links(study_uid="2.25.7")] == ["r1"]
    with engine.begin() as conn:
        for uid, stamp in (("2.25.7", "2026-01-05T10:00:00.000000Z"), ("2.25.8", "2026-01-05T10:05:00.000000Z")):
            conn.execute(text("INSERT INTO studies (study_uid, attributes, updated_at) VALUES (:u, '{}', :t)"),
                         {"u": uid, "t": stamp})
    assert await records.settled_studies("2026-01-05T10:01:00.000000Z", 10) == [
        ("2.25.7", "2026-01-05T10:00:00.000000Z")]
    await records.commit(OrderChange(arrival=("2.25.7", "2026-01-05T10:00:00.000000Z")))
    assert await records.settled_studies("2026-01-05T10:10:00.000000Z", 10) == [
        ("2.25.8", "2026-01-05T10:05:00.000000Z")]
    with engine.begin() as conn:  # a new instance: the study changes and is handled again
        conn.execute(text("UPDATE studies SET updated_at = '2026-01-05T10:06:00.000000Z' WHERE study_uid = '2.25.7'"))
    assert [s for s, _ in await records.settled_studies("2026-01-05T10:10:00.000000Z", 10)] == ["2.25.8", "2.25.7"]


async def test_link_history_and_matching_candidates_by_blocking_key(records: SqlOrderRecords) -> None:
    await records.commit(OrderChange(request=imaging("r1", step("A-r1-1")), request_keys=("0:P1", "1:DOE")))
    await records.commit(OrderChange(request=imaging("r2", step("A-r2-1"), patient="P2"), request_keys=("0:P2",)))
    await records.commit(OrderChange(request=imaging("r3", step("A-r3-1"), status=RequestStatus.REVOKED,
                                                     patient="P1"), request_keys=("0:P1",)))
    assert [r.request_id for r in await records.requests_by_keys(["0:P1"])] == ["r1"]  # not the revoked one
    assert sorted(r.request_id for r in await records.requests_by_keys(["1:DOE", "0:P2"])) == ["r1", "r2"]
    # Saving the request again with other keys replaces them; without keys leaves them.
    await records.commit(OrderChange(request=imaging("r1", step("A-r1-1")), request_keys=("0:P9",)))
    await records.commit(OrderChange(request=imaging("r1", step("A-r1-1"))))
    assert await records.requests_by_keys(["0:P1", "1:DOE"]) == []
    assert [r.request_id for r in await records.requests_by_keys(["0:P9"])] == ["r1"]
    await records.commit(OrderChange(link=StudyLink("2.25.9", "r1", "auto-unsure", "2026-01-05T10:00:00Z",
                                                    confidence=0.8, reason="scored 0.80")))
    await records.commit(OrderChange(link=StudyLink("2.25.9", "r1", "manual", "2026-01-05T11:00:00Z",
                                                    actor="dr.who", reason="confirmed")))
    history = await records.link_history("2.25.9")
    assert [(e.status, e.actor, e.confidence) for e in history] == [
        ("auto-unsure", "pacsbridge", 0.8), ("manual", "dr.who", None)]
    assert [link.status for link in await records.links(study_uid="2.25.9")] == ["manual"]


async def test_waiting_studies_are_found_by_key_until_they_have_an_acting_link(records: SqlOrderRecords) -> None:
    await records.commit(OrderChange(study_keys=("2.25.1", ("0:P1", "3:19700101"))))
    await records.commit(OrderChange(study_keys=("2.25.2", ("0:P2",))))
    assert await records.studies_by_keys(["0:P1", "0:P2"]) == ["2.25.1", "2.25.2"]
    await records.commit(OrderChange(study_keys=("2.25.1", ("0:P9",))))  # replaced
    assert await records.studies_by_keys(["0:P1"]) == []
    await records.commit(OrderChange(link=StudyLink("2.25.2", "r1", "auto-unsure", "2026-01-05T10:00:00Z")))
    assert await records.studies_by_keys(["0:P2"]) == ["2.25.2"]  # an unsure link does not act
    await records.commit(OrderChange(link=StudyLink("2.25.2", "r1", "manual", "2026-01-05T11:00:00Z")))
    assert await records.studies_by_keys(["0:P2"]) == []


async def test_pending_matches_are_cleared_only_for_the_save_that_asked(records: SqlOrderRecords) -> None:
    await records.commit(OrderChange(request=imaging("r1", step("A-r1-1")), match_pending="2026-01-05T10:00:01Z"))
    await records.commit(OrderChange(request=imaging("r2", step("A-r2-1"), patient="P2"),
                                     match_pending="2026-01-05T10:00:02Z"))
    await records.commit(OrderChange(request=imaging("r3", step("A-r3-1"), patient="P3")))  # nothing asked
    assert await records.pending_matches(10) == [("r1", "2026-01-05T10:00:01Z"), ("r2", "2026-01-05T10:00:02Z")]
    assert await records.pending_matches(1) == [("r1", "2026-01-05T10:00:01Z")]
    # r1 is saved again while its first save is being matched: clearing the first leaves the second.
    await records.commit(OrderChange(request=imaging("r1", step("A-r1-1")), match_pending="2026-01-05T10:00:03Z"))
    await records.commit(OrderChange(matched=("r1", "2026-01-05T10:00:01Z")))
    await records.commit(OrderChange(matched=("r2", "2026-01-05T10:00:02Z")))
    assert await records.pending_matches(10) == [("r1", "2026-01-05T10:00:03Z")]
    await records.commit(OrderChange(matched=("r1", "2026-01-05T10:00:03Z")))
    assert await records.pending_matches(10) == []
