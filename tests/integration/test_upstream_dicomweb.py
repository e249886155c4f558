"""pacsbridge in front of an Orthanc reachable only over DICOMweb (basic auth): QIDO, WADO-RS, STOW-RS
through the proxy, metadata from the real instances, the cache, DIMSE clients (findscu, getscu, storescu)
over the DICOMweb archive, and upstream faults (unreachable 503, stalled 504, refused 502) with recovery.

The stalled upstream is the real Orthanc stopped with SIGSTOP, then resumed with SIGCONT.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from pacsbridge.settings import Settings

from ..support.dicom import instance, to_bytes, write
from ..support.http import split_multipart, stow_body
from ..support.orthanc import OrthancServer, missing, orthanc
from ..support.servers import RunningServer, free_port, serve

pytestmark = pytest.mark.orthanc

USER, PASSWORD = "pacsbridge", "upstream-pw-for-tests"
ENV = {**os.environ, "TCP_NODELAY": "1"}
JSON = {"Accept": "application/dicom+json"}
OPEN = {"open_routes": ["/dicomweb", "/upstreams"]}


@dataclass
class Proxy:
    orthanc: OrthancServer
    server: RunningServer
    studies: dict[str, str]  # patient id -> study uid
    series: dict[str, list[str]]  # study uid -> series uids
    files: dict[str, bytes]  # sop uid -> Part 10 bytes as sent to Orthanc


def upstream(url: str, **over: object) -> dict[str, object]:
    return {"name": "orthanc", "kind": "dicomweb", "url": url, "timeout_seconds": 3, "connect_timeout_seconds": 2,
            "auth": {"type": "basic", "username": USER, "password": PASSWORD},
            "cache": {"fresh_seconds": 3600}, **over}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    reason = missing()
    if reason:
        pytest.fail(f"Orthanc is needed for these tests: {reason}")
    tmp = tmp_path_factory.mktemp("upstream-dicomweb")
    with orthanc(aet="UPSTREAM", extra_config={"AuthenticationEnabled": True,
                                              "RegisteredUsers": {USER: PASSWORD}}) as peer:
        studies, series, files = {}, {}, {}
        for pid, name, count in (("PAT-A", "Müller^Jürgen", 2), ("PAT-B", "Doe^Jane", 1)):
            study = generate_uid()
            studies[pid] = study
            series[study] = [generate_uid() for _ in range(count)]
            parts = []
            for s, series_uid in enumerate(series[study], start=1):
                for n in (1, 2, 3):
                    ds = instance(study, series_uid, number=n, series_number=s, PatientID=pid, PatientName=name,
                                  AccessionNumber=f"ACC-{pid}", SpecificCharacterSet="ISO_IR 192",
                                  PixelSpacing=[0.5, 0.5], SliceThickness="2.5")
                    data = to_bytes(ds)
                    files[str(ds.SOPInstanceUID)] = data
                    parts.append(data)
            body, content_type = stow_body(parts)
            stored = httpx.post(peer.dicomweb + "/studies", content=body, auth=(USER, PASSWORD),
                                headers={"Content-Type": content_type, **JSON})
            assert stored.status_code == 200, stored.text
        settings = Settings(data_dir=tmp / "data", storage={"fsync": False}, auth=OPEN,
                            upstreams=[upstream(peer.dicomweb)], archive="orthanc",
                            dimse={"peers": [
                                {"ae_title": "FINDSCU", "host": "127.0.0.1", "scopes": ["dicomweb.read"]},
                                {"ae_title": "STORESCU", "host": "127.0.0.1", "scopes": ["dicomweb.write"]}]})
        with serve(settings) as server:
            yield Proxy(peer, server, studies, series, files)


def uids(results: list[dict], tag: str = "0020000D") -> set[str]:
    return {r[tag]["Value"][0] for r in results}


def test_qido_goes_to_the_upstream_and_results_are_addressed_to_us(proxy: Proxy) -> None:
    found = httpx.get(proxy.server.dicomweb + "/studies", params={"PatientID": "PAT-A"}, headers=JSON)
    assert found.status_code == 200, found.text
    (study,) = found.json()
    assert study["0020000D"]["Value"] == [proxy.studies["PAT-A"]]
    assert study["00100010"]["Value"][0]["Alphabetic"] == "Müller^Jürgen"
    assert study["00201208"]["Value"] == [6]
    assert study["00081190"]["Value"][0] == f"{proxy.server.dicomweb}/studies/{proxy.studies['PAT-A']}"
    everyone = httpx.get(proxy.server.dicomweb + "/studies", params={"PatientName": "*"}, headers=JSON).json()
    assert uids(everyone) == set(proxy.studies.values())
    # Series of one study, with an includefield the upstream returns for us.
    study_uid = proxy.studies["PAT-A"]
    series = httpx.get(f"{proxy.server.dicomweb}/studies/{study_uid}/series", headers=JSON,
                       params={"includefield": "0008103E"}).json()
    assert uids(series, "0020000E") == set(proxy.series[study_uid])
    # Paging: the upstream is asked one more than the page, so the 299 warning is right.
    page = httpx.get(proxy.server.dicomweb + "/instances", params={"StudyInstanceUID": study_uid, "limit": "4"},
                     headers=JSON)
    assert len(page.json()) == 4 and page.headers["warning"].startswith("299")


def test_the_upstream_is_also_served_at_its_own_root(proxy: Proxy) -> None:
    root = proxy.server.url + "/upstreams/orthanc/dicomweb"
    found = httpx.get(root + "/studies", params={"PatientID": "PAT-B"}, headers=JSON).json()
    assert uids(found) == {proxy.studies["PAT-B"]}
    assert found[0]["00081190"]["Value"][0].startswith(root + "/studies/")


def test_metadata_comes_from_the_real_instances(proxy: Proxy) -> None:
    study_uid = proxy.studies["PAT-A"]
    answer = httpx.get(f"{proxy.server.dicomweb}/studies/{study_uid}/metadata", headers=JSON)
    assert answer.status_code == 200, answer.text
    metadata = answer.json()
    assert len(metadata) == 6
    first = metadata[0]
    # Attributes no QIDO answer carries: only the instances themselves have them.
    assert first["00280030"]["Value"] == [0.5, 0.5]
    assert first["00180050"]["Value"] == [2.5]
    assert first["7FE00010"]["BulkDataURI"].startswith(proxy.server.dicomweb + "/studies/")


def test_instances_frames_and_rendered_images_through_the_proxy(proxy: Proxy) -> None:
    study_uid = proxy.studies["PAT-B"]
    series_uid = proxy.series[study_uid][0]
    retrieved = httpx.get(f"{proxy.server.dicomweb}/studies/{study_uid}",
                          headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert retrieved.status_code == 200
    parts = split_multipart(retrieved.content, retrieved.headers["content-type"])
    assert len(parts) == 3
    for _headers, data in parts:
        ds = pydicom.dcmread(io.BytesIO(data))
        original = pydicom.dcmread(io.BytesIO(proxy.files[str(ds.SOPInstanceUID)]))
        assert ds.PixelData == original.PixelData and ds.PatientName == original.PatientName
    sop = pydicom.dcmread(io.BytesIO(parts[0][1])).SOPInstanceUID
    base = f"{proxy.server.dicomweb}/studies/{study_uid}/series/{series_uid}/instances/{sop}"
    frame = httpx.get(base + "/frames/1", headers={"Accept": "multipart/related; type=application/octet-stream"})
    assert frame.status_code == 200
    (_h, pixels), = split_multipart(frame.content, frame.headers["content-type"])
    assert pixels == pydicom.dcmread(io.BytesIO(proxy.files[str(sop)])).PixelData
    rendered = httpx.get(base + "/rendered", headers={"Accept": "image/png"})
    assert rendered.status_code == 200 and rendered.content.startswith(b"\x89PNG")


def test_unknown_study_is_404(proxy: Proxy) -> None:
    answer = httpx.get(f"{proxy.server.dicomweb}/studies/{generate_uid()}/metadata", headers=JSON)
    assert answer.status_code == 404, answer.text


def test_stow_through_the_proxy_lands_in_the_upstream(proxy: Proxy) -> None:
    study = generate_uid()
    body, content_type = stow_body([instance(study, number=n, PatientID="PAT-STOW") for n in (1, 2)])
    stored = httpx.post(proxy.server.dicomweb + "/studies", content=body,
                        headers={"Content-Type": content_type, **JSON})
    assert stored.status_code == 200, stored.text
    assert len(stored.json()["00081199"]["Value"]) == 2
    direct = httpx.get(proxy.orthanc.dicomweb + "/studies", params={"PatientID": "PAT-STOW"},
                       auth=(USER, PASSWORD), headers=JSON).json()
    assert uids(direct) == {study} and direct[0]["00201208"]["Value"] == [2]


def dcmtk(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 0, f"{args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def test_dimse_clients_over_the_dicomweb_only_upstream(proxy: Proxy, tmp_path: Path) -> None:
    port = str(proxy.server.dimse_port)
    (tmp_path / "find").mkdir()
    dcmtk("findscu", "-S", "-aet", "FINDSCU", "-aec", "PACSBRIDGE", "-X", "-od", str(tmp_path / "find"),
          "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=PAT-A", "-k", "StudyInstanceUID",
          "-k", "NumberOfStudyRelatedInstances", "127.0.0.1", port)
    (answer,) = [pydicom.dcmread(p) for p in sorted((tmp_path / "find").glob("rsp*.dcm"))]
    assert answer.StudyInstanceUID == proxy.studies["PAT-A"] and answer.NumberOfStudyRelatedInstances == 6
    (tmp_path / "get").mkdir()
    dcmtk("getscu", "-S", "-aet", "FINDSCU", "-aec", "PACSBRIDGE", "-od", str(tmp_path / "get"),
          "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={proxy.studies['PAT-B']}", "127.0.0.1", port)
    got = {str(pydicom.dcmread(p).SOPInstanceUID) for p in (tmp_path / "get").iterdir()}
    assert len(got) == 3 and got <= set(proxy.files)
    # A modality's C-STORE goes on to the DICOMweb archive.
    study = generate_uid()
    for n in (1, 2):
        write(instance(study, number=n, PatientID="PAT-CSTORE"), tmp_path / "send")
    dcmtk("storescu", "-aet", "STORESCU", "-aec", "PACSBRIDGE", "+sd", "127.0.0.1", port, str(tmp_path / "send"))
    direct = httpx.get(proxy.orthanc.dicomweb + "/studies", params={"PatientID": "PAT-CSTORE"},
                       auth=(USER, PASSWORD), headers=JSON).json()
    assert uids(direct) == {study}


def test_a_stalled_upstream_is_504_in_time_the_cache_still_serves_and_service_recovers(proxy: Proxy) -> None:
    study_uid = proxy.studies["PAT-A"]
    cached = f"{proxy.server.dicomweb}/studies/{study_uid}/metadata"
    assert httpx.get(cached, headers=JSON).status_code == 200  # fetched (or already cached)
    os.kill(proxy.orthanc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        stalled = httpx.get(proxy.server.dicomweb + "/studies", params={"PatientID": "PAT-A"}, headers=JSON,
                            timeout=30)
        took = time.monotonic() - started
        assert stalled.status_code == 504, stalled.text
        assert "did not answer in time" in stalled.json()["message"] and took < 10
        # What was fetched is served without the upstream.
        again = httpx.get(cached, headers=JSON, timeout=30)
        assert again.status_code == 200 and len(again.json()) == 6
    finally:
        os.kill(proxy.orthanc.pid, signal.SIGCONT)
    recovered = httpx.get(proxy.server.dicomweb + "/studies", params={"PatientID": "PAT-A"}, headers=JSON)
    assert recovered.status_code == 200 and uids(recovered.json()) == {study_uid}


def test_unreachable_and_refusing_upstreams(proxy: Proxy, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/dicom-web"
    wrong_password = upstream(proxy.orthanc.dicomweb, name="badauth",
                              auth={"type": "basic", "username": USER, "password": "wrong"})
    settings = Settings(data_dir=tmp_path / "data", storage={"fsync": False}, auth=OPEN, dimse={"enabled": False},
                        upstreams=[upstream(closed), wrong_password], archive="orthanc")
    with serve(settings) as server:
        away = httpx.get(server.dicomweb + "/studies", headers=JSON)
        assert away.status_code == 503 and away.headers["retry-after"]
        assert "cannot be reached" in away.json()["message"]
        body, content_type = stow_body([instance(PatientID="PAT-LOST")])
        refused = httpx.post(server.dicomweb + "/studies", content=body, headers={"Content-Type": content_type, **JSON})
        assert refused.status_code == 503, refused.text
        (failed,) = refused.json()["00081198"]["Value"]
        assert failed["00081197"]["Value"] == [0xA700]
        bad = httpx.get(server.url + "/upstreams/badauth/dicomweb/studies", headers=JSON)
        assert bad.status_code == 502 and "refused our credentials" in bad.json()["message"]
