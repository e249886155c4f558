"""What the FHIR door offers, declared once: the routes are built from ``DECLARED`` and so is the
CapabilityStatement at ``GET [base]/metadata``, so the two cannot drift apart.

See: FHIR R4 capabilitystatement.html, http.html#capabilities; standards.md §E.5; SMART App Launch v2
(discovery lives in ``/.well-known/smart-configuration``; the statement names the SMART security service).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ...formats.fhir_search import SearchParam
from ...services.fhir_index import PATIENT_PARAMS, SERVICE_REQUEST_PARAMS
from .endpoint import ENDPOINT_DOCS, ENDPOINT_PARAMS
from .imaging import IMAGING_STUDY_DOCS, IMAGING_STUDY_PARAMS, INCLUDES

FhirJson = dict[str, Any]
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
RESOURCE_PARAMS = {"_id": "http://hl7.org/fhir/SearchParameter/Resource-id",
                   "_lastUpdated": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"}
HELD = ("read", "vread", "update", "delete", "history-instance", "create", "search-type")


@dataclass(frozen=True)
class Declared:
    """One resource type of the door: its interactions (R4 TypeRestfulInteraction codes) and parameters."""

    type: str
    interactions: tuple[str, ...]
    params: Mapping[str, SearchParam]
    docs: Mapping[str, str] = field(default_factory=dict)
    includes: tuple[str, ...] = ()
    versioned: bool = False
    documentation: str = ""


DECLARED: tuple[Declared, ...] = (
    Declared("ServiceRequest", HELD, SERVICE_REQUEST_PARAMS, versioned=True,
             documentation="Imaging orders: each write updates the Modality Worklist. The subject must be a "
                           "Patient, contained or held here (or at the configured EMR)."),
    Declared("Patient", HELD, PATIENT_PARAMS, versioned=True,
             documentation="Patients the EMR keeps here for its orders; the DICOM PatientID is the identifier "
                           "of the configured system."),
    Declared("ImagingStudy", ("read", "search-type"), IMAGING_STUDY_PARAMS, IMAGING_STUDY_DOCS, INCLUDES,
             documentation="Derived from the archive on every read; the id is the Study Instance UID."),
    Declared("Endpoint", ("read", "search-type"), ENDPOINT_PARAMS, ENDPOINT_DOCS,
             documentation="The DICOMweb service (WADO-RS base) of every ImagingStudy."),
)


def capability_statement(base_url: str, software_version: str, published: datetime | None = None) -> FhirJson:
    """The CapabilityStatement of this server (kind ``instance``)."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": (published or datetime.now(UTC)).date().isoformat(),
        "publisher": "pacsbridge",
        "kind": "instance",
        "software": {"name": "pacsbridge", "version": software_version},
        "implementation": {"description": "pacsbridge FHIR R4 door", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": True,
                "service": [{"coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR"}]}],
                "description": "OAuth 2.0 bearer tokens (SMART App Launch v2 scopes, or the orders.* and "
                               "dicomweb.* scopes); see /.well-known/smart-configuration.",
            },
            "resource": [_resource(d) for d in DECLARED],
        }],
    }


def _resource(d: Declared) -> FhirJson:
    out: FhirJson = {
        "type": d.type,
        "documentation": d.documentation,
        "interaction": [{"code": code} for code in d.interactions],
        "versioning": "versioned-update" if d.versioned else "no-version",
        "readHistory": d.versioned,
        "updateCreate": "update" in d.interactions,
        "conditionalCreate": "create" in d.interactions,
        "conditionalRead": "not-supported",
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
    }
    if d.includes:
        out["searchInclude"] = list(d.includes)
    out["searchParam"] = [_param(p, d.docs.get(p.name)) for p in d.params.values()]
    return out


def _param(p: SearchParam, documentation: str | None) -> FhirJson:
    out: FhirJson = {"name": p.name, "type": p.type}
    if p.name in RESOURCE_PARAMS:
        out["definition"] = RESOURCE_PARAMS[p.name]
    if documentation:
        out["documentation"] = documentation
    return out
