"""Records one audit event for every request that reached a guarded route or was refused a token.

The event says who (the principal from the access middleware), which door, action and route
template, the HTTP status, and the patients and studies the use cases noted (``services.audit``).
It is queued, never awaited: the trail writes behind the requests.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...domain.access import ANONYMOUS, Principal
from ...domain.audit import AuditEvent
from ...domain.clock import utc_stamp
from ...services import audit
from ...services.ports import AuditTrail


class AuditMiddleware:
    def __init__(self, app: ASGIApp, trail: AuditTrail) -> None:
        self.app = app
        self.trail = trail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        status = 500

        async def watching(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with audit.noting() as note:
            try:
                await self.app(scope, receive, watching)
            finally:
                state = scope.get("state", {})
                reached = state.get("audit")
                if reached is not None or status in (401, 403):
                    door, action, route = reached or ("http", _action(scope["method"]), scope["path"])
                    principal: Principal = state.get("principal", ANONYMOUS)
                    client = scope.get("client")
                    query = scope.get("query_string", b"").decode("latin-1")
                    self.trail.record(AuditEvent(
                        recorded_at=utc_stamp(),
                        subject=principal.subject, client_id=principal.client_id, door=door, action=action,
                        method=scope["method"], route=route, status=status,
                        patient_ids=tuple(sorted(note.patient_ids)), study_uids=tuple(sorted(note.study_uids)),
                        remote=client[0] if client else None,
                        detail=state.get("audit_detail") or (query if action == "search" and query else None),
                    ))


def _action(method: str) -> str:
    return {"POST": "create", "PUT": "update", "PATCH": "update", "DELETE": "delete"}.get(method, "read")
