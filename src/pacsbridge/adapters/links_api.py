"""The link review API: which studies are linked to which requests, why, and a person's changes.

See: docs/matching.md "Reviewing links"; ``services.links`` (the use case, shared with the review pages).

GET  /api/links?status=auto-unsure&offset=0&limit=50   links, newest first (``status`` repeatable; none: all)
GET  /api/links/studies/{study}                        the study's links, history and candidates
POST /api/links/studies/{study}/confirm                ``{"request": id, "reason": text}``
POST /api/links/studies/{study}/unlink                 ``{"request": id, "reason": text}`` (reason required)

Rules:
1. One scope, ``links.review``, for reading and changing; tokens bound to a patient are refused (403).
2. The person acting is the token's subject; every change is audited (door ``links``, action ``update``).
3. Core errors are translated here once: unknown study or request 404, a business rule 422, bad input 400.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..domain import errors
from ..domain.links import LinkStatus
from ..domain.model import DicomJson
from ..domain.orders import ImagingRequest
from ..domain.scopes import LINKS_REVIEW
from ..services import audit
from ..services.links import LinkReview
from ..services.matching import Candidate
from ..services.ports import LinkEvent, OrderRecords, StudyLink
from .auth.middleware import GuardedRoute, insufficient_scope, principal_of

MAX_LIMIT = 500
STATUSES = tuple(s.value for s in LinkStatus)
STATUS = {errors.NotFound: 404, errors.BusinessRule: 422, errors.InvalidInput: 400, errors.Conflict: 409}


@dataclass(frozen=True)
class Shown:
    """One compared attribute as a person reads it: the matching field it belongs to, and its label."""

    field: str
    label: str
    request: Callable[[ImagingRequest], str]
    study: Callable[[DicomJson], str]


def value(item: DicomJson, tag: str) -> str:
    """A DICOM JSON attribute as text (person names by their alphabetic group, several values by ``\\``)."""
    values = (item.get(tag) or {}).get("Value") or []
    return "\\".join(str(v.get("Alphabetic", "")) if isinstance(v, dict) else str(v) for v in values if v is not None)


def _step(request: ImagingRequest, tag: str) -> str:
    return "\\".join(dict.fromkeys(v for s in request.steps if (v := value(s.item, tag)))) if request.steps else ""


def _attr(tag: str) -> Callable[[ImagingRequest], str]:
    return lambda r: value(r.attributes, tag)


def _study(*tags: str) -> Callable[[DicomJson], str]:
    return lambda d: next((v for t in tags if (v := value(d, t))), "")


SHOWN = (
    Shown("patient_name", "Patient name", _attr("00100010"), _study("00100010")),
    Shown("patient_id", "Patient ID", _attr("00100020"), _study("00100020")),
    Shown("birth_date", "Birth date", _attr("00100030"), _study("00100030")),
    Shown("sex", "Sex", _attr("00100040"), _study("00100040")),
    Shown("accession", "Accession number", _attr("00080050"), _study("00080050")),
    Shown("modality", "Modality", lambda r: _step(r, "00080060"), _study("00080061", "00080060")),
    Shown("scheduled_date", "Date (scheduled / performed)", lambda r: _step(r, "00400002"), _study("00080020")),
    Shown("procedure_description", "Description", _attr("00321060"), _study("00081030")),
    Shown("referring_physician", "Referring physician", _attr("00080090"), _study("00080090")),
    Shown("performing_physician", "Performing physician", lambda r: _step(r, "00400006"), _study("00081050")),
)


def request_fields(request: ImagingRequest) -> dict[str, str]:
    return {s.field: s.request(request) for s in SHOWN}


def study_fields(document: DicomJson) -> dict[str, str]:
    return {s.field: s.study(document) for s in SHOWN}


def candidate_json(candidate: Candidate) -> dict[str, Any]:
    request, result = candidate.request, candidate.result
    return {
        "request": request.request_id, "request_status": request.status.value,
        "confidence": result.confidence, "decision": result.decision, "vetoes": list(result.vetoes),
        "contributions": [{"field": c.field, "weight": c.weight, "score": c.score, "compared": c.compared}
                          for c in result.contributions],
        "differences": [{"field": d.field, "request": d.request_value, "study": d.study_value}
                        for d in result.differences],
        "fields": request_fields(request),
    }


def link_json(link: StudyLink, last: LinkEvent | None = None) -> dict[str, Any]:
    """A link; with its last event, also who made it so and why (the link row keeps neither)."""
    out: dict[str, Any] = {"study": link.study_uid, "request": link.request_id, "status": link.status,
                           "confidence": link.confidence, "linked_at": link.linked_at}
    if last is not None:
        out.update(actor=last.actor, reason=last.reason, differences=list(link.differences))
    return out


def event_json(event: LinkEvent) -> dict[str, Any]:
    return {"request": event.request_id, "status": event.status, "actor": event.actor, "at": event.at,
            "reason": event.reason, "confidence": event.confidence}


def statuses_of(values: Sequence[str]) -> list[str] | None:
    """The statuses asked for (comma-separated or repeated; none or ``all``: every status)."""
    wanted = [s.strip() for v in values for s in v.split(",") if s.strip()]
    if not wanted or "all" in wanted:
        return None
    unknown = [s for s in wanted if s not in STATUSES]
    if unknown:
        raise errors.InvalidInput(f"unknown link status {unknown[0]!r}: one of {', '.join(STATUSES)}")
    return wanted


def page_of(query: Mapping[str, str], default_limit: int = 50) -> tuple[int, int]:
    try:
        offset, limit = int(query.get("offset") or 0), int(query.get("limit") or default_limit)
    except ValueError:
        raise errors.InvalidInput("offset and limit must be integers") from None
    if offset < 0 or not 0 < limit <= MAX_LIMIT:
        raise errors.InvalidInput(f"offset must be at least 0, limit 1..{MAX_LIMIT}")
    return offset, limit


async def study_detail(review: LinkReview, records: OrderRecords, study_uid: str) -> dict[str, Any]:
    """Everything a person needs to decide on a study's links (NotFound for an unknown study)."""
    document = await review.study(study_uid)
    links = await records.links(study_uid=study_uid)
    candidates = await review.candidates(study_uid)
    history = await records.link_history(study_uid)
    last = {e.request_id: e for e in history}  # oldest first: the last one wins
    audit.touched(value(document, "00100020") or None, study_uid)
    return {"study": {"uid": study_uid, "fields": study_fields(document)},
            "links": [link_json(link, last.get(link.request_id)) for link in links],
            "history": [event_json(e) for e in history],
            "candidates": [candidate_json(c) for c in candidates]}


