"""Reviewing links by hand: the candidates of a study, confirming one, choosing another, unlinking.

See: ``domain.links``; docs/matching.md "Reviewing links".

Rules:
1. Confirming makes a ``manual`` link, which acts like a link by reference (the request completes,
   subscribers are told). Choosing another candidate unlinks the acting link first.
2. Unlinking keeps the link as ``unlinked`` (with who and why) and undoes its effects: ImagingStudy
   loses the ``basedOn`` (subscribers get it again, topic ``imagingstudy.unlinked``), and a request
   that this link completed, and that no other acting link keeps completed, returns to ``active`` (its
   steps keep what the modality reported). This is pacsbridge undoing its own move, not an EMR move.
3. A person acts with their own name (``actor``), and a reason is recorded with every change.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from ..domain.clock import utc_stamp
from ..domain.errors import BusinessRule, NotFound
from ..domain.links import ACTING, LinkStatus
from ..domain.model import DicomJson
from ..domain.orders import RequestStatus
from ..mapping import MatchResult
from .arrivals import StudyArrivals
from .fhir_index import index_entries
from .matching import Candidate, StudyMatcher, request_keys
from .orders import status_notification, with_status, worklist_item
from .ports import Notification, OrderChange, OrderRecords, ResourceWrite

log = logging.getLogger(__name__)


class LinkReview:
    def __init__(self, records: OrderRecords, arrivals: StudyArrivals, matcher: StudyMatcher) -> None:
        self.records = records
        self.arrivals = arrivals
        self.matcher = matcher

    async def study(self, study_uid: str) -> DicomJson:
        document = await self.arrivals.document(study_uid)
        if document is None:
            raise NotFound(f"study {study_uid} is not known")
        return document

    async def candidates(self, study_uid: str) -> list[Candidate]:
        """The requests a study may answer, best first, with their scores and differences."""
        return await self.matcher.candidates(await self.study(study_uid))

    async def studies_for(self, request_id: str) -> list[tuple[str, MatchResult]]:
        """The waiting studies (no acting link) a request may be the answer to, best first: the studies
        sharing a blocking key, each scored against the request's best step."""
        request = await self.records.request(request_id)
        if request is None:
            raise NotFound(f"ServiceRequest/{request_id} is not known")
        rules = self.matcher.rules
        keys = sorted(request_keys(rules, request))
        found = []
        for study_uid in await self.records.studies_by_keys(keys):
            study = await self.arrivals.document(study_uid)
            if study is None or not request.steps:
                continue
            best = max((rules.score(worklist_item(request, step), study) for step in request.steps),
                       key=lambda r: r.confidence)
            found.append((study_uid, best))
        found.sort(key=lambda pair: (-pair[1].confidence, pair[0]))
        return found

    async def confirm(self, study_uid: str, request_id: str, actor: str, reason: str = "confirmed") -> None:
        """Link by hand (rule 1); an acting link of the study to another request is unlinked first."""
        await self.study(study_uid)
        request = await self.records.request(request_id)
        if request is None:
            raise NotFound(f"ServiceRequest/{request_id} is not known")
        if request.status not in (RequestStatus.ACTIVE, RequestStatus.COMPLETED):
            raise BusinessRule(f"ServiceRequest/{request_id} is {request.status.value}: it answers no study")
        for link in await self.records.links(study_uid=study_uid):
            if link.request_id == request_id or link.status == LinkStatus.UNLINKED.value:
                continue
            if link.status in ACTING:
                await self.unlink(study_uid, link.request_id, actor, f"another request chosen: {reason}")
            else:  # an unsure proposal the person turned down: nothing acted, nothing to undo
                await self.records.commit(OrderChange(link=replace(
                    link, status=LinkStatus.UNLINKED.value, linked_at=utc_stamp(), actor=actor,
                    reason=f"another request chosen: {reason}", differences=())))
        score = next((c.result.confidence for c in await self.candidates(study_uid)
                      if c.request.request_id == request_id), None)
        await self.arrivals.link(request, study_uid, None, status=LinkStatus.MANUAL, confidence=score, actor=actor,
                                 reason=reason)

    async def unlink(self, study_uid: str, request_id: str, actor: str, reason: str) -> None:
        """Undo a link (rule 2)."""
        links = {link.request_id: link for link in await self.records.links(study_uid=study_uid)}
        link = links.get(request_id)
        if link is None or link.status == LinkStatus.UNLINKED.value:
            raise NotFound(f"study {study_uid} is not linked to ServiceRequest/{request_id}")
        acted = link.status in ACTING
        change_link = replace(link, status=LinkStatus.UNLINKED.value, linked_at=utc_stamp(), actor=actor,
                              reason=reason, differences=())
        writes: list[ResourceWrite] = []
        notifications: list[Notification] = []
        request = await self.records.request(request_id)
        if acted and request is not None and request.status is RequestStatus.COMPLETED:
            others = [x for x in await self.records.links(request_id=request_id)
                      if x.study_uid != study_uid and x.status in ACTING]
            if not others:
                current = await self.records.resource("ServiceRequest", request_id)
                if current is not None and current.resource is not None:
                    reopened = with_status(current.resource, RequestStatus.ACTIVE, current)
                    writes.append(ResourceWrite(reopened, current.version, index_entries(reopened.resource or {})))
                    notifications.append(status_notification(reopened.resource or {}, RequestStatus.COMPLETED))
                request = replace(request, status=RequestStatus.ACTIVE)
        if acted:
            resource = await self._without(study_uid, request_id)
            if resource is not None:
                notifications.append(Notification("imagingstudy.unlinked", {
                    "reference": f"ImagingStudy/{study_uid}", "serviceRequest": f"ServiceRequest/{request_id}",
                    "resource": resource}))
        await self.records.commit(OrderChange(resources=tuple(writes), request=request if writes else None,
                                              link=change_link, notifications=tuple(notifications)))
        log.info("links: a study was unlinked from ServiceRequest/%s by a person", request_id)

    async def _without(self, study_uid: str, request_id: str) -> DicomJson | None:
        """The ImagingStudy once this link is gone (it is committed with the notification)."""
        resource = await self.arrivals.imaging_study(study_uid)
        if resource is None:
            return None
        based_on = [b for b in resource.get("basedOn") or [] if b != {"reference": f"ServiceRequest/{request_id}"}]
        if based_on:
            resource["basedOn"] = based_on
        else:
            resource.pop("basedOn", None)
        return resource

