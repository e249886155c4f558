"""Modality Performed Procedure Step: what a modality reports drives its scheduled steps and the request.

See: PS3.4 Annex F.7 (N-CREATE, N-SET, the PPS status machine); IHE RAD-6/RAD-7; docs/orders.md.

Rules:
1. ``formats.mpps`` checks each message against the standard (it raises ``MppsError`` with the DIMSE
   status); this module applies an accepted one to our records, in one commit.
2. IN PROGRESS starts the scheduled steps it names (Scheduled Step Attribute Sequence: by step ID, else
   by accession number when that request has exactly one open step); COMPLETED and DISCONTINUED end
   them, and the request follows its steps (``domain.orders.request_after_steps``).
3. An MPPS naming no known step (unscheduled acquisition) is kept and changes nothing else. One naming
   a step that already ended is refused (0110 Processing failure): the modality works on a cancelled
   order.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from ..domain.clock import utc_stamp
from ..domain.errors import BusinessRule, Conflict
from ..domain.model import DicomJson
from ..domain.orders import ImagingRequest, StepStatus, move_step
from ..formats.mpps import MppsError, check_create, check_set, scheduled_steps
from .orders import settle_request
from .ports import OrderChange, OrderRecords, PerformedStep

log = logging.getLogger(__name__)

PPS_STATUS = "00400252"
NO_SUCH_INSTANCE, DUPLICATE_INSTANCE = 0x0112, 0x0111
STEP_FOR = {"IN PROGRESS": StepStatus.IN_PROGRESS, "COMPLETED": StepStatus.COMPLETED,
            "DISCONTINUED": StepStatus.DISCONTINUED}


class ProcedureStepService:
    def __init__(self, records: OrderRecords) -> None:
        self.records = records

    async def create(self, sop_uid: str, attributes: DicomJson, calling_ae: str | None) -> None:
        """N-CREATE (rule 2); MppsError or BusinessRule when refused."""
        check_create(attributes)
        if await self.records.performed(sop_uid) is not None:
            raise MppsError(DUPLICATE_INSTANCE, "an MPPS with this SOP Instance UID exists")
        now = utc_stamp()
        requests, sps_ids = await self._steps_named(attributes)
        performed = PerformedStep(sop_uid, "IN PROGRESS", calling_ae, tuple(sps_ids), attributes, now, now)
        await self._apply(performed, requests, StepStatus.IN_PROGRESS)

    async def update(self, sop_uid: str, modification: DicomJson) -> None:
        """N-SET; MppsError (0112 for an unknown instance, A710 once it ended) or BusinessRule."""
        stored = await self.records.performed(sop_uid)
        if stored is None:
            raise MppsError(NO_SUCH_INSTANCE, "no MPPS with this SOP Instance UID")
        merged = check_set(stored.attributes, modification)
        status = str(((merged.get(PPS_STATUS) or {}).get("Value") or [stored.status])[0])
        performed = replace(stored, status=status, attributes=merged, updated_at=utc_stamp())
        requests = await self.records.requests_for(sps_ids=stored.sps_ids) if stored.sps_ids else []
        await self._apply(performed, requests, STEP_FOR.get(status, StepStatus.IN_PROGRESS))

    async def _steps_named(self, attributes: DicomJson) -> tuple[list[ImagingRequest], list[str]]:
        references = scheduled_steps(attributes)
        sps_ids = [r.sps_id for r in references if r.sps_id]
        requests = await self.records.requests_for(sps_ids=sps_ids) if sps_ids else []
        known = {s.sps_id for r in requests for s in r.steps}
        for accession in {r.accession_number for r in references if not r.sps_id and r.accession_number}:
            for request in await self.records.requests_for(accession_numbers=[accession]):
                open_steps = [s for s in request.steps if not s.status.final]
                if len(open_steps) == 1 and open_steps[0].sps_id not in known:
                    requests.append(request)
                    sps_ids.append(open_steps[0].sps_id)
                    known.add(open_steps[0].sps_id)
        return requests, [s for s in sps_ids if s in known]

    async def _apply(self, performed: PerformedStep, requests: list[ImagingRequest], target: StepStatus) -> None:
        named = set(performed.sps_ids)
        changes: list[tuple[ImagingRequest, ImagingRequest]] = []
        for request in requests:
            steps = []
            for step in request.steps:
                if step.sps_id in named and step.status is not target:
                    if step.status.final:
                        raise BusinessRule(f"scheduled procedure step {step.sps_id} has ended ({step.status.value})")
                    step = move_step(step, target)
                steps.append(step)
            changes.append((request, replace(request, steps=tuple(steps))))
        if not changes:
            await self.records.commit(OrderChange(performed=performed))
            log.info("MPPS %s: %s, no scheduled step named (unscheduled)", performed.sop_uid, performed.status)
            return
        if len(changes) > 1:  # the group case: one commit per request, the MPPS with the first
            log.info("MPPS %s reports on %d requests", performed.sop_uid, len(changes))
        for i, (before, after) in enumerate(changes):
            settled, writes, notifications = await settle_request(self.records, before, after)
            try:
                await self.records.commit(OrderChange(resources=tuple(writes), request=settled,
                                                      performed=performed if i == 0 else None,
                                                      notifications=tuple(notifications)))
            except Conflict:  # the EMR updated the request at the same moment: once more on fresh data
                fresh = await self.records.request(before.request_id)
                if fresh is None:
                    raise
                retry = replace(fresh, steps=tuple(
                    move_step(s, target) if s.sps_id in named and not s.status.final else s for s in fresh.steps))
                settled, writes, notifications = await settle_request(self.records, fresh, retry)
                await self.records.commit(OrderChange(resources=tuple(writes), request=settled,
                                                      performed=performed if i == 0 else None,
                                                      notifications=tuple(notifications)))
        log.info("MPPS %s: %s", performed.sop_uid, performed.status)
