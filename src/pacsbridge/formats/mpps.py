"""Modality Performed Procedure Step: the checks an N-CREATE and an N-SET must pass, the dataset an N-SET
leaves, and what a step says about the orders it performed and the series it made.

See: PS3.4 Annex F.7 (Table F.7.2-1; F.7.2.1.3 and F.7.2.2.3, the SCP's duties; F.7.2.2.4, Table
F.7.2-2), PS3.7 Annex C (status codes) and §10.1.3/§10.1.5 (statuses N-SET and N-CREATE may answer).

Rules:
1. Real modalities are sloppy, so we refuse only what breaks the step's meaning; every refusal is an
   ``MppsError`` carrying its DIMSE status. The SCP alone judges what the standard makes it judge:
   N-CREATE with a status other than IN PROGRESS is 0x0106 (F.7.2.1.3), any N-SET once the stored status
   is COMPLETED or DISCONTINUED is 0x0110 with Error ID 0xA710 (F.7.2.2.3, Table F.7.2-2).
2. N-CREATE: a Type 1 (1/1) attribute absent is 0x0120 Missing Attribute, present but empty 0x0121
   Missing Attribute Value, with the tags in the Attribute Identifier List. Type 2 attributes, absent or
   empty, are never reported; nor are Type 1 attributes inside Type 2 sequences (Protocol Name).
3. N-SET: an attribute the table marks "Not allowed" (patient, scheduling, station, start, Modality,
   Study ID) is refused with 0x0105 No Such Attribute only when it carries a value other than the stored
   one: modalities resend the whole dataset, and an unchanged or empty value changes nothing (it is
   dropped). (dcm4che's mppsscp
   answers 0x0105 for any such attribute; dcm4chee-arc ignores them.) A status that is not one of the
   three is 0x0106, an empty one 0x0121. Attributes not created by the N-CREATE may still be set.
4. Each attribute of an N-SET replaces the stored one; a sequence is replaced whole, items included
   (F.7.2.2.2); a zero-length value empties it. SpecificCharacterSet is not merged: both datasets are
   DICOM JSON (Unicode), so the result says ISO_IR 192 (F.7.2.2.3's charset merge, done upstream).
5. Final state (the merged status COMPLETED or DISCONTINUED): PPS End Date and End Time have values;
   every Performed Series item has a Series Instance UID and a Referenced Image Sequence or a Referenced
   Non-Image Composite SOP Instance Sequence (either may be empty: F.7.2.2.2, nothing of that kind was
   made). COMPLETED also needs at least one series item (Table F.7.2-1 note 2); DISCONTINUED does not,
   since a step may stop before anything was acquired. A gap is 0x0121: N-SET has no 0x0120 (PS3.7
   §10.1.3.1.9).
6. Error comments (0000,0902) are at most 64 characters and name attributes by tag, never their values.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass
from typing import Any

from ..domain.errors import PacsbridgeError
from ..domain.model import DicomJson
from .dicom_json import attribute_values

MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"

NO_SUCH_ATTRIBUTE = 0x0105
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_SOP_INSTANCE = 0x0112
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
MAY_NO_LONGER_BE_UPDATED = 0xA710  # Error ID (0000,0903), Table F.7.2-2

SPECIFIC_CHARACTER_SET = "00080005"
MODALITY = "00080060"
STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
ACCESSION_NUMBER = "00080050"
REFERENCED_IMAGES = "00081140"
REFERENCED_NON_IMAGES = "00400220"
REFERENCED_SOP_UID = "00081155"
SPS_ID = "00400009"
REQUESTED_PROCEDURE_ID = "00401001"
PPS_STATUS = "00400252"
PPS_END_DATE = "00400250"
PPS_END_TIME = "00400251"
SCHEDULED_STEPS = "00400270"
PERFORMED_SERIES = "00400340"

# Table F.7.2-1, N-CREATE 1/1 (top level; Study Instance UID inside each Scheduled Step item).
CREATE_REQUIRED = (
    SCHEDULED_STEPS,
    "00400253",  # Performed Procedure Step ID
    "00400241",  # Performed Station AE Title
    "00400244",  # PPS Start Date
    "00400245",  # PPS Start Time
    MODALITY,
)
# Table F.7.2-1, N-SET "Not allowed" (top level).
NOT_ALLOWED_IN_SET = frozenset({
    SCHEDULED_STEPS,
    "00100010", "00100020", "00100021", "00100024", "00101002", "00100030", "00100040",  # patient
    "00081120",  # Referenced Patient Sequence
    "00380010", "00380014", "00380060", "00380062", "00380064",  # admission, service episode
    "00400253", "00400241", "00400242", "00400243", "00400244", "00400245",  # PPS ID, station, start
    MODALITY,
    "00200010",  # Study ID
})


class MppsStatus(enum.Enum):
    """Performed Procedure Step Status (0040,0252): the three states of F.1.5."""

    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"

    @property
    def final(self) -> bool:
        return self is not MppsStatus.IN_PROGRESS


class MppsError(PacsbridgeError):
    """A refused N-CREATE or N-SET, with the DIMSE status to answer (rule 1).

    ``comment`` is the Error Comment (0000,0902), ``error_id`` the Error ID (0000,0903), ``attributes``
    the Attribute Identifier List (0000,1005) as tag numbers. See: PS3.7 Annex C.
    """

    def __init__(self, status: int, comment: str, error_id: int | None = None,
                 attributes: tuple[int, ...] = ()) -> None:
        comment = comment[:64]  # LO (rule 6)
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.error_id = error_id
        self.attributes = attributes


@dataclass(frozen=True)
class StepReference:
    """One item of the Scheduled Step Attribute Sequence (0040,0270): the order a step performed. An
    unscheduled step has only the (possibly modality-made) Study Instance UID (F.7.2.1.2 note 3)."""

    study_uid: str | None
    accession_number: str | None
    requested_procedure_id: str | None
    sps_id: str | None

    @property
    def scheduled(self) -> bool:
        return any((self.accession_number, self.requested_procedure_id, self.sps_id))


# --- N-CREATE ----------------------------------------------------------------------------------

def check_create(ds: DicomJson) -> None:
    """Refuse an N-CREATE that the SCP must not accept (rules 1 and 2).

    See: PS3.4 F.7.2.1.3, Table F.7.2-1. Raises ``MppsError`` 0x0120, 0x0121 or 0x0106.
    """
    _require(ds, PPS_STATUS, MISSING_ATTRIBUTE)
    if status_of(ds) is not MppsStatus.IN_PROGRESS:
        raise MppsError(INVALID_ATTRIBUTE_VALUE, "N-CREATE needs Performed Procedure Step Status IN PROGRESS",
                        attributes=(int(PPS_STATUS, 16),))
    absent = [tag for tag in CREATE_REQUIRED if tag not in ds]
    if absent:
        raise _gap(MISSING_ATTRIBUTE, "missing Type 1 attribute", absent)
    empty = [tag for tag in CREATE_REQUIRED if not _filled(ds[tag])]
    if empty:
        raise _gap(MISSING_ATTRIBUTE_VALUE, "empty Type 1 attribute", empty)
    for item in _items(ds, SCHEDULED_STEPS):
        if STUDY_UID not in item:
            raise _gap(MISSING_ATTRIBUTE, "Scheduled Step item lacks", [STUDY_UID])
        if not _filled(item[STUDY_UID]):
            raise _gap(MISSING_ATTRIBUTE_VALUE, "Scheduled Step item has empty", [STUDY_UID])


# --- N-SET -------------------------------------------------------------------------------------

def check_set(stored: DicomJson, modification: DicomJson) -> DicomJson:
    """The dataset an N-SET leaves, or the ``MppsError`` it must be answered with (rules 1 and 3-5).

    See: PS3.4 F.7.2.2.2-F.7.2.2.4, Table F.7.2-1. ``stored`` is the step as created and set so far.
    """
    if status_of(stored) is not MppsStatus.IN_PROGRESS:
        raise MppsError(PROCESSING_FAILURE, "Performed Procedure Step Object may no longer be updated",
                        error_id=MAY_NO_LONGER_BE_UPDATED)
    if PPS_STATUS in modification:
        _require(modification, PPS_STATUS, MISSING_ATTRIBUTE_VALUE)
        if status_of(modification) is None:
            raise MppsError(INVALID_ATTRIBUTE_VALUE, "Performed Procedure Step Status is not a known state",
                            attributes=(int(PPS_STATUS, 16),))
    changed = sorted(tag for tag in modification if tag in NOT_ALLOWED_IN_SET
                     and (given := _canonical(modification[tag])) and given != _canonical(stored.get(tag)))
    if changed:
        raise _gap(NO_SUCH_ATTRIBUTE, "N-SET may not change", changed)
    merged = dict(stored)
    for tag, element in modification.items():
        if tag != SPECIFIC_CHARACTER_SET and tag not in NOT_ALLOWED_IN_SET:
            merged[tag] = copy.deepcopy(element)
    merged[SPECIFIC_CHARACTER_SET] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    merged = dict(sorted(merged.items()))
    status = status_of(merged)
    if status is not None and status.final:
        _check_final(merged, status)
    return merged


def _check_final(ds: DicomJson, status: MppsStatus) -> None:
    """Rule 5: what a step must hold when it ends (Table F.7.2-1 Final State, F.7.2.2.2)."""
    gaps = [tag for tag in (PPS_END_DATE, PPS_END_TIME) if not _filled(ds.get(tag))]
    if gaps:
        raise _gap(MISSING_ATTRIBUTE_VALUE, f"{status.value} needs", gaps)
    series = _items(ds, PERFORMED_SERIES)
    if status is MppsStatus.COMPLETED and not series:
        raise _gap(MISSING_ATTRIBUTE_VALUE, "COMPLETED needs an item in", [PERFORMED_SERIES])
    for item in series:
        if not _filled(item.get(SERIES_UID)):
            raise _gap(MISSING_ATTRIBUTE_VALUE, "Performed Series item lacks", [SERIES_UID])
        if REFERENCED_IMAGES not in item and REFERENCED_NON_IMAGES not in item:
            raise _gap(MISSING_ATTRIBUTE_VALUE, "Performed Series item lacks", [REFERENCED_IMAGES])


# --- reading a step ----------------------------------------------------------------------------

def status_of(ds: DicomJson) -> MppsStatus | None:
    """The Performed Procedure Step Status, or None when absent, empty or not one of the three."""
    values = attribute_values(ds.get(PPS_STATUS) or {})
    try:
        return MppsStatus(values[0].strip().upper()) if values else None
    except ValueError:
        return None


def scheduled_steps(ds: DicomJson) -> list[StepReference]:
    """The orders a step performed, one per Scheduled Step Attribute Sequence item (several: the group
    case, F.7.2.1.2 note 2). See: PS3.4 Table F.7.2-1."""
    return [StepReference(_text(item, STUDY_UID), _text(item, ACCESSION_NUMBER),
                          _text(item, REQUESTED_PROCEDURE_ID), _text(item, SPS_ID))
            for item in _items(ds, SCHEDULED_STEPS)]


def performed_series(ds: DicomJson) -> list[tuple[str, list[str]]]:
    """Each performed series' UID and the SOP Instance UIDs the step says it made in it (images and
    non-images alike: the split is historic, F.7.2.2.2 note 2). Items without a series UID are skipped."""
    out: list[tuple[str, list[str]]] = []
    for item in _items(ds, PERFORMED_SERIES):
        series_uid = _text(item, SERIES_UID)
        if series_uid is None:
            continue
        sop_uids = [uid for tag in (REFERENCED_IMAGES, REFERENCED_NON_IMAGES)
                    for ref in _items(item, tag) if (uid := _text(ref, REFERENCED_SOP_UID)) is not None]
        out.append((series_uid, sop_uids))
    return out


# --- helpers -----------------------------------------------------------------------------------

def _items(ds: DicomJson, tag: str) -> list[DicomJson]:
    return [item for item in (ds.get(tag) or {}).get("Value") or [] if isinstance(item, dict)]


def _text(ds: DicomJson, tag: str) -> str | None:
    values = attribute_values(ds.get(tag) or {})
    return (values[0].strip() or None) if values else None


def _filled(element: dict[str, Any] | None) -> bool:
    """Has the attribute a value? (SQ: at least one item.)"""
    if not element:
        return False
    if element.get("vr") == "SQ":
        return bool(element.get("Value"))
    return bool(attribute_values(element)) or "InlineBinary" in element or "BulkDataURI" in element


def _require(ds: DicomJson, tag: str, absent_status: int) -> None:
    if tag not in ds:
        raise _gap(absent_status, "missing Type 1 attribute", [tag])
    if not _filled(ds[tag]):
        raise _gap(MISSING_ATTRIBUTE_VALUE, "empty Type 1 attribute", [tag])


def _gap(status: int, what: str, tags: list[str]) -> MppsError:
    """An error naming the first tag (and how many more): at most 64 characters, no values (rule 6)."""
    more = f" and {len(tags) - 1} more" if len(tags) > 1 else ""
    tag = tags[0]
    return MppsError(status, f"{what} ({tag[:4]},{tag[4:]}){more}", attributes=tuple(int(t, 16) for t in tags))


def _canonical(element: dict[str, Any] | None) -> Any:
    """A comparable form of an attribute: absent and empty are alike, as are a number and its text."""
    if not element:
        return ()
    if element.get("vr") == "SQ":
        return tuple(tuple(sorted((tag, c) for tag, sub in item.items() if (c := _canonical(sub))))
                     for item in element.get("Value") or [] if isinstance(item, dict))
    return tuple(v.strip() for v in attribute_values(element)) or tuple(
        element[k] for k in ("InlineBinary", "BulkDataURI") if k in element)
