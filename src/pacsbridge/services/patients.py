"""Who an imaging request is for: the Patient a ServiceRequest names, from wherever the EMR keeps it.

See: FHIR R4 references (contained ``#id``, relative ``Patient/id``, absolute URLs, logical references by
identifier); docs/orders.md "Patients".

Rules:
1. Patients belong to the EMR; pacsbridge only reads them. A ServiceRequest's subject is looked up,
   in this order: a contained Patient (``#id``), a Patient the EMR created on our ``/fhir/Patient``,
   the EMR's own FHIR base (when configured). Nothing else: never a guess from a name.
2. The DICOM PatientID is the Patient's identifier of the configured system (and IssuerOfPatientID
   the configured issuer). A patient without one, or without a name (the worklist's PatientName is
   Type 1), is refused with a reason that names the element, never its value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..domain.errors import BusinessRule, NotFound
from .ports import OrderRecords

FhirJson = dict[str, Any]


class PatientSource(Protocol):
    """The EMR's FHIR server, read with our client credentials."""

    base_url: str

    async def read(self, type_: str, id_: str) -> FhirJson | None:
        """The resource, None if the EMR has no such resource; UpstreamUnavailable if it cannot say."""
        ...


@dataclass(frozen=True)
class PatientIdentity:
    """How a FHIR Patient maps to DICOM: the identifier system that holds the PatientID."""

    system: str
    issuer: str | None = None


class PatientDirectory:
    def __init__(self, records: OrderRecords, identity: PatientIdentity, emr: PatientSource | None = None) -> None:
        self.records = records
        self.identity = identity
        self.emr = emr

    async def resolve(self, request: FhirJson) -> FhirJson:
        """The Patient a ServiceRequest's ``subject`` names (rule 1); BusinessRule if it cannot be found."""
        subject = request.get("subject") or {}
        reference = subject.get("reference")
        if not isinstance(reference, str) or not reference:
            identifier = subject.get("identifier")
            if isinstance(identifier, dict) and identifier.get("system") == self.identity.system:
                raise BusinessRule("ServiceRequest.subject: a reference by identifier alone gives no name and "
                                   "birth date; send the Patient contained, or reference one")
            raise BusinessRule("ServiceRequest.subject must reference a Patient")
        if reference.startswith("#"):
            for contained in request.get("contained") or []:
                if contained.get("resourceType") == "Patient" and contained.get("id") == reference[1:]:
                    return dict(contained)
            raise BusinessRule(f"ServiceRequest.subject {reference} names no contained Patient")
        type_, id_ = self._split(reference)
        if type_ != "Patient":
            raise BusinessRule("ServiceRequest.subject must be a Patient (Group, Device and Location are not "
                               "supported for imaging orders)")
        held = await self.records.resource("Patient", id_)
        if held is not None and held.resource is not None:
            return held.resource
        if self.emr is not None:
            found = await self.emr.read("Patient", id_)
            if found is not None:
                return found
            raise BusinessRule(f"ServiceRequest.subject Patient/{id_} is neither held here nor known to the EMR")
        raise BusinessRule(f"ServiceRequest.subject Patient/{id_} is not held here (no EMR FHIR base is configured "
                           "to read it from)")

    def _split(self, reference: str) -> tuple[str, str]:
        """``Type/id`` of a relative reference, or of an absolute one into the EMR's base or ours."""
        if "://" in reference:
            base = self.emr.base_url.rstrip("/") + "/" if self.emr is not None else None
            if base is None or not reference.startswith(base):
                raise BusinessRule("ServiceRequest.subject is an absolute URL outside the EMR's FHIR base")
            reference = reference[len(base):]
        parts = reference.split("/")
        if len(parts) == 4 and parts[2] == "_history":
            parts = parts[:2]
        if len(parts) != 2 or not all(parts):
            raise BusinessRule("ServiceRequest.subject is not a reference of the form Patient/<id>")
        return parts[0], parts[1]

    def patient_id(self, patient: FhirJson) -> str:
        """The DICOM PatientID of a FHIR Patient (rule 2)."""
        for identifier in patient.get("identifier") or []:
            if identifier.get("system") == self.identity.system and identifier.get("value"):
                return str(identifier["value"])
        raise BusinessRule(f"the Patient has no identifier of system {self.identity.system} (the DICOM PatientID)")

    def check_usable(self, patient: FhirJson) -> None:
        self.patient_id(patient)
        names = patient.get("name") or []
        if not any(n.get("family") or n.get("given") or n.get("text") for n in names if isinstance(n, dict)):
            raise BusinessRule("the Patient has no name: the worklist's PatientName is required")

    async def patient_ids_for(self, reference: str) -> set[str]:
        """The PatientIDs a FHIR reference to a Patient stands for (searches by ``patient=``)."""
        try:
            type_, id_ = self._split(reference)
        except BusinessRule:
            return set()
        if type_ != "Patient":
            return set()
        held = await self.records.resource("Patient", id_)
        patient = held.resource if held is not None else None
        if patient is None and self.emr is not None:
            try:
                patient = await self.emr.read("Patient", id_)
            except NotFound:
                patient = None
        if patient is None:
            return set()
        try:
            return {self.patient_id(patient)}
        except BusinessRule:
            return set()
