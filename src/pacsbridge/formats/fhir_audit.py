"""Audit events as FHIR R4 AuditEvent resources (and a searchset Bundle of them).

See: FHIR R4 AuditEvent; DICOM PS3.15 A.5 and the DCM code system (110112 Query, 110104 DICOM
Instances Transferred, 110114 User Authentication with 110122 Login / 110123 Logout); HL7
audit-entity-type, object-role and security-source-type code systems.
The resources are built with ``fhir.resources`` (R4B models), so every export is valid by construction.
"""

from __future__ import annotations

import base64
from typing import Any

from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent
from fhir.resources.R4B.bundle import Bundle

from ..domain.audit import AuditEvent

DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
EVENT_TYPES = {  # action -> (DCM code, display, FHIR action code)
    "search": ("110112", "Query", "E"),
    "read": ("110104", "DICOM Instances Transferred", "R"),
    "create": ("110104", "DICOM Instances Transferred", "C"),
    "update": ("110103", "DICOM Instances Accessed", "U"),
    "delete": ("110103", "DICOM Instances Accessed", "D"),
    "login": ("110114", "User Authentication", "E"),
    "logout": ("110114", "User Authentication", "E"),
}
SUBTYPES = {"login": ("110122", "Login"), "logout": ("110123", "Logout")}  # of 110114 User Authentication


def outcome_code(status: int) -> str:
    """0 success, 4 minor failure (refused, not found, bad request), 8 serious failure (server error)."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def audit_event(event: AuditEvent, observer: str = "pacsbridge") -> dict[str, Any]:
    code, display, action = EVENT_TYPES.get(event.action, ("110103", "DICOM Instances Accessed", "E"))
    agent: dict[str, Any] = {"who": {"identifier": {"value": event.subject}}, "requestor": True}
    if event.client_id:
        agent["altId"] = event.client_id
    if event.remote:
        agent["network"] = {"address": event.remote, "type": "2"}
    entities: list[dict[str, Any]] = [
        {"what": {"identifier": {"value": p}}, "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
         "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}}
        for p in event.patient_ids
    ]
    entities += [
        {"what": {"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}},
         "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
         "role": {"system": OBJECT_ROLE, "code": "3", "display": "Report"}}
        for uid in event.study_uids
    ]
    route_entity: dict[str, Any] = {
        "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
        "description": f"{event.method} {event.route} ({event.door}) -> {event.status}",
    }
    if event.detail and event.action == "search":
        route_entity["role"] = {"system": OBJECT_ROLE, "code": "24", "display": "Query"}
        route_entity["query"] = base64.b64encode(event.detail.encode()).decode()
    elif event.detail:
        route_entity["description"] += f": {event.detail}"
    entities.append(route_entity)
    resource = FhirAuditEvent.model_validate({
        **({"id": str(event.id)} if event.id is not None else {}),
        "type": {"system": DCM, "code": code, "display": display},
        **({"subtype": [{"system": DCM, "code": SUBTYPES[event.action][0], "display": SUBTYPES[event.action][1]}]}
           if event.action in SUBTYPES else {}),
        "action": action,
        "recorded": event.recorded_at,
        "outcome": outcome_code(event.status),
        "agent": [agent],
        "source": {"observer": {"display": observer},
                   "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}]},
        "entity": entities,
    })
    return resource.model_dump(mode="json", exclude_none=True)


def searchset(events: list[AuditEvent], observer: str = "pacsbridge") -> dict[str, Any]:
    bundle = Bundle.model_validate({
        "type": "searchset",
        "total": len(events),
        "entry": [{"resource": audit_event(e, observer), "search": {"mode": "match"}} for e in events],
    })
    return bundle.model_dump(mode="json", exclude_none=True)
