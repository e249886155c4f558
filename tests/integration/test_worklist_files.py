"""The worklist folder (``orders.worklist_folder``) read by a real Orthanc and its ModalityWorklists plugin:
an EMR (fhirpy) posts an active ServiceRequest to pacsbridge, a modality (DCMTK ``findscu -W``) finds it on
**Orthanc**'s worklist with the accented name intact; the request is revoked and the entry is gone. The
folder itself, without Orthanc: an operator's own ``.wl`` files survive a re-sync, and a failed write
leaves neither half a ``.wl`` nor a temporary file, and fails no caller.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import httpx
import pydicom
import pytest
from fhirpy import SyncFHIRClient
from pydicom.dataset import Dataset

from pacsbridge.backends.worklist_files import WorklistFolder
from pacsbridge.domain.orders import ImagingRequest, RequestStatus, ScheduledStep, StepStatus
from pacsbridge.formats.worklist import worklist_uid
from pacsbridge.services.orders import worklist_item
from pacsbridge.settings import Settings

from ..support.orthanc import WORKLISTS_PLUGIN, OrthancServer, missing, orthanc
from ..support.servers import RunningServer, serve

ENV = {**os.environ, "TCP_NODELAY": "1"}
PATIENT_SYSTEM = "urn:oid:1.2.276.0.7230010.3.0.1"
FHIR_JSON = "application/fhir+json"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- with Orthanc ------------------------------------------------------------------------------------

@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "worklists"
    path.mkdir()
    return path


@pytest.fixture
def worklist_server(folder: Path) -> Iterator[OrthancServer]:
    reason = missing(WORKLISTS_PLUGIN)
    if reason:
        pytest.fail(f"Orthanc with its worklists plugin is needed for this test: {reason}")
    with orthanc(plugins=[WORKLISTS_PLUGIN], modalities={"ct01": ("CT01", "127.0.0.1", 104)},
                 extra_config={"Worklists": {"Enable": True, "Database": str(folder)}}) as server:
        yield server


@pytest.fixture
def bridge(tmp_path: Path, folder: Path) -> Iterator[RunningServer]:
    settings = Settings(data_dir=tmp_path / "data", storage={"fsync": False}, auth={"open_routes": ["/fhir"]},
                        fhir={"patient_identifier_system": PATIENT_SYSTEM},
                        orders={"worklist_folder": folder, "timezone": "Europe/Berlin"})
    with serve(settings) as running:
        yield running


def orthanc_worklist(server: OrthancServer, out: Path) -> list[Dataset]:
    out.mkdir(parents=True)
    done = subprocess.run(["findscu", "-W", "-aet", "CT01", "-aec", server.aet, "-X", "-od", str(out),
                           "-k", "PatientName", "-k", "PatientID", "-k", "AccessionNumber",
                           "-k", "ScheduledProcedureStepSequence[0].Modality=CT",
                           "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
                           "127.0.0.1", str(server.dicom_port)],
                          capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 0, done.stdout + done.stderr + server.log_tail()
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def only_finished_files(folder: Path) -> list[str]:
    """The folder's file names, checked to be finished ``pacsbridge-*.wl`` files (no temporary file)."""
    names = sorted(p.name for p in folder.iterdir())
    assert all(n.startswith("pacsbridge-") and n.endswith(".wl") for n in names), names
    return names


@pytest.mark.orthanc
def test_orthanc_serves_the_folder_pacsbridge_writes(worklist_server: OrthancServer, bridge: RunningServer,
                                                      folder: Path, tmp_path: Path) -> None:
    emr = SyncFHIRClient(bridge.url + "/fhir")
    patient = emr.resource("Patient", identifier=[{"system": PATIENT_SYSTEM, "value": "PID-WL-1"}],
                           name=[{"use": "official", "family": "Gómez", "given": ["Zoë"]}],
                           birthDate="1970-05-06", gender="female")
    patient.save()
    order = emr.resource(
        "ServiceRequest", status="active", intent="order", subject={"reference": f"Patient/{patient.id}"},
        code={"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}],
              "text": "CT Schädel"},
        occurrenceDateTime=date.today().isoformat() + "T09:00:00+01:00",
        performer=[{"identifier": {"system": "urn:dicom:ae", "value": "CT01"}}])
    order.save()

    stored = httpx.get(f"{bridge.url}/fhir/ServiceRequest/{order.id}").json()
    accession = next(i["value"] for i in stored["identifier"]
                     if i.get("type", {}).get("coding", [{}])[0].get("code") == "ACSN")
    assert len(only_finished_files(folder)) == 1

    (item,) = orthanc_worklist(worklist_server, tmp_path / "found")
    assert str(item.PatientName) == "Gómez^Zoë" and item.PatientID == "PID-WL-1"
    assert item.AccessionNumber == accession
    assert item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID == f"{accession}-1"

    revoked = httpx.put(f"{bridge.url}/fhir/ServiceRequest/{order.id}", json={**stored, "status": "revoked"},
                        headers={"If-Match": f'W/"{stored["meta"]["versionId"]}"', "Content-Type": FHIR_JSON})
    assert revoked.status_code == 200, revoked.text
    assert only_finished_files(folder) == []
    assert orthanc_worklist(worklist_server, tmp_path / "after") == []


