"""The proxy archive's cache over a real Orthanc (DICOMweb): one fetch for many concurrent readers, the
freshness check by instance count, the size bound with least-recently-used eviction (never of a study
being fetched), and a cached copy served while the upstream is stalled.

The remote is the real DICOMweb remote; ``Counting`` only counts the calls that cross the network.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pydicom.uid import generate_uid

from pacsbridge.backends.upstream.cache import CachePolicy, InstanceCache
from pacsbridge.backends.upstream.dicomweb import DicomwebRemote, DicomwebUpstream
from pacsbridge.backends.upstream.proxy import KEEP_BATCH, ProxyArchive
from pacsbridge.domain.errors import NotFound, UpstreamUnavailable
from pacsbridge.domain.model import DicomJson, InstanceRecord, Scope
from pacsbridge.domain.query import Query
from pacsbridge.services.ports import Spool

from ..support.dicom import instance, to_bytes
from ..support.orthanc import OrthancServer, missing, orthanc

pytestmark = [pytest.mark.orthanc, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def pacs() -> Iterator[OrthancServer]:
    reason = missing()
    if reason:
        pytest.fail(f"Orthanc is needed for these tests: {reason}")
    with orthanc(aet="CACHED") as server:
        yield server


class Counting:
    """The real remote, with a count of its fetches and searches."""

    def __init__(self, remote: DicomwebRemote) -> None:
        self.remote = remote
        self.name = remote.name
        self.capabilities = remote.capabilities
        self.fetches: list[Scope] = []
        self.searches = 0

    async def search(self, query: Query) -> list[DicomJson]:
        self.searches += 1
        return await self.remote.search(query)

    async def fetch(self, scope: Scope, spool: Spool) -> AsyncIterator[Path]:
        self.fetches.append(scope)
        async for path in self.remote.fetch(scope, spool):
            yield path

    async def store_many(self, items: Sequence[tuple[Path, InstanceRecord]]) -> list[bool | Exception]:
        return await self.remote.store_many(items)

    async def close(self) -> None:
        await self.remote.close()


def add_study(pacs: OrthancServer, count: int, rows: int = 64, study: str | None = None,
              series: str | None = None, first: int = 1) -> tuple[str, str]:
    study, series = study or generate_uid(), series or generate_uid()
    for n in range(first, first + count):
        ds = instance(study, series, number=n, rows=rows, columns=rows)
        assert httpx.post(pacs.url + "/instances", content=to_bytes(ds)).status_code == 200
    return study, series


def proxy_over(pacs: OrthancServer, tmp_path: Path, **policy: Any) -> tuple[ProxyArchive, Counting]:
    remote = Counting(DicomwebRemote("cached", DicomwebUpstream(url=pacs.dicomweb, timeout_s=2)))
    settings = {"max_bytes": 1 << 30, "fresh_s": 3600.0, **policy}
    return ProxyArchive(remote, InstanceCache.open(tmp_path / "cache", CachePolicy(**settings))), remote


async def test_concurrent_readers_of_one_study_share_one_fetch(pacs: OrthancServer, tmp_path: Path) -> None:
    study, series = add_study(pacs, 5)
    archive, remote = proxy_over(pacs, tmp_path)
    results: list[int] = []

    async def read(scope: Scope) -> None:
        results.append(len(await archive.locate(scope)))

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(read, Scope(study))
        tg.start_soon(read, Scope(study, series))
    assert sorted(results) == [5] * 7
    assert remote.fetches == [Scope(study)]  # the series read waited for the study's fetch and used it
    assert len(await archive.metadata(Scope(study))) == 5 and len(remote.fetches) == 1
    await archive.close()


async def test_a_stale_scope_is_checked_by_count_and_fetched_again_only_when_it_changed(
        pacs: OrthancServer, tmp_path: Path) -> None:
    study, series = add_study(pacs, 3)
    archive, remote = proxy_over(pacs, tmp_path, fresh_s=0.0)
    assert len(await archive.locate(Scope(study))) == 3
    assert len(await archive.locate(Scope(study))) == 3
    assert len(remote.fetches) == 1 and remote.searches == 1  # checked, unchanged, not fetched
    add_study(pacs, 1, study=study, series=series, first=4)
    assert len(await archive.locate(Scope(study))) == 4
    assert len(remote.fetches) == 2
    await archive.close()


async def test_the_size_bound_evicts_least_recently_used_studies(pacs: OrthancServer, tmp_path: Path) -> None:
    older, _ = add_study(pacs, 4, rows=128)
    newer, _ = add_study(pacs, 4, rows=128)
    archive, remote = proxy_over(pacs, tmp_path, max_bytes=200_000, keep_s=0.0)
    await archive.locate(Scope(older))
    first_size = await archive.cache.size()
    assert first_size > 100_000  # four 128x128 16-bit images and their headers
    await archive.locate(Scope(newer))
    assert await archive.cache.size() <= 200_000
    assert await archive.cache.fetched_at(Scope(older)) is None  # evicted, files and notes
    assert await archive.cache.fetched_at(Scope(newer)) is not None
    assert len(await archive.locate(Scope(older))) == 4  # fetched again when asked again
    assert remote.fetches == [Scope(older), Scope(newer), Scope(older)]
    await archive.close()


async def test_a_cached_study_is_served_while_the_upstream_stalls(pacs: OrthancServer, tmp_path: Path) -> None:
    study, _ = add_study(pacs, 2)
    archive, remote = proxy_over(pacs, tmp_path, fresh_s=0.0)
    assert len(await archive.locate(Scope(study))) == 2
    os.kill(pacs.pid, signal.SIGSTOP)
    try:
        with anyio.fail_after(15):
            assert len(await archive.locate(Scope(study))) == 2  # the count check timed out: served anyway
    finally:
        os.kill(pacs.pid, signal.SIGCONT)
    assert len(remote.fetches) == 1
    await archive.close()


class Paused(Counting):
    """The real remote, pausing the fetch of one study once ``after`` instances were sent, until ``resume``
    is set (``reached`` says it paused); with ``fail`` it raises there instead."""

    def __init__(self, remote: DicomwebRemote, study: str, after: int, fail: bool = False) -> None:
        super().__init__(remote)
        self.study, self.after, self.fail = study, after, fail
        self.reached, self.resume = anyio.Event(), anyio.Event()

    async def fetch(self, scope: Scope, spool: Spool) -> AsyncIterator[Path]:
        sent = 0
        async for path in super().fetch(scope, spool):
            if scope.study_uid == self.study and sent == self.after:
                self.reached.set()
                if self.fail:
                    path.unlink()
                    raise UpstreamUnavailable("cached: the connection was lost")
                await self.resume.wait()
            sent += 1
            yield path


def paused_over(pacs: OrthancServer, tmp_path: Path, study: str, fail: bool = False,
                **policy: Any) -> tuple[ProxyArchive, Paused]:
    archive, counting = proxy_over(pacs, tmp_path, **policy)
    remote = Paused(counting.remote, study, KEEP_BATCH, fail)  # paused with one batch indexed
    archive.remote = remote
    return archive, remote


async def test_a_study_being_filled_is_not_evicted_by_another_fill(pacs: OrthancServer, tmp_path: Path) -> None:
    big, _ = add_study(pacs, KEEP_BATCH + 8)
    small, _ = add_study(pacs, 2)
    archive, remote = paused_over(pacs, tmp_path, big, max_bytes=1, keep_s=0.0)  # always over the bound
    found: list[int] = []

    async def read_big() -> None:
        found.append(len(await archive.locate(Scope(big))))

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_big)
        with anyio.fail_after(30):
            await remote.reached.wait()
            # This fill ends with a trim while the big study is half indexed and not yet marked fetched.
            assert len(await archive.locate(Scope(small))) == 2
        remote.resume.set()
    assert found == [KEEP_BATCH + 8]
    assert await archive.cache.fetched_at(Scope(big)) is not None
    assert len(await archive.cache.local.locate(Scope(big))) == KEEP_BATCH + 8
    # The trim that ended the big fill brought the cache back under its bound as far as it could.
    assert await archive.cache.fetched_at(Scope(small)) is None
    assert remote.fetches == [Scope(big), Scope(small)]
    await archive.close()


async def test_a_fill_that_lost_instances_to_an_eviction_is_not_marked_fetched(
        pacs: OrthancServer, tmp_path: Path) -> None:
    study, _ = add_study(pacs, KEEP_BATCH + 4)
    archive, remote = paused_over(pacs, tmp_path, study)
    async with anyio.create_task_group() as tg:
        tg.start_soon(archive.locate, Scope(study))
        with anyio.fail_after(30):
            await remote.reached.wait()
        await archive.cache.evict(study)  # what another process's trim, or a delete, would do
        remote.resume.set()
    assert await archive.cache.fetched_at(Scope(study)) is None  # the copy is incomplete: not served as whole
    assert len(await archive.locate(Scope(study))) == KEEP_BATCH + 4  # fetched again
    assert len(remote.fetches) == 2
    await archive.close()


async def test_a_failed_fill_leaves_its_study_evictable(pacs: OrthancServer, tmp_path: Path) -> None:
    big, _ = add_study(pacs, KEEP_BATCH + 4)
    small, _ = add_study(pacs, 1)
    archive, _remote = paused_over(pacs, tmp_path, big, fail=True, max_bytes=1, keep_s=0.0)
    with pytest.raises(UpstreamUnavailable):
        await archive.locate(Scope(big))
    assert len(await archive.cache.local.locate(Scope(big))) == KEEP_BATCH  # one batch indexed, not marked
    assert len(await archive.locate(Scope(small))) == 1
    with pytest.raises(NotFound):
        await archive.cache.local.locate(Scope(big))  # the half study went first
    await archive.close()
