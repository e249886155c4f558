"""DimseRemote against a real Debian Orthanc on loopback: C-FIND search with paging, C-GET into a spool,
C-MOVE to a storage SCP of the test's own, C-STORE forwarding, and the fault translation (refused,
silent, rejected, aborted, failure statuses), which also uses small pynetdicom SCPs as fake PACS.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from pacsbridge.backends.upstream.dimse import DimseRemote, DimseUpstream
from pacsbridge.domain.errors import NotFound, UpstreamFailed, UpstreamTimeout, UpstreamUnavailable
from pacsbridge.domain.model import DicomJson, Level, Scope
from pacsbridge.domain.query import Match, MatchKind, Query
from pacsbridge.synthetic import MR_IMAGE

from ..support.dicom import instance, record_of, to_bytes, write
from ..support.orthanc import OrthancServer, missing, orthanc
from ..support.servers import free_port

pytestmark = [pytest.mark.orthanc, pytest.mark.anyio]

OUR_AET = "PBTEST"
UNKNOWN_STUDY = "1.2.826.0.1.3680043.8.498.404"
UNKNOWN_CLASS = "1.2.826.0.1.3680043.8.498.999"  # no storage SOP class: Orthanc accepts no context for it


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Receiver:
    """A storage SCP standing for our own SCP: the C-MOVE destination."""

    port: int
    received: list[tuple[str, str]] = field(default_factory=list)  # (SOPInstanceUID, transfer syntax)

    def store(self, event: Any) -> int:
        self.received.append((str(event.request.AffectedSOPInstanceUID), str(event.context.transfer_syntax[0])))
        return 0x0000


@dataclass
class Peer:
    orthanc: OrthancServer
    receiver: Receiver
    studies: dict[str, str]  # PatientID -> StudyInstanceUID
    series: dict[str, list[str]]  # StudyInstanceUID -> its SeriesInstanceUIDs
    sops: dict[str, list[str]]  # StudyInstanceUID -> its SOPInstanceUIDs
    rle_sop: str  # one instance stored RLE-compressed


def upload(server: OrthancServer, ds: Dataset) -> None:
    done = httpx.post(server.url + "/instances", content=to_bytes(ds))
    assert done.status_code == 200, done.text


def mr(ds: Dataset) -> Dataset:
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE
    ds.Modality = "MR"
    return ds


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    reason = missing()
    if reason:
        pytest.fail(f"Orthanc is needed for these tests: {reason}")
    receiver = Receiver(free_port())
    scp = AE(ae_title=OUR_AET)
    for context in AllStoragePresentationContexts:
        scp.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server = scp.start_server(("127.0.0.1", receiver.port), block=False,
                              evt_handlers=[(evt.EVT_C_STORE, receiver.store)])
    try:
        with orthanc(aet="UPSTREAM", modalities={"pb": (OUR_AET, "127.0.0.1", receiver.port)}) as running:
            peer = Peer(running, receiver, {}, {}, {}, "")
            patients = (("PB-A", "Müller^Jürgen", "20240115"), ("PB-B", "Doe^Jane", "20230601"),
                        ("PB-C", "Smith^John", "20220301"))
            for pid, name, date in patients:
                study = peer.studies[pid] = generate_uid()
                ct, other = generate_uid(), generate_uid()
                peer.series[study], peer.sops[study] = [ct], []
                datasets = [instance(study, ct, number=1, PatientID=pid, PatientName=name, StudyDate=date)]
                if pid == "PB-A":  # two series, two SOP classes, one instance RLE-compressed
                    peer.series[study].append(other)
                    datasets.append(instance(study, ct, number=2, PatientID=pid, PatientName=name, StudyDate=date))
                    datasets.append(mr(instance(study, other, number=1, series_number=2, PatientID=pid,
                                                PatientName=name, StudyDate=date)))
                    datasets[1].compress(RLELossless)
                    peer.rle_sop = str(datasets[1].SOPInstanceUID)
                for ds in datasets:
                    upload(running, ds)
                    peer.sops[study].append(str(ds.SOPInstanceUID))
            yield peer
    finally:
        server.shutdown()


class DirSpool:
    """A Spool writing into one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def new_spool_file(self) -> tuple[Path, BinaryIO]:
        path = self.folder / f"{uuid.uuid4().hex}.part"
        return path, open(path, "wb")

    def seal(self, fp: BinaryIO) -> None:
        fp.flush()
        fp.close()


OPENED: list[DimseRemote] = []  # closed after each test: a remote keeps its C-FIND associations


