"""The whole imaging order loop with real clients, pacsbridge run as an operator runs it (``pacsbridge serve``):

1. an EMR (the fhirpy client) creates a Patient and posts a ServiceRequest;
2. the modality (DCMTK ``findscu -W``) finds it on the worklist;
3. it reports MPPS IN PROGRESS (a pynetdicom SCU) while the subscriber is down, and pacsbridge is killed
   (SIGKILL) and started again;
4. it reports MPPS COMPLETED and sends the images (``storescu``) with the worklist's attributes;
5. the study becomes stable and is linked: ImagingStudy.basedOn points to the ServiceRequest, which is
   completed, and the subscriber (a webhook and a FHIR server in this test) got every change exactly
   once by idempotency key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import yaml
from fhirpy import SyncFHIRClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from ..support.dicom import instance, write
from ..support.servers import free_port

ENV = {**os.environ, "TCP_NODELAY": "1"}
PACSBRIDGE = [sys.executable, "-m", "pacsbridge.cli"]
PATIENT_SYSTEM = "urn:oid:1.2.276.0.7230010.3.0.1"
TODAY = date.today().strftime("%Y%m%d")


class Subscriber:
    """A webhook receiver and a FHIR server in one: records every request; answers 503 while ``down``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.down = False
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if outer.down:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with outer.lock:
                    outer.requests.append({"method": self.command, "path": self.path,
                                           "key": self.headers.get("Idempotency-Key"),
                                           "body": json.loads(body) if body else None})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_POST = do_PUT = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def received(self, method: str) -> list[dict[str, Any]]:
        """Requests of one method, one per idempotency key (what a de-duplicating subscriber keeps)."""
        with self.lock:
            seen: dict[str, dict[str, Any]] = {}
            for r in self.requests:
                if r["method"] == method:
                    seen.setdefault(r["key"], r)
            return list(seen.values())

    def stop(self) -> None:
        self.server.shutdown()


class Pacsbridge:
    """``pacsbridge serve`` in a child process, which the test may kill and start again."""

    def __init__(self, folder: Path, subscriber: Subscriber) -> None:
        self.http_port, self.dimse_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.config = folder / "pacsbridge.yaml"
        self.log = folder / "pacsbridge.log"
        self.config.write_text(yaml.safe_dump({
            "data_dir": str(folder / "data"), "port": self.http_port, "workers": 1,
            "storage": {"fsync": False},
            "auth": {"open_routes": ["/fhir"]},
            "dimse": {"port": self.dimse_port, "peers": [
                {"ae_title": "CT01", "host": "127.0.0.1",
                 "scopes": ["worklist.read", "worklist.write", "dicomweb.write"]},
            ]},
            "fhir": {"patient_identifier_system": PATIENT_SYSTEM},
            "orders": {"stable_seconds": 1, "timezone": "Europe/Berlin"},
            "notifications": {"retry_base_seconds": 0.2, "retry_max_seconds": 1, "lease_seconds": 5,
                              "subscribers": [
                                  {"name": "emr-hook", "kind": "webhook", "url": subscriber.url + "/hook"},
                                  {"name": "emr-fhir", "kind": "fhir", "url": subscriber.url + "/fhir"}]},
        }))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([*PACSBRIDGE, "serve", "--config", str(self.config)], stdout=out,
                                         stderr=subprocess.STDOUT, env=ENV, cwd=Path(__file__).parents[2])
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.2)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[tuple[Pacsbridge, Subscriber]]:
    subscriber = Subscriber()
    bridge = Pacsbridge(tmp_path, subscriber)
    bridge.start()
    try:
        yield bridge, subscriber
    finally:
        bridge.stop()
        subscriber.stop()


