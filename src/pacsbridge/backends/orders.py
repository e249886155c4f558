"""Our records of the order loop in the SQL database (``OrderRecords``): the FHIR resources we hold, imaging
requests and their steps, MPPS instances, study links, handled arrivals, and the outbox jobs that tell
subscribers about them. The tables come with the index's migrations (v6).

Rules:
1. ``commit`` is the only writer, and it writes a whole ``OrderChange`` in one transaction together
   with its outbox jobs: a change is never recorded without its notifications, nor the reverse.
2. A resource version is written only over the version its writer read (``ResourceWrite.expected``);
   a concurrent writer makes the later commit fail with ``Conflict``, and the use case starts over.
3. Searches over resources run on ``fhir_search_index`` rows (``search_index.py``) and read the current
   versions; history keeps every version, deletions included.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Table, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from ..domain.clock import utc_stamp
from ..domain.errors import Conflict
from ..domain.links import ACTING
from ..domain.orders import ImagingRequest, RequestStatus, ScheduledStep, StepStatus
from ..services.ports import (
    LinkEvent,
    Notification,
    OrderChange,
    PerformedStep,
    ResourceVersion,
    ResourceWrite,
    StudyLink,
    WorklistFilter,
)
from .sql import schema
from .sql.engine import InThread
from .sql.fhir_search import search_resources

Enqueue = Callable[[Connection, Sequence[Notification]], object]

OPEN_STEPS = (StepStatus.SCHEDULED.value, StepStatus.IN_PROGRESS.value)


class SqlOrderRecords:
    """``OrderRecords`` over the index database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, enqueue: Enqueue | None = None,
                 after_commit: Callable[[OrderChange], Awaitable[None]] | None = None) -> None:
        """``enqueue`` writes the outbox jobs of a change's notifications inside its transaction;
        ``after_commit`` is awaited once a change is committed (it wakes the outbox, writes worklist files)."""
        self.engine = engine
        self._db = InThread(engine)
        self._enqueue = enqueue
        self._after_commit = after_commit

    # --- the one writer ---------------------------------------------------------------------------

    async def commit(self, change: OrderChange) -> None:
        def work(conn: Connection) -> None:
            for write in change.resources:
                _write_resource(conn, write)
            if change.request is not None:
                _write_request(conn, change.request)
                if change.request_keys is not None:
                    _write_keys(conn, change.request.request_id, change.request_keys)
            if change.performed is not None:
                _write_performed(conn, change.performed)
            if change.link is not None:
                _write_link(conn, change.link)
            if change.study_keys is not None:
                _write_study_keys(conn, *change.study_keys)
            if change.arrival is not None:
                _write_arrival(conn, *change.arrival)
            if change.match_pending is not None and change.request is not None:
                _put(conn, schema.pending_matches, {"request_id": change.request.request_id},
                     {"since": change.match_pending})
            if change.matched is not None:
                t = schema.pending_matches
                conn.execute(delete(t).where(t.c.request_id == change.matched[0], t.c.since == change.matched[1]))
            if change.notifications and self._enqueue is not None:
                self._enqueue(conn, change.notifications)

        try:
            await self._db.write(work)
        except IntegrityError as exc:
            raise Conflict("another change was recorded at the same time; try again") from exc
        if self._after_commit is not None:
            await self._after_commit(change)

    # --- FHIR resources ---------------------------------------------------------------------------

    async def resource(self, type_: str, id_: str, version: int | None = None) -> ResourceVersion | None:
        if version is None:
            t = schema.fhir_resources
            row = await self._db.read(lambda c: c.execute(
                select(t).where(t.c.type == type_, t.c.id == id_)).first())
            if row is None:
                return None
            return ResourceVersion(row.type, row.id, row.version, row.last_updated, _json(row.resource),
                                   "DELETE" if row.deleted else "PUT")
        h = schema.fhir_history
        row = await self._db.read(lambda c: c.execute(
            select(h).where(h.c.type == type_, h.c.id == id_, h.c.version == version)).first())
        return _version(row) if row is not None else None

    async def history(self, type_: str, id_: str) -> list[ResourceVersion]:
        h = schema.fhir_history
        rows = await self._db.read(lambda c: c.execute(
            select(h).where(h.c.type == type_, h.c.id == id_).order_by(h.c.version.desc())).all())
        return [_version(r) for r in rows]

    async def find_resources(self, type_: str, where: Sequence[Any], sort: Sequence[tuple[str, bool]],
                             offset: int, count: int) -> tuple[list[ResourceVersion], int]:
        def work(conn: Connection) -> tuple[list[ResourceVersion], int]:
            rows, total = search_resources(conn, type_, where, sort, offset, count)
            return [ResourceVersion(r.type, r.id, r.version, r.last_updated, _json(r.resource)) for r in rows], total

        return await self._db.read(work)

    # --- requests and steps -----------------------------------------------------------------------

    async def request(self, request_id: str) -> ImagingRequest | None:
        found = await self._db.read(lambda c: _requests(c, schema.imaging_requests.c.request_id == request_id))
        return found[0] if found else None

    async def requests_for(self, *, sps_ids: Sequence[str] = (), accession_numbers: Sequence[str] = (),
                           study_uids: Sequence[str] = ()) -> list[ImagingRequest]:
        r, s = schema.imaging_requests, schema.procedure_steps
        conditions = []
        if sps_ids:
            conditions.append(r.c.request_id.in_(select(s.c.request_id).where(s.c.sps_id.in_(list(sps_ids)))))
        if accession_numbers:
            conditions.append(r.c.accession_number.in_(list(accession_numbers)))
        if study_uids:
            conditions.append(r.c.study_uid.in_(list(study_uids)))
        if not conditions:
            return []
        return await self._db.read(lambda c: _requests(c, or_(*conditions)))

    async def worklist(self, where: WorklistFilter) -> list[tuple[ImagingRequest, ScheduledStep]]:
        r, s = schema.imaging_requests, schema.procedure_steps
        conditions = [r.c.status == RequestStatus.ACTIVE.value, s.c.status.in_(OPEN_STEPS)]
        if where.station_ae is not None:
            conditions.append(s.c.station_ae == where.station_ae)
        if where.modality is not None:
            conditions.append(s.c.modality == where.modality)
        if where.date_low is not None:
            conditions.append(s.c.start_date >= where.date_low)
        if where.date_high is not None:
            conditions.append(s.c.start_date <= where.date_high)
        if where.patient_id is not None:
            conditions.append(r.c.patient_id == where.patient_id)
        if where.accession_number is not None:
            conditions.append(r.c.accession_number == where.accession_number)

        def work(conn: Connection) -> list[tuple[ImagingRequest, ScheduledStep]]:
            ids = select(s.c.request_id).join(r, r.c.request_id == s.c.request_id).where(and_(*conditions))
            requests = _requests(conn, r.c.request_id.in_(ids))
            out = []
            for request in requests:
                for step in request.steps:
                    if step.status.value in OPEN_STEPS and _passes(step, where):
                        out.append((request, step))
            return out

        return await self._db.read(work)

    async def requests_by_keys(self, keys: Sequence[str]) -> list[ImagingRequest]:
        if not keys:
            return []
        r, k = schema.imaging_requests, schema.request_keys
        ids = select(k.c.request_id).where(k.c.key.in_(list(keys)))
        live = (RequestStatus.ACTIVE.value, RequestStatus.COMPLETED.value)
        return await self._db.read(lambda c: _requests(c, and_(r.c.request_id.in_(ids), r.c.status.in_(live))))

    async def studies_by_keys(self, keys: Sequence[str]) -> list[str]:
        if not keys:
            return []
        k, links = schema.study_keys, schema.study_links
        acting = select(links.c.study_uid).where(links.c.status.in_(sorted(ACTING)))
        query = (select(k.c.study_uid).where(k.c.key.in_(list(keys)), k.c.study_uid.not_in(acting))
                 .distinct().order_by(k.c.study_uid))
        return list(await self._db.read(lambda c: c.execute(query).scalars().all()))

    async def pending_matches(self, limit: int) -> list[tuple[str, str]]:
        t = schema.pending_matches
        query = select(t.c.request_id, t.c.since).order_by(t.c.since, t.c.request_id).limit(limit)
        return [(r.request_id, r.since) for r in await self._db.read(lambda c: c.execute(query).all())]

    async def link_history(self, study_uid: str) -> list[LinkEvent]:
        t = schema.study_link_events
        rows = await self._db.read(lambda c: c.execute(
            select(t).where(t.c.study_uid == study_uid).order_by(t.c.id)).all())
        return [LinkEvent(r.study_uid, r.request_id, r.status, r.actor, r.at, r.reason,
                          float(r.confidence) if r.confidence is not None else None) for r in rows]

    # --- MPPS, links, arrivals --------------------------------------------------------------------

    async def performed(self, sop_uid: str) -> PerformedStep | None:
        t = schema.performed_steps
        row = await self._db.read(lambda c: c.execute(select(t).where(t.c.sop_uid == sop_uid)).first())
        if row is None:
            return None
        return PerformedStep(row.sop_uid, row.status, row.calling_ae, tuple(json.loads(row.sps_ids)),
                             json.loads(row.attributes), row.created_at, row.updated_at)

    async def links(self, *, study_uid: str | None = None, request_id: str | None = None) -> list[StudyLink]:
        t = schema.study_links
        query = select(t).order_by(t.c.linked_at, t.c.request_id)
        if study_uid is not None:
            query = query.where(t.c.study_uid == study_uid)
        if request_id is not None:
            query = query.where(t.c.request_id == request_id)
        rows = await self._db.read(lambda c: c.execute(query).all())
        return [_link(r) for r in rows]

    async def links_page(self, statuses: Sequence[str] | None, offset: int, limit: int
                         ) -> tuple[list[StudyLink], int]:
        t = schema.study_links
        where = t.c.status.in_(list(statuses)) if statuses is not None else t.c.study_uid.is_not(None)

        def work(conn: Connection) -> tuple[list[StudyLink], int]:
            total = int(conn.execute(select(func.count()).select_from(t).where(where)).scalar_one())
            rows = conn.execute(select(t).where(where).order_by(t.c.linked_at.desc(), t.c.study_uid)
                                .offset(offset).limit(limit)).all()
            return [_link(r) for r in rows], total

        return await self._db.read(work)

    async def settled_studies(self, quiet_since: str, limit: int) -> list[tuple[str, str]]:
        st, a = schema.studies, schema.study_arrivals
        query = (select(st.c.study_uid, st.c.updated_at)
                 .select_from(st.outerjoin(a, a.c.study_uid == st.c.study_uid))
                 .where(st.c.updated_at <= quiet_since,
                        or_(a.c.study_uid.is_(None), a.c.seen_updated_at < st.c.updated_at))
                 .order_by(st.c.updated_at).limit(limit))
        rows = await self._db.read(lambda c: c.execute(query).all())
        return [(r.study_uid, r.updated_at) for r in rows]


