"""Modality Worklist C-FIND: the query a request's identifier asks for, whether an item matches it, the
identifier of one matching item, and the item as a ``.wl`` file for a worklist folder.

See: PS3.4 Annex K (Basic Worklist Management), §K.6.1 (Modality Worklist Information Model, Table
K.6-1), C.2.2.2 (matching); PS3.10 §7 (file format); Orthanc Book, Worklists plugin (``.wl`` folder).

Rules:
1. A worklist item is a DICOM JSON object for one Scheduled Procedure Step: the requested procedure,
   visit and patient attributes, and a ScheduledProcedureStepSequence (0040,0100) holding that one
   step's item (§K.6.1.2.1: one response per step).
2. The request's SPS sequence has exactly one item (Table K.6-1): zero items (or none at all) is a
   universal match on the step, two or more is ``InvalidInput``. Its item's keys are sequence matching
   (C.2.2.2.6); the matching syntax is DICOM's own, so the QIDO parser builds the Query, as for C-FIND
   (``formats.dimse_query``), and ``domain.query.matches`` decides.
3. Keys one sequence deeper (a code sequence inside the step) are return keys only; a value given there
   is an optional key we do not match on (§K.2.2.1.1.2), listed in ``ignored_keys`` so the SCP answers
   0xFF01 instead of 0xFF00. So are keys of attributes our dictionary does not know.
4. SPS Start Date (0040,0002) and Start Time (0040,0003) are matched each on its own (C.2.2.2.5, no
   combined date-time matching). Table K.6-1's remark reads a date range plus a time range as one
   period and DCMTK's wlmscpfs does so; we answer the same except when both are ranges and the dates
   span several days, where each day's time window applies (narrower). Person names match case- and
   accent-insensitively, as everywhere in pacsbridge (``domain.query`` rule 2).
5. A response holds exactly the requested keys (unknown ones empty), the SPS sequence with one item of
   the requested step keys (the whole step when the request names none), any other sequence whole
   (code sequences), and SpecificCharacterSet ISO_IR 192: items are Unicode (§K.4.1.1.3.2).
6. Type 1 return keys are never sent empty: an item lacking one that the request names is the fault of
   the data we hold; ``worklist_response`` raises ``CorruptData`` naming the tag, the SCP leaves the item
   out (as wlmscpfs does with incomplete files). ``missing_required`` finds those gaps when an item is
   made. Type 2 keys missing from an item are sent empty and reported nowhere.
7. ``prefilter`` holds only plain values an SQL pre-selection may use without losing a match; the
   Python matcher has the last word.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import dcmwrite
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from ..domain.errors import CorruptData, InvalidInput
from ..domain.model import DicomJson, Level
from ..domain.query import Match, MatchKind, Query, matches_all, normalize_date
from .dicom_json import BINARY_VRS, json_to_dataset
from .qido import parse_qido, resolve_attribute

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
SPS_SEQUENCE = "00400100"
STATION_AE = "00400001"
SPS_START_DATE = "00400002"
SPS_START_TIME = "00400003"
MODALITY = "00080060"
SPS_ID = "00400009"
SPS_STATUS_TAG = "00400020"
PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
ACCESSION_NUMBER = "00080050"
REQUESTED_PROCEDURE_ID = "00401001"
STUDY_UID = "0020000D"
SPECIFIC_CHARACTER_SET = "00080005"
TIMEZONE_OFFSET = "00080201"
QUERY_RETRIEVE_LEVEL = "00080052"  # not a worklist key, but some SCUs send it: returned, never matched

# Table K.6-1 return key type 1: never empty in a response (rule 6).
REQUIRED_KEYS = (SPS_SEQUENCE, REQUESTED_PROCEDURE_ID, STUDY_UID, PATIENT_NAME, PATIENT_ID)
REQUIRED_STEP_KEYS = (STATION_AE, SPS_START_DATE, SPS_START_TIME, MODALITY, SPS_ID)


class SpsStatus(enum.Enum):
    """Scheduled Procedure Step Status (0040,0020): PS3.3 C.4.10's defined terms, and the ends of a step
    that its MPPS reports (defined terms may be extended)."""

    SCHEDULED = "SCHEDULED"
    ARRIVED = "ARRIVED"
    READY = "READY"
    STARTED = "STARTED"
    DEPARTED = "DEPARTED"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"
    CANCELED = "CANCELED"


SPS_STATUS = frozenset(s.value for s in SpsStatus)


@dataclass(frozen=True)
class WorklistPrefilter:
    """Plain values of a worklist query for an SQL pre-selection (rule 7); None: no restriction.
    Dates are ``YYYYMMDD``; a single date is a range of one day."""

    station_ae: str | None = None
    modality: str | None = None
    date_low: str | None = None
    date_high: str | None = None
    patient_id: str | None = None
    accession_number: str | None = None


@dataclass(frozen=True)
class WorklistQuery:
    """What a Modality Worklist C-FIND asks for: the match keys (``query``), the keys to return at the
    top level and in the step item (8-hex tags, request order), and what it leaves unmatched."""

    query: Query
    return_keys: tuple[str, ...]
    step_return_keys: tuple[str, ...]
    prefilter: WorklistPrefilter
    ignored_keys: tuple[str, ...] = ()


# --- the request -------------------------------------------------------------------------------

def worklist_query(identifier: Dataset, *, fuzzy: bool = False) -> WorklistQuery:
    """The query of a Modality Worklist C-FIND identifier (rules 2-4).

    See: PS3.4 §K.6.1.2, Table K.6-1; C.2.2.2. ``fuzzy`` is the fuzzy semantic PN matching the
    association negotiated (§K.5.1). Raises ``InvalidInput`` for a malformed key (named, never its value).
    """
    params: list[tuple[str, str]] = []
    return_keys: list[str] = []
    step_keys: list[str] = []
    ignored: list[str] = []
    for element in identifier:
        if element.tag.group == 0x0000 or element.tag.is_private:
            continue
        tag = f"{element.tag:08X}"
        if tag == SPECIFIC_CHARACTER_SET:
            continue  # never matched; every response says ISO_IR 192 (rule 5)
        return_keys.append(tag)
        if tag == QUERY_RETRIEVE_LEVEL:
            continue
        if element.VR != "SQ":
            params.append((tag, _key_text(element, tag, ignored)))
            continue
        items = list(element.value or [])
        if tag == SPS_SEQUENCE and len(items) > 1:
            raise InvalidInput("ScheduledProcedureStepSequence must hold one item (PS3.4 Table K.6-1)")
        keys: list[tuple[str, str]] = []
        for sub in items[0] if items else ():
            if sub.tag.group == 0x0000 or sub.tag.is_private:
                continue
            path = f"{tag}.{sub.tag:08X}"
            if tag == SPS_SEQUENCE:
                step_keys.append(f"{sub.tag:08X}")
            if sub.VR == "SQ":
                if _has_values(sub):
                    ignored.append(path)  # rule 3: matching two levels down is not offered
                keys.append((path, ""))
            else:
                keys.append((path, _key_text(sub, path, ignored)))
        params.extend(keys or [(tag, "")])
    query = parse_qido(params, Level.STUDY, max_limit=1 << 30)  # one level: the level is a formality
    query = Query(Level.STUDY, query.matches, fuzzy=fuzzy, extra=query.extra)
    return WorklistQuery(query, tuple(return_keys), tuple(step_keys), _prefilter(query), tuple(ignored))


def _key_text(element: DataElement, path: str, ignored: list[str]) -> str:
    """A key's value in the QIDO syntax (backslash between values); binary or unknown keys are ignored."""
    value = element.value
    if element.VR in BINARY_VRS or isinstance(value, bytes | bytearray):
        if value:
            ignored.append(path)
        return ""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def _has_values(element: DataElement) -> bool:
    """Does a sequence key carry any non-empty value in its items (at any depth)?"""
    for item in element.value or []:
        for sub in item:
            if sub.VR == "SQ":
                if _has_values(sub):
                    return True
            elif not _blank(sub.value):
                return True
    return False


