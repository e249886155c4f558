"""The admin API: the audit trail, as JSON or as FHIR R4 AuditEvent resources. Needs the ``admin`` scope.

GET /admin/audit              events, newest first (JSON)
GET /admin/audit/AuditEvent   the same as a FHIR searchset Bundle (application/fhir+json)
Both take patient, study, subject, door, since, until (ISO 8601 UTC), _count (at most 1000), _offset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Coroutine
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
    q = request.query_params
    try:
        count = int(q.get("_count", "100"))
        offset = int(q.get("_offset", "0"))
    except ValueError:
        return JSONResponse({"error": "_count and _offset must be integers"}, status_code=400)
    if not 0 < count <= MAX_COUNT or offset < 0:
        return JSONResponse({"error": f"_count must be 1..{MAX_COUNT}, _offset at least 0"}, status_code=400)
    return AuditFilter(patient_id=q.get("patient"), study_uid=q.get("study"), subject=q.get("subject"),
                       door=q.get("door"), since=q.get("since"), until=q.get("until"), limit=count, offset=offset)