# --- writes (inside the commit's transaction) ---------------------------------------------------------

def _write_resource(conn: Connection, write: ResourceWrite) -> None:
    v = write.version
    t, h, ix = schema.fhir_resources, schema.fhir_history, schema.fhir_search_index
    text = json.dumps(v.resource, separators=(",", ":"), ensure_ascii=False) if v.resource is not None else None
    deleted = int(v.resource is None)
    if write.expected == 0:
        current = conn.execute(select(t.c.version).where(t.c.type == v.type, t.c.id == v.id)).scalar()
        if current is not None:
            raise Conflict(f"{v.type}/{v.id} exists already")
        conn.execute(insert(t).values(type=v.type, id=v.id, version=v.version, last_updated=v.last_updated,
                                      deleted=deleted, resource=text))
    else:
        done = conn.execute(update(t).where(t.c.type == v.type, t.c.id == v.id, t.c.version == write.expected)
                            .values(version=v.version, last_updated=v.last_updated, deleted=deleted, resource=text))
        if done.rowcount != 1:
            raise Conflict(f"{v.type}/{v.id} changed meanwhile")
    conn.execute(insert(h).values(type=v.type, id=v.id, version=v.version, last_updated=v.last_updated,
                                  method=v.method, resource=text))
    conn.execute(delete(ix).where(ix.c.type == v.type, ix.c.id == v.id))
    if write.index and v.resource is not None:
        conn.execute(insert(ix), [{"type": v.type, "id": v.id, "param": e.param, "system": e.system,
                                   "value": e.value, "low": e.low, "high": e.high} for e in write.index])