def _blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str | bytes | bytearray | list | tuple | MultiValue):
        return not value
    return str(value) == ""  # PersonName, numbers


def _prefilter(query: Query) -> WorklistPrefilter:
    step_match = query.match_for(SPS_SEQUENCE)
    step = {m.tag: m for m in step_match.items} if step_match is not None else {}
    low = high = None
    date = step.get(SPS_START_DATE)
    if date is not None and date.kind is MatchKind.SINGLE:
        low = high = normalize_date(date.value)
    elif date is not None and date.kind is MatchKind.RANGE:
        low = normalize_date(date.low) if date.low else None
        high = normalize_date(date.high) if date.high else None
    return WorklistPrefilter(
        station_ae=_single(step.get(STATION_AE)),
        modality=_single(step.get(MODALITY)),
        date_low=low,
        date_high=high,
        patient_id=_single(query.match_for(PATIENT_ID)),
        accession_number=_single(query.match_for(ACCESSION_NUMBER)),
    )


def _single(match: Match | None) -> str | None:
    return match.value if match is not None and match.kind is MatchKind.SINGLE else None


def matches_item(query: WorklistQuery, item: DicomJson) -> bool:
    """Does a worklist item satisfy every match key of the query? (PS3.4 §K.2.2.2, C.2.2.2)"""
    return matches_all(query.query.matches, item, query.query.fuzzy)


# --- the response ------------------------------------------------------------------------------

def worklist_response(query: WorklistQuery, item: DicomJson) -> Dataset:
    """The C-FIND response identifier of one matching item (rules 5 and 6).

    See: PS3.4 §K.4.1.1.3.2, Table K.6-1. Raises ``CorruptData`` (naming the tag) when the item lacks a
    requested Type 1 key or does not hold exactly one step.
    """
    shown: DicomJson = {}
    for tag in query.return_keys:
        if tag == SPS_SEQUENCE:
            shown[tag] = {"vr": "SQ", "Value": [_step_response(query.step_return_keys, _step_of(item))]}
            continue
        element = item.get(tag)
        if tag == TIMEZONE_OFFSET and not _filled(element):
            continue  # §K.4.1.1.3.2: present only with a value
        if tag in REQUIRED_KEYS and not _filled(element):
            raise CorruptData(f"worklist item lacks Type 1 return key {_tag_name(tag)}")
        shown[tag] = element if element is not None else _empty(tag)
    shown[SPECIFIC_CHARACTER_SET] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    return json_to_dataset(shown)