def routes(review: LinkReview, records: OrderRecords) -> list[GuardedRoute]:
    async def listing(request: Request) -> Response:
        statuses = statuses_of(request.query_params.getlist("status"))
        offset, limit = page_of(request.query_params)
        links, total = await records.links_page(statuses, offset, limit)
        return JSONResponse({"total": total, "offset": offset, "limit": limit,
                             "links": [link_json(link) for link in links]})

    async def detail(request: Request) -> Response:
        return JSONResponse(await study_detail(review, records, request.path_params["study"]))

    async def for_request(request: Request) -> Response:
        request_id = request.path_params["request"]
        found = await review.studies_for(request_id)
        return JSONResponse({"request": request_id, "studies": [
            {"study": study_uid, "confidence": result.confidence, "decision": result.decision,
             "vetoes": list(result.vetoes),
             "differences": [{"field": d.field, "request": d.request_value, "study": d.study_value}
                             for d in result.differences]} for study_uid, result in found]})

    async def confirm(request: Request) -> Response:
        study_uid = request.path_params["study"]
        audit.touched(None, study_uid)
        request_id, reason = await _change(request)
        request.scope["state"]["audit_detail"] = f"confirmed ServiceRequest/{request_id}"
        await review.confirm(study_uid, request_id, principal_of(request).subject, reason or "confirmed")
        return JSONResponse(await study_detail(review, records, study_uid))

    async def unlink(request: Request) -> Response:
        study_uid = request.path_params["study"]
        audit.touched(None, study_uid)
        request_id, reason = await _change(request)
        if not reason:
            raise errors.BusinessRule("a reason is required to unlink")
        request.scope["state"]["audit_detail"] = f"unlinked ServiceRequest/{request_id}"
        await review.unlink(study_uid, request_id, principal_of(request).subject, reason)
        return JSONResponse(await study_detail(review, records, study_uid))

    def route(path: str, endpoint: Callable[[Request], Awaitable[Response]], action: str,
              methods: Sequence[str] = ("GET",)) -> GuardedRoute:
        async def answered(request: Request) -> Response:
            if principal_of(request).patient_ids is not None:  # rule 1: links span patients
                return insufficient_scope(LINKS_REVIEW)
            try:
                return await endpoint(request)
            except errors.PacsbridgeError as exc:  # rule 3
                status = next((STATUS[k] for k in type(exc).__mro__ if k in STATUS), 500)
                return JSONResponse({"status": status, "error": exc.message}, status_code=status)

        return GuardedRoute(path, answered, need=LINKS_REVIEW, action=action, methods=methods)

    return [
        route("/api/links", listing, "search"),
        route("/api/links/studies/{study}", detail, "read"),
        route("/api/links/requests/{request}", for_request, "read"),
        route("/api/links/studies/{study}/confirm", confirm, "update", ("POST",)),
        route("/api/links/studies/{study}/unlink", unlink, "update", ("POST",)),
    ]


async def _change(request: Request) -> tuple[str, str]:
    """The request id and the reason of a confirm or unlink body."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise errors.InvalidInput("the body must be JSON: {\"request\": id, \"reason\": text}") from None
    if not isinstance(body, dict) or not isinstance(body.get("request"), str) or not body["request"]:
        raise errors.InvalidInput("the body must name the request: {\"request\": id, \"reason\": text}")
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise errors.InvalidInput("reason must be text")
    return body["request"], (reason or "").strip()
