"""The Orthanc peer helper: a Debian Orthanc starts on loopback, takes a STOW-RS and answers QIDO-RS."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from pydicom.uid import generate_uid

from ..support.dicom import instance
from ..support.http import stow_body
from ..support.orthanc import OrthancServer, missing, orthanc

pytestmark = pytest.mark.orthanc


@pytest.fixture(scope="module")
def peer() -> Iterator[OrthancServer]:
    reason = missing()
    if reason:
        pytest.fail(f"Orthanc is needed for these tests: {reason}")
    with orthanc() as server:
        yield server


def test_orthanc_answers_on_loopback_with_the_dicomweb_plugin(peer: OrthancServer) -> None:
    system = httpx.get(peer.url + "/system").json()
    assert system["DicomAet"] == peer.aet and system["DicomPort"] == peer.dicom_port
    plugins = httpx.get(peer.url + "/plugins").json()
    assert "dicom-web" in plugins


def test_stow_to_orthanc_then_qido_finds_the_study(peer: OrthancServer) -> None:
    study = generate_uid()
    parts = [instance(study, number=n, PatientID="PEER-1", PatientName="Müller^Jürgen") for n in (1, 2)]
    body, content_type = stow_body(parts)
    stored = httpx.post(peer.dicomweb + "/studies", content=body,
                        headers={"Content-Type": content_type, "Accept": "application/dicom+json"})
    assert stored.status_code == 200, stored.text
    assert len(stored.json()["00081199"]["Value"]) == 2

    found = httpx.get(peer.dicomweb + "/studies", params={"PatientID": "PEER-1"},
                      headers={"Accept": "application/dicom+json"})
    assert found.status_code == 200, found.text
    (result,) = found.json()
    assert result["0020000D"]["Value"] == [study]
    assert result["00100010"]["Value"][0]["Alphabetic"] == "Müller^Jürgen"
    assert result["00201208"]["Value"] == [2]


def test_stop_removes_the_work_folder() -> None:
    with orthanc() as server:
        workdir = server.workdir
        assert (workdir / "orthanc.json").exists()
    assert server.process.poll() is not None
    assert not workdir.exists()