@pytest.fixture(autouse=True)
async def close_remotes() -> AsyncIterator[None]:
    yield
    while OPENED:
        await OPENED.pop().close()


def remote(peer: Peer, **options: Any) -> DimseRemote:
    settings: dict[str, Any] = {"ae_title": "UPSTREAM", "host": "127.0.0.1", "port": peer.orthanc.dicom_port,
                                "calling_ae_title": OUR_AET, "timeout_s": 10, **options}
    OPENED.append(DimseRemote("orthanc", DimseUpstream(**settings)))
    return OPENED[-1]


def values(result: DicomJson, tag: str) -> list[Any]:
    return list(result.get(tag, {}).get("Value") or [])


def uids(results: list[DicomJson], tag: str = "0020000D") -> set[str]:
    return {values(r, tag)[0] for r in results}


def pynetdicom_threads() -> list[threading.Thread]:
    """Our own associations still running (the fake PACS's acceptor threads are its own)."""
    return [t for t in threading.enumerate() if isinstance(t, Association) and t.is_requestor and t.is_alive()]


# --- search ------------------------------------------------------------------------------------

async def test_study_search_by_patient_id_returns_the_required_keys_and_includefields(peer: Peer) -> None:
    query = Query(Level.STUDY, (Match("00100020", "LO", MatchKind.SINGLE, value="PB-A"),),
                  includefields=("00081030",))
    (result,) = await remote(peer).search(query)
    assert values(result, "0020000D") == [peer.studies["PB-A"]]
    assert values(result, "00100010") == [{"Alphabetic": "Müller^Jürgen"}]  # Orthanc answers in ISO_IR 100
    assert values(result, "00081030") == ["CT demo study"]
    assert values(result, "00201208") == [3] and values(result, "00080020") == ["20240115"]
    assert "00080052" not in result and "00080054" not in result  # the exchange's keys, not the study's


async def test_wildcard_name_date_range_and_uid_list(peer: Peer) -> None:
    upstream = remote(peer)
    by_name = await upstream.search(Query(Level.STUDY, (Match("00100010", "PN", MatchKind.WILDCARD, value="M*ller*"),)))
    assert uids(by_name) == {peer.studies["PB-A"]}
    in_2023 = await upstream.search(Query(Level.STUDY, (
        Match("00080020", "DA", MatchKind.RANGE, low="20230101", high="20231231"),)))
    assert uids(in_2023) == {peer.studies["PB-B"]}
    until_2022 = await upstream.search(Query(Level.STUDY, (Match("00080020", "DA", MatchKind.RANGE, high="20221231"),)))
    assert uids(until_2022) == {peer.studies["PB-C"]}
    listed = (peer.studies["PB-A"], peer.studies["PB-C"])
    both = await upstream.search(Query(Level.STUDY, (Match("0020000D", "UI", MatchKind.UID_LIST, values=listed),)))
    assert uids(both) == set(listed)


async def test_series_and_instance_levels(peer: Peer) -> None:
    study = peer.studies["PB-A"]
    upstream = remote(peer)
    in_study = Match("0020000D", "UI", MatchKind.UID_LIST, values=(study,))
    series = await upstream.search(Query(Level.SERIES, (in_study,), extra={"with_parents": True}))
    assert uids(series, "0020000E") == set(peer.series[study])
    assert {values(r, "00080060")[0] for r in series} == {"CT", "MR"}
    assert all(values(r, "00100020") == ["PB-A"] for r in series)  # a parent's key, asked with with_parents
    ct_series = Match("0020000E", "UI", MatchKind.UID_LIST, values=(peer.series[study][0],))
    images = await upstream.search(Query(Level.INSTANCE, (in_study, ct_series), includefields=("00180050",)))
    assert uids(images, "00080018") == set(peer.sops[study][:2])
    assert {values(r, "00200013")[0] for r in images} == {1, 2}
    assert all(values(r, "00180050") == [2] for r in images)  # SliceThickness, an includefield


