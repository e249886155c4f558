"""Contract tests run each case on SQLite and on PostgreSQL (marked ``postgres``); the Archive contract
also over upstreams (a real Orthanc, marked ``orthanc``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import Engine

from pacsbridge.backends.local import LocalArchive
from pacsbridge.backends.sql.engine import make_engine
from pacsbridge.backends.sql.migrations import migrate
from pacsbridge.backends.upstream.cache import CachePolicy, InstanceCache
from pacsbridge.backends.upstream.dicomweb import DicomwebRemote, DicomwebUpstream
from pacsbridge.backends.upstream.dimse import DimseRemote, DimseUpstream
from pacsbridge.backends.upstream.proxy import ProxyArchive
from pacsbridge.backends.upstream.remote import Remote
from pacsbridge.domain.model import Origin
from pacsbridge.domain.store import StoreResult
from pacsbridge.services.ingest import IngestService

from ..support.dicom import write
from ..support.orthanc import OrthancServer, missing, orthanc


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return str(request.getfixturevalue("postgres").new_database())


@pytest.fixture
def embedded(db_url: str, tmp_path: Path) -> Iterator[LocalArchive]:
    """The embedded archive on either database, used synchronously (``ingest``)."""
    archive = LocalArchive.open(db_url, tmp_path / "data", fsync=False)
    yield archive
    archive.engine.dispose()


def ingest(archive: LocalArchive, ds: Dataset, folder: Path) -> StoreResult:
    """Store one dataset as a door does: written as Part 10 to the spool, received, stored."""
    service = IngestService(archive, archive.blobs)
    staged, fp = service.new_spool_file()
    with fp, open(write(ds, folder), "rb") as source:
        fp.write(source.read())
    received = service.receive(staged)
    return anyio.run(service.store_received, [received], Origin("stow-rs"))[0]


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated database of either kind, for the records' contract tests."""
    engine = make_engine(db_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


CONTRACT_AE = "PBCONTRACT"


@pytest.fixture(scope="session")
def contract_orthanc() -> Iterator[OrthancServer]:
    """One Orthanc for the upstream contract runs (emptied before each test by ``upstream_archive``)."""
    reason = missing()
    if reason:
        pytest.fail(f"Orthanc is needed for the upstream contract: {reason}")
    with orthanc(aet="CONTRACT", modalities={"pb": (CONTRACT_AE, "127.0.0.1", 104)}) as server:
        yield server


def upstream_archive(kind: str, server: OrthancServer, cache_dir: Path) -> ProxyArchive:
    """A proxy archive over the (emptied) Orthanc, by DICOMweb or DIMSE (C-GET), with a fresh cache that
    checks with the upstream on every use (fresh_s 0)."""
    for study in httpx.get(server.url + "/studies").json():
        httpx.delete(f"{server.url}/studies/{study}").raise_for_status()
    remote: Remote
    if kind == "dicomweb":
        remote = DicomwebRemote("contract", DicomwebUpstream(url=server.dicomweb, timeout_s=20))
    else:
        remote = DimseRemote("contract", DimseUpstream(
            ae_title=server.aet, host="127.0.0.1", port=server.dicom_port, calling_ae_title=CONTRACT_AE,
            retrieve="c-get", move_destination=CONTRACT_AE, timeout_s=20))
    return ProxyArchive(remote, InstanceCache.open(cache_dir, CachePolicy(max_bytes=1 << 30, fresh_s=0)))