def _step_of(item: DicomJson) -> DicomJson:
    steps = (item.get(SPS_SEQUENCE) or {}).get("Value") or []
    if len(steps) != 1 or not isinstance(steps[0], dict):
        raise CorruptData(f"worklist item must hold one step in {_tag_name(SPS_SEQUENCE)}")
    step: DicomJson = steps[0]
    return step


def _step_response(keys: tuple[str, ...], step: DicomJson) -> DicomJson:
    if not keys:
        return step  # the request named the sequence only: the whole step (§K.2.2.1.2 note 4)
    out: DicomJson = {}
    for tag in keys:
        element = step.get(tag)
        if tag in REQUIRED_STEP_KEYS and not _filled(element):
            raise CorruptData(f"worklist step lacks Type 1 return key {_tag_name(tag)}")
        out[tag] = element if element is not None else _empty(tag)
    return out


def missing_required(item: DicomJson) -> tuple[str, ...]:
    """The Type 1 return keys (Table K.6-1) an item lacks or holds empty, step keys as
    ``00400100.00400001`` paths; an item with gaps is left out of every answer naming them (rule 6)."""
    missing = [tag for tag in REQUIRED_KEYS if not _filled(item.get(tag))]
    steps = (item.get(SPS_SEQUENCE) or {}).get("Value") or []
    if len(steps) == 1 and isinstance(steps[0], dict):
        missing += [f"{SPS_SEQUENCE}.{tag}" for tag in REQUIRED_STEP_KEYS if not _filled(steps[0].get(tag))]
    elif SPS_SEQUENCE not in missing:
        missing.append(SPS_SEQUENCE)
    return tuple(missing)


def _filled(element: dict[str, Any] | None) -> bool:
    """Has the attribute a value? (PN: a non-empty group; SQ: an item.)"""
    if not element:
        return False
    if "InlineBinary" in element or "BulkDataURI" in element:
        return True
    for value in element.get("Value") or []:
        if isinstance(value, dict) and element.get("vr") == "PN":
            if any(value.values()):
                return True
        elif value not in (None, ""):
            return True
    return False


def _empty(tag: str) -> DicomJson:
    resolved = resolve_attribute(tag)
    return {"vr": resolved[1] if resolved else "UN"}


def _tag_name(tag: str) -> str:
    return f"({tag[:4]},{tag[4:]})"


# --- step status and the .wl file --------------------------------------------------------------

def with_step_status(item: DicomJson, status: SpsStatus | str) -> DicomJson:
    """A copy of the item whose step has ScheduledProcedureStepStatus (0040,0020) ``status``.

    See: PS3.3 C.4.10. A value that is not one of ``SPS_STATUS`` is a ValueError.
    """
    value = status.value if isinstance(status, SpsStatus) else status
    if value not in SPS_STATUS:
        raise ValueError(f"not a Scheduled Procedure Step Status: {value!r}")
    out = copy.deepcopy(item)
    step = _step_of(out)
    step[SPS_STATUS_TAG] = {"vr": "CS", "Value": [value]}
    out[SPS_SEQUENCE]["Value"][0] = dict(sorted(step.items()))
    return out


def worklist_uid(item: DicomJson) -> str:
    """A UID for the item's file, the same every time: a hash of its Accession Number, Requested
    Procedure ID and SPS ID (the step's ID is unique only within its requested procedure, IHE RAD TF-2)."""
    step = _step_of(item)
    sps_id = _first(step.get(SPS_ID))
    if not sps_id:
        raise CorruptData(f"worklist step lacks {_tag_name(SPS_ID)}")
    sources = [_first(item.get(ACCESSION_NUMBER)), _first(item.get(REQUESTED_PROCEDURE_ID)), sps_id]
    return str(generate_uid(entropy_srcs=["pacsbridge-worklist", *sources]))


def _first(element: dict[str, Any] | None) -> str:
    values = (element or {}).get("Value") or []
    return str(values[0]) if values and values[0] is not None else ""


def worklist_file(item: DicomJson) -> bytes:
    """The item as a DICOM Part 10 file, as DCMTK's wlmscpfs and Orthanc's worklists plugin read them
    from their folder (``<worklist_uid>.wl``).

    See: PS3.10 §7.1 (File Meta Information), PS3.4 §K.6.1 (SOP class 1.2.840.10008.5.1.4.31), Orthanc
    Book "Worklists plugin" (files with a ``.wl`` extension, as ``dump2dcm`` writes them). Explicit VR
    Little Endian, SpecificCharacterSet ISO_IR 192.
    """
    ds = json_to_dataset(item)
    ds.SpecificCharacterSet = "ISO_IR 192"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(MODALITY_WORKLIST_FIND)
    meta.MediaStorageSOPInstanceUID = UID(worklist_uid(item))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