async def test_limit_and_offset_cut_the_matches_and_cancel_the_rest(peer: Peer) -> None:
    upstream = remote(peer)
    everything = Query(Level.INSTANCE, (Match("00100020", "LO", MatchKind.WILDCARD, value="PB-*"),))
    all_sops = [values(r, "00080018")[0] for r in await upstream.search(everything)]
    assert sorted(all_sops) == sorted(s for sops in peer.sops.values() for s in sops)
    first_two = await upstream.search(Query(Level.INSTANCE, everything.matches, limit=2))
    rest = await upstream.search(Query(Level.INSTANCE, everything.matches, limit=10, offset=2))
    assert [values(r, "00080018")[0] for r in first_two + rest] == all_sops
    middle = await upstream.search(Query(Level.INSTANCE, everything.matches, limit=1, offset=1))
    assert [values(r, "00080018")[0] for r in middle] == all_sops[1:2]
    assert await upstream.search(Query(Level.INSTANCE, everything.matches, limit=0)) == []
    # Orthanc 1.10 logs the C-CANCEL it does not implement, and answers every match anyway.
    assert "cannot handle command: 0xfff" in peer.orthanc.log_tail(200)


# --- fetch -------------------------------------------------------------------------------------

async def test_c_get_of_a_study_spools_every_instance_in_its_stored_transfer_syntax(peer: Peer,
                                                                                     tmp_path: Path) -> None:
    study = peer.studies["PB-A"]
    upstream = remote(peer)
    paths = [p async for p in upstream.fetch(Scope(study), DirSpool(tmp_path))]
    assert sorted(paths) == sorted(tmp_path.iterdir())
    datasets = [pydicom.dcmread(p) for p in paths]
    assert sorted(str(ds.SOPInstanceUID) for ds in datasets) == sorted(peer.sops[study])
    syntaxes = {str(ds.SOPInstanceUID): ds.file_meta.TransferSyntaxUID for ds in datasets}
    assert syntaxes.pop(peer.rle_sop) == RLELossless  # not transcoded on the way
    assert set(syntaxes.values()) == {ExplicitVRLittleEndian}
    assert {str(ds.SOPClassUID) for ds in datasets} == {"1.2.840.10008.5.1.4.1.1.2", MR_IMAGE}
    assert len(pynetdicom_threads()) == 1  # the C-FIND association, kept for the next search; C-GET's ended
    await upstream.close()
    assert not pynetdicom_threads()


async def test_c_get_of_a_series_and_of_one_instance(peer: Peer, tmp_path: Path) -> None:
    study = peer.studies["PB-A"]
    ct_series = peer.series[study][0]
    upstream = remote(peer)
    series = [pydicom.dcmread(p).SOPInstanceUID async for p in upstream.fetch(Scope(study, ct_series),
                                                                              DirSpool(tmp_path / "s"))]
    assert sorted(series) == sorted(peer.sops[study][:2])
    one = Scope(study, ct_series, peer.rle_sop)
    single = [pydicom.dcmread(p).SOPInstanceUID async for p in upstream.fetch(one, DirSpool(tmp_path / "i"))]
    assert single == [peer.rle_sop]


async def test_closing_the_fetch_early_removes_the_files_not_handed_out(peer: Peer, tmp_path: Path) -> None:
    fetching = remote(peer).fetch(Scope(peer.studies["PB-A"]), DirSpool(tmp_path))
    first = await fetching.__anext__()
    await fetching.aclose()
    assert list(tmp_path.iterdir()) == [first]


async def test_c_move_sends_the_study_to_the_destination_and_yields_nothing(peer: Peer, tmp_path: Path) -> None:
    study = peer.studies["PB-B"]
    peer.receiver.received.clear()
    upstream = remote(peer, retrieve="c-move", move_destination=OUR_AET)
    assert [p async for p in upstream.fetch(Scope(study), DirSpool(tmp_path))] == []
    assert [sop for sop, _ in peer.receiver.received] == peer.sops[study]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["c-get", "c-move"])
async def test_an_unknown_study_is_not_found(peer: Peer, tmp_path: Path, mode: str) -> None:
    upstream = remote(peer, retrieve=mode, move_destination=OUR_AET)
    with pytest.raises(NotFound, match=UNKNOWN_STUDY):
        async for _ in upstream.fetch(Scope(UNKNOWN_STUDY), DirSpool(tmp_path)):
            pass
    assert list(tmp_path.iterdir()) == []


async def test_c_move_to_a_destination_orthanc_does_not_know_fails(peer: Peer, tmp_path: Path) -> None:
    upstream = remote(peer, retrieve="c-move", move_destination="NOBODY")
    with pytest.raises(UpstreamFailed, match="NOBODY") as caught:
        async for _ in upstream.fetch(Scope(peer.studies["PB-C"]), DirSpool(tmp_path)):
            pass
    assert "0xC000" in caught.value.message  # Orthanc's status here; the standard one would be 0xA801


# --- store -------------------------------------------------------------------------------------