# --- the folder alone --------------------------------------------------------------------------------

def request(request_id: str, status: RequestStatus = RequestStatus.ACTIVE,
            step_status: StepStatus = StepStatus.SCHEDULED) -> ImagingRequest:
    accession = f"ACC{request_id}"
    step = {"00400001": {"vr": "AE", "Value": ["CT01"]}, "00400002": {"vr": "DA", "Value": ["20260105"]},
            "00400003": {"vr": "TM", "Value": ["090000"]}, "00080060": {"vr": "CS", "Value": ["CT"]},
            "00400009": {"vr": "SH", "Value": [f"{accession}-1"]}}
    attributes = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Gómez^Zoë"}]},
                  "00100020": {"vr": "LO", "Value": ["PID-WL-2"]},
                  "00080050": {"vr": "SH", "Value": [accession]},
                  "00401001": {"vr": "SH", "Value": [accession]},
                  "0020000D": {"vr": "UI", "Value": [f"2.25.{1000 + int(request_id)}"]}}
    return ImagingRequest(request_id, status, accession, accession, attributes["0020000D"]["Value"][0], "PID-WL-2",
                          attributes, (ScheduledStep(f"{accession}-1", step_status, "CT01", "CT", "20260105",
                                                     "090000", step),))


def file_name(r: ImagingRequest) -> str:
    return f"pacsbridge-{worklist_uid(worklist_item(r, r.steps[0]))}.wl"


@pytest.mark.anyio
async def test_sync_all_keeps_the_operators_own_files_and_drops_stale_ones(tmp_path: Path) -> None:
    wl = WorklistFolder(tmp_path, fsync=False)
    kept, stale, ended = request("1"), request("2"), request("3")
    own = tmp_path / "manual-entry.wl"
    own.write_bytes(b"an operator's own worklist file")
    await wl.publish(stale)
    await wl.publish(ended)
    (tmp_path / ".pacsbridge-x.1234.tmp").write_bytes(b"half")  # a crash mid-write
    await wl.publish(request("3", step_status=StepStatus.COMPLETED))
    assert not (tmp_path / file_name(ended)).exists()

    await wl.sync_all([kept])

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([own.name, file_name(kept)])
    assert own.read_bytes() == b"an operator's own worklist file"
    written = pydicom.dcmread(tmp_path / file_name(kept))
    assert str(written.PatientName) == "Gómez^Zoë" and written.SpecificCharacterSet == "ISO_IR 192"
    assert written.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "SCHEDULED"


@pytest.mark.anyio
async def test_a_failed_write_leaves_no_file_and_fails_no_caller(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    r = request("4")
    folder = tmp_path / "worklists"
    (folder / file_name(r)).mkdir(parents=True)  # the rename cannot replace a directory
    (tmp_path / "a-file").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="pacsbridge.backends.worklist_files"):
        await WorklistFolder(folder, fsync=False).publish(r)
        await WorklistFolder(tmp_path / "a-file" / "worklists").publish(r)  # no folder can be made there
    assert [p.name for p in folder.iterdir()] == [file_name(r)]  # no temporary file left behind
    assert [rec.levelno for rec in caplog.records] == [logging.WARNING, logging.WARNING]
    assert "ServiceRequest/4" in caplog.text
    assert "Gómez" not in caplog.text and "PID-WL-2" not in caplog.text and "ACC4" not in caplog.text
