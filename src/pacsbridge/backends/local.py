"""The embedded archive: instance files on disk plus an SQL index (SQLite or PostgreSQL).

SQLAlchemy is synchronous; every call runs in a worker thread (DESIGN rule 6).

Rules:
1. SQLite runs in WAL mode: readers never wait; writers of one process take a lock, writers of several
   worker processes wait on SQLite's own lock (30 s busy timeout). PostgreSQL uses row locks, so
   several pacsbridge instances may share one index.
2. Every write transaction upserts the study row first, which locks it: stores into one study are
   serialised, so the counts each refresh computes (``counts.py``) see every committed instance.
3. A file is placed under a fresh name before its row is written, and a replaced file is removed only
   after the commit (``blobs.py``); a failed commit removes the new file.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
import orjson
from sqlalchemy import Engine, create_engine, delete, event, func, select
from sqlalchemy.engine import Connection

from ..domain.errors import NotFound
from ..domain.model import InstanceRecord, InstanceRef, Level, Scope, StoredInstance
from ..domain.query import Query
from ..services.ports import SearchPage
from .blobs import BlobStore
from .sql import counts, schema, writes
from .sql import search as sql_search
from .sql.migrations import migrate


def make_engine(url: str) -> Engine:
    """An engine with the per-dialect settings the index relies on."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            # DICOM single-value matching is case-sensitive (PS3.4 C.2.2.2.1); PN uses folded columns.
            cursor.execute("PRAGMA case_sensitive_like=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


class LocalArchive:
    """Archive port over a ``BlobStore`` and an SQL index."""

    def __init__(self, engine: Engine, blobs: BlobStore) -> None:
        self.engine = engine
        self.blobs = blobs
        self._sqlite = engine.dialect.name == "sqlite"
        self._write_lock = threading.Lock() if self._sqlite else None

    @classmethod
    def open(cls, url: str, root: Path, fsync: bool = True) -> LocalArchive:
        root.mkdir(parents=True, exist_ok=True)
        engine = make_engine(url)
        migrate(engine)
        blobs = BlobStore(root, fsync=fsync)
        blobs.clean_spool()
        return cls(engine, blobs)

    # --- store --------------------------------------------------------------------------------

    async def store(self, staged: Path, record: InstanceRecord) -> bool:
        return await anyio.to_thread.run_sync(self._store_sync, staged, record)

    def _store_sync(self, staged: Path, record: InstanceRecord) -> bool:
        ref = record.ref
        size = staged.stat().st_size
        placed = self.blobs.place(staged, ref.study_uid, ref.series_uid, ref.sop_uid)
        try:
            if self._write_lock is not None:
                with self._write_lock:
                    old_path = self._index(record, placed, size)
            else:
                old_path = self._index(record, placed, size)
        except BaseException:
            self.blobs.remove(placed)
            raise
        if old_path is not None and old_path != self.blobs.relative(placed):
            self.blobs.remove(self.blobs.absolute(old_path))
        return old_path is not None

    def _index(self, record: InstanceRecord, placed: Path, size: int) -> str | None:
        ref = record.ref
        now = datetime.now(UTC).isoformat()
        columns = sql_search.index_values(record.study, record.series, record.instance)
        with self.engine.begin() as conn:
            old = conn.execute(writes.OLD_INSTANCE, {"sop_uid": ref.sop_uid}).first()
            conn.execute(writes.UPSERT_STUDY, {
                **columns[Level.STUDY], "study_uid": ref.study_uid,
                "attributes": _dump(record.study), "updated_at": now,
            })
            conn.execute(writes.UPSERT_SERIES, {
                **columns[Level.SERIES], "series_uid": ref.series_uid, "study_uid": ref.study_uid,
                "attributes": _dump(record.series),
            })
            conn.execute(writes.UPSERT_INSTANCE, {
                **columns[Level.INSTANCE], "sop_uid": ref.sop_uid, "series_uid": ref.series_uid,
                "study_uid": ref.study_uid, "sop_class_uid": record.sop_class_uid,
                "transfer_syntax": record.transfer_syntax, "number_of_frames": record.number_of_frames,
                "path": self.blobs.relative(placed), "size": size, "attributes": _dump(record.instance),
                "metadata": record.metadata, "stored_at": now,
            })
            moved_from: list[str] = []
            if old is not None and old.series_uid != ref.series_uid:
                moved_from = [old.series_uid]
                old_study = _drop_empty_parents(conn, old.series_uid)
                if old_study is not None and old_study != ref.study_uid:
                    counts.refresh_study(conn, old_study, moved_from)
            counts.refresh_study(conn, ref.study_uid, [ref.series_uid, *moved_from])
        return None if old is None else str(old.path)

    # --- search and retrieve --------------------------------------------------------------------

    async def search(self, query: Query) -> SearchPage:
        def run() -> SearchPage:
            with self.engine.connect() as conn:
                results, remaining = sql_search.run(conn, query)
            return SearchPage(results, remaining)

        return await anyio.to_thread.run_sync(run)

    async def locate(self, scope: Scope) -> list[StoredInstance]:
        return await anyio.to_thread.run_sync(self._locate_sync, scope)

    def _scope_where(self, scope: Scope) -> list[Any]:
        inst = schema.instances
        where = [inst.c.study_uid == scope.study_uid]
        if scope.series_uid is not None:
            where.append(inst.c.series_uid == scope.series_uid)
        if scope.sop_uid is not None:
            where.append(inst.c.sop_uid == scope.sop_uid)
        return where

    @staticmethod
    def _scope_params(scope: Scope) -> tuple[str, dict[str, str]]:
        params = {"study_uid": scope.study_uid}
        if scope.series_uid is not None:
            params["series_uid"] = scope.series_uid
        if scope.sop_uid is not None:
            params["sop_uid"] = scope.sop_uid
        return scope.level.name.lower(), params

    def _locate_sync(self, scope: Scope) -> list[StoredInstance]:
        level, params = self._scope_params(scope)
        with self.engine.connect() as conn:
            rows = conn.execute(writes.LOCATE[level], params).all()
        if not rows:
            raise NotFound(f"no {level} {_scope_uid(scope)} here")
        return [
            StoredInstance(
                ref=InstanceRef(r.study_uid, r.series_uid, r.sop_uid), sop_class_uid=r.sop_class_uid,
                transfer_syntax=r.transfer_syntax, path=str(self.blobs.absolute(r.path)), size=r.size,
                number_of_frames=r.number_of_frames, patient_id=r.patient_id,
            )
            for r in rows
        ]

    async def metadata(self, scope: Scope) -> list[str]:
        def run() -> list[str]:
            level, params = self._scope_params(scope)
            with self.engine.connect() as conn:
                rows = conn.execute(writes.METADATA[level], params).scalars().all()
            if not rows:
                raise NotFound(f"no {level} {_scope_uid(scope)} here")
            return list(rows)

        return await anyio.to_thread.run_sync(run)

    async def patient_of(self, study_uid: str) -> str | None:
        def run() -> str | None:
            with self.engine.connect() as conn:
                row = conn.execute(writes.PATIENT_OF, {"study_uid": study_uid}).first()
            if row is None:
                raise NotFound(f"no study {study_uid} here")
            return None if row[0] is None else str(row[0])

        return await anyio.to_thread.run_sync(run)

    async def delete(self, scope: Scope) -> int:
        def run() -> int:
            inst = schema.instances
            lock = self._write_lock or threading.Lock()
            with lock, self.engine.begin() as conn:
                rows = conn.execute(select(inst.c.sop_uid, inst.c.series_uid, inst.c.path)
                                    .where(*self._scope_where(scope))).all()
                if not rows:
                    return 0
                conn.execute(delete(inst).where(inst.c.sop_uid.in_([r.sop_uid for r in rows])))
                for series_uid in {r.series_uid for r in rows}:
                    _drop_empty_parents(conn, series_uid)
                if conn.execute(select(schema.studies.c.study_uid)
                                .where(schema.studies.c.study_uid == scope.study_uid)).first():
                    counts.refresh_study(conn, scope.study_uid)
            for row in rows:
                self.blobs.remove(self.blobs.absolute(row.path))
            return len(rows)

        return await anyio.to_thread.run_sync(run)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self.engine.dispose)


def _drop_empty_parents(conn: Connection, series_uid: str) -> str | None:
    """Remove a series left without instances, and its study if that is left empty; returns the study
    UID when the study still exists (its counts need a refresh)."""
    inst, se, st = schema.instances, schema.series, schema.studies
    study_uid = conn.execute(select(se.c.study_uid).where(se.c.series_uid == series_uid)).scalar()
    left = conn.execute(select(func.count()).where(inst.c.series_uid == series_uid)).scalar_one()
    if left:
        return study_uid
    conn.execute(delete(se).where(se.c.series_uid == series_uid))
    if study_uid is not None:
        remaining = conn.execute(select(func.count()).where(se.c.study_uid == study_uid)).scalar_one()
        if not remaining:
            conn.execute(delete(st).where(st.c.study_uid == study_uid))
            return None
    return study_uid


def _dump(attributes: dict[str, Any]) -> str:
    return orjson.dumps(attributes).decode()


def _scope_uid(scope: Scope) -> str:
    return scope.sop_uid or scope.series_uid or scope.study_uid
