"""The Modality Worklist: the open steps of active requests, as worklist items.

See: PS3.4 Annex K; ``domain.orders`` rule 5 (what is on the worklist).
"""

from __future__ import annotations

from ..domain.access import Principal
from ..domain.model import DicomJson
from . import audit
from .orders import worklist_item
from .ports import OrderRecords, WorklistFilter


class WorklistService:
    def __init__(self, records: OrderRecords) -> None:
        self.records = records

    async def entries(self, where: WorklistFilter, principal: Principal) -> list[DicomJson]:
        """One item per open step passing the pre-selection and the principal's patient context; the door
        applies the exact matching of its query."""
        found = [(r, s) for r, s in await self.records.worklist(where) if principal.sees_patient(r.patient_id)]
        audit.touched_all((r.patient_id, r.study_uid) for r, _s in found)
        return [worklist_item(r, s) for r, s in found]
