"""FHIR ImagingStudy, derived from the archive (local or upstream) on every read: never stored, so it can
never disagree with the images.

See: FHIR R4 ImagingStudy and its DICOM mapping (standards.md §E.1); mappings/dicom-to-fhir/imagingstudy.yaml.

Rules:
1. The searches go through ``SearchService`` like QIDO-RS and C-FIND, with the caller's principal, so
   patient context applies here too.
2. A study's ImagingStudy id is its Study Instance UID (a UID is a valid FHIR id).
3. ``basedOn`` lists the ServiceRequests the study is linked to; ``subject`` is the linked request's
   Patient reference, else a logical reference by the PatientID identifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..domain.access import Principal
from ..domain.errors import NotFound
from ..domain.links import ACTING
from ..domain.model import DicomJson, Level, first_text
from ..domain.query import Match, MatchKind, Query
from ..mapping import Mapping
from .patients import FhirJson, PatientIdentity
from .ports import OrderRecords
from .search import SearchService

STUDY_UID, SERIES_UID, PATIENT_ID = "0020000D", "0020000E", "00100020"
ACCESSION, STUDY_DATE, MODALITIES = "00080050", "00080020", "00080061"


@dataclass(frozen=True)
class StudyCriteria:
    """An ImagingStudy search in the archive's terms (the FHIR door translates its parameters)."""

    study_uids: tuple[str, ...] | None = None
    accession_numbers: tuple[str, ...] | None = None
    patient_ids: tuple[str, ...] | None = None
    date_low: str | None = None  # DA, inclusive
    date_high: str | None = None
    modalities: tuple[str, ...] | None = None
    nothing: bool = False  # a criterion no study can meet (another status, an unknown endpoint)
    offset: int = 0
    count: int = 20


@dataclass(frozen=True)
class StudyView:
    """Site values the mapping reads as ``$context``."""

    endpoint_id: str = "dicomweb"
    timezone_offset: str | None = None
    accession_system: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ImagingStudyService:
    def __init__(self, search: SearchService, records: OrderRecords, identity: PatientIdentity, mapping: Mapping,
                 view: StudyView) -> None:
        self.images = search
        self.records = records
        self.identity = identity
        self.mapping = mapping
        self.view = view

    async def read(self, study_uid: str, principal: Principal) -> FhirJson:
        studies = await self._studies(Query(Level.STUDY, (_uids(STUDY_UID, (study_uid,)),), include_all=True,
                                            limit=1), principal)
        if not studies:
            raise NotFound(f"ImagingStudy/{study_uid} is not known")
        return await self.build(studies[0], principal)

    async def search(self, where: StudyCriteria, principal: Principal) -> tuple[list[FhirJson], int]:
        """A page of ImagingStudy resources and the total number of matches."""
        if where.nothing:
            return [], 0
        matches = []
        for tag, values in ((STUDY_UID, where.study_uids), (ACCESSION, where.accession_numbers),
                            (PATIENT_ID, where.patient_ids), (MODALITIES, where.modalities)):
            if values is not None:
                if not values:
                    return [], 0
                matches.append(_uids(tag, values))
        if where.date_low or where.date_high:
            matches.append(Match(STUDY_DATE, "DA", MatchKind.RANGE, low=where.date_low, high=where.date_high))
        query = Query(Level.STUDY, tuple(matches), include_all=True, limit=where.count, offset=where.offset)
        page = await self.images.search(query, principal)
        total = where.offset + len(page.results) + page.remaining
        return [await self.build(s, principal) for s in page.results], total

    async def build(self, study: DicomJson, principal: Principal) -> FhirJson:
        """The ImagingStudy of one study-level result (series and instances are searched for)."""
        study_uid = first_text(study, STUDY_UID) or ""
        series = await self._studies(Query(Level.SERIES, (_uids(STUDY_UID, (study_uid,)),), include_all=True),
                                     principal)
        instances = await self._studies(Query(Level.INSTANCE, (_uids(STUDY_UID, (study_uid,)),), include_all=True),
                                        principal)
        by_series: dict[str, list[DicomJson]] = {}
        for instance in instances:
            by_series.setdefault(first_text(instance, SERIES_UID) or "", []).append(instance)
        source = {**study, "series": [{**s, "instances": by_series.get(first_text(s, SERIES_UID) or "", [])}
                                      for s in series]}
        links = [link for link in await self.records.links(study_uid=study_uid) if link.status in ACTING]
        subject = await self._subject(study, [link.request_id for link in links])
        context = {
            "subject": subject, "endpoint": {"reference": f"Endpoint/{self.view.endpoint_id}"},
            "based_on": [{"reference": f"ServiceRequest/{link.request_id}"} for link in links],
            "timezone_offset": self.view.timezone_offset, "accession_system": self.view.accession_system,
            **self.view.extra,
        }
        resource = self.mapping.apply(source, context=context)
        return {"resourceType": "ImagingStudy", "id": study_uid, **resource}

    async def _subject(self, study: DicomJson, request_ids: Sequence[str]) -> FhirJson:
        for request_id in request_ids:
            found = await self.records.resource("ServiceRequest", request_id)
            subject = ((found.resource or {}).get("subject") or {}) if found else {}
            reference = subject.get("reference")
            if isinstance(reference, str) and reference and not reference.startswith("#"):
                return {"reference": reference}
        patient_id = first_text(study, PATIENT_ID)
        return {"identifier": {"system": self.identity.system, "value": patient_id}} if patient_id else {
            "display": "unknown patient"}

    async def _studies(self, query: Query, principal: Principal) -> list[DicomJson]:
        return (await self.images.search(query, principal)).results


def _uids(tag: str, values: Sequence[str]) -> Match:
    vr = {STUDY_UID: "UI", ACCESSION: "SH", PATIENT_ID: "LO", MODALITIES: "CS"}[tag]
    if len(values) == 1:
        return Match(tag, vr, MatchKind.SINGLE, value=values[0])
    return Match(tag, vr, MatchKind.UID_LIST, values=tuple(values))
