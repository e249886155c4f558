"""C-FIND identifiers in and out: the Query a request's identifier asks for, the identifier of one
match, and (for an upstream PACS) the identifier that asks for a Query.

See: PS3.4 C.2.2.2 (matching: single value, UID list, universal, wildcard, range, sequence), C.4.1.1.3
(the identifier: only the requested keys come back), C.6.1/C.6.2 (Patient Root and Study Root
information models); PS3.5 §6.1.2.3 (SpecificCharacterSet ISO_IR 192).

Rules:
1. The matching syntax is DICOM's own, which QIDO-RS took over, so the QIDO parser builds the Query;
   the identifier's attributes are its keys (UID lists are backslash-separated here).
2. A response carries exactly the requested keys (empty when unknown), its QueryRetrieveLevel, the
   RetrieveAETitle when asked for, and SpecificCharacterSet ISO_IR 192: the index holds Unicode.
3. The Patient level is a view over studies: one response per PatientID, with the number of its
   studies (NumberOfPatientRelatedStudies) when asked for.
4. An outgoing identifier says each match in DICOM's syntax (``low-high`` ranges, backslash-separated
   UID lists, one sequence item holding the item keys) and asks for every return key empty, so that
   ``find_query`` reads the same matches back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from ..domain.errors import InvalidInput
from ..domain.model import DicomJson, Level, Scope
from ..domain.query import Match, MatchKind, Query
from .dicom_json import json_to_dataset
from .qido import parse_qido

LEVEL_NAMES = {Level.STUDY: "STUDY", Level.SERIES: "SERIES", Level.INSTANCE: "IMAGE"}
LEVELS = {"PATIENT": Level.STUDY, "STUDY": Level.STUDY, "SERIES": Level.SERIES, "IMAGE": Level.INSTANCE}
QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
RETRIEVE_AE_TITLE = 0x00080054
PATIENT_ID = "00100020"
PATIENT_STUDIES = "00201200"  # NumberOfPatientRelatedStudies
NOT_MATCHED = {QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET, RETRIEVE_AE_TITLE, 0x00201200}
# Patient-level attributes (PS3.4 Table C.6-1) besides the ones a Patient Root request may name itself.
PATIENT_TAGS = frozenset({"00100010", "00100020", "00100021", "00100030", "00100032", "00100040", "00101000",
                          "00101001", "00102160", "00104000", "00201200", "00080005"})


def find_query(identifier: Dataset) -> tuple[str, Query, tuple[str, ...]]:
    """The request's level name, the Query its keys ask for, and the keys to return (hex tags)."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS:
        raise InvalidInput("QueryRetrieveLevel must be PATIENT, STUDY, SERIES or IMAGE")
    params: list[tuple[str, str]] = []
    requested: list[str] = []
    for element in identifier:
        tag = f"{element.tag:08X}"
        if element.tag.group == 0x0000 or element.tag.is_private:
            continue
        requested.append(tag)
        if element.tag in NOT_MATCHED:
            continue
        if element.VR == "SQ":
            items = element.value or []
            keys = [(f"{tag}.{sub.tag:08X}", _text(sub.value)) for sub in items[0]] if items else []
            params.extend(keys or [(tag, "")])
        else:
            params.append((tag, _text(element.value)))
    query = parse_qido(params, LEVELS[level], max_limit=1 << 30)
    wanted = tuple(t for t in requested if int(t, 16) not in NOT_MATCHED)
    return level, replace(query, includefields=wanted, limit=None), tuple(requested)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        raise InvalidInput("binary attributes cannot be matched")
    return str(value)


def patients(studies: Iterable[DicomJson]) -> list[DicomJson]:
    """Patient-level results from study results: one per PatientID, with its number of studies."""
    found: dict[str, DicomJson] = {}
    counts: dict[str, int] = {}
    for study in studies:
        values = study.get(PATIENT_ID, {}).get("Value") or [""]
        key = str(values[0])
        counts[key] = counts.get(key, 0) + 1
        found.setdefault(key, {t: v for t, v in study.items() if t in PATIENT_TAGS})
    for key, result in found.items():
        result[PATIENT_STUDIES] = {"vr": "IS", "Value": [counts[key]]}
    return list(found.values())


