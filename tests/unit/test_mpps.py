"""Modality Performed Procedure Step (PS3.4 Annex F.7): what N-CREATE and N-SET must pass, the statuses
of their refusals, and the dataset an N-SET leaves."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacsbridge.domain.model import DicomJson
from pacsbridge.formats.dicom_json import dataset_to_json
from pacsbridge.formats.mpps import (
    DUPLICATE_SOP_INSTANCE,
    MAY_NO_LONGER_BE_UPDATED,
    MppsError,
    MppsStatus,
    StepReference,
    check_create,
    check_set,
    performed_series,
    scheduled_steps,
    status_of,
)

STUDY_UID = "1.2.826.0.1.3680043.8.498.20"
SERIES_UID = "1.2.826.0.1.3680043.8.498.21"
SOP_UIDS = [f"1.2.826.0.1.3680043.8.498.3{i}" for i in range(3)]
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
PATIENT_VALUES = ("Müller^Jürgen", "PID-4711", "19700101", "ACC-0815")


def element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def created(status: str = "IN PROGRESS") -> DicomJson:
    """An N-CREATE attribute list as modalities send it (Type 2 attributes present and empty)."""
    return {
        "00080005": element("CS", "ISO_IR 192"),
        "00080060": element("CS", "CT"),
        "00081032": element("SQ"),
        "00081120": element("SQ"),
        "00100010": element("PN", {"Alphabetic": "Müller^Jürgen"}),
        "00100020": element("LO", "PID-4711"),
        "00100030": element("DA", "19700101"),
        "00100040": element("CS", "M"),
        "00200010": element("SH"),
        "00400241": element("AE", "CT1"),
        "00400242": element("SH"),
        "00400243": element("SH"),
        "00400244": element("DA", "20240131"),
        "00400245": element("TM", "093512"),
        "00400250": element("DA"),
        "00400251": element("TM"),
        "00400252": element("CS", status),
        "00400253": element("SH", "PPS-1"),
        "00400254": element("LO"),
        "00400255": element("LO"),
        "00400260": element("SQ"),
        "00400270": element("SQ", {
            "00080050": element("SH", "ACC-0815"),
            "00081110": element("SQ"),
            "0020000D": element("UI", STUDY_UID),
            "00321060": element("LO"),
            "00400007": element("LO"),
            "00400008": element("SQ"),
            "00400009": element("SH", "SPS1"),
            "00401001": element("SH", "RP1"),
        }),
        "00400340": element("SQ"),
    }


def series_item(*, uid: str | None = SERIES_UID, images: list[str] | None = None,
                non_images: list[str] | None = None) -> DicomJson:
    item: DicomJson = {
        "00080054": element("AE"),
        "0008103E": element("LO", "Abdomen"),
        "00081050": element("PN"),
        "00081070": element("PN"),
        "00181030": element("LO", "Abdomen protocol"),
    }
    if uid is not None:
        item["0020000E"] = element("UI", uid)
    if images is not None:
        item["00081140"] = element("SQ", *[{"00081150": element("UI", CT_IMAGE), "00081155": element("UI", u)}
                                           for u in images])
    if non_images is not None:
        item["00400220"] = element("SQ", *[{"00081150": element("UI", "1.2.840.10008.5.1.4.1.1.88.67"),
                                            "00081155": element("UI", u)} for u in non_images])
    return item


def completion(status: str = "COMPLETED", *series: DicomJson) -> DicomJson:
    """The final N-SET modification list (RAD-7)."""
    return {
        "00400250": element("DA", "20240131"),
        "00400251": element("TM", "101500"),
        "00400252": element("CS", status),
        "00400340": element("SQ", *series),
    }


def refusal(call: Any, *args: Any) -> MppsError:
    with pytest.raises(MppsError) as raised:
        call(*args)
    error = raised.value
    assert len(error.comment) <= 64 and error.comment == str(error)
    assert not any(value in error.comment for value in PATIENT_VALUES)
    return error


# --- N-CREATE ----------------------------------------------------------------------------------

def test_create_in_progress_is_accepted() -> None:
    check_create(created())


def test_create_from_a_pydicom_dataset_like_pynetdicoms_mpps_example() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    step = Dataset()
    step.StudyInstanceUID = STUDY_UID
    step.ReferencedStudySequence = Sequence()
    step.AccessionNumber = "ACC-0815"
    step.RequestedProcedureID = "RP1"
    step.RequestedProcedureDescription = "CT abdomen"
    step.ScheduledProcedureStepID = "SPS1"
    step.ScheduledProcedureStepDescription = ""
    step.ScheduledProtocolCodeSequence = Sequence()
    ds.ScheduledStepAttributesSequence = Sequence([step])
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "PID-4711"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.ReferencedPatientSequence = Sequence()
    ds.PerformedProcedureStepID = "PPS-1"
    ds.PerformedStationAETitle = "CT1"
    ds.PerformedStationName = ""
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20240131"
    ds.PerformedProcedureStepStartTime = "093512"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = ""
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = Sequence()
    ds.PerformedProcedureStepEndDate = None
    ds.PerformedProcedureStepEndTime = None
    ds.Modality = "CT"
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = Sequence()
    ds.PerformedSeriesSequence = Sequence()
    attributes = dataset_to_json(ds)
    check_create(attributes)
    assert scheduled_steps(attributes) == [StepReference(STUDY_UID, "ACC-0815", "RP1", "SPS1")]


@pytest.mark.parametrize("status", ["COMPLETED", "DISCONTINUED", "SCHEDULED"])
def test_create_with_another_status_is_an_invalid_attribute_value(status: str) -> None:
    error = refusal(check_create, created(status))
    assert (error.status, error.attributes) == (0x0106, (0x00400252,))


def test_create_without_status() -> None:
    ds = created()
    del ds["00400252"]
    assert refusal(check_create, ds).status == 0x0120
    ds["00400252"] = element("CS")
    assert refusal(check_create, ds).status == 0x0121


@pytest.mark.parametrize("tag", ["00400270", "00400253", "00400241", "00400244", "00400245", "00080060"])
def test_create_without_a_type_1_attribute_is_a_missing_attribute(tag: str) -> None:
    ds = created()
    del ds[tag]
    error = refusal(check_create, ds)
    assert (error.status, error.attributes) == (0x0120, (int(tag, 16),))
    assert f"({tag[:4]},{tag[4:]})" in error.comment


@pytest.mark.parametrize("tag", ["00400270", "00400253", "00080060"])
def test_create_with_an_empty_type_1_attribute_is_a_missing_attribute_value(tag: str) -> None:
    ds = created()
    ds[tag] = element(ds[tag]["vr"])
    error = refusal(check_create, ds)
    assert (error.status, error.attributes) == (0x0121, (int(tag, 16),))


def test_create_lists_every_missing_attribute() -> None:
    ds = created()
    del ds["00400241"], ds["00400244"]
    error = refusal(check_create, ds)
    assert error.attributes == (0x00400241, 0x00400244)
    assert error.comment == "missing Type 1 attribute (0040,0241) and 1 more"


def test_create_needs_the_study_uid_of_each_scheduled_step() -> None:
    ds = created()
    del ds["00400270"]["Value"][0]["0020000D"]
    assert refusal(check_create, ds).attributes == (0x0020000D,)


def test_create_does_not_report_type_2_attributes() -> None:
    ds = created()
    for tag in ("00100010", "00100020", "00100030", "00100040", "00200010", "00400340", "00400250"):
        del ds[tag]
    check_create(ds)


def test_unscheduled_step_has_empty_type_2_values() -> None:
    ds = created()
    ds["00400270"] = element("SQ", {"0020000D": element("UI", STUDY_UID), "00080050": element("SH"),
                                    "00401001": element("SH"), "00400009": element("SH"),
                                    "00081110": element("SQ")})
    check_create(ds)
    (step,) = scheduled_steps(ds)
    assert step == StepReference(STUDY_UID, None, None, None) and not step.scheduled


def test_group_case_references_several_requested_procedures() -> None:
    ds = created()
    first = ds["00400270"]["Value"][0]
    second = copy.deepcopy(first)
    second["00401001"] = element("SH", "RP2")
    second["00400009"] = element("SH", "SPS7")
    ds["00400270"]["Value"].append(second)
    check_create(ds)
    assert [(s.requested_procedure_id, s.sps_id) for s in scheduled_steps(ds)] == [("RP1", "SPS1"), ("RP2", "SPS7")]
    assert all(s.scheduled and s.study_uid == STUDY_UID for s in scheduled_steps(ds))


def test_duplicate_instance_constant() -> None:
    assert DUPLICATE_SOP_INSTANCE == 0x0111


# --- N-SET -------------------------------------------------------------------------------------

def test_in_progress_to_completed() -> None:
    stored = created()
    before = copy.deepcopy(stored)
    merged = check_set(stored, completion("COMPLETED", series_item(images=SOP_UIDS[:2], non_images=SOP_UIDS[2:])))
    assert stored == before
    assert status_of(merged) is MppsStatus.COMPLETED
    assert merged["00400250"] == element("DA", "20240131")
    assert merged["00100010"] == stored["00100010"]  # kept from the N-CREATE
    assert merged["00080005"] == element("CS", "ISO_IR 192")
    assert list(merged) == sorted(merged)
    assert performed_series(merged) == [(SERIES_UID, SOP_UIDS)]


def test_in_progress_to_discontinued_without_series() -> None:
    modification = completion("DISCONTINUED")
    modification["00400281"] = element("SQ", {"00080100": element("CS", "110514"),
                                              "00080102": element("CS", "DCM"),
                                              "00080104": element("LO", "Incorrect worklist entry selected")})
    merged = check_set(created(), modification)
    assert status_of(merged) is MppsStatus.DISCONTINUED
    assert performed_series(merged) == []


def test_intermediate_set_keeps_in_progress() -> None:
    merged = check_set(created(), {"00400254": element("LO", "Abdomen"), "00400340": element("SQ", series_item())})
    assert status_of(merged) is MppsStatus.IN_PROGRESS
    assert merged["00400254"] == element("LO", "Abdomen")


@pytest.mark.parametrize("final", ["COMPLETED", "DISCONTINUED"])
@pytest.mark.parametrize("status", ["IN PROGRESS", "COMPLETED", "DISCONTINUED"])
def test_no_set_after_the_step_ended(final: str, status: str) -> None:
    ended = check_set(created(), completion(final, series_item(images=SOP_UIDS)))
    error = refusal(check_set, ended, {"00400252": element("CS", status)})
    assert (error.status, error.error_id) == (0x0110, MAY_NO_LONGER_BE_UPDATED)
    assert error.comment == "Performed Procedure Step Object may no longer be updated"
    error = refusal(check_set, ended, {"00400254": element("LO", "late")})
    assert error.error_id == 0xA710


def test_set_with_an_unknown_status_is_an_invalid_attribute_value() -> None:
    error = refusal(check_set, created(), {"00400252": element("CS", "DONE")})
    assert (error.status, error.attributes) == (0x0106, (0x00400252,))
    assert refusal(check_set, created(), {"00400252": element("CS")}).status == 0x0121


@pytest.mark.parametrize(("tag", "value"), [
    ("00100020", element("LO", "PID-0000")),
    ("00100010", element("PN", {"Alphabetic": "Other^Name"})),
    ("00080060", element("CS", "MR")),
    ("00400244", element("DA", "20240130")),
])
def test_set_may_not_change_what_the_table_does_not_allow(tag: str, value: dict[str, Any]) -> None:
    error = refusal(check_set, created(), {tag: value, "00400254": element("LO", "x")})
    assert (error.status, error.attributes) == (0x0105, (int(tag, 16),))
    assert error.comment == f"N-SET may not change ({tag[:4]},{tag[4:]})"
    assert "PID-0000" not in error.comment and "Other" not in error.comment


def test_set_may_resend_what_it_may_not_change() -> None:
    stored = created()
    modification = completion("COMPLETED", series_item(images=SOP_UIDS))
    for tag in ("00100010", "00100020", "00080060", "00400241", "00400244", "00400270", "00200010"):
        modification[tag] = copy.deepcopy(stored[tag])
    modification["00400253"] = element("SH", " PPS-1")  # padding is no change
    merged = check_set(stored, modification)
    assert merged["00400253"] == stored["00400253"]
    assert status_of(merged) is MppsStatus.COMPLETED


def test_sequences_are_replaced_whole() -> None:
    stored = check_set(created(), {"00400340": element("SQ", series_item(images=SOP_UIDS[:1]),
                                                      series_item(uid="1.2.3.9", images=[]))})
    assert len(stored["00400340"]["Value"]) == 2
    merged = check_set(stored, completion("COMPLETED", series_item(images=SOP_UIDS)))
    assert performed_series(merged) == [(SERIES_UID, SOP_UIDS)]


def test_completed_needs_a_performed_series() -> None:
    error = refusal(check_set, created(), completion("COMPLETED"))
    assert (error.status, error.attributes) == (0x0121, (0x00400340,))
    modification = completion("COMPLETED")
    del modification["00400340"]
    assert refusal(check_set, created(), modification).attributes == (0x00400340,)


@pytest.mark.parametrize("status", ["COMPLETED", "DISCONTINUED"])
def test_final_state_needs_end_date_and_time(status: str) -> None:
    modification = completion(status, series_item(images=SOP_UIDS))
    del modification["00400251"]
    error = refusal(check_set, created(), modification)
    assert (error.status, error.attributes) == (0x0121, (0x00400251,))
    modification["00400250"] = element("DA")
    assert refusal(check_set, created(), modification).attributes == (0x00400250, 0x00400251)


def test_end_date_may_come_in_an_earlier_set() -> None:
    stored = check_set(created(), {"00400250": element("DA", "20240131"), "00400251": element("TM", "1015")})
    merged = check_set(stored, {"00400252": element("CS", "COMPLETED"),
                                "00400340": element("SQ", series_item(images=SOP_UIDS))})
    assert status_of(merged) is MppsStatus.COMPLETED


@pytest.mark.parametrize("status", ["COMPLETED", "DISCONTINUED"])
def test_final_series_items_need_a_uid_and_their_instance_list(status: str) -> None:
    error = refusal(check_set, created(), completion(status, series_item(uid=None, images=SOP_UIDS)))
    assert (error.status, error.attributes) == (0x0121, (0x0020000E,))
    error = refusal(check_set, created(), completion(status, series_item()))
    assert error.attributes == (0x00081140,)
    # either list suffices, and it may be empty (nothing of that kind was made)
    check_set(created(), completion(status, series_item(non_images=[])))


def test_set_does_not_report_type_2_attributes() -> None:
    item = series_item(images=SOP_UIDS)
    for tag in ("00080054", "0008103E", "00081050", "00081070", "00181030"):
        del item[tag]
    check_set(created(), completion("COMPLETED", item))


def test_set_may_set_an_attribute_the_create_did_not_make() -> None:
    stored = created()
    del stored["00400254"]
    assert check_set(stored, {"00400254": element("LO", "x")})["00400254"] == element("LO", "x")


def test_character_set_of_the_set_is_not_merged() -> None:
    merged = check_set(created(), {"00080005": element("CS", "ISO_IR 100"), "00400254": element("LO", "Bauch")})
    assert merged["00080005"] == element("CS", "ISO_IR 192")


# --- reading a step ------------------------------------------------------------------------------

def test_performed_series_skips_items_without_uid_and_references_without_instance() -> None:
    item = series_item(images=SOP_UIDS[:1])
    item["00081140"]["Value"].append({"00081150": element("UI", CT_IMAGE)})
    ds = {"00400340": element("SQ", item, series_item(uid=None, images=SOP_UIDS[1:]),
                              series_item(uid="1.2.3.4"))}
    assert performed_series(ds) == [(SERIES_UID, SOP_UIDS[:1]), ("1.2.3.4", [])]


def test_status_of() -> None:
    assert status_of(created()) is MppsStatus.IN_PROGRESS
    assert status_of({"00400252": element("CS", "completed")}) is MppsStatus.COMPLETED
    assert status_of({"00400252": element("CS", "DONE")}) is None
    assert status_of({}) is None
    assert MppsStatus.COMPLETED.final and not MppsStatus.IN_PROGRESS.final


def test_error_comment_is_at_most_64_characters() -> None:
    error = MppsError(0x0110, "x" * 100, error_id=0xA710, attributes=(0x00400252,))
    assert len(error.comment) == 64 and (error.status, error.error_id, error.attributes) == (
        0x0110, 0xA710, (0x00400252,))


def test_set_with_empty_values_for_what_it_may_not_change_drops_them() -> None:
    stored = created()
    merged = check_set(stored, {"00100010": element("PN"), "00400270": element("SQ"), "00400254": element("LO", "x")})
    assert merged["00100010"] == stored["00100010"] and merged["00400270"] == stored["00400270"]
