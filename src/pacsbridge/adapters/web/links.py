"""The link review pages: studies with their link status and confidence (``/ui/links``), and one study
beside the request it answers, or may answer (``/ui/links/{study}``), to confirm, choose another or unlink.

See: docs/matching.md "Reviewing links"; ``adapters.links_api`` (the same data as JSON).

Rules:
1. A session needs ``links.review`` and no patient context; changes are forms posted with the session's
   CSRF token, answered by a redirect to the study (POST, redirect, GET), and audited (door ``links``).
2. A difference is marked by a class and by text ("differs"), never by colour alone.
3. Patient data is on these pages only: nothing here logs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ...domain import errors
from ...domain.links import ACTING, LinkStatus
from ...domain.orders import ImagingRequest
from ...domain.scopes import LINKS_REVIEW
from ...mapping.matching import MatchResult
from ...services import audit
from ...services.links import LinkReview
from ...services.ports import OrderRecords
from ..auth.middleware import principal_of
from ..links_api import SHOWN, STATUSES, page_of, request_fields, statuses_of, study_fields, value
from .pages import PageRoute, Pages, form_fields

PAGE_SIZE = 50
STUDY_PAGE = "/ui/links/{study}"  # GET shows it; POST (change=confirm|unlink) changes its links
DEFAULT_STATUS = LinkStatus.AUTO_UNSURE.value
DONE = {"confirmed": "The study is now linked to the request you confirmed.",
        "unlinked": "The link was undone."}


@dataclass(frozen=True)
class Row:
    """One line of the side-by-side view."""

    field: str
    label: str
    request: str
    study: str
    differs: bool
    score: float | None  # None: not compared
    weight: float | None
    share: float | None  # weight × score / Σ compared weights: what it added to the confidence


def rows_of(request: ImagingRequest | None, study: dict[str, str], result: MatchResult | None) -> list[Row]:
    asked = request_fields(request) if request is not None else {}
    differences = {d.field: d for d in result.differences} if result else {}
    scores = {c.field: c for c in result.contributions} if result else {}
    total = sum(c.weight for c in scores.values() if c.compared)
    labels = [(s.field, s.label) for s in SHOWN] + [
        (f, f.replace("_", " ").capitalize()) for f in scores if f not in {s.field for s in SHOWN}]
    rows = []
    for field, label in labels:
        c, d = scores.get(field), differences.get(field)
        compared = c is not None and c.compared
        rows.append(Row(field, label, asked.get(field) or (d.request_value if d else ""),
                        study.get(field) or (d.study_value if d else ""), d is not None,
                        c.score if c and compared else None, c.weight if c else None,
                        c.weight * c.score / total if c and compared and total else None))
    return rows


def routes(pages: Pages, review: LinkReview, records: OrderRecords) -> list[PageRoute]:
    async def listing(request: Request) -> Response:
        chosen = request.query_params.get("status", DEFAULT_STATUS)
        try:
            statuses = statuses_of([chosen])
            offset, limit = page_of(request.query_params, PAGE_SIZE)
        except errors.InvalidInput as exc:
            return pages.message(request, 400, "Bad filter", exc.message)
        links, total = await records.links_page(statuses, offset, limit)
        patients = {}
        for link in links:
            found = await records.request(link.request_id)
            if found is not None:
                patients[link.request_id] = (value(found.attributes, "00100010"), found.patient_id)
                audit.touched(found.patient_id, link.study_uid)
        return pages.render(request, "links.html", links=links, patients=patients, chosen=chosen,
                            statuses=STATUSES, total=total, offset=offset,
                            older=offset + limit if offset + limit < total else None,
                            newer=max(0, offset - limit) if offset else None)

    async def study(request: Request) -> Response:
        study_uid = request.path_params["study"]
        try:
            document = await review.study(study_uid)
            candidates = await review.candidates(study_uid)
        except errors.NotFound as exc:
            return pages.message(request, 404, "Not found", exc.message)
        links = await records.links(study_uid=study_uid)
        current = [link for link in links if link.status != LinkStatus.UNLINKED.value]
        acting = next((link for link in current if link.status in ACTING), None)
        # The request asked for, else the one linked (acting first), else the best candidate.
        linked = acting or (current[0] if current else None)
        shown_id = (request.query_params.get("request") or (linked.request_id if linked else None)
                    or (candidates[0].request.request_id if candidates else None))
        chosen = next((c for c in candidates if c.request.request_id == shown_id), None)
        shown = chosen.request if chosen else (await records.request(shown_id) if shown_id else None)
        fields = study_fields(document)
        audit.touched(fields["patient_id"] or None, study_uid)
        if shown is not None:
            audit.touched(shown.patient_id, None)
        return pages.render(
            request, "links_study.html", study_uid=study_uid, study=fields, shown=shown,
            result=chosen.result if chosen else None, rows=rows_of(shown, fields, chosen.result if chosen else None),
            links={link.request_id: link for link in links}, current=current, acting=acting,
            others=[c for c in candidates if c.request.request_id != shown_id],
            names={c.request.request_id: value(c.request.attributes, "00100010") for c in candidates},
            history=await records.link_history(study_uid), done=DONE.get(request.query_params.get("done", "")))

    async def change(request: Request, unlinking: bool) -> Response:
        study_uid = request.path_params["study"]
        audit.touched(None, study_uid)
        form = await form_fields(request)
        request_id, reason = form.get("request", "").strip(), form.get("reason", "").strip()
        actor = principal_of(request).subject
        done = "unlinked" if unlinking else "confirmed"
        request.scope["state"]["audit_detail"] = f"{done} ServiceRequest/{request_id}"
        try:
            if not request_id:
                raise errors.InvalidInput("the form names no request")
            if unlinking:
                if not reason:
                    raise errors.BusinessRule("a reason is required to unlink")
                await review.unlink(study_uid, request_id, actor, reason)
            else:
                await review.confirm(study_uid, request_id, actor, reason or "confirmed")
        except errors.NotFound as exc:
            return pages.message(request, 404, "Not found", exc.message)
        except (errors.BusinessRule, errors.InvalidInput) as exc:
            return pages.message(request, 422, "Not done", exc.message)
        target = f"/ui/links/{quote(study_uid, safe='')}?" + urlencode({"request": request_id, "done": done})
        return pages.secured(RedirectResponse(target, 303))

    async def study_or_change(request: Request) -> Response:
        if request.method == "POST":
            request.scope["state"]["audit"] = ("links", "update", request.scope.get("root_path", "") + STUDY_PAGE)
            wanted = (await form_fields(request)).get("change")
            if wanted not in ("confirm", "unlink"):
                return pages.message(request, 400, "Not done", "The form asks for no known change.")
            return await change(request, unlinking=wanted == "unlink")
        return await study(request)

    def page(path: str, endpoint: Any, action: str, methods: tuple[str, ...] = ("GET",)) -> PageRoute:
        return PageRoute(path, endpoint, pages=pages, need=LINKS_REVIEW, door="links", action=action,
                         methods=methods, unbound_only=True)

    return [
        page("/ui/links", listing, "search"),
        page(STUDY_PAGE, study_or_change, "read", ("GET", "POST")),
    ]
