"""FHIR ImagingStudy searches in the archive's terms: the door's parameters become a ``StudyCriteria``.

See: FHIR R4 imagingstudy.html "Search Parameters", search.html; standards.md §E.2.

Rules:
1. ``identifier``: ``urn:dicom:uid|urn:oid:<uid>`` or a bare ``urn:oid:<uid>`` is the Study Instance UID;
   ``:of-type=<v2-0203>|ACSN|<value>`` and any other token an accession number. One parameter cannot
   mix both (an OR across two attributes); repeat the parameter for AND.
2. ``patient``/``subject``: a Patient reference stands for the PatientIDs of that Patient
   (``PatientDirectory``); ``:identifier`` with the configured PatientID system (or none) is the PatientID.
3. ``started`` compares Study Date (DA): a date's day range, or whole days for a dateTime (a search
   with a time is read at day precision, so it may return a few studies of the same day more). ``ne``,
   ``ap`` and OR lists of dates are 400.
4. ``status``: only ``available`` matches (every study we serve is); ``endpoint``: only our Endpoint.
   ``basedon``: the studies linked to that ServiceRequest.
5. ``:missing`` and ``:not`` are 400: the archive cannot answer them, and dropping them would widen the
   result (search.html#modifiers).
"""

from __future__ import annotations

from calendar import monthrange
from datetime import date, timedelta

from ...domain.errors import InvalidInput
from ...formats.fhir_search import Criterion, DateValue, OfType, ReferenceValue, SearchParam, SearchRequest, Token
from ...services.imaging_studies import StudyCriteria
from .context import FhirContext
from .endpoint import endpoint_id

DICOM_UID = "urn:dicom:uid"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
STATUS_SYSTEM = "http://hl7.org/fhir/imagingstudy-status"

IMAGING_STUDY_PARAMS: dict[str, SearchParam] = {p.name: p for p in (
    SearchParam("_id", "token"),
    SearchParam("identifier", "token", identifier=True),
    SearchParam("patient", "reference", targets=("Patient",)),
    SearchParam("subject", "reference", targets=("Patient", "Device", "Group")),
    SearchParam("started", "date"),
    SearchParam("modality", "token"),
    SearchParam("status", "token"),
    SearchParam("basedon", "reference",
                targets=("ServiceRequest", "CarePlan", "Appointment", "AppointmentResponse", "Task")),
    SearchParam("endpoint", "reference", targets=("Endpoint",)),
)}
IMAGING_STUDY_DOCS = {
    "_id": "the Study Instance UID",
    "identifier": f"{DICOM_UID}|urn:oid:<Study Instance UID>, urn:oid:<uid>, an accession number, or "
                  f":of-type={V2_0203}|ACSN|<accession number>",
    "patient": "a Patient reference (its PatientID), or :identifier=<PatientID system>|<PatientID>",
    "subject": "as patient",
    "started": "Study Date, at day precision; prefixes eq gt ge lt le sa eb (not ne, ap)",
    "modality": f"Modalities in Study: {DCM}|<code> or <code>; a list is OR",
    "status": "every study served is available",
    "basedon": "ServiceRequest/<id>: the studies linked to that request",
    "endpoint": "Endpoint/dicomweb",
}
INCLUDES = ("ImagingStudy:endpoint",)


class _Narrowed:
    """The AND of several value sets (None: no constraint yet)."""

    def __init__(self) -> None:
        self.values: set[str] | None = None

    def narrow(self, found: set[str]) -> None:
        self.values = set(found) if self.values is None else self.values & found

    def result(self) -> tuple[str, ...] | None:
        return None if self.values is None else tuple(sorted(self.values))


async def study_criteria(search: SearchRequest, ctx: FhirContext, base: str) -> StudyCriteria:
    """The archive search an ImagingStudy search stands for (rules 1-5)."""
    uids, accessions, patients = _Narrowed(), _Narrowed(), _Narrowed()
    modalities: tuple[str, ...] | None = None
    low: date | None = None
    high: date | None = None
    nothing = False
    for c in search.criteria:
        if c.modifier in ("missing", "not"):
            raise InvalidInput(f"{c.name}: :{c.modifier} is not supported on ImagingStudy")
        if c.modifier == "identifier" and c.name not in ("patient", "subject"):
            raise InvalidInput(f"{c.name}: :identifier is not supported")
        if c.name == "_id":
            uids.narrow({v.code for v in c.values if isinstance(v, Token) and v.code})
        elif c.name == "identifier":
            found = _identifiers(c)
            if found is None:
                continue
            kind, values = found
            (uids if kind == "uid" else accessions).narrow(values)
        elif c.name in ("patient", "subject"):
            patients.narrow(await _patient_ids(c, ctx, base))
        elif c.name == "started":
            day_low, day_high = _study_dates(c)
            low = day_low if low is None or (day_low is not None and day_low > low) else low
            high = day_high if high is None or (day_high is not None and day_high < high) else high
        elif c.name == "modality":
            if modalities is not None:
                raise InvalidInput("modality: repeated (AND) is not supported; list the codes comma-separated (OR)")
            if any(isinstance(v, Token) and v.code is None and v.system == DCM for v in c.values):
                continue
            modalities = tuple(sorted({v.code for v in c.values if isinstance(v, Token) and v.code
                                       and (v.any_system or v.system == DCM)}))
        elif c.name == "status":
            nothing |= not any(isinstance(v, Token) and v.code in ("available", None)
                               and (v.any_system or v.system == STATUS_SYSTEM) for v in c.values)
        elif c.name == "basedon":
            uids.narrow(await _based_on(c, ctx, base))
        elif c.name == "endpoint":
            nothing |= not any(_is_our_endpoint(v, ctx, base) for v in c.values)
    if low is not None and high is not None and low > high:
        nothing = True
    return StudyCriteria(
        study_uids=uids.result(), accession_numbers=accessions.result(), patient_ids=patients.result(),
        date_low=_da(low), date_high=_da(high), modalities=modalities, nothing=nothing,
        offset=search.offset, count=search.count,
    )


