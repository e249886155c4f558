"""Scored matching: a stable study that names no request is compared with the open requests that share a
blocking key, by the rules of ``mappings/matching/*.yaml``.

See: docs/matching.md; ``domain.links`` (which links act).

Rules:
1. A request's blocking keys are computed when it is written (``request_keys``), so candidates are one
   indexed lookup per study, never a scan of every open request.
2. Each candidate is scored on each of its steps' worklist entries; the best step counts. The best
   candidate wins; the matching file's ``choose`` holds it back to auto-unsure when another request
   scored the same or came within the file's margin (it waits for a person).
3. ``auto-certain`` links act at once (the request completes, subscribers are told); ``auto-unsure``
   is recorded with its confidence and differences and waits for a person; ``unlinked`` records only
   the arrival. The arrival is recorded in the same commit as the link.
4. A study left without an acting link keeps its blocking keys (``study_keys``): a request that
   arrives later is matched against those studies (retroactively), each study choosing its own best
   request exactly as on arrival, so the order in which they came changes nothing.
5. Retroactive matching is durable work, not part of the EMR's request: saving an active request
   records it as pending in the same commit (``OrderChange.match_pending``), and the arrivals loop
   matches pending requests (``match_pending``) and clears each in its own commit. A crash in between
   leaves it pending; a request saved again meanwhile stays pending for its newer version.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..domain.clock import utc_stamp
from ..domain.errors import Conflict, without_values
from ..domain.links import ACTING, LinkStatus
from ..domain.model import DicomJson
from ..domain.orders import ImagingRequest, RequestStatus
from ..mapping import MatchingRules, MatchResult
from .orders import worklist_item
from .ports import OrderChange, OrderRecords, StudyLink

log = logging.getLogger(__name__)

Link = Callable[..., Awaitable[None]]
Document = Callable[[str], Awaitable[DicomJson | None]]


@dataclass(frozen=True)
class Candidate:
    request: ImagingRequest
    result: MatchResult


def request_keys(rules: MatchingRules, request: ImagingRequest) -> tuple[str, ...]:
    """Every blocking key of a request (the union over its steps' worklist entries)."""
    keys: set[str] = set()
    for step in request.steps:
        keys |= rules.blocking_keys(worklist_item(request, step), "request")
    return tuple(sorted(keys))


class StudyMatcher:
    def __init__(self, records: OrderRecords, rules: MatchingRules, link: Link) -> None:
        """``link`` is ``StudyArrivals.link``: how an acting link completes its request."""
        self.records = records
        self.rules = rules
        self.link = link

    async def candidates(self, study: DicomJson) -> list[Candidate]:
        """Requests sharing a blocking key with the study, best first (rule 2)."""
        keys = sorted(self.rules.blocking_keys(study, "study"))
        out = []
        for request in await self.records.requests_by_keys(keys):
            if not request.steps:
                continue
            results = [self.rules.score(worklist_item(request, step), study) for step in request.steps]
            out.append(Candidate(request, max(results, key=lambda r: r.confidence)))
        out.sort(key=lambda c: (-c.result.confidence, c.request.request_id))
        return out

    async def study_arrived(self, study_uid: str, updated_at: str, study: DicomJson) -> None:
        """The ``unmatched`` seam of StudyArrivals (rule 3)."""
        linked = [link for link in await self.records.links(study_uid=study_uid) if link.status in ACTING]
        found = [] if linked else await self.candidates(study)
        keys = (study_uid, () if linked else tuple(sorted(self.rules.blocking_keys(study, "study"))))
        await self._decide(study_uid, found, updated_at, keys)

    async def match_pending(self, document: Document, batch: int = 50) -> int:
        """Rule 5: match the pending requests against waiting studies; the number done."""
        done = 0
        for request_id, since in await self.records.pending_matches(batch):
            request = await self.records.request(request_id)
            if request is not None and request.status is RequestStatus.ACTIVE:
                try:
                    await self.request_arrived(request, document)
                except Conflict:  # a study or the order changed meanwhile: the next round sees it fresh
                    continue
                except Exception as exc:  # left pending for the next round; the other requests go on
                    log.error("matching: ServiceRequest/%s against waiting studies failed: %s", request_id,
                              without_values(exc))
                    continue
            await self.records.commit(OrderChange(matched=(request_id, since)))
            done += 1
        return done

    async def request_arrived(self, request: ImagingRequest, document: Document) -> None:
        """Rule 4: the stable studies without a link that share a key with a new or changed request."""
        for study_uid in await self.records.studies_by_keys(list(request_keys(self.rules, request))):
            study = await document(study_uid)
            if study is None:
                continue
            links = await self.records.links(study_uid=study_uid)
            if any(link.status in ACTING for link in links):
                continue
            found = await self.candidates(study)
            if found and found[0].request.request_id == request.request_id:
                unsure = {link.request_id for link in links if link.status == LinkStatus.AUTO_UNSURE.value}
                certain = self.rules.choose([c.result for c in found]).decision == "auto-certain"
                if certain or request.request_id not in unsure:
                    await self._decide(study_uid, found, None, None)

    async def _decide(self, study_uid: str, found: list[Candidate], updated_at: str | None,
                      keys: tuple[str, tuple[str, ...]] | None) -> None:
        arrival = (study_uid, updated_at) if updated_at is not None else None
        choice = self.rules.choose([c.result for c in found])
        if choice.decision == "unlinked":
            if arrival is not None or keys is not None:
                await self.records.commit(OrderChange(arrival=arrival, study_keys=keys))
            return
        best = found[0]
        differences = tuple({"field": d.field, "request": d.request_value, "study": d.study_value}
                            for d in best.result.differences)
        reason = f"matching file {self.rules.name} v{self.rules.version}: confidence {best.result.confidence:.3f}"
        if best.result.vetoes:
            reason += f"; vetoed by {', '.join(best.result.vetoes)}"
        if choice.held_back == "tie":
            reason += "; another request scored the same"
        elif choice.held_back == "margin":
            reason += f"; another request came within the margin of {self.rules.margin:g}"
        if choice.decision == "auto-certain":
            await self.link(best.request, study_uid, updated_at, status=LinkStatus.AUTO_CERTAIN,
                            confidence=best.result.confidence, differences=differences, reason=reason)
            log.info("matching: linked a study to ServiceRequest/%s (auto-certain, %.3f)", best.request.request_id,
                     best.result.confidence)
            return
        link = StudyLink(study_uid, best.request.request_id, LinkStatus.AUTO_UNSURE.value, utc_stamp(),
                         best.result.confidence, differences, reason=reason)
        await self.records.commit(OrderChange(link=link, arrival=arrival, study_keys=keys))
        log.info("matching: a study may answer ServiceRequest/%s (auto-unsure, %.3f); waiting for review",
                 best.request.request_id, best.result.confidence)
