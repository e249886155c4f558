"""The admin API: the audit trail, as JSON or as FHIR R4 AuditEvent resources. Needs the ``admin`` scope.

GET /admin/audit              events, newest first (JSON)
GET /admin/audit/AuditEvent   the same as a FHIR searchset Bundle (application/fhir+json)
Both take patient, study, subject, door, since, until (ISO 8601 UTC), _count (at most 1000), _offset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..domain.audit import AuditFilter
from ..domain.scopes import ADMIN
from ..formats.fhir_audit import searchset
from ..services.ports import AuditTrail
from .auth.middleware import GuardedRoute, insufficient_scope, principal_of

MAX_COUNT = 1000


def routes(trail: AuditTrail) -> list[GuardedRoute]:
    async def events(request: Request) -> Response:
        query = _filter(request)
        if isinstance(query, Response):
            return query
        await trail.flush()  # what was just done is in the answer
        return JSONResponse([dataclasses.asdict(e) for e in await trail.search(query)])

    async def fhir(request: Request) -> Response:
        query = _filter(request)
        if isinstance(query, Response):
            return query
        await trail.flush()
        return JSONResponse(searchset(await trail.search(query)), media_type="application/fhir+json")

    def route(path: str, endpoint: Callable[[Request], Coroutine[Any, Any, Response]]) -> GuardedRoute:
        async def unbound(request: Request) -> Response:
            if principal_of(request).patient_ids is not None:  # a patient-bound token reads no trail
                return insufficient_scope(ADMIN)
            return await endpoint(request)

        return GuardedRoute(path, unbound, need=ADMIN, action="search")

    return [route("/admin/audit", events), route("/admin/audit/AuditEvent", fhir)]


def _filter(request: Request) -> AuditFilter | Response:
    try:
        return audit_filter(request.query_params)
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)


def audit_filter(q: Mapping[str, str], default_count: int = 100) -> AuditFilter:
    """The trail query of these parameters (shared by the API and the audit page); ValueError if bad."""
    try:
        count = int(q.get("_count") or default_count)
        offset = int(q.get("_offset") or 0)
    except ValueError:
        raise ValueError("_count and _offset must be integers") from None
    if not 0 < count <= MAX_COUNT or offset < 0:
        raise ValueError(f"_count must be 1..{MAX_COUNT}, _offset at least 0")

    def given(name: str) -> str | None:
        return (q.get(name) or "").strip() or None

    return AuditFilter(patient_id=given("patient"), study_uid=given("study"), subject=given("subject"),
                       door=given("door"), since=given("since"), until=given("until"), limit=count, offset=offset)