def _write_request(conn: Connection, request: ImagingRequest) -> None:
    r, s = schema.imaging_requests, schema.procedure_steps
    values = {"status": request.status.value, "accession_number": request.accession_number,
              "requested_procedure_id": request.requested_procedure_id, "study_uid": request.study_uid,
              "patient_id": request.patient_id, "attributes": _dump(request.attributes), "updated_at": utc_stamp()}
    _put(conn, r, {"request_id": request.request_id}, values)
    conn.execute(delete(s).where(s.c.request_id == request.request_id))
    if request.steps:
        conn.execute(insert(s), [
            {"sps_id": step.sps_id, "request_id": request.request_id, "position": i, "status": step.status.value,
             "station_ae": step.station_ae, "modality": step.modality, "start_date": step.start_date,
             "start_time": step.start_time, "item": _dump(step.item)}
            for i, step in enumerate(request.steps)])


def _write_performed(conn: Connection, p: PerformedStep) -> None:
    t = schema.performed_steps
    values = {"status": p.status, "calling_ae": p.calling_ae, "sps_ids": json.dumps(list(p.sps_ids)),
              "attributes": _dump(p.attributes), "created_at": p.created_at, "updated_at": p.updated_at}
    _put(conn, t, {"sop_uid": p.sop_uid}, values)


