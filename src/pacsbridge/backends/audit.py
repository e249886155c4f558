"""The audit trail in the SQL database (``AuditTrail``), written behind the requests in small batches.

Rules:
1. ``record`` only queues: a request never waits for the audit write. A background task writes the
   queue every ``interval_s`` in one transaction; ``flush`` (called at shutdown) writes what is left.
   Events are lost only if the process dies within that window.
2. A failed write keeps the events queued and is retried on the next round; the queue is bounded
   (``max_queue``), and overflow is logged as an error with the count, never silently.
"""

from __future__ import annotations

import json
import logging
from collections import deque

import anyio
from sqlalchemy import Engine, insert, select

from ..domain.audit import AuditEvent, AuditFilter
from ..domain.errors import without_values
from .sql import schema
from .sql.engine import InThread

log = logging.getLogger(__name__)


class SqlAuditTrail:
    def __init__(self, engine: Engine, interval_s: float = 0.5, max_queue: int = 100_000) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.max_queue = max_queue
        self._queue: deque[AuditEvent] = deque()
        self._db = InThread(engine)
        self._lock = anyio.Lock()
        self._dropped = 0

    def record(self, event: AuditEvent) -> None:
        if len(self._queue) >= self.max_queue:
            self._dropped += 1
            return
        self._queue.append(event)

    async def run(self) -> None:
        """Write the queue every ``interval_s`` until cancelled (the app's lifespan owns this task)."""
        while True:
            await anyio.sleep(self.interval_s)
            try:
                await self.flush()
            except Exception as exc:  # the events hold patient IDs, and a driver's message may repeat them
                log.error("writing the audit trail failed (%s); %d event(s) stay queued", without_values(exc),
                          len(self._queue))

    async def flush(self) -> None:
        async with self._lock:
            if self._dropped:
                log.error("the audit queue was full: %d event(s) were not recorded", self._dropped)
                self._dropped = 0
            batch = list(self._queue)
            if not batch:
                return
            rows = [_row(e) for e in batch]
            await self._db.write(lambda conn: conn.execute(insert(schema.audit_events), rows))
            for _ in batch:
                self._queue.popleft()

    async def search(self, query: AuditFilter) -> list[AuditEvent]:
        t = schema.audit_events
        statement = select(t)
        if query.patient_id:
            statement = statement.where(t.c.patient_ids.like(_contains(query.patient_id), escape="\\"))
        if query.study_uid:
            statement = statement.where(t.c.study_uids.like(_contains(query.study_uid), escape="\\"))
        if query.subject:
            statement = statement.where(t.c.subject == query.subject)
        if query.door:
            statement = statement.where(t.c.door == query.door)
        if query.since:
            statement = statement.where(t.c.recorded_at >= query.since)
        if query.until:
            statement = statement.where(t.c.recorded_at < query.until)
        statement = statement.order_by(t.c.id.desc()).limit(query.limit).offset(query.offset)

        return await self._db.read(lambda conn: [_event(r) for r in conn.execute(statement)])


def _contains(value: str) -> str:
    """A LIKE pattern matching a JSON list that holds exactly this string."""
    quoted = json.dumps(value)
    return "%" + quoted.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _row(e: AuditEvent) -> dict[str, object]:
    return {
        "recorded_at": e.recorded_at, "subject": e.subject[:256], "client_id": e.client_id, "door": e.door,
        "action": e.action, "method": e.method, "route": e.route[:512], "status": e.status,
        "patient_ids": json.dumps(sorted(e.patient_ids)), "study_uids": json.dumps(sorted(e.study_uids)),
        "remote": e.remote, "detail": e.detail,
    }


def _event(r: object) -> AuditEvent:
    row = r._mapping  # type: ignore[attr-defined]
    return AuditEvent(
        recorded_at=row["recorded_at"], subject=row["subject"], client_id=row["client_id"], door=row["door"],
        action=row["action"], method=row["method"], route=row["route"], status=row["status"],
        patient_ids=tuple(json.loads(row["patient_ids"])), study_uids=tuple(json.loads(row["study_uids"])),
        remote=row["remote"], detail=row["detail"], id=row["id"],
    )