async def test_store_many_forwards_files_and_reports_each_outcome(peer: Peer, tmp_path: Path) -> None:
    study = generate_uid()
    plain = instance(study, PatientID="PB-S", number=1)
    compressed = instance(study, PatientID="PB-S", number=2)
    compressed.compress(RLELossless)
    unknown_class = instance(study, PatientID="PB-S", number=3)
    unknown_class.SOPClassUID = unknown_class.file_meta.MediaStorageSOPClassUID = UNKNOWN_CLASS
    paths = [write(ds, tmp_path) for ds in (plain, compressed, unknown_class)]
    records = [record_of(p) for p in paths[:2]]
    records.append(replace(records[0], sop_class_uid=UNKNOWN_CLASS))  # our reader refuses a non-storage class
    upstream = remote(peer)
    outcomes = await upstream.store_many(list(zip(paths, records, strict=True)))
    assert outcomes[:2] == [False, False]
    assert isinstance(outcomes[2], UpstreamFailed) and UNKNOWN_CLASS in outcomes[2].message
    assert all(p.exists() for p in paths)  # forwarded, never consumed
    in_study = Match("0020000D", "UI", MatchKind.UID_LIST, values=(study,))
    found = await upstream.search(Query(Level.INSTANCE, (in_study,)))
    assert uids(found, "00080018") == {str(plain.SOPInstanceUID), str(compressed.SOPInstanceUID)}
    stored = httpx.get(f"{peer.orthanc.url}/instances").json()
    syntaxes = {httpx.get(f"{peer.orthanc.url}/instances/{i}/metadata/TransferSyntax").text for i in stored}
    assert str(RLELossless) in syntaxes  # sent as it was, not decompressed


# --- faults ------------------------------------------------------------------------------------

async def test_a_closed_port_is_unavailable_at_once(peer: Peer) -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable, match="orthanc cannot be reached") as caught:
        await remote(peer, port=free_port()).search(Query(Level.STUDY))
    assert type(caught.value) is UpstreamUnavailable
    assert time.monotonic() - started < 2


async def test_a_peer_that_never_answers_times_out(peer: Peer) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match="did not answer"):
            await remote(peer, port=silent.getsockname()[1], timeout_s=1).search(Query(Level.STUDY))
        assert time.monotonic() - started < 5
    assert not pynetdicom_threads()


async def test_orthanc_rejects_a_calling_ae_it_does_not_know(peer: Peer) -> None:
    with pytest.raises(UpstreamUnavailable, match="rejected the association") as caught:
        await remote(peer, calling_ae_title="STRANGER").search(Query(Level.STUDY))
    assert type(caught.value) is UpstreamUnavailable
    assert "Müller" not in caught.value.message and "PB-" not in caught.value.message


@pytest.fixture
def fake_pacs() -> Iterator[tuple[int, dict[str, Any]]]:
    """A pynetdicom Study Root C-FIND SCP whose behaviour a test sets: sleep, abort or a status."""
    behaviour: dict[str, Any] = {}

    behaviour["associations"] = 0

    def find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        sleeps = behaviour.get("sleeps")
        if sleeps:
            time.sleep(sleeps.pop(0))
        if "sleep" in behaviour:
            time.sleep(behaviour["sleep"])
        if behaviour.get("abort"):
            event.assoc.abort()
            return
        if "abort_after" in behaviour:  # later, as a PACS ends an idle association
            threading.Timer(behaviour["abort_after"], event.assoc.abort).start()
        yield behaviour.get("status", 0x0000), None

    def accepted(event: Any) -> None:
        behaviour["associations"] += 1

    ae = AE(ae_title="FAKE")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_FIND, find), (evt.EVT_ACCEPTED, accepted)])
    try:
        yield port, behaviour
    finally:
        server.shutdown()


def fake_remote(port: int, timeout_s: float = 5) -> DimseRemote:
    OPENED.append(DimseRemote("fake", DimseUpstream("FAKE", "127.0.0.1", port, OUR_AET, timeout_s=timeout_s)))
    return OPENED[-1]


async def test_a_c_find_without_an_answer_times_out(fake_pacs: tuple[int, dict[str, Any]]) -> None:
    port, behaviour = fake_pacs
    behaviour["sleep"] = 2.5
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="fake did not answer C-FIND within 1 s"):
        await fake_remote(port, timeout_s=1).search(Query(Level.STUDY))
    assert time.monotonic() - started < 2.5


