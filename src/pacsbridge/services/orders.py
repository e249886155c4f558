"""Imaging orders from the EMR: a FHIR ServiceRequest becomes a requested procedure with scheduled steps
on the Modality Worklist, and its status follows the one status machine (``domain.orders``).

See: FHIR R4 ServiceRequest, http.html (create, update, conditional create, versions); PS3.4 Annex K;
docs/orders.md.

Rules:
1. Every write of a ServiceRequest goes through ``_save``: the patient is resolved, the request mapped
   to worklist attributes by the first applicable file of ``mappings/request-to-worklist``, the status
   move checked, and the resource version, the request with its steps and the notifications committed
   together. A concurrent writer makes the commit fail; an unconditional write then starts over once.
2. Identifiers the worklist needs and the EMR did not give are ours and stay stable across versions:
   the accession number (also written back into the resource as an ``ACSN`` identifier), the requested
   procedure ID (= the accession number), the Study Instance UID (``2.25.<uuid>``) and the step IDs
   (``<accession>-<n>``).
3. Steps keep their status across updates by step ID; a mapping that drops a step discontinues it.
"""

from __future__ import annotations

import copy
import logging
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from ..domain.clock import utc_stamp
from ..domain.errors import BusinessRule, Conflict, InvalidInput, MappingError, NotFound, PreconditionFailed
from ..domain.model import DicomJson, first_text
from ..domain.orders import (
    ImagingRequest,
    RequestStatus,
    ScheduledStep,
    StepStatus,
    check_request_move,
    parse_request_status,
    request_after_steps,
    steps_after_request,
)
from ..formats.fhir_rest import fhir_instant
from ..mapping import Mapping, choose
from .fhir_index import index_entries
from .patients import FhirJson, PatientDirectory
from .ports import Notification, OrderChange, OrderRecords, ResourceVersion, ResourceWrite

log = logging.getLogger(__name__)

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
SPS_ID, SPS_STATUS = "00400009", "00400020"
SPS_SEQUENCE = "00400100"
STATION_AE, MODALITY, START_DATE, START_TIME = "00400001", "00080060", "00400002", "00400003"


@dataclass(frozen=True)
class OrderSettings:
    """Site values the request-to-worklist mapping reads as ``$context``."""

    accession_system: str = "urn:pacsbridge:accession"
    timezone: str = "UTC"
    default_station_ae: str | None = None
    default_modality: str | None = None


