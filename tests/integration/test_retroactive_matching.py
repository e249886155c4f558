"""Retroactive matching is durable work (``services/matching.py`` rule 5): saving an active request
records it as pending in the same commit, and the arrivals loop matches it against the studies waiting
with their blocking keys. A process that dies between the save and the matching loses nothing: the
next process finds the request pending. Real SQLite records, the shipped default matching file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pacsbridge.backends.orders import SqlOrderRecords
from pacsbridge.backends.sql.engine import make_engine
from pacsbridge.backends.sql.migrations import migrate
from pacsbridge.domain.clock import utc_stamp
from pacsbridge.domain.links import LinkStatus
from pacsbridge.domain.orders import ImagingRequest, RequestStatus, ScheduledStep, StepStatus
from pacsbridge.mapping import load_matching
from pacsbridge.services.matching import StudyMatcher, request_keys
from pacsbridge.services.ports import OrderChange

pytestmark = pytest.mark.anyio
DEFAULT = Path(__file__).resolve().parents[2] / "mappings" / "matching" / "default.yaml"
RULES = load_matching(DEFAULT)


def el(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [{"Alphabetic": value} if vr == "PN" else value]}


PATIENT = {"00100010": el("PN", "Krüger^Lena"), "00100020": el("LO", "P-77"), "00100030": el("DA", "19620311"),
           "00100040": el("CS", "F")}
STUDY = {**PATIENT, "0020000D": el("UI", "2.25.7"), "00080061": el("CS", "CT"), "00080020": el("DA", "20260105"),
         "00080030": el("TM", "101500")}


def active_request(request_id: str = "sr1", status: RequestStatus = RequestStatus.ACTIVE,
                   patient: dict[str, Any] = PATIENT) -> ImagingRequest:
    step_item = {"00080060": el("CS", "CT"), "00400002": el("DA", "20260105"), "00400003": el("TM", "100000")}
    step = ScheduledStep(f"A-{request_id}-1", StepStatus.SCHEDULED, "CT1", "CT", "20260105", "100000", step_item)
    return ImagingRequest(request_id, status, f"A-{request_id}", f"A-{request_id}", f"2.25.99{len(request_id)}",
                          patient["00100020"]["Value"][0], {**patient, "00080050": el("SH", f"A-{request_id}")},
                          (step,))


async def waiting_study(records: SqlOrderRecords, study: dict[str, Any] = STUDY) -> None:
    """A stable study that named no request and found none: it waits with its blocking keys."""
    uid = study["0020000D"]["Value"][0]
    await records.commit(OrderChange(study_keys=(uid, tuple(sorted(RULES.blocking_keys(study, "study"))))))


async def document(study_uid: str) -> dict[str, Any] | None:
    return STUDY if study_uid == "2.25.7" else None


def record_link(into: list[tuple[str, str]]) -> Any:
    """A stand-in for StudyArrivals.link that records which request and study were linked."""
    async def link(request: ImagingRequest, study_uid: str, updated_at: str | None, **how: Any) -> None:
        into.append((request.request_id, study_uid))
    return link


@pytest.fixture
def records(tmp_path: Path) -> SqlOrderRecords:
    engine = make_engine(f"sqlite:///{tmp_path / 'index.sqlite'}")
    migrate(engine)
    return SqlOrderRecords(engine)


async def test_a_request_saved_before_a_crash_is_matched_by_the_next_process(records: SqlOrderRecords) -> None:
    await waiting_study(records)
    request = active_request()
    # The save as OrderService commits it; the process dies before its arrivals loop comes round.
    await records.commit(OrderChange(request=request, request_keys=request_keys(RULES, request),
                                     match_pending=utc_stamp()))
    assert [rid for rid, _ in await records.pending_matches(10)] == ["sr1"]

    linked: list[tuple[str, str, LinkStatus]] = []

    async def link(request: ImagingRequest, study_uid: str, updated_at: str | None, **how: Any) -> None:
        linked.append((request.request_id, study_uid, how["status"]))

    restarted = StudyMatcher(records, RULES, link)  # a new process: nothing in memory
    assert await restarted.match_pending(document) == 1
    assert linked == [("sr1", "2.25.7", LinkStatus.AUTO_CERTAIN)]
    assert await records.pending_matches(10) == []
    assert await restarted.match_pending(document) == 0


async def test_a_request_no_longer_active_is_cleared_without_matching(records: SqlOrderRecords) -> None:
    await waiting_study(records)
    request = active_request()
    await records.commit(OrderChange(request=request, request_keys=request_keys(RULES, request),
                                     match_pending=utc_stamp()))
    await records.commit(OrderChange(request=active_request(status=RequestStatus.REVOKED)))  # the EMR cancelled it

    async def link(*_: Any, **__: Any) -> None:
        raise AssertionError("a revoked request was linked")

    assert await StudyMatcher(records, RULES, link).match_pending(document) == 1
    assert await records.pending_matches(10) == []
    assert await records.links(study_uid="2.25.7") == []


async def test_a_request_that_fails_stays_pending_and_the_others_go_on(records: SqlOrderRecords) -> None:
    other_patient = {**PATIENT, "00100010": el("PN", "Yıldız^Emre"), "00100020": el("LO", "P-88"),
                     "00100030": el("DA", "19800101"), "00100040": el("CS", "M")}
    other_study = {**STUDY, **other_patient, "0020000D": el("UI", "2.25.8")}
    await waiting_study(records)
    await waiting_study(records, other_study)
    for request, stamp in ((active_request("sr1"), "2026-01-05T10:00:01Z"),
                           (active_request("sr2", patient=other_patient), "2026-01-05T10:00:02Z")):
        await records.commit(OrderChange(request=request, request_keys=request_keys(RULES, request),
                                         match_pending=stamp))

    async def flaky_document(study_uid: str) -> dict[str, Any] | None:
        if study_uid == "2.25.7":
            raise OSError("the archive could not read the study")
        return other_study if study_uid == "2.25.8" else None

    linked: list[tuple[str, str]] = []
    assert await StudyMatcher(records, RULES, record_link(linked)).match_pending(flaky_document) == 1
    assert linked == [("sr2", "2.25.8")]
    assert [rid for rid, _ in await records.pending_matches(10)] == ["sr1"]  # tried again next round
