"""The local cache of one upstream's instances: an embedded archive of its own, bounded in size, with a
note of which scopes were fetched when.

Rules:
1. The cache is an ordinary ``LocalArchive`` in ``<data_dir>/cache/<name>`` (its own SQLite file, even when
   our records live in PostgreSQL: a cache belongs to the machine). Files are written and fsync'd as any
   stored instance, so a crash never leaves a half-written file indexed.
2. ``fetches`` remembers each scope fetched whole (study, series or instance) and when it was last used;
   a scope counts as fetched when it or one of its parents was. Use is noted at most once a minute per
   study, so reads do not turn into writes.
3. ``trim`` removes least recently used studies until the cache is under its bound, never one used in the
   last ``keep_s`` seconds (a reader may still be opening its files), nor the ones it is told to keep, nor
   one being filled in this process (``filling``): its files are indexed before it is marked fetched, so
   it would look unused. The bound can thus be exceeded while fills are in flight, by at most what they
   fetch; the trim that ends each fill brings the cache back under it.
4. A fill that lost instances to an eviction (or a delete) while it ran is not marked fetched: the copy
   is incomplete, and the next request fetches the scope again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Column, Connection, Float, MetaData, String, Table, delete, func, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ...domain.model import Scope
from ..local import LocalArchive
from ..sql import schema
from ..sql.engine import InThread

KEEP_S = 60.0
TOUCH_EVERY_S = 60.0

_meta = MetaData()
fetches = Table(
    "cache_fetches", _meta,
    Column("scope_key", String(200), primary_key=True),
    Column("study_uid", String(64), nullable=False, index=True),
    Column("fetched_at", Float, nullable=False),
    Column("used_at", Float, nullable=False),
)


def scope_key(scope: Scope) -> str:
    return "/".join(uid for uid in (scope.study_uid, scope.series_uid, scope.sop_uid) if uid)


def covering_keys(scope: Scope) -> list[str]:
    """The keys of the scope and its parents: a fetch of any of them covers the scope."""
    keys = [scope.study_uid]
    if scope.series_uid:
        keys.append(f"{scope.study_uid}/{scope.series_uid}")
        if scope.sop_uid:
            keys.append(f"{keys[-1]}/{scope.sop_uid}")
    return keys


@dataclass
class Fill:
    """One fetch of a study in flight; ``whole`` turns False when some of the study is evicted meanwhile."""

    study_uid: str
    whole: bool = True


@dataclass(frozen=True)
class CachePolicy:
    max_bytes: int
    fresh_s: float
    keep_s: float = KEEP_S  # a study used this recently is never evicted


class InstanceCache:
    """One upstream's cached instances (``local``) and the record of what was fetched."""

    def __init__(self, local: LocalArchive, policy: CachePolicy, clock: Callable[[], float] = time.time) -> None:
        self.local = local
        self.policy = policy
        self.clock = clock
        self._db = InThread(local.engine)
        self._touched: dict[str, float] = {}
        self._fills: dict[str, list[Fill]] = {}

    @classmethod
    def open(cls, root: Path, policy: CachePolicy) -> InstanceCache:
        local = LocalArchive.open(f"sqlite:///{(root / 'index.sqlite').resolve()}", root)
        _meta.create_all(local.engine, checkfirst=True)
        return cls(local, policy)

    @contextlib.contextmanager
    def filling(self, study_uid: str) -> Iterator[Fill]:
        """Register a fill of the study for its duration, failed or not (rules 3 and 4)."""
        fill = Fill(study_uid)
        self._fills.setdefault(study_uid, []).append(fill)
        try:
            yield fill
        finally:
            fills = self._fills[study_uid]
            fills.remove(fill)
            if not fills:
                del self._fills[study_uid]

    def _spoil(self, study_uid: str) -> None:
        for fill in self._fills.get(study_uid, ()):
            fill.whole = False

    async def fetched_at(self, scope: Scope) -> float | None:
        """When the scope (or a parent) was last fetched whole; None if never (or since evicted)."""
        latest = select(func.max(fetches.c.fetched_at)).where(fetches.c.scope_key.in_(covering_keys(scope)))
        found: float | None = await self._db.read(lambda conn: conn.execute(latest).scalar())
        return found

    async def mark_fetched(self, scope: Scope) -> None:
        now = self.clock()
        values = {"scope_key": scope_key(scope), "study_uid": scope.study_uid, "fetched_at": now, "used_at": now}
        statement = sqlite_insert(fetches).values(**values).on_conflict_do_update(
            index_elements=["scope_key"], set_={"fetched_at": now, "used_at": now})
        await self._db.write(lambda conn: conn.execute(statement))
        self._touched[scope.study_uid] = now

    async def touch(self, study_uid: str) -> None:
        """Note that a study was read (rule 2)."""
        now = self.clock()
        if now - self._touched.get(study_uid, 0.0) < TOUCH_EVERY_S:
            return
        self._touched[study_uid] = now
        used = fetches.update().where(fetches.c.study_uid == study_uid).values(used_at=now)
        await self._db.write(lambda conn: conn.execute(used))

    async def size(self) -> int:
        total = select(func.coalesce(func.sum(schema.instances.c.size), 0))
        return await self._db.read(lambda conn: int(conn.execute(total).scalar_one()))

    async def trim(self, keep: Iterable[str] = ()) -> list[str]:
        """Evict least recently used studies until under ``max_bytes`` (rule 3); the studies evicted."""
        total = await self.size()
        if total <= self.policy.max_bytes:
            return []
        kept = set(keep)
        recent = self.clock() - self.policy.keep_s

        st, inst = schema.studies, schema.instances
        used = (select(fetches.c.study_uid, func.max(fetches.c.used_at).label("used_at"))
                .group_by(fetches.c.study_uid).subquery())
        sizes = (select(inst.c.study_uid, func.sum(inst.c.size).label("size"))
                 .group_by(inst.c.study_uid).subquery())
        by_use = (select(st.c.study_uid, sizes.c.size, used.c.used_at)
                  .join(sizes, sizes.c.study_uid == st.c.study_uid)
                  .outerjoin(used, used.c.study_uid == st.c.study_uid)
                  .order_by(func.coalesce(used.c.used_at, 0.0)))

        def candidates(conn: Connection) -> list[tuple[str, int]]:
            return [(r.study_uid, int(r.size or 0)) for r in conn.execute(by_use)
                    if r.study_uid not in kept and (r.used_at or 0.0) < recent
                    and self._touched.get(r.study_uid, 0.0) < recent]

        evicted: list[str] = []
        for study_uid, size in await self._db.read(candidates):
            if total <= self.policy.max_bytes:
                break
            if study_uid in self._fills:
                continue  # being filled (rule 3): checked now, as a fill may have begun since the read
            await self.evict(study_uid)
            total -= size
            evicted.append(study_uid)
        return evicted

    async def evict(self, study_uid: str) -> int:
        removed = await self.local.delete(Scope(study_uid))
        await self._db.write(lambda conn: conn.execute(delete(fetches).where(fetches.c.study_uid == study_uid)))
        self._touched.pop(study_uid, None)
        self._spoil(study_uid)  # after the delete: a fill that began during it lost instances too
        return removed

    async def forget(self, scope: Scope) -> None:
        """Drop the fetch notes of a scope and everything under it (it changed upstream)."""
        key = scope_key(scope)
        under = delete(fetches).where((fetches.c.scope_key == key) | fetches.c.scope_key.startswith(key + "/"))
        await self._db.write(lambda conn: conn.execute(under))
        self._spoil(scope.study_uid)

    async def close(self) -> None:
        await self.local.close()