class OrderService:
    """ServiceRequests: create, read, update, delete, search; each write updates the worklist."""

    def __init__(self, records: OrderRecords, patients: PatientDirectory, mappings: Sequence[Mapping],
                 settings: OrderSettings, blocking: Callable[[ImagingRequest], tuple[str, ...]] | None = None) -> None:
        """``blocking`` gives a request's blocking keys for scored matching (None: no scored matching)."""
        self.records = records
        self.patients = patients
        self.mappings = list(mappings)
        self.settings = settings
        self.blocking = blocking

    async def read(self, id_: str, version: int | None = None) -> ResourceVersion:
        found = await self.records.resource("ServiceRequest", id_, version)
        if found is None:
            raise NotFound(f"ServiceRequest/{id_}" + (f" version {version}" if version else "") + " is not known")
        return found

    async def create(self, resource: FhirJson, matches: Sequence[ResourceVersion] | None = None
                     ) -> tuple[ResourceVersion, bool]:
        """POST; ``matches`` are what an If-None-Exist search found (None: unconditional). Returns the
        version and whether it was created (False: the one existing match, 200)."""
        if matches is not None:
            if len(matches) > 1:
                raise PreconditionFailed(f"If-None-Exist matches {len(matches)} ServiceRequests")
            if matches:
                return matches[0], False
        id_ = str(uuid.uuid4())
        return await self._save(id_, resource, None, "POST"), True

    async def update(self, id_: str, resource: FhirJson, if_match: int | None = None) -> tuple[ResourceVersion, bool]:
        """PUT; creates the resource under the client's id when it does not exist (update as create)."""
        if resource.get("id") != id_:
            raise InvalidInput("the resource's id must equal the id in the URL")
        for attempt in (1, 2):
            current = await self.records.resource("ServiceRequest", id_)
            if if_match is not None and (current is None or current.version != if_match):
                raise PreconditionFailed(f"ServiceRequest/{id_} is not at version {if_match}")
            try:
                return await self._save(id_, resource, current, "PUT"), current is None
            except Conflict:
                if if_match is not None or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def delete(self, id_: str) -> ResourceVersion | None:
        """DELETE: the request leaves the worklist (its open steps are discontinued, as by entered-in-error);
        refused while a step is in progress. None when there was nothing to delete."""
        current = await self.records.resource("ServiceRequest", id_)
        if current is None or current.resource is None:
            return None
        request = await self.records.request(id_)
        notifications: list[Notification] = []
        if request is not None:
            if any(s.status is StepStatus.IN_PROGRESS for s in request.steps):
                raise BusinessRule("a procedure step is in progress: it must end (MPPS) before the request is deleted")
            ended = replace(request, status=RequestStatus.REVOKED,
                            steps=steps_after_request(RequestStatus.REVOKED, request.steps))
            notifications += step_notifications(request, ended)
            request = ended
        gone = ResourceVersion("ServiceRequest", id_, current.version + 1, fhir_now(), None, "DELETE")
        notifications.append(Notification("servicerequest.deleted", {
            "reference": f"ServiceRequest/{id_}", "previous": (current.resource or {}).get("status")}))
        await self.records.commit(OrderChange(resources=(ResourceWrite(gone, current.version),), request=request,
                                              notifications=tuple(notifications)))
        return gone

    # --- the one writer ---------------------------------------------------------------------------

    async def _save(self, id_: str, given: FhirJson, current: ResourceVersion | None, method: str) -> ResourceVersion:
        resource = copy.deepcopy(given)
        resource["id"] = id_
        status = parse_request_status(str(resource.get("status") or ""))
        if resource.get("intent") not in ("order", "original-order", "reflex-order", "filler-order",
                                          "instance-order"):
            raise BusinessRule("ServiceRequest.intent must be an order (order, original-order, reflex-order, "
                               "filler-order or instance-order) to be scheduled")
        old = await self.records.request(id_)
        patient = await self.patients.resolve(resource)
        self.patients.check_usable(patient)
        patient_id = self.patients.patient_id(patient)
        accession = self._accession(resource, old)
        study_uid = old.study_uid if old else f"2.25.{uuid.uuid4().int}"
        procedure_id = old.requested_procedure_id if old else accession[:16]
        context = {
            "patient_id": patient_id, "issuer_of_patient_id": self.patients.identity.issuer,
            "accession_number": accession, "requested_procedure_id": procedure_id, "study_uid": study_uid,
            "timezone": self.settings.timezone, "default_station_ae": self.settings.default_station_ae,
            "default_modality": self.settings.default_modality,
        }
        try:
            mapping = choose(self.mappings, resource, patient=patient, context=context)
            attributes = mapping.apply(resource, patient=patient, context=context)
            items = mapping.apply_section("steps", resource, patient=patient, context=context)
        except MappingError as exc:
            raise BusinessRule(f"the request cannot be put on the worklist: {exc.message}") from None
        attributes.pop(SPS_SEQUENCE, None)
        steps = self._steps(accession, items, old)
        if old is not None:
            check_request_move(old.status, status, old.steps)
        steps = steps_after_request(status, steps)
        request = ImagingRequest(request_id=id_, status=status, accession_number=accession,
                                 requested_procedure_id=procedure_id, study_uid=study_uid, patient_id=patient_id,
                                 attributes=attributes, steps=steps)
        stored = next_version("ServiceRequest", id_, resource, current.version if current else 0, method)
        resource, version = stored.resource or {}, stored.version
        notifications = []
        previous = old.status if old else None
        if previous is not status:
            notifications.append(status_notification(resource, previous))
        if old is not None:
            notifications += step_notifications(old, request)
        await self.records.commit(OrderChange(
            resources=(ResourceWrite(stored, current.version if current else 0, index_entries(resource)),),
            request=request, request_keys=self.blocking(request) if self.blocking else None,
            match_pending=utc_stamp() if self.blocking and status is RequestStatus.ACTIVE else None,
            notifications=tuple(notifications)))
        log.info("ServiceRequest/%s version %d: %s, %d step(s)", id_, version, status.value, len(steps))
        return stored

    def _accession(self, resource: FhirJson, old: ImagingRequest | None) -> str:
        """The request's accession number (rule 2), written into ``resource`` when it is ours."""
        given = [i for i in resource.get("identifier") or []
                 if any(c.get("code") == "ACSN" for c in ((i.get("type") or {}).get("coding") or []))]
        if given:
            value = str(given[0].get("value") or "")
            if not value or len(value) > 16 or "\\" in value:
                raise BusinessRule("the ACSN identifier must be 1 to 16 characters (DICOM AccessionNumber)")
            if old is not None and old.accession_number != value:
                raise BusinessRule("the accession number of a scheduled request cannot change")
            return value
        value = old.accession_number if old else "PB" + secrets.token_hex(5).upper()
        resource.setdefault("identifier", []).append({
            "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
            "system": self.settings.accession_system, "value": value})
        return value

    def _steps(self, accession: str, items: list[DicomJson], old: ImagingRequest | None) -> tuple[ScheduledStep, ...]:
        if not items:
            raise BusinessRule("the request-to-worklist mapping gave no scheduled procedure step")
        previous = {s.sps_id: s for s in old.steps} if old else {}
        steps = []
        for n, item in enumerate(items, start=1):
            sps_id = f"{accession}-{n}"[-16:]
            before = previous.pop(sps_id, None)
            status = before.status if before else StepStatus.SCHEDULED
            item = {**item, SPS_ID: {"vr": "SH", "Value": [sps_id]}}
            steps.append(ScheduledStep(sps_id=sps_id, status=status, station_ae=first_text(item, STATION_AE),
                                       modality=first_text(item, MODALITY), start_date=first_text(item, START_DATE),
                                       start_time=first_text(item, START_TIME), item=item))
        for dropped in previous.values():  # rule 3
            steps.append(dropped if dropped.status.final else replace(dropped, status=StepStatus.DISCONTINUED))
        return tuple(steps)


