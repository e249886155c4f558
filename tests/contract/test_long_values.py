"""Values longer than their VR allows are stored and found alike on SQLite and PostgreSQL.

Real-world DICOM often exceeds the VR maximum lengths (accession numbers over 16 characters, a DA
holding a date-time). SQLite ignores declared column lengths; PostgreSQL enforced them, so the same
file stored on SQLite failed on PostgreSQL (0x0110). The columns holding attribute values are
unbounded text (migration v10).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import Engine

from pacsbridge.backends.local import LocalArchive
from pacsbridge.backends.orders import SqlOrderRecords
from pacsbridge.domain.model import DicomJson, Level, Scope
from pacsbridge.domain.orders import ImagingRequest, RequestStatus, ScheduledStep, StepStatus
from pacsbridge.domain.query import Match, MatchKind, Query
from pacsbridge.services.ports import OrderChange, WorklistFilter

from ..support.dicom import instance, write
from .conftest import ingest

# pydicom warns when a test sets a value longer than its VR allows: that is the point here.
pytestmark = pytest.mark.filterwarnings("ignore:.*(Invalid value for VR|exceeds the maximum):UserWarning")

ACCESSION = "ACC-2024-" + "0" * 26 + "12345"  # 40 characters; SH allows 16
DESCRIPTION = "CT THORAX ABDOMEN PELVIS WITH CONTRAST " * 5 + "PHASE"  # 200 characters; LO allows 64
DATE = "20240131120000"  # a DA holding a date-time: 14 characters, DA allows 8


def search(embedded: LocalArchive, level: Level, *matches: Match) -> list[DicomJson]:
    return anyio.run(embedded.search, Query(level, matches)).results


def test_an_instance_with_values_over_their_vr_lengths_is_stored_and_found(embedded: LocalArchive,
                                                                           tmp_path: Path) -> None:
    assert (len(ACCESSION), len(DESCRIPTION), len(DATE)) == (40, 200, 14)
    ds = instance(AccessionNumber=ACCESSION, StudyDescription=DESCRIPTION, StudyDate=DATE)
    result = ingest(embedded, ds, tmp_path / "in")
    assert result.ok, (hex(result.failure or 0), result.reason)

    (study,) = search(embedded, Level.STUDY, Match("00080050", "SH", MatchKind.SINGLE, value=ACCESSION))
    assert study["0020000D"]["Value"] == [ds.StudyInstanceUID]
    assert study["00080050"]["Value"] == [ACCESSION]
    assert study["00081030"]["Value"] == [DESCRIPTION]
    assert study["00080020"]["Value"] == [DATE]
    wildcard = Match("00080050", "SH", MatchKind.WILDCARD, value=ACCESSION[:30] + "*")
    assert [s["0020000D"]["Value"][0] for s in search(embedded, Level.STUDY, wildcard)] == [ds.StudyInstanceUID]
    described = Match("00081030", "LO", MatchKind.SINGLE, value=DESCRIPTION)
    assert len(search(embedded, Level.STUDY, described)) == 1


def test_every_indexed_text_attribute_may_exceed_its_vr_length(embedded: LocalArchive, tmp_path: Path) -> None:
    """The other matching columns of the study and series levels, PN and its token twin included."""
    long_name = "Van Der " + "Longfamilyname-" * 30 + "^" + "Given " * 20 + "^Middle"  # PN: 64 per group
    values: dict[str, Any] = {
        "PatientID": "MRN-" + "7" * 96, "IssuerOfPatientID": "ISSUER-" + "X" * 93, "PatientName": long_name,
        "PatientBirthDate": "19700101000000", "PatientSex": "FEMALE-AS-WRITTEN-BY-A-MODALITY",
        "StudyTime": "120000.123456789012", "ReferringPhysicianName": long_name, "StudyID": "STUDY-" + "9" * 34,
        "Modality": "MODALITY-NOT-A-CODE", "SeriesDescription": "S" * 300, "SeriesDate": "20240131235959",
        "BodyPartExamined": "CHEST-ABDOMEN-PELVIS", "PerformedProcedureStepStartDate": "20240131235959",
    }
    ds = instance(**values)
    result = ingest(embedded, ds, tmp_path / "in")
    assert result.ok, (hex(result.failure or 0), result.reason)

    by_id = Match("00100020", "LO", MatchKind.SINGLE, value=values["PatientID"])
    assert len(search(embedded, Level.STUDY, by_id)) == 1
    by_name = Match("00100010", "PN", MatchKind.SINGLE, value=long_name)
    assert len(search(embedded, Level.STUDY, by_name)) == 1
    by_modality = Match("00080060", "CS", MatchKind.SINGLE, value=values["Modality"])
    (series,) = search(embedded, Level.SERIES, by_modality)
    assert series["0008103E"]["Value"] == [values["SeriesDescription"]]


# --- the order loop's tables: values from the EMR and the mapping, written into worklist items ----

@pytest.fixture
def records(engine: Engine) -> SqlOrderRecords:
    return SqlOrderRecords(engine)


def test_a_request_and_its_step_keep_values_over_their_vr_lengths(records: SqlOrderRecords) -> None:
    """The PatientID comes from the EMR's Patient identifier; the step's modality, station AE title and
    start date and time from the request-to-worklist mapping: none is bounded by the VR."""
    patient = "EMR-PATIENT-" + "1" * 68  # 80 characters; LO allows 64
    sps = ScheduledStep("A1-1", StepStatus.SCHEDULED, "STATION-AE-OF-THE-CT-IN-ROOM-4", "CT-WITH-CONTRAST",
                        "20260105100000", "100000.000000+0100", {"00400009": {"vr": "SH", "Value": ["A1-1"]}})
    request = ImagingRequest("sr1", RequestStatus.ACTIVE, "A1", "A1", "2.25.1", patient,
                             {"00100020": {"vr": "LO", "Value": [patient]}}, (sps,))
    anyio.run(records.commit, OrderChange(request=request))

    found = anyio.run(records.worklist, WorklistFilter(patient_id=patient, station_ae=sps.station_ae,
                                                       modality=sps.modality))
    assert [(r.patient_id, s.station_ae, s.modality, s.start_date, s.start_time) for r, s in found] == [
        (patient, sps.station_ae, sps.modality, sps.start_date, sps.start_time)]
    assert [r.request_id for r in anyio.run(partial(records.requests_for, accession_numbers=["A1"]))] == ["sr1"]


def test_integer_strings_past_32_bits_are_stored(embedded: LocalArchive, tmp_path: Path) -> None:
    """SeriesNumber 99999999999 or InstanceNumber 3000000000 (IS allows 32-bit values) overflowed
    PostgreSQL's integer column (0x0110); the value is kept in the stored attributes, not matched."""
    ds = instance(SeriesNumber="99999999999", InstanceNumber="3000000000")
    result = ingest(embedded, ds, tmp_path / "in")
    assert result.ok, result.reason
    sop = Match("00080018", "UI", MatchKind.UID_LIST, values=(ds.SOPInstanceUID,))
    (found,) = search(embedded, Level.INSTANCE, sop)
    assert found["00200013"]["Value"] == [3000000000]


def test_an_instance_file_over_2_gib_is_indexed(embedded: LocalArchive, tmp_path: Path) -> None:
    """A multi-frame object can pass 2 GiB; the instance's size overflowed PostgreSQL's 32-bit column.
    The file is a real header made sparse to 3 GiB (no 3 GiB written)."""
    from ..support.dicom import record_of

    ds = instance()
    path = write(ds, tmp_path / "in")
    record = record_of(path)
    big = 3 * 1024**3
    os.truncate(path, big)
    (outcome,) = anyio.run(embedded.store_many, [(path, record)])
    assert outcome is False, outcome
    (stored,) = anyio.run(embedded.locate, Scope(ds.StudyInstanceUID))
    assert stored.size == big
