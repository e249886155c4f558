"""The embedded archive: instance files on disk plus an SQL index (SQLite or PostgreSQL).

SQLAlchemy is synchronous; every call runs in a worker thread (DESIGN rule 6).

Rules:
1. SQLite runs in WAL mode: readers never wait; writers take a thread lock and an ``flock`` shared by
   the worker processes (``sql/engine.py``), so they queue instead of polling SQLite's busy handler.
   PostgreSQL uses row locks, so several pacsbridge instances may share one index.
2. Every write transaction upserts the study row first, which locks it: stores into one study are
   serialised, so the counts each refresh computes (``counts.py``) see every committed instance.
3. A file is placed under a fresh name before its row is written, and a replaced file is removed only
   after the commit (``blobs.py``); a failed commit removes the new file.
4. ``store_many`` indexes a batch in one transaction and refreshes each study's counts once (group
   commit: a STOW-RS request costs a few transactions, not one per instance). When the batch fails,
   each item is retried alone, so that one bad item never fails the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
import orjson
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.engine import Connection

from ..domain.errors import Conflict, NotFound
from ..domain.model import InstanceRecord, InstanceRef, Level, Scope, StoredInstance
from ..domain.query import Query
from ..services.ports import SearchPage
from .blobs import BlobStore
from .sql import counts, schema, writes
from .sql import search as sql_search
from .sql.engine import holding, make_engine, writer_for
from .sql.migrations import migrate


@dataclass(frozen=True)
class _Placed:
    """A file of a batch in its final place, waiting for its index rows."""

    index: int
    record: InstanceRecord
    path: Path
    size: int


class LocalArchive:
    """Archive port over a ``BlobStore`` and an SQL index."""

    def __init__(self, engine: Engine, blobs: BlobStore) -> None:
        self.engine = engine
        self.blobs = blobs
        self._writer = writer_for(engine)

    @classmethod
    def open(cls, url: str, root: Path, fsync: bool = True) -> LocalArchive:
        root.mkdir(parents=True, exist_ok=True)
        engine = make_engine(url)
        migrate(engine)
        blobs = BlobStore(root, fsync=fsync)
        blobs.clean_spool()
        return cls(engine, blobs)

    # --- store --------------------------------------------------------------------------------

    async def store_many(self, items: Sequence[tuple[Path, InstanceRecord]]) -> list[bool | Exception]:
        return await anyio.to_thread.run_sync(self._store_many_sync, list(items))

    def _store_many_sync(self, items: list[tuple[Path, InstanceRecord]]) -> list[bool | Exception]:
        outcomes: list[bool | Exception] = [False] * len(items)
        placed: list[_Placed] = []
        for i, (staged, record) in enumerate(items):
            ref = record.ref
            try:
                size = staged.stat().st_size
                path = self.blobs.place(staged, ref.study_uid, ref.series_uid, ref.sop_uid)
            except OSError as exc:
                outcomes[i] = exc
                continue
            placed.append(_Placed(i, record, path, size))
        try:
            self.blobs.sync_folders(p.path.parent for p in placed)
            old_paths = self._index_isolating(placed, outcomes)
        except BaseException:
            for p in placed:
                self.blobs.remove(p.path)
            raise
        for p in placed:
            if isinstance(outcomes[p.index], Exception):
                continue
            old = old_paths.get(p.index)
            outcomes[p.index] = old is not None
            if old is not None and old != self.blobs.relative(p.path):
                self.blobs.remove(self.blobs.absolute(old))
        return outcomes

    def _index_isolating(self, placed: list[_Placed], outcomes: list[bool | Exception]) -> dict[int, str | None]:
        """Index the batch in one transaction; if that fails, each item alone, so that only the items
        that fail by themselves are kept out (their files removed, their errors in ``outcomes``)."""
        if not placed:
            return {}
        try:
            return self._index_locked(placed)
        except Exception as exc:
            if len(placed) == 1:
                self.blobs.remove(placed[0].path)
                outcomes[placed[0].index] = exc
                return {}
        old_paths: dict[int, str | None] = {}
        for p in placed:
            try:
                old_paths.update(self._index_locked([p]))
            except Exception as exc:
                self.blobs.remove(p.path)
                outcomes[p.index] = exc
        return old_paths

    def _index_locked(self, placed: list[_Placed]) -> dict[int, str | None]:
        with holding(self._writer):
            return self._index(placed)

    def _index(self, placed: list[_Placed]) -> dict[int, str | None]:
        """Upsert the rows of each placed file and refresh the counts of every study touched, in one
        transaction; returns each item's replaced file (relative path) or None."""
        now = datetime.now(UTC).isoformat()
        old_paths: dict[int, str | None] = {}
        touched: dict[str, set[str]] = {}
        with self.engine.begin() as conn:
            for p in placed:
                record, ref = p.record, p.record.ref
                columns = sql_search.index_values(record.study, record.series, record.instance)
                # The study row first: on PostgreSQL its upsert locks it, so that a store into the same
                # study (the same instance sent again meanwhile, included) waits and is then read here.
                conn.execute(writes.UPSERT_STUDY, {
                    **columns[Level.STUDY], "study_uid": ref.study_uid,
                    "attributes": _dump(record.study), "updated_at": now,
                })
                owner = conn.execute(writes.SERIES_STUDY, {"series_uid": ref.series_uid}).scalar()
                if owner is not None and owner != ref.study_uid:
                    raise Conflict(f"SeriesInstanceUID {ref.series_uid} already belongs to another study "
                                   f"here ({owner}); a series cannot be in two studies")
                old = conn.execute(writes.OLD_INSTANCE, {"sop_uid": ref.sop_uid}).first()
                if old is not None and old.study_uid != ref.study_uid:
                    # The instance leaves another study: lock that one too before emptying or recounting
                    # it, so that a store into it meanwhile is either seen or waits for this one.
                    conn.execute(writes.LOCK_STUDY, {"study_uid": old.study_uid})
                conn.execute(writes.UPSERT_SERIES, {
                    **columns[Level.SERIES], "series_uid": ref.series_uid, "study_uid": ref.study_uid,
                    "attributes": _dump(record.series),
                })
                conn.execute(writes.UPSERT_INSTANCE, {
                    **columns[Level.INSTANCE], "sop_uid": ref.sop_uid, "series_uid": ref.series_uid,
                    "study_uid": ref.study_uid, "sop_class_uid": record.sop_class_uid,
                    "transfer_syntax": record.transfer_syntax, "number_of_frames": record.number_of_frames,
                    "path": self.blobs.relative(p.path), "size": p.size, "attributes": _dump(record.instance),
                    "metadata": record.metadata, "stored_at": now, "pixel_layout": record.pixel_layout,
                })
                touched.setdefault(ref.study_uid, set()).add(ref.series_uid)
                if old is not None and old.series_uid != ref.series_uid:
                    old_study = _drop_empty_parents(conn, old.series_uid)
                    if old_study is not None:
                        touched.setdefault(old_study, set()).add(old.series_uid)
                old_paths[p.index] = None if old is None else str(old.path)
            for study_uid, series_uids in touched.items():
                counts.refresh_study(conn, study_uid, sorted(series_uids))
        return old_paths

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
                number_of_frames=r.number_of_frames, patient_id=r.patient_id, pixel_layout=r.pixel_layout,
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
            with holding(self._writer), self.engine.begin() as conn:
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