def status_notification(resource: FhirJson, previous: RequestStatus | None) -> Notification:
    return Notification("servicerequest.status", {
        "reference": f"ServiceRequest/{resource['id']}", "status": resource.get("status"),
        "previous": previous.value if previous else None, "resource": resource})


def step_notifications(before: ImagingRequest, after: ImagingRequest) -> list[Notification]:
    """One notification per step whose status changed."""
    old = {s.sps_id: s.status for s in before.steps}
    return [Notification("procedurestep.status", {
        "serviceRequest": f"ServiceRequest/{after.request_id}", "scheduledProcedureStepId": s.sps_id,
        "accessionNumber": after.accession_number, "status": s.status.value,
        "previous": old[s.sps_id].value if s.sps_id in old else None})
        for s in after.steps if old.get(s.sps_id) is not s.status]


def worklist_item(request: ImagingRequest, step: ScheduledStep) -> DicomJson:
    """The worklist entry of one step: the request's attributes and an SPS sequence of that step alone."""
    item = {**step.item, SPS_STATUS: {"vr": "CS", "Value": [step.status.dicom]}}
    return {**request.attributes, SPS_SEQUENCE: {"vr": "SQ", "Value": [item]}}


def fhir_now() -> str:
    """A FHIR instant with milliseconds and an offset (meta.lastUpdated)."""
    return fhir_instant(datetime.now(UTC))


def next_version(type_: str, id_: str, resource: FhirJson, previous: int, method: str = "PUT") -> ResourceVersion:
    """The version after ``previous`` (0: the first) of a resource, its ``id`` and ``meta.versionId`` and
    ``meta.lastUpdated`` set (on a shallow copy)."""
    version = previous + 1
    stamp = fhir_now()
    stamped = {**resource, "id": id_,
               "meta": {**(resource.get("meta") or {}), "versionId": str(version), "lastUpdated": stamp}}
    return ResourceVersion(type_, id_, version, stamp, stamped, method)


def with_status(resource: FhirJson, status: RequestStatus, current: ResourceVersion) -> ResourceVersion:
    """The next version of a stored ServiceRequest in another status (pacsbridge's own moves, rule 1 of
    domain.orders, and undoing them)."""
    return next_version("ServiceRequest", current.id, {**resource, "status": status.value}, current.version)


async def settle_request(records: OrderRecords, before: ImagingRequest, after: ImagingRequest,
                         status: RequestStatus | None = None) -> tuple[ImagingRequest, list[ResourceWrite],
                                                                        list[Notification]]:
    """What changing a request's steps (MPPS, a study's arrival) makes of it: the request in the status its
    steps give (or ``status``), the ServiceRequest's next version if that changed, and the notifications."""
    target = status or request_after_steps(after)
    if target is not after.status:
        check_request_move(after.status, target, ())
        after = replace(after, status=target, steps=steps_after_request(target, after.steps))
    notifications = step_notifications(before, after)
    writes: list[ResourceWrite] = []
    if after.status is not before.status:
        current = await records.resource("ServiceRequest", after.request_id)
        if current is not None and current.resource is not None:
            version = with_status(current.resource, after.status, current)
            writes.append(ResourceWrite(version, current.version, index_entries(version.resource or {})))
            notifications.append(status_notification(version.resource or {}, before.status))
    return after, writes, notifications
