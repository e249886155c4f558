"""Search the archive, whichever door asked (QIDO-RS now; C-FIND and FHIR searches later).

See: PS3.18 §10.6.3 (which attributes a match returns). Patient context is applied here and only
here: a principal bound to patients gets a PatientID key added to every search.
"""

from __future__ import annotations

from dataclasses import replace

import anyio.to_thread

from ..domain.access import Principal
from ..domain.levels import CONDITIONAL_RETURN, REQUIRED_RETURN, REQUIRED_VR, level_of
from ..domain.model import DicomJson, Level, first_text
from ..domain.query import Match, MatchKind, Query
from . import audit
from .ports import Archive, SearchPage

PATIENT_ID = "00100020"


def with_patient_context(query: Query, principal: Principal) -> Query:
    """The query narrowed to the principal's patients (an empty set sees nothing)."""
    if principal.patient_ids is None:
        return query
    allowed = tuple(sorted(principal.patient_ids))
    context = Match(PATIENT_ID, "LO", MatchKind.UID_LIST, values=allowed)
    return replace(query, matches=(*query.matches, context))


def return_tags(query: Query) -> tuple[str, ...]:
    """The attributes every result carries: required, matched, included (PS3.18 §10.6.3).

    With ``includefield=all`` each result also carries every stored attribute of its level.
    """
    levels = [query.level]
    if query.extra.get("with_parents"):
        levels = [lvl for lvl in Level if lvl <= query.level]
    tags: set[str] = set()
    for lvl in levels:
        tags.update(REQUIRED_RETURN[lvl])
    tags.update(m.tag for m in query.matches)
    # includefield naming a lower level than the query is not returned (§10.6.3.3).
    tags.update(tag for tag in query.includefields if level_of(tag) <= query.level
                or tag in ("00080061", "00080062", "00201206", "00201208", "00201209"))
    return tuple(sorted(tags))


def project(query: Query, result: DicomJson, tags: tuple[str, ...] | None = None) -> DicomJson:
    """One result reduced to its return attributes, keys sorted; absent type R ones empty."""
    tags = return_tags(query) if tags is None else tags
    ordered: list[str] | tuple[str, ...]
    if query.include_all:
        wanted = set(tags)
        wanted.update(tag for tag in result if level_of(tag) <= query.level or tag in REQUIRED_VR)
        ordered = sorted(wanted)
    else:
        ordered = tags
    out: DicomJson = {}
    for tag in ordered:
        if tag in result:
            out[tag] = result[tag]
        elif tag in REQUIRED_VR and tag not in CONDITIONAL_RETURN:
            out[tag] = {"vr": REQUIRED_VR[tag]}
    return out


class SearchService:
    """QIDO-RS, C-FIND and FHIR searches all end here."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    async def search(self, query: Query, principal: Principal) -> SearchPage:
        page = await self.archive.search(with_patient_context(query, principal))
        audit.touched_all((first_text(r, "00100020"), first_text(r, "0020000D")) for r in page.results)
        tags = return_tags(query)

        def projected() -> list[DicomJson]:
            return [project(query, r, tags) for r in page.results]

        # Off the event loop: a page of 1,000 results is milliseconds of pure Python.
        results = await anyio.to_thread.run_sync(projected) if len(page.results) > 20 else projected()
        return SearchPage(results, page.remaining)
