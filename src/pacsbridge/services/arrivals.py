"""Study arrival: once a study has been quiet for a while it is *stable*, and a stable study that names
a request is linked to it.

See: IHE RAD TF-2 Appendix A (the attributes a modality copies from the worklist into its images);
docs/orders.md "Study arrival".

Rules:
1. Stable means no instance stored for ``quiet_s`` seconds (the index's ``updated_at``); a study that
   changes again is handled again. Handling is recorded with the ``updated_at`` it saw, in the same
   commit as its link, so a restart neither loses nor repeats one.
2. A study names a request by a step ID or requested procedure ID in its RequestAttributesSequence,
   its Study Instance UID (pre-assigned on the worklist) or the accession number of an active request.
   The request must be for the study's PatientID: a study naming another patient's request is left to
   matching (``unmatched``), never linked on its word alone.
3. Linking completes the request and the steps the study names (all open steps when it names none);
   subscribers get the ImagingStudy with ``basedOn`` set. A linked study that changes later is sent
   again, under the same topic.
4. Studies naming nothing go to ``unmatched`` (the seam for scored matching); without one they are
   only marked handled.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import anyio

from ..domain.access import SYSTEM
from ..domain.clock import utc_stamp
from ..domain.errors import Conflict, PacsbridgeError, without_values
from ..domain.links import ACTING, LinkStatus
from ..domain.model import DicomJson, Level, Scope, first_text
from ..domain.orders import ImagingRequest, RequestStatus, StepStatus, move_step
from ..domain.query import Match, MatchKind, Query
from .imaging_studies import ImagingStudyService
from .orders import settle_request
from .ports import Notification, OrderChange, OrderRecords, StudyLink
from .search import SearchService

log = logging.getLogger(__name__)

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
PATIENT_ID, ACCESSION = "00100020", "00080050"
REQUEST_ATTRIBUTES, SPS_ID, RP_ID = "00400275", "00400009", "00401001"
LINKABLE = (RequestStatus.ACTIVE, RequestStatus.COMPLETED)
Unmatched = Callable[[str, str, DicomJson], Awaitable[None]]
"""Called with (study UID, updated_at, the study's document: its attributes over its first instance's) for a
stable study naming no request; it must record the arrival (``OrderChange.arrival``), with a link or alone."""


class StudyArrivals:
    def __init__(self, records: OrderRecords, search: SearchService, studies: ImagingStudyService, quiet_s: float,
                 unmatched: Unmatched | None = None, batch: int = 50) -> None:
        self.records = records
        self.search = search
        self.studies = studies
        self.quiet_s = quiet_s
        self.unmatched = unmatched
        self.batch = batch
        self.pending: Callable[[], Awaitable[int]] | None = None  # more work for each round (retroactive matching)

    async def run(self, poll_s: float | None = None) -> None:
        """Handle stable studies, then ``pending`` work (retroactive matching), until cancelled; a failing
        round is logged and tried again."""
        poll = poll_s if poll_s is not None else max(0.5, min(self.quiet_s / 2, 5.0))
        while True:
            try:
                await self.handle_stable()
                if self.pending is not None:
                    await self.pending()
            except Exception as exc:
                log.error("study arrival: a round failed (%s); trying again in %.1f s", without_values(exc), poll)
            await anyio.sleep(poll)

    async def handle_stable(self, now: datetime | None = None) -> int:
        """Handle every study stable at ``now``; the number handled."""
        cutoff = utc_stamp((now or datetime.now(UTC)) - timedelta(seconds=self.quiet_s))
        handled = 0
        while True:
            settled = await self.records.settled_studies(cutoff, self.batch)
            for study_uid, updated_at in settled:
                try:
                    await self.arrived(study_uid, updated_at)
                except Conflict:  # an order changed meanwhile: the next round sees it fresh
                    log.info("study arrival: %s raced an order change; next round", study_uid)
                handled += 1
            if len(settled) < self.batch:
                return handled

    async def arrived(self, study_uid: str, updated_at: str) -> None:
        study = await self._study(study_uid)
        if study is None:  # deleted meanwhile
            await self.records.commit(OrderChange(arrival=(study_uid, updated_at)))
            return
        linked = {link.request_id for link in await self.records.links(study_uid=study_uid) if link.status in ACTING}
        sps_ids, rp_ids, first = await self._references(study_uid)
        accession = first_text(study, ACCESSION)
        candidates = await self.records.requests_for(sps_ids=sorted(sps_ids), study_uids=[study_uid],
                                                     accession_numbers=[accession] if accession else [])
        patient_id = first_text(study, PATIENT_ID)
        named = [r for r in candidates if r.request_id not in linked and r.status in LINKABLE
                 and (r.study_uid == study_uid or r.accession_number == accession
                      or sps_ids & {s.sps_id for s in r.steps} or r.requested_procedure_id in rp_ids)]
        others = [r for r in named if r.patient_id != patient_id]
        for r in others:
            log.warning("study arrival: a study names request %s of another PatientID; not linked", r.request_id)
        named = [r for r in named if r.patient_id == patient_id]
        if not named:
            if linked:
                await self._resend(study_uid, updated_at)
            elif self.unmatched is not None:
                await self.unmatched(study_uid, updated_at, {**first, **study})
            else:
                await self.records.commit(OrderChange(arrival=(study_uid, updated_at)))
            return
        for i, request in enumerate(named):
            await self.link(request, study_uid, updated_at if i == len(named) - 1 else None, sps_ids)

    async def document(self, study_uid: str) -> DicomJson | None:
        """What matching compares of a study: its attributes over its first instance's; None if unknown."""
        study = await self._study(study_uid)
        if study is None:
            return None
        first = (await self._references(study_uid))[2]
        return {**first, **study}

    async def link(self, request: ImagingRequest, study_uid: str, updated_at: str | None,
                   sps_ids: frozenset[str] | set[str] = frozenset(), status: LinkStatus = LinkStatus.REFERENCE,
                   confidence: float | None = None, differences: tuple[dict[str, str], ...] = (),
                   reason: str = "the study names the request (step, procedure, study UID or accession number)",
                   actor: str = "pacsbridge") -> None:
        """Link a study to a request and act on it (rule 3): steps and request completed, ImagingStudy sent."""
        names_steps = sps_ids & {s.sps_id for s in request.steps}
        steps = tuple(move_step(s, StepStatus.COMPLETED) if not s.status.final
                      and (not names_steps or s.sps_id in names_steps) else s for s in request.steps)
        after = replace(request, steps=steps)
        target = RequestStatus.COMPLETED if request.status is RequestStatus.ACTIVE else None
        settled, writes, notifications = await settle_request(self.records, request, after, target)
        link = StudyLink(study_uid, request.request_id, status.value, utc_stamp(), confidence, differences, actor,
                         reason)
        resource = await self.imaging_study(study_uid, extra_based_on=request.request_id)
        if resource is not None:
            notifications.append(Notification("imagingstudy.linked", {
                "reference": f"ImagingStudy/{study_uid}", "serviceRequest": f"ServiceRequest/{request.request_id}",
                "resource": resource}))
        await self.records.commit(OrderChange(resources=tuple(writes), request=settled, link=link,
                                              arrival=(study_uid, updated_at) if updated_at else None,
                                              notifications=tuple(notifications)))
        log.info("study arrival: linked a study to ServiceRequest/%s (now %s)", request.request_id,
                 settled.status.value)

    async def _resend(self, study_uid: str, updated_at: str) -> None:
        resource = await self.imaging_study(study_uid)
        notifications = (Notification("imagingstudy.linked", {
            "reference": f"ImagingStudy/{study_uid}", "resource": resource, "update": True}),) if resource else ()
        await self.records.commit(OrderChange(arrival=(study_uid, updated_at), notifications=notifications))

    async def imaging_study(self, study_uid: str, extra_based_on: str | None = None) -> DicomJson | None:
        try:
            resource = await self.studies.read(study_uid, SYSTEM_ALL)
        except PacsbridgeError as exc:
            log.warning("study arrival: no ImagingStudy for a linked study (%s)", exc.message)
            return None
        if extra_based_on is not None:  # the link is committed with this notification, so not read back yet
            reference = {"reference": f"ServiceRequest/{extra_based_on}"}
            based_on = resource.setdefault("basedOn", [])
            if reference not in based_on:
                based_on.append(reference)
        return resource

    async def _study(self, study_uid: str) -> DicomJson | None:
        query = Query(Level.STUDY, (Match(STUDY_UID, "UI", MatchKind.SINGLE, value=study_uid),), include_all=True,
                      limit=1)
        results = (await self.search.search(query, SYSTEM_ALL)).results
        return results[0] if results else None

    async def _references(self, study_uid: str) -> tuple[set[str], set[str], DicomJson]:
        """Step IDs and requested procedure IDs in the RequestAttributesSequence of each series' first
        instance (a modality writes the same into every image of a series), and the study's first
        instance's attributes."""
        query = Query(Level.INSTANCE, (Match(STUDY_UID, "UI", MatchKind.SINGLE, value=study_uid),))
        firsts: dict[str, str] = {}
        for instance in (await self.search.search(query, SYSTEM_ALL)).results:
            series = first_text(instance, SERIES_UID)
            if series and series not in firsts:
                firsts[series] = first_text(instance, SOP_UID) or ""
        sps_ids: set[str] = set()
        rp_ids: set[str] = set()
        first: DicomJson = {}
        for series, sop in firsts.items():
            for text in await self.search.archive.metadata(Scope(study_uid, series, sop)):
                attributes = json.loads(text)
                first = first or attributes
                for item in (attributes.get(REQUEST_ATTRIBUTES) or {}).get("Value") or []:
                    sps_ids.update(v for v in (item.get(SPS_ID) or {}).get("Value") or [] if v)
                    rp_ids.update(v for v in (item.get(RP_ID) or {}).get("Value") or [] if v)
        return sps_ids, rp_ids, first


SYSTEM_ALL = replace(SYSTEM, operator=True)
"""pacsbridge itself, reading every patient's studies for its own bookkeeping."""
