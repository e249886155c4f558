"""The Archive port over an upstream: searches go to it, instances are fetched into the local cache once
and served from there, writes are forwarded.

See: services/ports.py (the contract), remote.py (the upstream side), cache.py (the cache).

Rules:
1. Searches always ask the upstream (a QIDO or C-FIND answer is cheap and must be current); what it cannot
   match itself (``split_for_remote``) is matched here. Its RetrieveURL and RetrieveAETitle are dropped:
   results are ours to address. A patient context (a list of PatientIDs) is never left to the upstream:
   a result whose PatientID is not exactly one of them is dropped (Orthanc's QIDO folds case, so
   ``PAT-1`` finds ``pat-1``), and such a search is paged here, as one with keys matched here.
2. ``locate`` (and so metadata, frames, rendered images, C-GET, C-MOVE) serves a scope from the cache.
   A scope fetched less than ``fresh_s`` ago is served as it is; an older one is checked with one count
   query and fetched again only when its number of instances changed; a scope never fetched is fetched
   whole. A study's fetches are serialised in this process, so the many requests a viewer makes for one
   study cross the network once. When the upstream fails while checking, the cached copy is served.
   A study being fetched or checked is registered with the cache (``filling``), so no trim evicts it.
3. Metadata comes from the cached instances themselves, never from search keys alone.
4. ``store_many`` forwards; each instance the upstream took is kept in the cache as well (a viewer is
   likely to look at it next).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path

import anyio
import anyio.to_thread

from ...domain.errors import NotFound, UpstreamUnavailable
from ...domain.model import DicomJson, InstanceRecord, Level, Scope, StoredInstance
from ...domain.query import Match, MatchKind, Query, matches_all, split_for_remote
from ...formats.part10 import read_record
from ...services.ports import SearchPage
from .cache import InstanceCache
from .remote import Remote

log = logging.getLogger(__name__)

FILTER_CAP = 10_000  # results asked of the upstream when keys are matched here
KEEP_BATCH = 32  # fetched files indexed in one cache transaction
NOT_OURS = ("00081190", "00080054")  # RetrieveURL, RetrieveAETitle
PATIENT_ID = "00100020"


class ProxyArchive:
    """Archive port over one ``Remote`` and its ``InstanceCache``."""

    def __init__(self, remote: Remote, cache: InstanceCache) -> None:
        self.remote = remote
        self.cache = cache
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}

    @property
    def name(self) -> str:
        return self.remote.name

    # --- search -------------------------------------------------------------------------------------

    async def search(self, query: Query) -> SearchPage:
        caps = self.remote.capabilities
        remote_query, local = split_for_remote(query, uid_lists_anywhere=caps.uid_lists_anywhere,
                                               fuzzy=caps.fuzzy_matching)
        bound = _patient_context(query)
        if not local and not bound:
            wanted = remote_query.limit
            asked = remote_query if wanted is None else replace(remote_query, limit=wanted + 1)
            results = [_ours(r) for r in await self.remote.search(asked)]
            if wanted is not None and len(results) > wanted:
                return SearchPage(results[:wanted], 1)  # at least one more: the 299 warning says so
            return SearchPage(results)
        found = await self.remote.search(_unpaged(remote_query, bound))
        kept = [_ours(r) for r in found if _in_context(r, bound) and matches_all(local, r, query.fuzzy)]
        end = None if query.limit is None else query.offset + query.limit
        page = kept[query.offset:end]
        return SearchPage(page, max(0, len(kept) - (end if end is not None else len(kept))))

    # --- retrieve -----------------------------------------------------------------------------------

    async def locate(self, scope: Scope) -> list[StoredInstance]:
        async with self._study_lock(scope.study_uid):
            await self._ensure(scope)
        found = await self.cache.local.locate(scope)
        await self.cache.touch(scope.study_uid)
        return found

    async def metadata(self, scope: Scope) -> list[str]:
        async with self._study_lock(scope.study_uid):
            await self._ensure(scope)
        return await self.cache.local.metadata(scope)

    async def patient_of(self, study_uid: str) -> str | None:
        with contextlib.suppress(NotFound):
            return await self.cache.local.patient_of(study_uid)
        results = await self.remote.search(Query(Level.STUDY, (_uid_match("0020000D", study_uid),),
                                                 includefields=("00100020",), limit=1))
        if not results:
            raise NotFound(f"no study {study_uid} here")
        values = results[0].get("00100020", {}).get("Value") or [None]
        return None if values[0] is None else str(values[0])

    async def _ensure(self, scope: Scope) -> None:
        """Make the cache hold the scope as the upstream has it (rule 2)."""
        fetched_at = await self.cache.fetched_at(scope)
        if fetched_at is not None:
            if self.cache.clock() - fetched_at < self.cache.policy.fresh_s:
                return
            if await self._still_current(scope):
                return
            await self.cache.forget(scope)
        await self._fill(scope)

    async def _still_current(self, scope: Scope) -> bool:
        """May a stale cached copy be served? Marked fetched again when unchanged; registered as a fill, so
        the study is not evicted between the count and the mark."""
        with self.cache.filling(scope.study_uid) as check:
            try:
                unchanged = await self._unchanged(scope)
            except UpstreamUnavailable as exc:
                log.warning("upstream %s: serving a cached copy unchecked (%s)", self.name, exc.message)
                return True
            if unchanged and check.whole:
                await self.cache.mark_fetched(scope)
                return True
            return False

    async def _unchanged(self, scope: Scope) -> bool:
        if scope.sop_uid is not None:
            return True  # an instance is replaced under a new UID, never changed under its own
        tag = "00201208" if scope.series_uid is None else "00201209"
        matches = [_uid_match("0020000D", scope.study_uid)]
        if scope.series_uid is not None:
            matches.append(_uid_match("0020000E", scope.series_uid))
        level = Level.STUDY if scope.series_uid is None else Level.SERIES
        results = await self.remote.search(Query(level, tuple(matches), includefields=(tag,), limit=1))
        if not results:
            return False
        values = results[0].get(tag, {}).get("Value") or [None]
        if values[0] is None:
            return True  # the upstream does not count: trust the copy until it is evicted
        try:
            cached = len(await self.cache.local.locate(scope))
        except NotFound:
            cached = 0
        return int(values[0]) == cached

    async def _fill(self, scope: Scope) -> None:
        """Fetch the scope whole; the study cannot be evicted meanwhile, so trimming waits for the end."""
        with self.cache.filling(scope.study_uid) as fill:
            await self._fetch(scope)
            if fill.whole:
                await self.cache.mark_fetched(scope)
            else:
                log.warning("upstream %s: study %s lost instances while being fetched, not marked fetched",
                            self.name, scope.study_uid)
        evicted = await self.cache.trim(keep=[scope.study_uid])
        if evicted:
            log.info("upstream %s: cache full, %d least recently used studies evicted", self.name, len(evicted))

    async def _fetch(self, scope: Scope) -> None:
        batch: list[Path] = []
        try:
            async for staged in self.remote.fetch(scope, self.cache.local.blobs):
                batch.append(staged)
                if len(batch) >= KEEP_BATCH:
                    await self._keep(batch)
                    batch = []
            if batch:
                await self._keep(batch)
                batch = []
        finally:
            for staged in batch:
                _discard(staged)

    async def _keep(self, staged: list[Path]) -> None:
        """Index fetched files in the cache; one that does not read as DICOM is dropped and logged."""
        def describe() -> list[tuple[Path, InstanceRecord]]:
            out = []
            for path in staged:
                try:
                    with open(path, "rb") as fp:
                        out.append((path, read_record(fp)))
                except Exception as exc:  # one bad file must not lose the others
                    log.warning("upstream %s sent an instance that cannot be read (%s)", self.name,
                                type(exc).__name__)
                    _discard(path)
            return out

        items = await anyio.to_thread.run_sync(describe)
        outcomes = await self.cache.local.store_many(items)
        for (path, _record), outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.warning("upstream %s: a fetched instance could not be cached (%s)", self.name, outcome)
                _discard(path)
        staged.clear()

    @contextlib.asynccontextmanager
    async def _study_lock(self, study_uid: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(study_uid) or (anyio.Lock(), 0)
        self._locks[study_uid] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[study_uid]
            if users <= 1:
                del self._locks[study_uid]
            else:
                self._locks[study_uid] = (lock, users - 1)

    # --- store and the rest --------------------------------------------------------------------------

    async def store_many(self, items: Sequence[tuple[Path, InstanceRecord]]) -> list[bool | Exception]:
        outcomes = await self.remote.store_many(items)
        taken = [item for item, outcome in zip(items, outcomes, strict=True) if not isinstance(outcome, Exception)]
        if taken:
            for (path, _record), kept in zip(taken, await self.cache.local.store_many(taken), strict=True):
                if isinstance(kept, Exception):
                    _discard(path)  # forwarded, only not cached: ours to remove
        return outcomes

    async def delete(self, scope: Scope) -> int:
        """Removes the cached copy only; the upstream keeps its instances."""
        removed = await self.cache.local.delete(scope)
        await self.cache.forget(scope)
        return removed

    async def close(self) -> None:
        await self.remote.close()
        await self.cache.close()


def _uid_match(tag: str, uid: str) -> Match:
    return Match(tag, "UI", MatchKind.UID_LIST, values=(uid,))


def _patient_context(query: Query) -> list[frozenset[str]]:
    """The PatientID lists the query is bound to: the principal's patient context (services/search.py)
    and any other list of PatientIDs, all exact matches that an upstream may fold (Orthanc does)."""
    return [frozenset(m.values) for m in query.matches if m.tag == PATIENT_ID and m.kind is MatchKind.UID_LIST]


def _in_context(result: DicomJson, bound: list[frozenset[str]]) -> bool:
    """Does the result's PatientID equal, exactly, one in each list? One without a PatientID does not."""
    if not bound:
        return True
    values = (result.get(PATIENT_ID) or {}).get("Value") or []
    return len(values) == 1 and isinstance(values[0], str) and all(values[0] in ids for ids in bound)


def _unpaged(query: Query, bound: list[frozenset[str]]) -> Query:
    """The upstream query when results are checked here: paged here, so with the PatientID returned."""
    fields = query.includefields if not bound or PATIENT_ID in query.includefields else (
        *query.includefields, PATIENT_ID)
    return replace(query, includefields=fields, limit=FILTER_CAP, offset=0)


def _ours(result: DicomJson) -> DicomJson:
    for tag in NOT_OURS:
        result.pop(tag, None)
    return result


def _discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
