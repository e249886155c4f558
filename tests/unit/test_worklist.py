"""Modality Worklist C-FIND (PS3.4 Annex K): identifiers as modalities send them, after the trip through
the bytes pynetdicom decodes, matched against worklist items and answered with the requested keys."""

from __future__ import annotations

import copy
from io import BytesIO
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import decode, encode

from pacsbridge.domain.errors import CorruptData, InvalidInput
from pacsbridge.domain.model import DicomJson
from pacsbridge.domain.query import MatchKind
from pacsbridge.formats.worklist import (
    MODALITY_WORKLIST_FIND,
    SPS_STATUS,
    SpsStatus,
    WorklistPrefilter,
    matches_item,
    missing_required,
    with_step_status,
    worklist_file,
    worklist_query,
    worklist_response,
    worklist_uid,
)

STUDY_UID = "1.2.826.0.1.3680043.8.498.10"
OTHER_UID = "1.2.826.0.1.3680043.8.498.11"


def item(*, name: str = "Müller^Jürgen", patient_id: str = "PID1", accession: str = "ACC1",
         procedure_id: str = "RP1", sps_id: str = "SPS1", ae: str = "CT1", modality: str = "CT",
         date: str = "20240131", time: str = "093000", study_uid: str = STUDY_UID) -> DicomJson:
    """One worklist item: a requested procedure and its one scheduled step."""
    step = {
        "00080060": {"vr": "CS", "Value": [modality]},
        "00400001": {"vr": "AE", "Value": [ae]},
        "00400002": {"vr": "DA", "Value": [date]},
        "00400003": {"vr": "TM", "Value": [time]},
        "00400006": {"vr": "PN"},
        "00400007": {"vr": "LO", "Value": ["CT abdomen with contrast"]},
        "00400008": {"vr": "SQ", "Value": [{
            "00080100": {"vr": "SH", "Value": ["P-ABD"]},
            "00080102": {"vr": "SH", "Value": ["99LOCAL"]},
            "00080104": {"vr": "LO", "Value": ["Abdomen protocol"]},
        }]},
        "00400009": {"vr": "SH", "Value": [sps_id]},
        "00400020": {"vr": "CS", "Value": ["SCHEDULED"]},
    }
    return {
        "00080050": {"vr": "SH", "Value": [accession]},
        "00080090": {"vr": "PN", "Value": [{"Alphabetic": "Welby^Marcus"}]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
        "00100020": {"vr": "LO", "Value": [patient_id]},
        "00100030": {"vr": "DA", "Value": ["19700101"]},
        "00100040": {"vr": "CS", "Value": ["M"]},
        "0020000D": {"vr": "UI", "Value": [study_uid]},
        "00321060": {"vr": "LO", "Value": ["CT abdomen"]},
        "00400100": {"vr": "SQ", "Value": [step]},
        "00401001": {"vr": "SH", "Value": [procedure_id]},
    }


def on_the_wire(ds: Dataset) -> Dataset:
    """The identifier as the SCP decodes it (Implicit VR Little Endian, the default context)."""
    data = encode(ds, True, True)
    assert data is not None
    return decode(BytesIO(data), True, True)


def identifier(step: dict[str, Any] | None = None, *, items: int = 1, **top: Any) -> Dataset:
    """A request identifier: top-level keys by keyword, step keys in the SPS item (``items`` of them)."""
    ds = Dataset()
    for keyword, value in top.items():
        setattr(ds, keyword, value)
    if step is not None or items != 1:
        entries = [Dataset() for _ in range(items)]
        for entry in entries:
            for keyword, value in (step or {}).items():
                setattr(entry, keyword, value)
        ds.ScheduledProcedureStepSequence = Sequence(entries)
    return on_the_wire(ds)


def find(ds: Dataset, *candidates: DicomJson) -> list[DicomJson]:
    query = worklist_query(ds)
    return [c for c in candidates if matches_item(query, c)]


# --- IHE RAD-5: the patient-based and the broad query ------------------------------------------

def test_patient_based_query() -> None:
    ds = identifier({"Modality": "", "ScheduledProcedureStepID": ""}, PatientName="MULLER^JURGEN",
                    PatientID="PID1", AccessionNumber="ACC1", RequestedProcedureID="RP1")
    wanted = item()
    others = [item(patient_id="PID2"), item(accession="ACC2"), item(procedure_id="RP2"), item(name="Muller^Hans")]
    assert find(ds, wanted, *others) == [wanted]
    prefilter = worklist_query(ds).prefilter
    assert (prefilter.patient_id, prefilter.accession_number) == ("PID1", "ACC1")
    assert prefilter.station_ae is None and prefilter.date_low is None


def test_broad_query() -> None:
    ds = identifier({"ScheduledStationAETitle": "CT1", "ScheduledProcedureStepStartDate": "20240131",
                     "Modality": "CT", "ScheduledProcedureStepStartTime": ""}, PatientName="", PatientID="")
    wanted = item()
    others = [item(ae="CT2"), item(date="20240201"), item(modality="MR")]
    assert find(ds, wanted, *others) == [wanted]
    assert worklist_query(ds).prefilter == WorklistPrefilter(
        station_ae="CT1", modality="CT", date_low="20240131", date_high="20240131")


@pytest.mark.parametrize(("key", "low", "high", "found"), [
    ("20240131-", "20240131", None, {"20240131", "20240201", "20250101"}),
    ("-20240131", None, "20240131", {"20230101", "20240130", "20240131"}),
    ("20240131-20240201", "20240131", "20240201", {"20240131", "20240201"}),
])
def test_start_date_ranges(key: str, low: str | None, high: str | None, found: set[str]) -> None:
    ds = identifier({"ScheduledProcedureStepStartDate": key})
    dates = ["20230101", "20240130", "20240131", "20240201", "20250101"]
    matched = find(ds, *[item(date=d) for d in dates])
    assert {m["00400100"]["Value"][0]["00400002"]["Value"][0] for m in matched} == found
    prefilter = worklist_query(ds).prefilter
    assert (prefilter.date_low, prefilter.date_high) == (low, high)


def test_date_and_time_ranges_are_matched_each_on_its_own() -> None:
    """Rule 4: no combined date-time period; each day's time window applies."""
    ds = identifier({"ScheduledProcedureStepStartDate": "20240131-20240201",
                     "ScheduledProcedureStepStartTime": "0800-1000"})
    early_second_day = item(date="20240201", time="0930")
    late_first_day = item(date="20240131", time="1100")  # inside the combined period, outside each window
    assert find(ds, early_second_day, late_first_day) == [early_second_day]


def test_station_ae_single_value_is_exact() -> None:
    ds = identifier({"ScheduledStationAETitle": "CT1"})
    wanted = item(ae="CT1")
    assert find(ds, wanted, item(ae="CT2"), item(ae="ct1"), item(ae="CT10")) == [wanted]
    assert worklist_query(ds).prefilter.station_ae == "CT1"


@pytest.mark.parametrize(("key", "names", "found"), [
    ("DOE^J*", ["Doe^John", "DOE^JANE", "Dow^John", "Doe^Mary"], ["Doe^John", "DOE^JANE"]),
    ("MULLER^J*", ["Müller^Jürgen", "Muller^Jan", "Möller^Jörg"], ["Müller^Jürgen", "Muller^Jan"]),
    ("müller^jürgen", ["MÜLLER^JÜRGEN", "Muller^Jurgen", "Müller^Jürgen^Karl"], ["MÜLLER^JÜRGEN", "Muller^Jurgen"]),
    ("Sch?fer*", ["Schäfer^Anna", "Schafer", "Scheffer^Anna"], ["Schäfer^Anna", "Schafer"]),
])
def test_patient_name_wildcards_and_accents(key: str, names: list[str], found: list[str]) -> None:
    ds = identifier(PatientName=key)
    matched = find(ds, *[item(name=n) for n in names])
    assert [m["00100010"]["Value"][0]["Alphabetic"] for m in matched] == found
    assert worklist_query(ds).prefilter.patient_id is None


def test_wildcard_patient_id_is_no_prefilter() -> None:
    ds = identifier(PatientID="PID*")
    assert worklist_query(ds).prefilter.patient_id is None
    assert len(find(ds, item(patient_id="PID1"), item(patient_id="PID22"), item(patient_id="X"))) == 2


def test_study_uid_list() -> None:
    ds = identifier(StudyInstanceUID=[STUDY_UID, OTHER_UID])
    assert len(find(ds, item(), item(study_uid=OTHER_UID), item(study_uid="1.2.3"))) == 2


# --- the SPS sequence ---------------------------------------------------------------------------

def test_sps_sequence_with_zero_items_is_universal_and_returns_the_whole_step() -> None:
    ds = identifier(items=0, PatientID="PID1")
    query = worklist_query(ds)
    assert query.step_return_keys == () and "00400100" in query.return_keys
    stored = item()
    assert find(ds, stored, item(patient_id="PID2")) == [stored]
    step = worklist_response(query, stored).ScheduledProcedureStepSequence
    assert len(step) == 1 and step[0].ScheduledProcedureStepID == "SPS1"
    assert step[0].ScheduledProtocolCodeSequence[0].CodeValue == "P-ABD"


def test_empty_sps_item_also_returns_the_whole_step() -> None:
    ds = identifier({}, PatientID="PID1")
    query = worklist_query(ds)
    assert query.step_return_keys == ()
    assert worklist_response(query, item()).ScheduledProcedureStepSequence[0].Modality == "CT"


def test_two_sps_items_are_refused() -> None:
    with pytest.raises(InvalidInput, match="one item"):
        worklist_query(identifier({"Modality": "CT"}, items=2))


def test_no_sps_sequence_in_the_request_means_none_in_the_response() -> None:
    ds = identifier(PatientID="PID1", PatientName="")
    response = worklist_response(worklist_query(ds), item())
    assert "ScheduledProcedureStepSequence" not in response
    assert response.PatientName == "Müller^Jürgen"


def test_step_keys_come_back_in_the_one_item_with_code_sequences_whole() -> None:
    ds = identifier({"Modality": "CT", "ScheduledStationAETitle": "", "ScheduledProtocolCodeSequence": Sequence(),
                     "ScheduledProcedureStepStartDate": "", "ScheduledPerformingPhysicianName": ""})
    query = worklist_query(ds)
    assert query.step_return_keys == ("00080060", "00400001", "00400002", "00400006", "00400008")
    step = worklist_response(query, item()).ScheduledProcedureStepSequence
    assert len(step) == 1
    assert {f"{e.tag:08X}" for e in step[0]} == set(query.step_return_keys)
    codes = step[0].ScheduledProtocolCodeSequence
    assert (codes[0].CodeValue, codes[0].CodingSchemeDesignator, codes[0].CodeMeaning) == (
        "P-ABD", "99LOCAL", "Abdomen protocol")
    assert step[0].ScheduledPerformingPhysicianName == ""


def test_a_value_two_levels_down_is_an_ignored_optional_key() -> None:
    code = Dataset()
    code.CodeValue = "OTHER"
    ds = identifier({"ScheduledProtocolCodeSequence": Sequence([code])})
    query = worklist_query(ds)
    assert query.ignored_keys == ("00400100.00400008",)
    assert find(ds, item())  # not matched on: the SCP answers 0xFF01
    assert worklist_query(identifier({"ScheduledProtocolCodeSequence": Sequence()})).ignored_keys == ()


def test_sequence_keys_are_sequence_matching() -> None:
    query = worklist_query(identifier({"Modality": "CT", "ScheduledStationAETitle": "CT1"}))
    (step,) = [m for m in query.query.matches if m.tag == "00400100"]
    assert step.kind is MatchKind.SEQUENCE
    assert {m.tag: m.kind for m in step.items} == {"00080060": MatchKind.SINGLE, "00400001": MatchKind.SINGLE}


# --- the response -------------------------------------------------------------------------------

def test_exactly_the_requested_keys_with_type_2_and_unknown_ones_empty() -> None:
    ds = identifier({"ScheduledProcedureStepID": ""}, SpecificCharacterSet="ISO_IR 100", PatientName="",
                    PatientID="PID1", ReferringPhysicianName="", RequestingPhysician="", PatientWeight=None,
                    AdmissionID="", StudyInstanceUID="", ReferencedStudySequence=Sequence())
    query = worklist_query(ds)
    assert "00080005" not in query.return_keys
    response = worklist_response(query, item())
    tags = {f"{e.tag:08X}" for e in response}
    assert tags == {"00080005", "00080090", "00100010", "00100020", "00101030", "0020000D", "00321032",
                    "00380010", "00081110", "00400100"}
    assert response.SpecificCharacterSet == "ISO_IR 192"
    assert response.ReferringPhysicianName == "Welby^Marcus"
    assert response.RequestingPhysician == "" and response.AdmissionID == ""
    assert response.PatientWeight is None and len(response.ReferencedStudySequence) == 0
    assert response.StudyInstanceUID == STUDY_UID


def test_response_survives_the_wire_as_utf8() -> None:
    query = worklist_query(identifier({"Modality": ""}, PatientName=""))
    response = worklist_response(query, item())
    data = encode(response, True, True)
    assert data is not None and "Müller^Jürgen".encode() in data
    assert decode(BytesIO(data), True, True).PatientName == "Müller^Jürgen"


def test_a_missing_type_1_key_is_not_sent_empty() -> None:
    broken = item()
    del broken["00401001"]
    query = worklist_query(identifier(PatientID="PID1", RequestedProcedureID=""))
    with pytest.raises(CorruptData, match=r"\(0040,1001\)"):
        worklist_response(query, broken)
    # not asked for: no harm
    assert worklist_response(worklist_query(identifier(PatientID="PID1")), broken).PatientID == "PID1"


def test_a_missing_type_1_step_key_is_not_sent_empty() -> None:
    broken = item()
    broken["00400100"]["Value"][0]["00400001"] = {"vr": "AE"}
    query = worklist_query(identifier({"ScheduledStationAETitle": ""}))
    with pytest.raises(CorruptData, match=r"\(0040,0001\)") as raised:
        worklist_response(query, broken)
    assert "Müller" not in str(raised.value)
    assert missing_required(broken) == ("00400100.00400001",)


def test_missing_required() -> None:
    assert missing_required(item()) == ()
    broken = item()
    del broken["00100020"]
    broken["00100010"] = {"vr": "PN", "Value": [{"Alphabetic": ""}]}
    assert missing_required(broken) == ("00100010", "00100020")
    assert missing_required({}) == ("00400100", "00401001", "0020000D", "00100010", "00100020")


def test_timezone_offset_is_never_sent_empty() -> None:
    ds = identifier(PatientID="PID1", TimezoneOffsetFromUTC="+0100")
    assert "TimezoneOffsetFromUTC" not in worklist_response(worklist_query(ds), item())


def test_dcmtk_findscu_worklist_identifier() -> None:
    """What ``findscu -W -k ScheduledProcedureStepSequence[0].Modality=CT ... wlistqry.wl`` sends."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.AccessionNumber = ""
    ds.PatientName = ""
    ds.PatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.MedicalAlerts = ""
    ds.Allergies = ""
    ds.StudyInstanceUID = ""
    ds.RequestingPhysician = ""
    ds.RequestedProcedureDescription = ""
    step = Dataset()
    step.Modality = "CT"
    step.ScheduledStationAETitle = "CT1"
    step.ScheduledProcedureStepStartDate = "20240131"
    step.ScheduledProcedureStepStartTime = ""
    step.ScheduledPerformingPhysicianName = ""
    step.ScheduledProcedureStepDescription = ""
    step.ScheduledProtocolCodeSequence = Sequence()
    step.ScheduledProcedureStepID = ""
    step.ScheduledStationName = ""
    step.ScheduledProcedureStepLocation = ""
    ds.ScheduledProcedureStepSequence = Sequence([step])
    ds.RequestedProcedureID = ""
    ds.RequestedProcedurePriority = ""
    ds = on_the_wire(ds)

    query = worklist_query(ds)
    assert query.ignored_keys == ()
    assert query.prefilter == WorklistPrefilter(station_ae="CT1", modality="CT", date_low="20240131",
                                                date_high="20240131")
    stored = item()
    assert find(ds, stored, item(modality="MR"), item(ae="CT2")) == [stored]
    response = on_the_wire(worklist_response(query, stored))
    assert response.SpecificCharacterSet == "ISO_IR 192"
    assert response.PatientName == "Müller^Jürgen" and response.StudyInstanceUID == STUDY_UID
    assert response.MedicalAlerts == "" and response.RequestedProcedurePriority == ""
    (sps,) = response.ScheduledProcedureStepSequence
    assert (sps.ScheduledProcedureStepID, sps.ScheduledProcedureStepStartTime) == ("SPS1", "093000")
    assert sps.ScheduledStationName == "" and sps.ScheduledProtocolCodeSequence[0].CodeValue == "P-ABD"
    assert "ScheduledProcedureStepStatus" not in sps  # not asked for


def test_query_retrieve_level_sent_by_a_sloppy_scu_is_not_matched() -> None:
    ds = identifier(QueryRetrieveLevel="WORKLIST", PatientID="PID1")
    assert find(ds, item())
    assert worklist_response(worklist_query(ds), item()).QueryRetrieveLevel == ""


def test_fuzzy_matching_when_negotiated() -> None:
    ds = identifier(PatientName="jurg mull")
    assert not find(ds, item())
    assert matches_item(worklist_query(ds, fuzzy=True), item())


# --- step status and the .wl file ---------------------------------------------------------------

def test_with_step_status() -> None:
    stored = item()
    before = copy.deepcopy(stored)
    started = with_step_status(stored, SpsStatus.STARTED)
    assert started["00400100"]["Value"][0]["00400020"] == {"vr": "CS", "Value": ["STARTED"]}
    assert stored == before
    assert with_step_status(stored, "COMPLETED")["00400100"]["Value"][0]["00400020"]["Value"] == ["COMPLETED"]
    assert {"SCHEDULED", "ARRIVED", "READY", "STARTED", "DEPARTED", "COMPLETED", "DISCONTINUED"} <= SPS_STATUS
    with pytest.raises(ValueError, match="Scheduled Procedure Step Status"):
        with_step_status(stored, "DONE")


def test_worklist_file_is_part_10_with_the_worklist_sop_class() -> None:
    data = worklist_file(item())
    assert data[128:132] == b"DICM"
    ds = pydicom.dcmread(BytesIO(data))
    assert ds.file_meta.MediaStorageSOPClassUID == MODALITY_WORKLIST_FIND
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert ds.file_meta.MediaStorageSOPInstanceUID == worklist_uid(item())
    assert ds.SpecificCharacterSet == "ISO_IR 192" and ds.PatientName == "Müller^Jürgen"
    assert "Müller^Jürgen".encode() in data
    assert ds.ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence[0].CodeValue == "P-ABD"


def test_worklist_uid_is_deterministic() -> None:
    uid = worklist_uid(item())
    assert uid == worklist_uid(item(name="Someone^Else", date="20250101"))
    assert len(uid) <= 64
    assert len({uid, worklist_uid(item(sps_id="SPS2")), worklist_uid(item(procedure_id="RP2")),
                worklist_uid(item(accession="ACC2"))}) == 4
    broken = item()
    del broken["00400100"]["Value"][0]["00400009"]
    with pytest.raises(CorruptData):
        worklist_uid(broken)
