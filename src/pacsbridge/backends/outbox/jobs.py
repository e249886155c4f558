"""Notification jobs in the ``outbox_jobs`` table: enqueued with the change they announce, claimed under
a lease, and settled as done, retried or failed.

Rules:
1. ``enqueue`` runs in the caller's transaction: the jobs exist exactly when the change they announce
   was committed. One job per (notification, interested subscriber); each has its own idempotency key,
   which every delivery attempt carries.
2. Delivery is in order per subscriber: only a subscriber's oldest pending job may be claimed, and only
   when it is due and not leased. A head that is not yet due holds back that subscriber, nobody else.
3. A claim leases the job until ``locked_until`` (at least ``lease_s`` from now); a worker that dies
   leaves the lease to expire, and the job is claimed again with the same key. PostgreSQL claims with
   ``FOR UPDATE SKIP LOCKED`` on the head alone (a locked head means another worker is claiming it, so
   the next job is not taken out of order); SQLite claims under the writer lock.
4. ``retry`` and ``fail`` act only while the lease is still the claimer's: a worker whose lease ran out
   must not release the job from under the one that claimed it since.
5. Times are whole epoch seconds (the table's integers): leases and delays are rounded up, never down.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, and_, exists, func, insert, select, update
from sqlalchemy.orm import aliased

from ...domain.clock import utc_stamp
from ...services.ports import Notification
from ..http_client import Auth
from ..sql.engine import InThread
from ..sql.schema import outbox_jobs as t

FHIR_TOPICS = frozenset({"servicerequest.status", "imagingstudy.linked", "imagingstudy.unlinked"})
"""The topics a FHIR subscriber can take: their payload carries the ``resource`` to PUT."""

KINDS = ("webhook", "fhir")


@dataclass(frozen=True)
class Subscriber:
    """A system told about changes: by webhook (POST JSON to ``url``) or FHIR push (PUT to the FHIR base
    ``url``). ``topics`` narrows what it is sent (empty: every topic its kind handles); ``secret`` signs
    webhook bodies."""

    name: str
    kind: str
    url: str
    topics: frozenset[str] = frozenset()
    auth: Auth = field(default_factory=Auth)
    secret: str | None = field(default=None, repr=False)
    timeout_s: float = 10

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"subscriber {self.name}: kind must be one of {', '.join(KINDS)}, not {self.kind!r}")

    def wants(self, topic: str) -> bool:
        if self.kind == "fhir" and topic not in FHIR_TOPICS:
            return False
        return not self.topics or topic in self.topics


@dataclass(frozen=True)
class Job:
    """One notification for one subscriber, as stored."""

    id: int
    key: str
    subscriber: str
    topic: str
    payload: dict[str, Any]
    state: str  # pending | done | failed
    attempts: int
    next_attempt_at: int
    locked_until: int
    last_error: str | None
    created_at: str
    done_at: str | None = None


def enqueue(conn: Connection, notifications: Sequence[Notification], subscribers: Sequence[Subscriber],
            now: float | None = None) -> int:
    """Add one pending job per notification and interested subscriber, in the caller's transaction;
    returns how many."""
    due, created = math.floor(time.time() if now is None else now), utc_stamp()
    rows = [
        {"key": uuid.uuid4().hex, "subscriber": s.name, "topic": n.topic, "payload": json.dumps(n.payload),
         "state": "pending", "attempts": 0, "next_attempt_at": due, "locked_until": 0, "created_at": created}
        for n in notifications for s in subscribers if s.wants(n.topic)
    ]
    if rows:
        conn.execute(insert(t), rows)
    return len(rows)


class JobQueue:
    """The outbox table as a queue; ``clock`` (epoch seconds) is injectable for tests."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self._db = InThread(engine)
        self._skip_locked = engine.dialect.name == "postgresql"

    async def claim(self, subscriber: str, lease_s: float) -> Job | None:
        """Lease the subscriber's oldest pending job if it is due and not leased."""
        now = self.clock()
        head = aliased(t)
        earlier = exists().where(head.c.subscriber == subscriber, head.c.state == "pending", head.c.id < t.c.id)
        statement = (
            select(t)
            .where(t.c.subscriber == subscriber, t.c.state == "pending", ~earlier,
                   t.c.next_attempt_at <= math.floor(now), t.c.locked_until <= math.floor(now))
            .order_by(t.c.id).limit(1)
        )
        if self._skip_locked:
            statement = statement.with_for_update(skip_locked=True, of=t)
        until = math.ceil(now + lease_s)

        def work(conn: Connection) -> Job | None:
            row = conn.execute(statement).first()
            if row is None:
                return None
            conn.execute(update(t).where(t.c.id == row.id).values(locked_until=until))
            return _job(row._mapping, locked_until=until)

        return await self._db.write(work)

    async def done(self, job: Job) -> None:
        """Delivered (even if the lease ran out meanwhile: the subscriber has it)."""
        stamp = utc_stamp()
        await self._db.write(lambda conn: conn.execute(
            update(t).where(t.c.id == job.id, t.c.state == "pending").values(state="done", done_at=stamp)))

    async def retry(self, job: Job, error: str, delay_s: float) -> bool:
        """Try again after ``delay_s``; False when the lease was no longer ours (nothing changed)."""
        at = math.ceil(self.clock() + delay_s)
        return await self._settle(job, attempts=t.c.attempts + 1, next_attempt_at=at, locked_until=0,
                                  last_error=error[:2000])

    async def fail(self, job: Job, error: str) -> bool:
        """The subscriber refused the job for good; it waits for ``requeue``. False: lease lost."""
        return await self._settle(job, state="failed", attempts=t.c.attempts + 1, locked_until=0,
                                  last_error=error[:2000], done_at=utc_stamp())

    async def jobs(self, state: str | None = None, limit: int = 100) -> list[Job]:
        """The newest jobs (in ``state``), newest first: for an admin view."""
        statement = select(t).order_by(t.c.id.desc()).limit(limit)
        if state is not None:
            statement = statement.where(t.c.state == state)
        return await self._db.read(lambda conn: [_job(r._mapping) for r in conn.execute(statement)])

    async def requeue(self, ids: Iterable[int]) -> int:
        """Failed jobs back to pending, due now, attempts counted afresh; returns how many."""
        wanted, now = list(ids), math.floor(self.clock())
        if not wanted:
            return 0
        statement = (update(t).where(t.c.id.in_(wanted), t.c.state == "failed")
                     .values(state="pending", attempts=0, next_attempt_at=now, locked_until=0, done_at=None))
        return await self._db.write(lambda conn: int(conn.execute(statement).rowcount))

    async def pending_count(self, subscriber: str | None = None) -> int:
        statement = select(func.count()).select_from(t).where(t.c.state == "pending")
        if subscriber is not None:
            statement = statement.where(t.c.subscriber == subscriber)
        return await self._db.read(lambda conn: int(conn.execute(statement).scalar_one()))

    async def _settle(self, job: Job, **values: Any) -> bool:
        statement = (update(t).where(and_(t.c.id == job.id, t.c.state == "pending",
                                          t.c.locked_until == job.locked_until)).values(**values))
        return await self._db.write(lambda conn: conn.execute(statement).rowcount == 1)


def _job(row: Any, **over: Any) -> Job:
    values = {c: row[c] for c in ("id", "key", "subscriber", "topic", "state", "attempts", "next_attempt_at",
                                  "locked_until", "last_error", "created_at", "done_at")}
    values["payload"] = json.loads(row["payload"])
    values.update(over)
    return Job(**values)