def _write_link(conn: Connection, link: StudyLink) -> None:
    t = schema.study_links
    values = {"status": link.status, "linked_at": link.linked_at,
              "confidence": None if link.confidence is None else repr(link.confidence),
              "differences": json.dumps(list(link.differences)) if link.differences else None}
    _put(conn, t, {"study_uid": link.study_uid, "request_id": link.request_id}, values)
    conn.execute(insert(schema.study_link_events).values(
        study_uid=link.study_uid, request_id=link.request_id, status=link.status, actor=link.actor,
        reason=link.reason, confidence=values["confidence"], at=link.linked_at))


def _write_study_keys(conn: Connection, study_uid: str, keys: Sequence[str]) -> None:
    _replace_keys(conn, schema.study_keys, "study_uid", study_uid, keys)


def _write_keys(conn: Connection, request_id: str, keys: Sequence[str]) -> None:
    _replace_keys(conn, schema.request_keys, "request_id", request_id, keys)


def _replace_keys(conn: Connection, table: Table, owner_column: str, owner: str, keys: Sequence[str]) -> None:
    """The blocking keys of a request or a study, in place of those it had."""
    conn.execute(delete(table).where(table.c[owner_column] == owner))
    if keys:
        conn.execute(insert(table), [{owner_column: owner, "key": key[:200]} for key in sorted(set(keys))])


def _write_arrival(conn: Connection, study_uid: str, seen: str) -> None:
    _put(conn, schema.study_arrivals, {"study_uid": study_uid}, {"seen_updated_at": seen, "handled_at": utc_stamp()})


def _put(conn: Connection, table: Table, key: dict[str, str], values: dict[str, Any]) -> None:
    """Update the row with this primary key, or insert it (the same statements in SQLite and PostgreSQL;
    a concurrent insert of the same key makes the commit fail with Conflict)."""
    where = [table.c[column] == value for column, value in key.items()]
    if not conn.execute(update(table).where(*where).values(**values)).rowcount:
        conn.execute(insert(table).values(**key, **values))


# --- reads ------------------------------------------------------------------------------------------

def _requests(conn: Connection, where: Any) -> list[ImagingRequest]:
    r, s = schema.imaging_requests, schema.procedure_steps
    rows = conn.execute(select(r).where(where).order_by(r.c.request_id)).all()
    if not rows:
        return []
    ids = [row.request_id for row in rows]
    steps: dict[str, list[ScheduledStep]] = {i: [] for i in ids}
    for st in conn.execute(select(s).where(s.c.request_id.in_(ids)).order_by(s.c.request_id, s.c.position)).all():
        steps[st.request_id].append(ScheduledStep(
            sps_id=st.sps_id, status=StepStatus(st.status), station_ae=st.station_ae, modality=st.modality,
            start_date=st.start_date, start_time=st.start_time, item=json.loads(st.item)))
    return [ImagingRequest(
        request_id=row.request_id, status=RequestStatus(row.status), accession_number=row.accession_number,
        requested_procedure_id=row.requested_procedure_id, study_uid=row.study_uid, patient_id=row.patient_id,
        attributes=json.loads(row.attributes), steps=tuple(steps[row.request_id])) for row in rows]


def _link(r: Any) -> StudyLink:
    confidence = float(r.confidence) if r.confidence is not None else None
    return StudyLink(r.study_uid, r.request_id, r.status, r.linked_at, confidence,
                     tuple(json.loads(r.differences or "[]")))


def _passes(step: ScheduledStep, where: WorklistFilter) -> bool:
    if where.station_ae is not None and step.station_ae != where.station_ae:
        return False
    if where.modality is not None and step.modality != where.modality:
        return False
    date = step.start_date or ""
    if where.date_low is not None and date < where.date_low:
        return False
    return not (where.date_high is not None and date > where.date_high)


def _version(row: Any) -> ResourceVersion:
    return ResourceVersion(row.type, row.id, row.version, row.last_updated, _json(row.resource), row.method)


def _json(text: str | None) -> dict[str, Any] | None:
    return json.loads(text) if text is not None else None


def _dump(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

