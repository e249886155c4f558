"""The patient context over an upstream that folds case: Orthanc's QIDO-RS finds ``pat-1`` for
``PatientID=PAT-1``, and a principal bound to ``PAT-1`` must still see ``PAT-1``'s studies only, at
every level, through paging, and through the doors (C-FIND over a DICOMweb upstream).

The remote is the real DICOMweb remote over a real Orthanc; one test uses a fake remote for the answers
Orthanc never gives (a result without a PatientID).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from pacsbridge.backends.upstream.cache import CachePolicy, InstanceCache
from pacsbridge.backends.upstream.dicomweb import DicomwebRemote, DicomwebUpstream
from pacsbridge.backends.upstream.proxy import ProxyArchive
from pacsbridge.backends.upstream.remote import Capabilities
from pacsbridge.domain.access import Principal
from pacsbridge.domain.model import DicomJson, Level
from pacsbridge.domain.query import Match, MatchKind, Query
from pacsbridge.services.search import SearchService
from pacsbridge.settings import Settings

from ..support.dicom import instance, to_bytes
from ..support.orthanc import OrthancServer, missing, orthanc
from ..support.servers import free_port, serve

pytestmark = [pytest.mark.orthanc]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"

PATIENTS = {"PAT-1": 2, "pat-1": 1, "PAT-1X": 1}  # patient id -> studies
WARD = Principal("ward", patient_ids=frozenset({"PAT-1"}))


@pytest.fixture(scope="module")
def pacs() -> Iterator[tuple[OrthancServer, dict[str, set[str]]]]:
    """Orthanc holding studies of PAT-1, pat-1 and PAT-1X (two instances in one series each)."""
    reason = missing()
    if reason:
        pytest.fail(f"Orthanc is needed for these tests: {reason}")
    with orthanc(aet="FOLDING") as server:
        studies: dict[str, set[str]] = {}
        for pid, count in PATIENTS.items():
            for _ in range(count):
                study, series = generate_uid(), generate_uid()
                studies.setdefault(pid, set()).add(study)
                for n in (1, 2):
                    ds = instance(study, series, number=n, PatientID=pid, PatientName=f"Patient^{pid}")
                    assert httpx.post(server.url + "/instances", content=to_bytes(ds)).status_code == 200
        yield server, studies


def search_over(server: OrthancServer, tmp_path: Path) -> SearchService:
    remote = DicomwebRemote("folding", DicomwebUpstream(url=server.dicomweb, timeout_s=5))
    cache = InstanceCache.open(tmp_path / "cache", CachePolicy(max_bytes=1 << 30, fresh_s=3600.0))
    return SearchService(ProxyArchive(remote, cache))


def values(results: list[DicomJson], tag: str) -> list[str]:
    return sorted(r[tag]["Value"][0] for r in results)


@pytest.mark.anyio
async def test_a_principal_bound_to_one_patient_sees_that_patient_only(
        pacs: tuple[OrthancServer, dict[str, set[str]]], tmp_path: Path) -> None:
    server, studies = pacs
    search = search_over(server, tmp_path)
    ours = studies["PAT-1"]
    everyone = await search.search(Query(Level.STUDY), Principal("admin"))
    assert set(values(everyone.results, "0020000D")) >= set().union(*studies.values())
    assert {r["00100020"]["Value"][0] for r in everyone.results} >= {"PAT-1", "pat-1"}  # Orthanc folds

    for level, tag, count in ((Level.STUDY, "0020000D", 2), (Level.SERIES, "0020000E", 2),
                              (Level.INSTANCE, "00080018", 4)):
        page = await search.search(Query(level, includefields=("0020000D",)), WARD)
        assert len(set(values(page.results, tag))) == len(page.results) == count, level
        assert {r["0020000D"]["Value"][0] for r in page.results} == ours, level
        assert page.remaining == 0
    # A PatientID key of the caller's own, in another case, is no way around it either.
    other = await search.search(Query(Level.STUDY, matches=(_patient_id("pat-1"),)), WARD)
    assert {r["00100020"]["Value"][0] for r in other.results} <= {"PAT-1"}
    # Paged here, over what passed: two pages of one, the first one saying there is more.
    first = await search.search(Query(Level.STUDY, limit=1), WARD)
    second = await search.search(Query(Level.STUDY, limit=1, offset=1), WARD)
    assert len(first.results) == len(second.results) == 1 and first.remaining == 1 and second.remaining == 0
    assert set(values(first.results + second.results, "0020000D")) == ours
    # Bound to both spellings (a list, checked here already): both seen, and nothing else.
    both = Principal("both", patient_ids=frozenset({"PAT-1", "pat-1"}))
    found = await search.search(Query(Level.STUDY), both)
    assert set(values(found.results, "0020000D")) == ours | studies["pat-1"]
    await search.archive.close()


@pytest.mark.anyio
async def test_results_the_upstream_matched_loosely_are_dropped(tmp_path: Path) -> None:
    """Whatever the upstream answers (even to a list it says it can match), only exact PatientIDs pass."""
    answers = [_study("1.1", "PAT-1"), _study("1.2", "pat-1"), _study("1.3", None), _study("1.4", "PAT-1 "),
               _study("1.5", "PAT-1")]

    class Loose:
        name, capabilities = "loose", Capabilities(uid_lists_anywhere=True)

        async def search(self, query: Query) -> list[DicomJson]:
            return [dict(a) for a in answers]

        async def close(self) -> None:
            pass

    cache = InstanceCache.open(tmp_path / "cache", CachePolicy(max_bytes=1 << 30, fresh_s=3600.0))
    search = SearchService(ProxyArchive(Loose(), cache))  # type: ignore[arg-type]
    page = await search.search(Query(Level.STUDY), WARD)
    assert values(page.results, "0020000D") == ["1.1", "1.5"]
    two = Principal("two", patient_ids=frozenset({"PAT-1", "pat-1"}))
    assert values((await search.search(Query(Level.STUDY), two)).results, "0020000D") == ["1.1", "1.2", "1.5"]
    await search.archive.close()


def test_c_find_from_an_ae_bound_to_one_patient_over_a_dicomweb_upstream(
        pacs: tuple[OrthancServer, dict[str, set[str]]], tmp_path: Path) -> None:
    server, studies = pacs
    settings = Settings(
        data_dir=tmp_path / "data", storage={"fsync": False},
        dimse={"port": free_port(), "peers": [{"ae_title": "WARD", "host": "127.0.0.1", "patient_ids": ["PAT-1"]}]},
        upstreams=[{"name": "up", "kind": "dicomweb", "url": server.dicomweb, "local_ae_title": "UP_VIA_PB",
                    "timeout_seconds": 5}])
    with serve(settings) as running:
        ae = AE(ae_title="WARD")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", running.dimse_port, ae_title="UP_VIA_PB")
        assert assoc.is_established
        try:
            found = {level: _find(assoc, level) for level in ("STUDY", "IMAGE")}
        finally:
            assoc.release()
    assert {pid for pid, _ in found["STUDY"]} == {"PAT-1"}
    assert {study for _, study in found["STUDY"]} == studies["PAT-1"]
    assert len(found["IMAGE"]) == 4 and {pid for pid, _ in found["IMAGE"]} == {"PAT-1"}


def _find(assoc: object, level: str) -> list[tuple[str, str]]:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    identifier.PatientID = ""
    identifier.StudyInstanceUID = ""
    if level == "IMAGE":
        identifier.SOPInstanceUID = ""
    out = []
    for status, ds in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):  # type: ignore[attr-defined]
        if status and status.Status in (0xFF00, 0xFF01) and ds is not None:
            out.append((str(ds.PatientID), str(ds.StudyInstanceUID)))
    return out


def _patient_id(pid: str) -> Match:
    return Match("00100020", "LO", MatchKind.SINGLE, value=pid)


def _study(uid: str, pid: str | None) -> DicomJson:
    out: DicomJson = {"0020000D": {"vr": "UI", "Value": [uid]}}
    if pid is not None:
        out["00100020"] = {"vr": "LO", "Value": [pid]}
    return out
