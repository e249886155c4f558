"""What the audit trail records: one event per access to patient data, whatever door it came through.

See: DICOM PS3.15 Annex A.5 (audit messages: Query 110112, DICOM Instances Transferred 110104);
FHIR R4 AuditEvent. The trail holds PHI (patient IDs, study UIDs, query text) by design: it is read
only through the admin API, never written to logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AuditEvent:
    recorded_at: str  # ISO 8601 UTC, e.g. 2026-11-22T06:31:23.123456Z
    subject: str  # the principal's sub ("anonymous" when no token was accepted)
    client_id: str | None
    door: str  # dicomweb, fhir, dimse, gdt, ecrf, admin
    action: str  # search | read | create | update | delete
    method: str  # HTTP method or DIMSE command
    route: str  # the route template, e.g. /dicomweb/studies/{study}/metadata
    status: int  # HTTP status (or DIMSE status)
    patient_ids: tuple[str, ...] = ()
    study_uids: tuple[str, ...] = ()
    remote: str | None = None
    detail: str | None = None  # the query string of a search
    id: int | None = None

    @property
    def succeeded(self) -> bool:
        return 200 <= self.status < 400


@dataclass(frozen=True)
class AuditFilter:
    """What the admin API asks for; every given field must match."""

    patient_id: str | None = None
    study_uid: str | None = None
    subject: str | None = None
    door: str | None = None
    since: str | None = None  # ISO 8601 UTC, inclusive
    until: str | None = None  # exclusive
    limit: int = 100
    offset: int = 0


@dataclass
class AccessNote:
    """The patients and studies one request touched, noted by the use cases as they work."""

    patient_ids: set[str] = field(default_factory=set)
    study_uids: set[str] = field(default_factory=set)

    def add(self, patient_id: str | None, study_uid: str | None) -> None:
        if patient_id:
            self.patient_ids.add(patient_id)
        if study_uid:
            self.study_uids.add(study_uid)
