"""The pages a signed-in user starts from: who am I and what may I do (``/ui/``), and, for admins,
the audit trail (``/ui/audit``, with a FHIR AuditEvent export of the same filter)."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from ...domain.scopes import ADMIN, DOOR_SCOPES
from ...formats.fhir_audit import searchset
from ...services.ports import AuditTrail
from ..admin import audit_filter
from ..auth.middleware import principal_of
from .pages import PageRoute, Pages

PAGE_SIZE = 50


def routes(pages: Pages, trail: AuditTrail) -> list[PageRoute]:
    async def home(request: Request) -> Response:
        principal = principal_of(request)
        return pages.render(request, "home.html", scopes=sorted(principal.scopes), door_scopes=DOOR_SCOPES,
                            is_admin=principal.allows(ADMIN) and principal.patient_ids is None)

    async def audit(request: Request) -> Response:
        try:
            query = audit_filter(request.query_params, PAGE_SIZE)
        except ValueError as exc:
            return pages.message(request, 400, "Bad filter", str(exc))
        await trail.flush()
        events = await trail.search(query)
        params = {k: v for k, v in request.query_params.items() if v and k != "_offset"}
        return pages.render(request, "audit.html", events=events, query=query, params=params,
                            older=query.offset + query.limit if len(events) == query.limit else None,
                            newer=max(0, query.offset - query.limit) if query.offset else None)

    async def export(request: Request) -> Response:
        try:
            query = audit_filter(request.query_params, 1000)
        except ValueError as exc:
            return pages.message(request, 400, "Bad filter", str(exc))
        await trail.flush()
        bundle = searchset(await trail.search(query))
        return pages.secured(Response(json.dumps(bundle, indent=1), media_type="application/fhir+json", headers={
            "Content-Disposition": 'attachment; filename="pacsbridge-audit.json"'}))

    return [
        PageRoute("/ui/", home, pages=pages),
        PageRoute("/ui/audit", audit, pages=pages, need=ADMIN, door="admin", action="search", unbound_only=True),
        PageRoute("/ui/audit/export", export, pages=pages, need=ADMIN, door="admin", action="search",
                  unbound_only=True),
    ]
