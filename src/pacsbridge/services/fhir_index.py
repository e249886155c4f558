"""The search-index rows of the FHIR resources we hold (ServiceRequest, Patient), and the parameters each
type declares: what ``/fhir/<Type>?...`` can search, and the one place that says how.

See: FHIR R4 ServiceRequest and Patient "Search Parameters" tables; search.html#ptypes.

Rules:
1. Tokens keep (system, code); an identifier also gets an ``identifier-of-type`` row (system holds
   ``<type system>|<type code>``) for ``:of-type``. References keep ``Type/id`` (contained ones are not
   searchable). Strings keep the folded text in ``value`` and the text as written in ``system`` (for
   ``:exact``). Dates keep their UTC range (``fhir_value_range``).
2. A value that cannot be indexed (a malformed date the model validator let through) is skipped, never
   an error: the resource was valid, the index is ours.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from ..domain.errors import InvalidInput
from ..formats.fhir_search import SearchParam, fhir_value_range, fold_text
from .ports import IndexEntry

FhirJson = dict[str, Any]

SERVICE_REQUEST_PARAMS: dict[str, SearchParam] = {p.name: p for p in (
    SearchParam("identifier", "token", identifier=True),
    SearchParam("status", "token"),
    SearchParam("intent", "token"),
    SearchParam("code", "token"),
    SearchParam("patient", "reference", targets=("Patient",)),
    SearchParam("subject", "reference", targets=("Patient", "Group", "Location", "Device")),
    SearchParam("requester", "reference", targets=("Practitioner", "PractitionerRole", "Organization")),
    SearchParam("authored", "date"),
    SearchParam("occurrence", "date"),
    SearchParam("priority", "token"),
    SearchParam("_id", "token"),
    SearchParam("_lastUpdated", "date"),
)}

PATIENT_PARAMS: dict[str, SearchParam] = {p.name: p for p in (
    SearchParam("identifier", "token", identifier=True),
    SearchParam("name", "string"),
    SearchParam("family", "string"),
    SearchParam("given", "string"),
    SearchParam("birthdate", "date"),
    SearchParam("gender", "token"),
    SearchParam("_id", "token"),
    SearchParam("_lastUpdated", "date"),
)}

PARAMS = {"ServiceRequest": SERVICE_REQUEST_PARAMS, "Patient": PATIENT_PARAMS}


def index_entries(resource: FhirJson) -> tuple[IndexEntry, ...]:
    """Every index row of one resource version."""
    return tuple(_entries(resource))


def _entries(r: FhirJson) -> Iterator[IndexEntry]:
    yield IndexEntry("_id", value=str(r.get("id") or ""))
    last = (r.get("meta") or {}).get("lastUpdated")
    if last:
        yield from _date("_lastUpdated", last)
    for identifier in _list(r.get("identifier")):
        yield IndexEntry("identifier", system=identifier.get("system"), value=identifier.get("value"))
        for coding in _list((identifier.get("type") or {}).get("coding")):
            yield IndexEntry("identifier-of-type", system=f"{coding.get('system') or ''}|{coding.get('code') or ''}",
                             value=identifier.get("value"))
    kind = r.get("resourceType")
    if kind == "ServiceRequest":
        for name in ("status", "intent", "priority"):
            if r.get(name):
                yield IndexEntry(name, value=str(r[name]))
        for coding in _list((r.get("code") or {}).get("coding")):
            yield IndexEntry("code", system=coding.get("system"), value=coding.get("code"))
        subject = _reference(r.get("subject"))
        if subject:
            yield IndexEntry("subject", value=subject)
            if subject.startswith("Patient/"):
                yield IndexEntry("patient", value=subject)
        requester = _reference(r.get("requester"))
        if requester:
            yield IndexEntry("requester", value=requester)
        if r.get("authoredOn"):
            yield from _date("authored", r["authoredOn"])
        occurrence = r.get("occurrenceDateTime") or (r.get("occurrencePeriod") or {}).get("start")
        if occurrence:
            yield from _date("occurrence", occurrence)
    elif kind == "Patient":
        for name in _list(r.get("name")):
            parts = [name.get("family"), *(name.get("given") or []), name.get("text")]
            for part in filter(None, parts):
                yield IndexEntry("name", system=str(part), value=fold_text(str(part)))
            if name.get("family"):
                yield IndexEntry("family", system=name["family"], value=fold_text(name["family"]))
            for given in name.get("given") or []:
                yield IndexEntry("given", system=given, value=fold_text(given))
        if r.get("birthDate"):
            yield from _date("birthdate", r["birthDate"])
        if r.get("gender"):
            yield IndexEntry("gender", value=str(r["gender"]))


def _date(param: str, text: str) -> Iterator[IndexEntry]:
    try:
        low, high = fhir_value_range(str(text))
    except InvalidInput:
        return
    yield IndexEntry(param, low=utc_text(low), high=utc_text(high))


def utc_text(moment: datetime) -> str:
    """A UTC moment as text that sorts like the moment (index columns ``low``/``high``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _reference(value: object) -> str | None:
    reference = value.get("reference") if isinstance(value, dict) else None
    return reference if isinstance(reference, str) and reference and not reference.startswith("#") else None


def _list(value: object) -> list[FhirJson]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
