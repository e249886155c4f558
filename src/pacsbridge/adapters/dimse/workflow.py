"""The workflow SOP classes of our SCP: Modality Worklist C-FIND and MPPS N-CREATE / N-SET.

See: PS3.4 Annex K (Modality Worklist), Annex F.7 (MPPS), PS3.7 §10.1.5 (N-CREATE), §10.1.3 (N-SET);
docs/dimse.md and docs/orders.md.

Rules:
1. A worklist query needs ``worklist.read``, an MPPS ``worklist.write`` (a modality's peer entry
   grants both); a refusal is 0124 Not Authorized, like every other refusal of this SCP.
2. Items are pre-selected in SQL (station, modality, date range, patient, accession), then matched
   exactly by ``formats.worklist`` with DICOM's rules, one pending response per step.
3. MPPS refusals carry the status ``formats.mpps`` or the status machine chose (0106, 0110 + A710, 0111,
   0112, 0120, 0121), with an Error Comment that never holds patient data.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from pydicom.dataset import Dataset

from ...domain.access import Principal
from ...domain.audit import AccessNote
from ...domain.errors import BusinessRule, InvalidInput, PacsbridgeError
from ...domain.scopes import Need
from ...formats.dicom_json import dataset_to_json
from ...formats.mpps import PROCESSING_FAILURE, MppsError
from ...formats.worklist import matches_item, worklist_query, worklist_response
from ...services import audit
from ...services.procedure_steps import ProcedureStepService
from ...services.worklist import WorklistService
from .errors import IDENTIFIER_DOES_NOT_MATCH, status_dataset, status_for

log = logging.getLogger(__name__)
T = TypeVar("T")

WORKLIST_READ = Need("worklist.read")
WORKLIST_WRITE = Need("worklist.write")
SUCCESS, PENDING, CANCEL = 0x0000, 0xFF00, 0xFE00
NOT_AUTHORIZED = 0x0124
Call = Callable[[Callable[[], Awaitable[T]]], T]
Record = Callable[[Any, Principal | None, str, str, str, int, AccessNote | None], None]


@dataclass(frozen=True)
class Workflow:
    worklist: WorklistService
    steps: ProcedureStepService


def find_worklist(event: Any, workflow: Workflow, principal: Principal | None, call: Call[Any], record: Record,
                  max_results: int) -> Iterator[tuple[int, Dataset | None]]:
    """pynetdicom's C-FIND handler protocol for the Modality Worklist model (rule 2)."""
    route = "Modality Worklist"
    if principal is None or not principal.allows(WORKLIST_READ):
        record(event, principal, "search", "C-FIND", route, NOT_AUTHORIZED, None)
        yield status_dataset(NOT_AUTHORIZED, "this AE may not query the worklist"), None
        return
    try:
        query = worklist_query(event.identifier)
    except (InvalidInput, ValueError) as exc:
        record(event, principal, "search", "C-FIND", route, IDENTIFIER_DOES_NOT_MATCH, None)
        yield status_dataset(IDENTIFIER_DOES_NOT_MATCH,
                      exc.message if isinstance(exc, InvalidInput) else "the identifier cannot be read"), None
        return
    where = query.prefilter

    async def run() -> tuple[list[dict[str, Any]], AccessNote]:
        with audit.noting() as note:
            return await workflow.worklist.entries(where, principal), note

    try:
        items, note = call(run)
    except PacsbridgeError as exc:
        status = status_for(exc)
        record(event, principal, "search", "C-FIND", route, status, None)
        yield status_dataset(status, exc.message), None
        return
    matched = [item for item in items if matches_item(query, item)]
    pending = 0xFF01 if query.ignored_keys else PENDING  # some optional keys were not matched (K.4.1.1.4)
    for item in matched[:max_results]:
        if event.is_cancelled:
            record(event, principal, "search", "C-FIND", route, CANCEL, note)
            yield CANCEL, None
            return
        try:
            response = worklist_response(query, item)
        except PacsbridgeError as exc:  # an item lacking a Type 1 key: skip it, say so in the log
            log.warning("worklist: an item is not shown: %s", exc.message)
            continue
        yield pending, response
    if len(matched) > max_results:
        record(event, principal, "search", "C-FIND", route, 0xA700, note)
        yield status_dataset(0xA700, f"more than {max_results} matches: narrow the query"), None
        return
    record(event, principal, "search", "C-FIND", route, SUCCESS, note)
    yield SUCCESS, None


def mpps_create(event: Any, workflow: Workflow, principal: Principal | None, call: Call[Any], record: Record
                ) -> tuple[Dataset | int, Dataset | None]:
    """pynetdicom's N-CREATE handler protocol: (status, the attribute list as created)."""
    uid = str(event.request.AffectedSOPInstanceUID or "")
    if principal is None or not principal.allows(WORKLIST_WRITE):
        record(event, principal, "create", "N-CREATE", "MPPS", NOT_AUTHORIZED, None)
        return status_dataset(NOT_AUTHORIZED, "this AE may not report procedure steps"), None
    if not uid:  # the SCU must supply it (F.7.2.1.2): we do not assign one
        record(event, principal, "create", "N-CREATE", "MPPS", 0x0106, None)
        return status_dataset(0x0106, "Affected SOP Instance UID is required"), None
    attributes = event.attribute_list
    data = dataset_to_json(attributes)
    calling = str(event.assoc.requestor.ae_title).strip()
    status = _mpps(event, principal, call, record, "N-CREATE",
                   lambda: workflow.steps.create(uid, data, calling))
    return (SUCCESS, attributes) if status == SUCCESS else (status, None)


def mpps_set(event: Any, workflow: Workflow, principal: Principal | None, call: Call[Any], record: Record
             ) -> tuple[Dataset | int, Dataset | None]:
    """pynetdicom's N-SET handler protocol: (status, the modification list as applied)."""
    uid = str(event.request.RequestedSOPInstanceUID or "")
    if principal is None or not principal.allows(WORKLIST_WRITE):
        record(event, principal, "update", "N-SET", "MPPS", NOT_AUTHORIZED, None)
        return status_dataset(NOT_AUTHORIZED, "this AE may not report procedure steps"), None
    modification = event.modification_list
    data = dataset_to_json(modification)
    status = _mpps(event, principal, call, record, "N-SET", lambda: workflow.steps.update(uid, data))
    return (SUCCESS, modification) if status == SUCCESS else (status, None)


def _mpps(event: Any, principal: Principal, call: Call[Any], record: Record, command: str,
          work: Callable[[], Awaitable[None]]) -> int | Dataset:
    async def run() -> AccessNote:
        with audit.noting() as note:
            await work()
            return note

    try:
        note = call(run)
    except MppsError as exc:
        record(event, principal, "update", command, "MPPS", exc.status, None)
        ds = status_dataset(exc.status, exc.comment)
        if exc.error_id is not None:
            ds.ErrorID = exc.error_id
        if exc.attributes:
            ds.AttributeIdentifierList = list(exc.attributes)
        return ds
    except BusinessRule as exc:
        record(event, principal, "update", command, "MPPS", PROCESSING_FAILURE, None)
        return status_dataset(PROCESSING_FAILURE, exc.message)
    except PacsbridgeError as exc:
        status = status_for(exc)
        record(event, principal, "update", command, "MPPS", status, None)
        return status_dataset(status, exc.message)
    record(event, principal, "update", command, "MPPS", SUCCESS, note)
    return SUCCESS

