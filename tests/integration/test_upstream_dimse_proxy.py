"""pacsbridge in front of an Orthanc reachable only over DIMSE (its DICOMweb plugin off): QIDO-RS as
C-FIND, WADO-RS from instances fetched by C-MOVE into pacsbridge's own SCP (and by C-GET for a second
upstream), STOW-RS forwarded by C-STORE, a DIMSE client at the upstream's own called AE title, and a
stalled upstream (SIGSTOP) answered in time, then recovery.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from pacsbridge.domain.errors import NotFound
from pacsbridge.domain.model import Scope
from pacsbridge.settings import Settings

from ..support.dicom import instance, to_bytes
from ..support.http import stow_body
from ..support.orthanc import OrthancServer, missing, orthanc
from ..support.servers import RunningServer, free_port, serve

pytestmark = pytest.mark.orthanc

JSON = {"Accept": "application/dicom+json"}
ENV = {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class Proxy:
    pacs: OrthancServer
    server: RunningServer
    study: str
    series: str
    sops: list[str]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    reason = missing()
    if reason:
        pytest.fail(f"Orthanc is needed for these tests: {reason}")
    dimse_port = free_port()
    modalities = {"pb": ("PACSBRIDGE", "127.0.0.1", dimse_port), "pbget": ("PBGET", "127.0.0.1", 1)}
    with orthanc(aet="DIMSEONLY", modalities=modalities, extra_config={"DicomWeb": {"Enable": False}}) as pacs:
        assert httpx.get(pacs.url + "/dicom-web/studies").status_code == 404  # DIMSE is the only way in
        study, series = generate_uid(), generate_uid()
        sops = []
        for n in (1, 2, 3, 4):
            ds = instance(study, series, number=n, PatientID="PAT-D", PatientName="Ødegård^Åse",
                          SpecificCharacterSet="ISO_IR 192", PixelSpacing=[0.7, 0.7])
            sops.append(str(ds.SOPInstanceUID))
            assert httpx.post(pacs.url + "/instances", content=to_bytes(ds)).status_code == 200
        common = {"kind": "dimse", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port,
                  "timeout_seconds": 3, "cache": {"fresh_seconds": 3600}}
        settings = Settings(
            data_dir=tmp_path_factory.mktemp("dimse-proxy") / "data", storage={"fsync": False},
            auth={"open_routes": ["/dicomweb", "/upstreams"]}, archive="pacs",
            dimse={"port": dimse_port, "peers": [{"ae_title": "VIEWER", "host": "127.0.0.1"}]},
            upstreams=[{"name": "pacs", "retrieve": "c-move", **common},
                       {"name": "pacsget", "retrieve": "c-get", "calling_ae_title": "PBGET",
                        "local_ae_title": "PACS_VIA_PB", **common}])
        with serve(settings) as server:
            yield Proxy(pacs, server, study, series, sops)


def test_qido_is_answered_by_c_find(proxy: Proxy) -> None:
    found = httpx.get(proxy.server.dicomweb + "/studies", params={"PatientID": "PAT-D"}, headers=JSON)
    assert found.status_code == 200, found.text
    (study,) = found.json()
    assert study["0020000D"]["Value"] == [proxy.study]
    assert study["00100010"]["Value"][0]["Alphabetic"] == "Ødegård^Åse"
    assert study["00201208"]["Value"] == [4]
    instances = httpx.get(f"{proxy.server.dicomweb}/studies/{proxy.study}/series/{proxy.series}/instances",
                          headers=JSON).json()
    assert {i["00080018"]["Value"][0] for i in instances} == set(proxy.sops)


def test_wado_serves_instances_moved_into_the_cache_by_c_move(proxy: Proxy) -> None:
    metadata = httpx.get(f"{proxy.server.dicomweb}/studies/{proxy.study}/metadata", headers=JSON, timeout=60)
    assert metadata.status_code == 200, metadata.text
    assert {m["00080018"]["Value"][0] for m in metadata.json()} == set(proxy.sops)
    assert all(m["00280030"]["Value"] == [0.7, 0.7] for m in metadata.json())
    frame = httpx.get(f"{proxy.server.dicomweb}/studies/{proxy.study}/series/{proxy.series}/instances/"
                      f"{proxy.sops[0]}/frames/1",
                      headers={"Accept": "multipart/related; type=application/octet-stream"})
    assert frame.status_code == 200
    # The moved instances went into the upstream's cache, not into the embedded archive.
    services = proxy.server.app.state.services
    cached = anyio.run(services.upstreams["pacs"].cache.local.locate, Scope(proxy.study))
    assert {c.ref.sop_uid for c in cached} == set(proxy.sops)
    with pytest.raises(NotFound):
        anyio.run(services.archive.locate, Scope(proxy.study))


def test_the_c_get_upstream_at_its_own_root_and_called_ae_title(proxy: Proxy, tmp_path: Path) -> None:
    root = proxy.server.url + "/upstreams/pacsget/dicomweb"
    metadata = httpx.get(f"{root}/studies/{proxy.study}/series/{proxy.series}/metadata", headers=JSON, timeout=60)
    assert metadata.status_code == 200 and len(metadata.json()) == 4
    (tmp_path / "find").mkdir()
    done = subprocess.run(
        ["findscu", "-S", "-aet", "VIEWER", "-aec", "PACS_VIA_PB", "-X", "-od", str(tmp_path / "find"),
         "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=PAT-D", "-k", "StudyInstanceUID", "-k", "RetrieveAETitle",
         "127.0.0.1", str(proxy.server.dimse_port)], capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 0, done.stderr
    (answer,) = [pydicom.dcmread(p) for p in (tmp_path / "find").glob("rsp*.dcm")]
    assert answer.StudyInstanceUID == proxy.study and answer.RetrieveAETitle == "PACS_VIA_PB"
    refused = subprocess.run(["echoscu", "-aet", "VIEWER", "-aec", "NOBODY", "127.0.0.1",
                              str(proxy.server.dimse_port)], capture_output=True, text=True, timeout=60, env=ENV)
    assert refused.returncode != 0 and "Called AE Title Not Recognized" in refused.stderr + refused.stdout


def test_stow_is_forwarded_by_c_store(proxy: Proxy) -> None:
    study = generate_uid()
    body, content_type = stow_body([instance(study, number=n, PatientID="PAT-STOW") for n in (1, 2)])
    stored = httpx.post(proxy.server.dicomweb + "/studies", content=body, timeout=60,
                        headers={"Content-Type": content_type, **JSON})
    assert stored.status_code == 200, stored.text
    found = httpx.post(proxy.pacs.url + "/tools/find", json={"Level": "Study", "Query": {"PatientID": "PAT-STOW"},
                                                             "Expand": True}).json()
    assert [s["MainDicomTags"]["StudyInstanceUID"] for s in found] == [study]


def test_a_stalled_pacs_is_504_in_time_and_service_recovers(proxy: Proxy) -> None:
    os.kill(proxy.pacs.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        stalled = httpx.get(proxy.server.dicomweb + "/studies", params={"PatientID": "PAT-D"}, headers=JSON,
                            timeout=30)
        assert stalled.status_code == 504, stalled.text
        assert time.monotonic() - started < 10
    finally:
        os.kill(proxy.pacs.pid, signal.SIGCONT)
    recovered = httpx.get(proxy.server.dicomweb + "/studies", params={"PatientID": "PAT-D"}, headers=JSON)
    assert recovered.status_code == 200 and len(recovered.json()) == 1


def test_concurrent_moves_of_different_studies_each_get_their_own_instances(proxy: Proxy) -> None:
    """Several C-MOVEs at once (one per study, from several clients): every instance delivered goes into
    the cache, each move completes on its own final response, each answer holds exactly its study."""
    import threading

    studies: dict[str, set[str]] = {}
    for p in range(4):
        study, series = generate_uid(), generate_uid()
        studies[study] = set()
        for n in range(1, 4):
            ds = instance(study, series, number=n, PatientID=f"PAT-M{p}")
            studies[study].add(str(ds.SOPInstanceUID))
            assert httpx.post(proxy.pacs.url + "/instances", content=to_bytes(ds)).status_code == 200
    answers: dict[str, set[str]] = {}

    def read(study: str) -> None:
        metadata = httpx.get(f"{proxy.server.dicomweb}/studies/{study}/metadata", headers=JSON, timeout=60)
        answers[study] = {m["00080018"]["Value"][0] for m in metadata.json()} if metadata.is_success else set()

    readers = [threading.Thread(target=read, args=(study,)) for study in studies for _ in range(2)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(timeout=120)
    assert answers == studies