def _identifiers(c: Criterion) -> tuple[str, set[str]] | None:
    """("uid" | "accession", values) of one identifier parameter; None when it constrains nothing."""
    study_uids: set[str] = set()
    accession_numbers: set[str] = set()
    for v in c.values:
        if isinstance(v, OfType):
            if v.system == V2_0203 and v.code == "ACSN":
                accession_numbers.add(v.value)
        elif isinstance(v, Token):
            if v.code is None:
                if v.system != DICOM_UID:
                    raise InvalidInput("identifier: a system without a value is supported for urn:dicom:uid only")
                return None  # every study has a Study Instance UID
            if v.code.startswith("urn:oid:") and (v.any_system or v.system == DICOM_UID):
                study_uids.add(v.code.removeprefix("urn:oid:"))
            elif v.system == DICOM_UID:
                study_uids.add(v.code)
            else:
                accession_numbers.add(v.code)
    if study_uids and accession_numbers:
        raise InvalidInput("identifier: one parameter cannot mix study UIDs and accession numbers (OR across two "
                           "attributes); repeat the parameter instead")
    return ("accession", accession_numbers) if accession_numbers else ("uid", study_uids)


async def _patient_ids(c: Criterion, ctx: FhirContext, base: str) -> set[str]:
    found: set[str] = set()
    for v in c.values:
        if isinstance(v, Token):  # :identifier
            if v.code and (v.any_system or v.system == ctx.directory.identity.system):
                found.add(v.code)
        elif isinstance(v, ReferenceValue) and v.type in (None, "Patient"):
            if v.url is not None:
                reference = f"Patient/{v.id}" if v.id and v.url.startswith(base.rstrip("/") + "/") else v.url
            else:
                reference = f"Patient/{v.id}"
            found |= await ctx.directory.patient_ids_for(reference)
    return found


async def _based_on(c: Criterion, ctx: FhirContext, base: str) -> set[str]:
    found: set[str] = set()
    for v in c.values:
        if not isinstance(v, ReferenceValue) or v.type not in (None, "ServiceRequest") or not v.id:
            continue
        if v.url is not None and not v.url.startswith(base.rstrip("/") + "/ServiceRequest/"):
            continue  # a request held elsewhere has no study linked here
        found |= {link.study_uid for link in await ctx.studies.records.links(request_id=v.id)}
    return found


def _is_our_endpoint(v: object, ctx: FhirContext, base: str) -> bool:
    return (isinstance(v, ReferenceValue) and v.type in (None, "Endpoint") and v.id == endpoint_id(ctx)
            and (v.url is None or v.url.startswith(base.rstrip("/") + "/Endpoint/")))


def _study_dates(c: Criterion) -> tuple[date | None, date | None]:
    """The Study Date range (inclusive; None: open) of one ``started`` parameter (rule 3)."""
    if len(c.values) != 1:
        raise InvalidInput("started: a list of dates (OR) is not supported")
    (v,) = c.values
    assert isinstance(v, DateValue)
    if v.prefix in ("ne", "ap"):
        raise InvalidInput(f"started: the prefix {v.prefix} is not supported")
    first, last, timed = _days(v.text)
    after = last if timed else _shift(last, 1)
    before = first if timed else _shift(first, -1)
    return {
        "eq": (first, last),
        "ge": (first, None),
        "le": (None, last),
        "gt": (after, None),
        "sa": (after, None),
        "lt": (None, before),
        "eb": (None, before),
    }[v.prefix]


def _days(text: str) -> tuple[date, date, bool]:
    """First and last day of a FHIR date's range as written (local dates), and whether it has a time."""
    day_part, timed = text[:10], len(text) > 10
    parts = [int(p) for p in day_part.split("-")]
    if len(parts) == 1:
        return date(parts[0], 1, 1), date(parts[0], 12, 31), timed
    if len(parts) == 2:
        return date(parts[0], parts[1], 1), date(parts[0], parts[1], monthrange(parts[0], parts[1])[1]), timed
    day = date(parts[0], parts[1], parts[2])
    return day, day, timed


def _shift(day: date, days: int) -> date:
    try:
        return day + timedelta(days=days)
    except OverflowError:
        return date.max if days > 0 else date.min


def _da(day: date | None) -> str | None:
    return f"{day.year:04d}{day.month:02d}{day.day:02d}" if day is not None else None