def find_response(result: DicomJson, requested: tuple[str, ...], level: str, ae_title: str) -> Dataset:
    """The identifier of one match: the requested keys, nothing more (PS3.4 C.4.1.1.3.2)."""
    shown = {tag: result[tag] for tag in requested if tag in result}
    ds = json_to_dataset(shown)
    for tag in requested:
        number = int(tag, 16)
        if number not in ds and number not in (QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET, RETRIEVE_AE_TITLE):
            ds.add_new(number, _vr(number), None)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level
    if f"{RETRIEVE_AE_TITLE:08X}" in requested:
        ds.RetrieveAETitle = ae_title
    return ds


def find_identifier(query: Query, return_tags: Iterable[str]) -> Dataset:
    """The Study Root C-FIND identifier asking an upstream for a Query (rule 4).

    See: PS3.4 C.2.2.2 (matching), C.6.2.1 (Study Root keys). ``return_tags`` are 8-hex tags; a UID list
    on a VR other than UI has no DICOM syntax and is a ValueError (the caller splits those off).
    """
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = LEVEL_NAMES[query.level]
    _add_matches(ds, query.matches)
    for tag in return_tags:
        number = int(tag, 16)
        if number not in ds and number not in NOT_MATCHED:
            vr = _vr(number)
            ds.add_new(number, vr, Sequence() if vr == "SQ" else None)
    return ds


def _add_matches(ds: Dataset, matches: Iterable[Match]) -> None:
    for match in matches:
        number = int(match.tag, 16)
        vr = _vr(number)
        if vr == "UN":
            vr = match.vr
        ds.add_new(number, vr, _match_value(match, vr))


def _match_value(match: Match, vr: str) -> Any:
    kind = match.kind
    if kind is MatchKind.SEQUENCE or vr == "SQ":
        if not match.items:
            return Sequence()
        item = Dataset()
        _add_matches(item, match.items)
        return Sequence([item])
    if kind is MatchKind.UNIVERSAL:
        return None
    if kind is MatchKind.RANGE:
        return f"{match.low or ''}-{match.high or ''}"
    if kind is MatchKind.UID_LIST:
        if vr != "UI":
            raise ValueError(f"{match.tag}: a list of values is DICOM matching only for UIDs")
        return list(match.values)
    return _single_value(vr, match.value)


def _single_value(vr: str, text: str) -> Any:
    """A single or wildcard value in the form pydicom writes for its VR."""
    if vr in ("US", "SS", "UL", "SL", "SV", "UV"):
        return int(text)
    if vr in ("FL", "FD"):
        return float(text)
    if vr == "AT":
        return int(text, 16)
    if vr == "UN":
        return text.encode()
    return text


def _vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return "UN"


def retrieve_scopes(identifier: Dataset) -> tuple[str, list[Scope], str | None]:
    """What a C-GET or C-MOVE identifier asks for: its level, the studies, series or instances, and at
    the PATIENT level the PatientID (no scopes: the caller finds the patient's studies). See PS3.4
    C.4.2.1.4, C.4.3.1.3: unique keys only, UID lists allowed at the requested level."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()

    def uids(keyword: str, many: bool) -> list[str]:
        value = identifier.get(keyword)
        values = [str(v).strip() for v in (value if isinstance(value, MultiValue | list) else [value]) if v]
        if not values or (len(values) > 1 and not many):
            raise InvalidInput(f"a {level} retrieve needs {'' if many else 'one '}{keyword}")
        return values

    if level == "PATIENT":
        value = identifier.get("PatientID")
        patient = "" if isinstance(value, MultiValue | list) and len(value) > 1 else str(value or "").strip()
        if not patient or "*" in patient or "?" in patient:
            # A unique key holds one value (PS3.4 C.4.2.2.1): no list, and no pattern an upstream would expand.
            raise InvalidInput("a PATIENT retrieve needs PatientID, one value (no wildcard or list)")
        return level, [], patient
    if level == "STUDY":
        return level, [Scope(study) for study in uids("StudyInstanceUID", True)], None
    if level == "SERIES":
        study = uids("StudyInstanceUID", False)[0]
        return level, [Scope(study, series) for series in uids("SeriesInstanceUID", True)], None
    if level == "IMAGE":
        study, series = uids("StudyInstanceUID", False)[0], uids("SeriesInstanceUID", False)[0]
        return level, [Scope(study, series, sop) for sop in uids("SOPInstanceUID", True)], None
    raise InvalidInput("QueryRetrieveLevel must be PATIENT, STUDY, SERIES or IMAGE")