async def test_an_abort_during_c_find_is_unavailable(fake_pacs: tuple[int, dict[str, Any]]) -> None:
    port, behaviour = fake_pacs
    behaviour["abort"] = True
    with pytest.raises(UpstreamUnavailable, match="fake aborted the association during C-FIND") as caught:
        await fake_remote(port).search(Query(Level.STUDY))
    assert type(caught.value) is UpstreamUnavailable


async def test_a_c_find_failure_status_is_upstream_failed(fake_pacs: tuple[int, dict[str, Any]]) -> None:
    port, behaviour = fake_pacs
    behaviour["status"] = 0xC311
    with pytest.raises(UpstreamFailed, match="status 0xC311"):
        await fake_remote(port).search(Query(Level.STUDY))
    assert not pynetdicom_threads()


# --- kept C-FIND associations ------------------------------------------------------------------

async def test_searches_reuse_one_association_until_closed(peer: Peer) -> None:
    upstream = remote(peer)
    for pid in ("PB-A", "PB-B", "PB-C"):
        query = Query(Level.STUDY, (Match("00100020", "LO", MatchKind.SINGLE, value=pid),))
        assert uids(await upstream.search(query)) == {peer.studies[pid]}
    assert len(pynetdicom_threads()) == 1
    await upstream.close()
    assert not pynetdicom_threads()


async def test_searches_on_one_association_count_on_the_fake(fake_pacs: tuple[int, dict[str, Any]]) -> None:
    port, behaviour = fake_pacs
    upstream = fake_remote(port)
    for _ in range(3):
        assert await upstream.search(Query(Level.STUDY)) == []
    assert behaviour["associations"] == 1


async def test_a_kept_association_the_pacs_ended_is_replaced(fake_pacs: tuple[int, dict[str, Any]]) -> None:
    port, behaviour = fake_pacs
    behaviour["abort_after"] = 0.1
    upstream = fake_remote(port)
    assert await upstream.search(Query(Level.STUDY)) == []
    time.sleep(0.5)  # the fake has aborted the idle association by now
    assert await upstream.search(Query(Level.STUDY)) == []
    assert behaviour["associations"] == 2


async def test_a_kept_association_ended_during_the_request_is_asked_again(
        fake_pacs: tuple[int, dict[str, Any]]) -> None:
    """The abort comes after the request went out and before any answer: the search is asked once more,
    on a new association, and succeeds."""
    port, behaviour = fake_pacs
    behaviour["abort_after"] = 0.4
    behaviour["sleeps"] = [0.0, 1.0]  # the second request is still being "processed" when the abort comes
    upstream = fake_remote(port)
    assert await upstream.search(Query(Level.STUDY)) == []
    time.sleep(0.2)
    started = time.monotonic()
    assert await upstream.search(Query(Level.STUDY)) == []
    assert behaviour["associations"] == 2  # the first (aborted mid-request) and its replacement
    assert time.monotonic() - started < 1.0  # not the fake's 1 s: the answer came on the new one



async def test_a_c_get_of_a_series_after_the_pacs_ended_the_kept_association_is_not_a_fault(
        fake_pacs: tuple[int, dict[str, Any]], tmp_path: Path) -> None:
    """The SOP-class C-FIND before a C-GET of a series also starts over on a new association."""
    port, behaviour = fake_pacs
    behaviour["abort_after"] = 0.4
    behaviour["sleeps"] = [0.0, 1.0]
    upstream = fake_remote(port)
    assert await upstream.search(Query(Level.STUDY)) == []
    time.sleep(0.2)
    with pytest.raises(NotFound):  # the fake holds nothing, and says so on the new association
        async for _ in upstream.fetch(Scope(UNKNOWN_STUDY, UNKNOWN_STUDY + ".1"), DirSpool(tmp_path)):
            pass
    assert behaviour["associations"] == 2

async def test_identifiers_stay_out_of_pynetdicoms_log_even_at_debug(peer: Peer,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """An operator turning pynetdicom's log up to debug an association must not get patient data."""
    caplog.set_level(logging.DEBUG, logger="pynetdicom")
    query = Query(Level.STUDY, (Match("00100020", "LO", MatchKind.SINGLE, value="PB-A"),))
    (result,) = await remote(peer).search(query)
    assert values(result, "00100010") == [{"Alphabetic": "Müller^Jürgen"}]
    logged = "\n".join(record.getMessage() for record in caplog.records if record.name.startswith("pynetdicom"))
    assert "Find Request" in logged  # pynetdicom did log the exchange
    assert "Müller" not in logged and "PB-A" not in logged
