"""The named transforms a mapping rule may call: small pure functions, registered by name.

See: docs/mappings.md (every function with its arguments), PS3.5 §6.2 (DA, TM, PN), FHIR R4 datatypes
(date, dateTime, HumanName, Coding), PS3.16 Annex L (Body Part Examined ↔ SNOMED CT).

Rules:
1. A transform's positional parameters are its inputs (one per ``from`` path), its keyword-only
   parameters are the rule's ``args``; the loader checks a rule against the signature and the
   annotations of the keyword-only parameters.
2. The engine calls a transform only when at least one input has a value; ``None`` as a result means
   "no value" and writes nothing.
3. Bad data raises :class:`BadValue` (a ValueError) whose message says what was expected and never
   quotes the value: it may be patient data. A transform never returns its input for want of
   understanding it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

F = TypeVar("F", bound=Callable[..., Any])

FUNCTIONS: dict[str, Callable[..., Any]] = {}
"""Every transform by the name a mapping file calls it."""

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SCT = "http://snomed.info/sct"
URI_SYSTEM = "urn:ietf:rfc:3986"
LOCAL_DESIGNATOR = "99PACSBRIDGE"
"""CodingSchemeDesignator for a FHIR code system with no DICOM designator ("99" = private, PS3.3 §8.2)."""
UNKNOWN_SCHEME_PREFIX = "urn:dicom:coding-scheme:"

# PS3.16 Table 8-1 designators and the FHIR code system URIs HL7 gives them.
CODING_SCHEMES: dict[str, str] = {
    "DCM": DCM,
    "SCT": SCT,
    "LN": "http://loinc.org",
    "RADLEX": "http://www.radlex.org",
    "UCUM": "http://unitsofmeasure.org",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "NCIt": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl",
    "UMLS": "http://www.nlm.nih.gov/research/umls",
    "FMA": "http://purl.org/sig/ont/fma",
    "HL7": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
}
DESIGNATORS: dict[str, str] = {system: designator for designator, system in CODING_SCHEMES.items()}

# Body Part Examined (0018,0015) defined terms -> CID 4031 (SNOMED CT), per PS3.16 Annex L.
BODY_PARTS: dict[str, tuple[str, str]] = {
    "ABDOMEN": ("818981001", "Abdomen"),
    "ABDOMENPELVIS": ("818982008", "Abdomen and Pelvis"),
    "ANKLE": ("70258002", "Ankle joint"),
    "ARM": ("40983000", "Upper arm"),
    "BLADDER": ("89837001", "Bladder"),
    "BREAST": ("76752008", "Breast"),
    "CHEST": ("816094009", "Chest"),
    "CHESTABDOMEN": ("416550000", "Chest and Abdomen"),
    "CHESTABDPELVIS": ("416775004", "Chest, Abdomen and Pelvis"),
    "CLAVICLE": ("51299004", "Clavicle"),
    "COCCYX": ("64688005", "Coccyx"),
    "CSPINE": ("122494005", "Cervical spine"),
    "ELBOW": ("16953009", "Elbow joint"),
    "EXTREMITY": ("66019005", "Extremity"),
    "FEMUR": ("71341001", "Femur"),
    "FINGER": ("7569003", "Finger"),
    "FOOT": ("56459004", "Foot"),
    "FOREARM": ("14975008", "Forearm"),
    "HAND": ("85562004", "Hand"),
    "HEAD": ("69536005", "Head"),
    "HEADNECK": ("774007", "Head and Neck"),
    "HEART": ("80891009", "Heart"),
    "HIP": ("29836001", "Hip"),
    "HUMERUS": ("85050009", "Humerus"),
    "JAW": ("661005", "Jaw region"),
    "KNEE": ("72696002", "Knee"),
    "LEG": ("30021000", "Lower leg"),
    "LSPINE": ("122496007", "Lumbar spine"),
    "NECK": ("45048000", "Neck"),
    "PANCREAS": ("15776009", "Pancreas"),
    "PELVIS": ("816092008", "Pelvis"),
    "PROSTATE": ("41216001", "Prostate"),
    "SHOULDER": ("16982005", "Shoulder"),
    "SKULL": ("89546000", "Skull"),
    "SPINE": ("421060004", "Spine"),
    "SSPINE": ("54735007", "Sacrum"),
    "THIGH": ("68367000", "Thigh"),
    "THUMB": ("76505004", "Thumb"),
    "TOE": ("29707007", "Toe"),
    "TSPINE": ("122495006", "Thoracic spine"),
    "WHOLEBODY": ("38266002", "Entire body"),
    "WRIST": ("74670003", "Wrist joint"),
}
# Laterality (0020,0060) -> CID 244.
LATERALITIES: dict[str, tuple[str, str]] = {
    "L": ("7771000", "Left"), "R": ("24028007", "Right"), "B": ("51440002", "Bilateral"),
}

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_DA = re.compile(r"([0-9]{4})\.?([0-9]{2})\.?([0-9]{2})")
_TM = re.compile(r"([0-9]{2})(?::?([0-9]{2})(?::?([0-9]{2})(\.[0-9]{1,6})?)?)?")
_OFFSET = re.compile(r"([+-])([0-9]{2}):?([0-9]{2})")
_FHIR_DATETIME = re.compile(
    r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2})"
    r"(?:T([0-9]{2}):([0-9]{2})(?::([0-9]{2})(\.[0-9]+)?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?"
)
_INTEGER = re.compile(r"[+-]?[0-9]+")
_PN_DELIMITERS = re.compile(r"[\^=\\]")


class BadValue(ValueError):
    """A transform cannot use its input; the message names what was expected, never the value."""


def transform(fn: F) -> F:
    """Register ``fn`` under its own name."""
    FUNCTIONS[fn.__name__] = fn
    return fn


# --- helpers ---------------------------------------------------------------------------------

def _one(value: Any) -> Any:
    if isinstance(value, list):
        if len(value) > 1:
            raise BadValue("expected one value, got several")
        return value[0] if value else None
    return value


def _text(value: Any) -> str:
    value = _one(value)
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise BadValue("expected text")


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _uid(value: Any) -> str:
    uid = _text(value).strip()
    if len(uid) > 64 or not _UID.fullmatch(uid):
        raise BadValue("not a DICOM UID")
    return uid


def _dicom_date(value: Any) -> date:
    match = _DA.fullmatch(_text(value).strip())
    if not match:
        raise BadValue("not a DICOM date (YYYYMMDD)")
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        raise BadValue("not a calendar date") from None


def _offset(value: Any) -> str:
    text = _text(value).strip()
    if text == "Z":
        return "+00:00"
    match = _OFFSET.fullmatch(text)
    if not match or int(match[2]) > 14 or int(match[3]) > 59:
        raise BadValue("not a UTC offset (+hhmm or +hh:mm)")
    return f"{match[1]}{match[2]}:{match[3]}"


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def _mapping(value: Any, what: str) -> dict[str, Any]:
    value = _one(value)
    if not isinstance(value, dict):
        raise BadValue(f"expected {what}")
    return value


# --- general ---------------------------------------------------------------------------------

@transform
def first(value: Any) -> Any:
    """The first non-empty value of a list; a single value as it is."""
    if isinstance(value, list):
        return next((v for v in value if not _empty(v)), None)
    return value


@transform
def join(*values: Any, sep: str = " ") -> str | None:
    """All values (one list or several inputs) as one text, separated by ``sep``; empty ones left out."""
    parts: list[str] = []
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            if not _empty(item):
                parts.append(_text(item))
    return sep.join(parts) or None


@transform
def upper(value: Any) -> str:
    """The text in upper case."""
    return _text(value).upper()


@transform
def lower(value: Any) -> str:
    """The text in lower case."""
    return _text(value).lower()


@transform
def truncate(value: Any, *, length: int) -> str:
    """The text cut to at most ``length`` characters (a VR's maximum length, say)."""
    if length < 1:
        raise BadValue("length must be positive")
    return _text(value)[:length].rstrip()


@transform
def lookup(value: Any, *, table: dict[str, Any], default: Any = None) -> Any:
    """The table's entry for the value (compared as text), else ``default``."""
    key = _text(value)
    return next((v for k, v in table.items() if str(k) == key), default)


@transform
def count(value: Any) -> int:
    """How many values there are."""
    return len(value) if isinstance(value, list) else 1


@transform
def unsigned_int(value: Any) -> int | None:
    """An IS or integer as a FHIR unsignedInt; a negative number gives no value."""
    value = _one(value)
    if isinstance(value, bool):
        raise BadValue("expected an integer")
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        value = int(value.strip())
    if not isinstance(value, int):
        raise BadValue("expected an integer")
    return value if value >= 0 else None


@transform
def reference_id(value: Any) -> str:
    """The id of a FHIR reference (``Practitioner/12`` or a Reference object) without type and version."""
    value = _one(value)
    if isinstance(value, dict):
        value = value.get("reference")
    text = _text(value).split("/_history/")[0].rstrip("/")
    if "/" not in text:
        raise BadValue("not a reference of the form Type/id")
    return text.rsplit("/", 1)[1]


# --- UIDs and codes --------------------------------------------------------------------------

@transform
def uid_urn(value: Any) -> str:
    """A UID as an OID URN (``urn:oid:1.2.3``), as FHIR identifiers carry it."""
    text = _text(value).strip()
    return "urn:oid:" + _uid(text.removeprefix("urn:oid:"))


@transform
def strip_urn_oid(value: Any) -> str:
    """The UID of an OID URN (``urn:oid:1.2.3`` -> ``1.2.3``); a bare UID is checked and kept."""
    return _uid(_text(value).strip().removeprefix("urn:oid:"))


@transform
def modality_coding(value: Any) -> dict[str, str]:
    """A Modality (CS) as a DICOM Coding (system DCM)."""
    code = _text(value).strip()
    if not code:
        raise BadValue("empty modality")
    return _coding(DCM, code)


@transform
def sop_class_coding(value: Any) -> dict[str, str]:
    """A SOP Class UID as the Coding ImagingStudy.series.instance.sopClass wants."""
    return _coding(URI_SYSTEM, "urn:oid:" + _uid(value))


def _code_item_value(item: dict[str, Any], keyword: str, tag: str) -> str | None:
    """One attribute of a code item given as DICOM JSON (tags) or as keyword -> value."""
    value = _one(item[keyword] if keyword in item else (item.get(tag) or {}).get("Value"))
    return None if _empty(value) else _text(value).strip()


@transform
def dicom_code_to_coding(value: Any) -> dict[str, str] | None:
    """A DICOM code item (Code Sequence Macro) as a FHIR Coding; unknown designators get a URN system."""
    item = _mapping(value, "a code sequence item")
    meaning = _code_item_value(item, "CodeMeaning", "00080104")
    version = _code_item_value(item, "CodingSchemeVersion", "00080103")
    urn = _code_item_value(item, "URNCodeValue", "00080120")
    code = _code_item_value(item, "CodeValue", "00080100") or _code_item_value(item, "LongCodeValue", "00080119")
    if code is None:
        if urn is None:
            if not item:
                return None
            raise BadValue("a code item without a code value")
        system, code = URI_SYSTEM, urn
    else:
        designator = _code_item_value(item, "CodingSchemeDesignator", "00080102")
        if designator is None:
            raise BadValue("a code item without a coding scheme designator")
        system = CODING_SCHEMES.get(designator, UNKNOWN_SCHEME_PREFIX + designator)
    out = {"system": system}
    if version:
        out["version"] = version
    out["code"] = code
    if meaning:
        out["display"] = meaning
    return out


@transform
def coding_to_dicom_code(value: Any) -> dict[str, str] | None:
    """A FHIR Coding or CodeableConcept (its first coding with a code) as a DICOM code item by keyword.

    See: PS3.3 §8.8 (Code Sequence Macro): codes longer than 16 characters go into LongCodeValue,
    URNs and URLs into URNCodeValue; systems without a designator get ``99PACSBRIDGE``.
    """
    concept = _mapping(value, "a Coding or CodeableConcept")
    text = concept.get("text") if "code" not in concept else None
    codings = concept.get("coding") if "code" not in concept else [concept]
    coding = next((c for c in codings or [] if isinstance(c, dict) and not _empty(c.get("code"))), None)
    if coding is None:
        return None
    code = _text(coding["code"]).strip()
    system = coding.get("system")
    meaning = coding.get("display") or text or code
    out: dict[str, str] = {}
    if code.startswith("urn:") or "://" in code:
        out["URNCodeValue"] = code
    else:
        out["LongCodeValue" if len(code) > 16 else "CodeValue"] = code
        if isinstance(system, str) and system.startswith(UNKNOWN_SCHEME_PREFIX):
            out["CodingSchemeDesignator"] = system.removeprefix(UNKNOWN_SCHEME_PREFIX)
        else:
            out["CodingSchemeDesignator"] = DESIGNATORS.get(system or "", LOCAL_DESIGNATOR)
        if coding.get("version"):
            out["CodingSchemeVersion"] = _text(coding["version"])[:16]
    out["CodeMeaning"] = _text(meaning)[:64].rstrip()
    return out


@transform
def body_part_coding(value: Any) -> dict[str, str] | None:
    """Body Part Examined (CS) as a SNOMED CT Coding (PS3.16 Annex L); unknown terms give none."""
    entry = BODY_PARTS.get(_text(value).strip().upper())
    return _coding(SCT, *entry) if entry else None


@transform
def laterality_coding(value: Any) -> dict[str, str] | None:
    """Laterality (L, R, B) as a SNOMED CT Coding; anything else (U, unpaired) gives none."""
    entry = LATERALITIES.get(_text(value).strip().upper())
    return _coding(SCT, *entry) if entry else None


# --- dates and times -------------------------------------------------------------------------

@transform
def dicom_date_to_fhir(value: Any) -> str:
    """A DA (YYYYMMDD) as a FHIR date (YYYY-MM-DD)."""
    return _dicom_date(value).isoformat()


@transform
def dicom_datetime_to_fhir(
    date_value: Any, time_value: Any = None, offset: Any = None, *, default_offset: str | None = None
) -> str:
    """DA + TM (+ Timezone Offset From UTC) as a FHIR dateTime; without any offset, the date alone.

    See: FHIR R4 datatypes (dateTime: "if hours and minutes are specified, a time zone SHALL be
    populated"); PS3.3 C.12.1.1.8 (0008,0201) is ``+hhmm``; ``default_offset`` may be ``+hh:mm``.
    """
    day = _dicom_date(date_value).isoformat()
    if _empty(time_value):
        return day
    chosen = offset if not _empty(offset) else default_offset
    if _empty(chosen):
        return day
    zone = _offset(chosen)
    match = _TM.fullmatch(_text(time_value).strip())
    if not match:
        raise BadValue("not a DICOM time (HHMMSS.FFFFFF)")
    hh, mm, ss = int(match[1]), int(match[2] or 0), int(match[3] or 0)
    if hh > 23 or mm > 59 or ss > 60:
        raise BadValue("not a time of day")
    return f"{day}T{hh:02d}:{mm:02d}:{ss:02d}{match[4] or ''}{zone}"


def _fhir_datetime(value: Any, tz: str | None) -> tuple[str, str | None]:
    """(DA, TM or None) of a FHIR date or dateTime, moved into zone ``tz`` when it has an offset."""
    match = _FHIR_DATETIME.fullmatch(_text(value).strip())
    if not match:
        raise BadValue("not a FHIR date or dateTime")
    year, month, day, hh, mm, ss, _fraction, zone = match.groups()
    if month is None or day is None:
        return "", None  # a partial date: DA cannot hold one
    try:
        moment = datetime(int(year), int(month), int(day), int(hh or 0), int(mm or 0), int(ss or 0))
    except ValueError:
        raise BadValue("not a calendar date and time") from None
    if hh is not None and zone is not None and tz:
        try:
            site = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise BadValue("unknown IANA time zone") from None
        sign, hours, minutes = (1, 0, 0) if zone == "Z" else (
            -1 if zone[0] == "-" else 1, int(zone[1:3]), int(zone[4:6]))
        given = timezone(sign * timedelta(hours=hours, minutes=minutes))
        moment = moment.replace(tzinfo=given).astimezone(site)
    return moment.strftime("%Y%m%d"), (moment.strftime("%H%M%S") if hh is not None else None)


@transform
def fhir_date_to_dicom(value: Any) -> str | None:
    """A FHIR date or dateTime as a DA, the date as written; a partial date (1970, 1970-05) gives none."""
    return _fhir_datetime(value, None)[0] or None


@transform
def fhir_datetime_to_dicom_date(value: Any, *, tz: str | None = None) -> str | None:
    """The DA of a FHIR dateTime, in the site's IANA time zone ``tz`` when the value has an offset."""
    return _fhir_datetime(value, tz)[0] or None


@transform
def fhir_datetime_to_dicom_time(value: Any, *, tz: str | None = None) -> str | None:
    """The TM (HHMMSS) of a FHIR dateTime, in zone ``tz`` when it has an offset; a date alone gives none."""
    return _fhir_datetime(value, tz)[1]


# --- people ----------------------------------------------------------------------------------

def _pn_components(value: Any) -> list[str]:
    alphabetic = _text(value).split("=")[0]
    components = [c.strip() for c in alphabetic.split("^")]
    if len(components) > 5:
        raise BadValue("a person name with more than five components")
    return components + [""] * (5 - len(components))


@transform
def pn_to_text(value: Any) -> str | None:
    """A PN as readable text: prefix, given, middle, family, suffix."""
    family, given, middle, prefix, suffix = _pn_components(value)
    return " ".join(p for p in (prefix, given, middle, family, suffix) if p) or None


@transform
def pn_to_fhir_name(value: Any) -> dict[str, Any] | None:
    """A PN (Family^Given^Middle^Prefix^Suffix, its alphabetic group) as a FHIR HumanName."""
    family, given, middle, prefix, suffix = _pn_components(value)
    text = pn_to_text(value)
    if text is None:
        return None
    name: dict[str, Any] = {"text": text}
    if family:
        name["family"] = family
    if given or middle:
        name["given"] = [g for g in (given, middle) if g]
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return name


def _pn_part(value: Any) -> str:
    parts = value if isinstance(value, list) else [value]
    words = [_text(p) for p in parts if not _empty(p)]
    # PN has no escape: its delimiters inside a part become spaces.
    return " ".join(_PN_DELIMITERS.sub(" ", " ".join(words)).split())


@transform
def fhir_name_to_pn(value: Any) -> str | None:
    """A HumanName (or a list: official, else usual, else the first that has anything) as a PN.

    ``text`` is used only when the name has no parts; a plain string is taken as a name's text.
    PN has no escapes: its delimiters (^ = \\) inside a part become spaces.
    """
    names = value if isinstance(value, list) else [value]
    names = [{"text": n} if isinstance(n, str) else n for n in names if not _empty(n)]
    if not all(isinstance(n, dict) for n in names):
        raise BadValue("expected a HumanName")
    names = [n for n in names if any(not _empty(n.get(k)) for k in ("family", "given", "prefix", "suffix", "text"))]
    if not names:
        return None
    rank = {"official": 0, "usual": 1}
    name = min(names, key=lambda n: rank.get(n.get("use", ""), 2))  # min is stable: the first wins ties
    given = name.get("given") or []
    given = given if isinstance(given, list) else [given]
    components = [
        _pn_part(name.get("family")), _pn_part(given[:1]), _pn_part(given[1:]),
        _pn_part(name.get("prefix")), _pn_part(name.get("suffix")),
    ]
    if any(components):
        return "^".join(components).rstrip("^")
    return _pn_part(name.get("text")) or None


@transform
def dicom_sex_to_fhir(value: Any) -> str:
    """Patient's Sex (M, F, O) as a FHIR administrative gender; anything else is ``unknown``."""
    return {"M": "male", "F": "female", "O": "other"}.get(_text(value).strip().upper(), "unknown")


@transform
def fhir_gender_to_dicom(value: Any) -> str | None:
    """A FHIR administrative gender as Patient's Sex; ``unknown`` gives no value."""
    gender = _text(value).strip()
    if gender == "unknown":
        return None
    try:
        return {"male": "M", "female": "F", "other": "O"}[gender]
    except KeyError:
        raise BadValue("not a FHIR administrative gender") from None


@transform
def fhir_priority_to_dicom(value: Any) -> str:
    """A FHIR request priority as Requested Procedure Priority (0040,1003)."""
    try:
        return {"routine": "ROUTINE", "urgent": "HIGH", "asap": "HIGH", "stat": "STAT"}[_text(value).strip()]
    except KeyError:
        raise BadValue("not a FHIR request priority") from None