def worklist(bridge: Pacsbridge, out: Path, *keys: str) -> list[Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["findscu", "-W", "-aet", "CT01", "-aec", "PACSBRIDGE", "-X", "-od", str(out),
                           *[a for k in keys for a in ("-k", k)], "127.0.0.1", str(bridge.dimse_port)],
                          capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def mpps(bridge: Pacsbridge, create: Dataset | None, uid: str, modification: Dataset | None = None) -> int:
    ae = AE(ae_title="CT01")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", bridge.dimse_port, ae_title="PACSBRIDGE")
    assert assoc.is_established
    try:
        if create is not None:
            status, _ = assoc.send_n_create(create, ModalityPerformedProcedureStep, uid)
        else:
            status, _ = assoc.send_n_set(modification, ModalityPerformedProcedureStep, uid)
        return int(status.Status)
    finally:
        assoc.release()


def wait_for(what: str, check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_order_to_worklist_to_mpps_to_linked_study_survives_a_kill(loop: tuple[Pacsbridge, Subscriber],
                                                                     tmp_path: Path) -> None:
    bridge, subscriber = loop
    emr = SyncFHIRClient(bridge.url + "/fhir")

    # 1. The EMR's patient and order.
    patient = emr.resource("Patient", identifier=[{"system": PATIENT_SYSTEM, "value": "PID-LOOP-1"}],
                           name=[{"use": "official", "family": "Müller", "given": ["Jürgen"]}],
                           birthDate="1961-02-03", gender="male")
    patient.save()
    order = emr.resource(
        "ServiceRequest", status="active", intent="order", subject={"reference": f"Patient/{patient.id}"},
        code={"coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"},
                         {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}],
              "text": "CT chest"},
        occurrenceDateTime=date.today().isoformat() + "T10:30:00+01:00",
        performer=[{"identifier": {"system": "urn:dicom:ae", "value": "CT01"}}],
        requester={"display": "Dr. Schmidt"})
    order.save()
    assert order.id

    # 2. The modality's worklist query (IHE broad query: today, its AE title, its modality).
    items = worklist(bridge, tmp_path / "wl", "PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID",
                     "RequestedProcedureID",
                     f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={TODAY}",
                     "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CT01",
                     "ScheduledProcedureStepSequence[0].Modality=CT",
                     "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID")
    assert len(items) == 1, items
    item = items[0]
    assert str(item.PatientName) == "Müller^Jürgen" and item.PatientID == "PID-LOOP-1"
    step = item.ScheduledProcedureStepSequence[0]
    study_uid, accession, sps_id = item.StudyInstanceUID, item.AccessionNumber, step.ScheduledProcedureStepID
    assert study_uid and accession and sps_id and step.Modality == "CT"
    assert worklist(bridge, tmp_path / "wl-mr", "PatientName",
                    "ScheduledProcedureStepSequence[0].Modality=MR") == []

    # 3. MPPS IN PROGRESS while the subscriber is down; then pacsbridge is killed and started again.
    wait_for("the first notifications", lambda: subscriber.received("POST"))
    subscriber.down = True
    mpps_uid = generate_uid()
    create = Dataset()
    create.PerformedProcedureStepStatus = "IN PROGRESS"
    create.PerformedProcedureStepID = "PPS1"
    create.PerformedStationAETitle = "CT01"
    create.PerformedProcedureStepStartDate = TODAY
    create.PerformedProcedureStepStartTime = "103500"
    create.Modality = "CT"
    create.PatientName = "Müller^Jürgen"
    create.PatientID = "PID-LOOP-1"
    create.SpecificCharacterSet = "ISO_IR 192"
    ref = Dataset()
    ref.StudyInstanceUID = study_uid
    ref.AccessionNumber = accession
    ref.ScheduledProcedureStepID = sps_id
    ref.RequestedProcedureID = item.RequestedProcedureID
    create.ScheduledStepAttributesSequence = [ref]
    create.PerformedSeriesSequence = []
    assert mpps(bridge, create, mpps_uid) == 0x0000
    assert mpps(bridge, create, mpps_uid) == 0x0111  # the same instance again: duplicate
    time.sleep(1)  # let a delivery attempt fail against the subscriber
    bridge.kill()
    subscriber.down = False
    bridge.start()

    # 4. The images, with the worklist's attributes, then MPPS COMPLETED.
    series_uid = generate_uid()
    files = []
    for n in (1, 2, 3):
        ds = instance(study_uid, series_uid, number=n, PatientID="PID-LOOP-1", PatientName="Müller^Jürgen",
                      AccessionNumber=accession, SpecificCharacterSet="ISO_IR 192")
        attrs = Dataset()
        attrs.ScheduledProcedureStepID = sps_id
        attrs.RequestedProcedureID = item.RequestedProcedureID
        ds.RequestAttributesSequence = [attrs]
        files.append(write(ds, tmp_path / "images"))
    sent = subprocess.run(["storescu", "-aet", "CT01", "-aec", "PACSBRIDGE", "127.0.0.1", str(bridge.dimse_port),
                           *map(str, files)], capture_output=True, text=True, timeout=60, env=ENV)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    done = Dataset()
    done.PerformedProcedureStepStatus = "COMPLETED"
    done.PerformedProcedureStepEndDate = TODAY
    done.PerformedProcedureStepEndTime = "104500"
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.ProtocolName = "CT chest"
    series.PerformingPhysicianName = ""
    series.OperatorsName = ""
    series.SeriesDescription = ""
    series.RetrieveAETitle = ""
    series.ReferencedImageSequence = []
    for path in files:
        image = Dataset()
        image.ReferencedSOPClassUID = pydicom.dcmread(path).SOPClassUID
        image.ReferencedSOPInstanceUID = pydicom.dcmread(path).SOPInstanceUID
        series.ReferencedImageSequence.append(image)
    done.PerformedSeriesSequence = [series]
    assert mpps(bridge, None, mpps_uid, done) == 0x0000
    assert mpps(bridge, None, mpps_uid, done) == 0x0110  # it has ended: no more updates

    # 5. Linked: the order is completed, the ImagingStudy is based on it, the subscriber knows.
    wait_for("the order to complete", lambda: emr.reference("ServiceRequest", order.id).to_resource()
             .get("status") == "completed")
    studies = wait_for("a linked ImagingStudy", lambda: emr.resources("ImagingStudy").search(
        basedon=f"ServiceRequest/{order.id}").fetch())
    assert [s.id for s in studies] == [study_uid]
    study = studies[0].serialize()
    assert study["basedOn"] == [{"reference": f"ServiceRequest/{order.id}"}]
    assert study["numberOfInstances"] == 3 and study["subject"] == {"reference": f"Patient/{patient.id}"}
    assert emr.resources("Patient").search(identifier=f"{PATIENT_SYSTEM}|PID-LOOP-1").fetch()[0].id == patient.id
    assert worklist(bridge, tmp_path / "wl-after", "PatientName", "ScheduledProcedureStepSequence[0].Modality=CT") == []

    wait_for("the linked study at the webhook", lambda: [
        r for r in subscriber.received("POST") if r["body"]["topic"] == "imagingstudy.linked"])
    wait_for("the ImagingStudy at the FHIR server", lambda: [
        r for r in subscriber.received("PUT") if r["path"] == f"/fhir/ImagingStudy/{study_uid}"])
    hooks = subscriber.received("POST")
    changes = [(h["body"]["topic"], h["body"].get("scheduledProcedureStepId"), h["body"].get("status"))
               for h in hooks]
    assert len(changes) == len(set(changes)), f"a change was told twice under two keys: {changes}"
    assert ("servicerequest.status", None, "active") in changes
    assert ("procedurestep.status", sps_id, "in-progress") in changes
    assert ("procedurestep.status", sps_id, "completed") in changes
    assert ("servicerequest.status", None, "completed") in changes
    linked = [h for h in hooks if h["body"]["topic"] == "imagingstudy.linked"]
    assert linked[0]["body"]["resource"]["basedOn"] == [{"reference": f"ServiceRequest/{order.id}"}]
    puts = {r["path"]: r["body"] for r in subscriber.received("PUT")}
    assert puts[f"/fhir/ServiceRequest/{order.id}"]["status"] in ("active", "completed")
    assert any(b["status"] == "completed" for p, b in (
        (r["path"], r["body"]) for r in subscriber.received("PUT")) if p == f"/fhir/ServiceRequest/{order.id}")
    log = bridge.log.read_text()
    assert "PID-LOOP-1" not in log and "Müller" not in log, "patient data in pacsbridge's log"
