"""The DIMSE SCP when things go wrong (found in review; each case failed before its fix): a full disk
at C-STORE, a retrieve the caller abandons, PATIENT-level C-FIND past the result cap, pacsbridge
stopping with associations open, an IPv4 caller of a dual-stack listener.

The caller is pynetdicom, which reports the exact status of every response.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

from pacsbridge.adapters.dimse.access import PeerAccess, peer_of
from pacsbridge.settings import Settings

from ..support.dicom import instance
from ..support.servers import RunningServer, serve

PEERS = [{"ae_title": "RW", "host": "127.0.0.1", "scopes": ["dicomweb.read", "dicomweb.write"]}]


def scu() -> AE:
    ae = AE(ae_title="RW")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    for context in (Verification, PatientRootQueryRetrieveInformationModelFind,
                    StudyRootQueryRetrieveInformationModelGet, CTImageStorage):
        ae.add_requested_context(context)
    return ae


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    settings = Settings(data_dir=tmp_path / "data", storage={"fsync": False},
                        dimse={"peers": PEERS, "max_find_results": 3}, auth={"open_routes": ["/admin"]})
    with serve(settings) as running:
        yield running


def store(server: RunningServer, datasets: list[Dataset]) -> list[Dataset]:
    assoc = scu().associate("127.0.0.1", server.dimse_port, ae_title="PACSBRIDGE")
    assert assoc.is_established
    try:
        return [assoc.send_c_store(ds) for ds in datasets]
    finally:
        assoc.release()


def audit_events(server: RunningServer, method: str) -> list[dict]:
    deadline = time.monotonic() + 10
    while True:  # the trail is written in the background every second or so
        events = [e for e in httpx.get(f"{server.url}/admin/audit", params={"door": "dimse"}).json()
                  if e["method"] == method]
        if events or time.monotonic() > deadline:
            return events
        time.sleep(0.2)


def test_a_full_disk_at_c_store_is_a700_and_leaves_no_spool_file(server: RunningServer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The spool file was written outside the handler's error handling: pynetdicom answered C211 (which
    senders do not retry) and the file stayed in the spool. A full disk cannot be made by a peer."""
    from pacsbridge.backends.blobs import BlobStore

    def full(store: BlobStore, fp) -> None:  # type: ignore[no-untyped-def]
        fp.close()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(BlobStore, "seal", full)
    (answer,) = store(server, [instance()])
    assert answer.Status == 0xA700
    assert not list((server.settings.data_dir / "spool").glob("*"))
    (event,) = audit_events(server, "C-STORE")
    assert event["status"] == 0xA700


def test_a_retrieve_the_caller_abandons_is_still_audited(server: RunningServer) -> None:
    """The audit event was written only when every sub-operation had run: a viewer closed after two
    images left no trace of the images it had received."""
    study, series = generate_uid(), generate_uid()
    assert [a.Status for a in store(server, [instance(study, series, number=n) for n in (1, 2, 3, 4)])] == [0] * 4
    got: list[int] = []

    def on_store(event) -> int:  # type: ignore[no-untyped-def]
        got.append(1)
        if len(got) == 2:
            event.assoc.abort()  # the viewer is closed after two images
        return 0

    assoc = scu().associate("127.0.0.1", server.dimse_port, ae_title="PACSBRIDGE",
                            ext_neg=[build_role(CTImageStorage, scp_role=True)],
                            evt_handlers=[(evt.EVT_C_STORE, on_store)])
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    for _status, _ds in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet):
        pass
    assert len(got) == 2
    (event,) = audit_events(server, "C-GET")
    assert event["study_uids"] == [study] and event["status"] != 0


def test_patient_level_find_caps_patients_not_studies(server: RunningServer) -> None:
    """With a cap of 3, three patients holding 5 + 1 + 1 studies gave one patient (counting 4 studies)
    and Success: the cap cut the studies before they were grouped into patients."""
    datasets = [instance(PatientID="PAT-A", PatientName="A^A") for _ in range(5)]
    datasets += [instance(PatientID="PAT-B", PatientName="B^B"), instance(PatientID="PAT-C", PatientName="C^C")]
    assert {a.Status for a in store(server, datasets)} == {0}
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientID = ""
    identifier.NumberOfPatientRelatedStudies = None
    assoc = scu().associate("127.0.0.1", server.dimse_port, ae_title="PACSBRIDGE")
    try:
        answers = list(assoc.send_c_find(identifier, PatientRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    matches = {str(ds.PatientID): int(ds.NumberOfPatientRelatedStudies) for status, ds in answers
               if status.Status == 0xFF00}
    assert matches == {"PAT-A": 5, "PAT-B": 1, "PAT-C": 1}
    assert answers[-1][0].Status == 0x0000


def test_stopping_pacsbridge_ends_open_associations(tmp_path: Path) -> None:
    """Stopping closed only the listener: an open association went on, and its C-STORE after the stop
    left a spool file behind."""
    settings = Settings(data_dir=tmp_path / "data", storage={"fsync": False}, dimse={"peers": PEERS})
    with serve(settings) as running:
        assoc = scu().associate("127.0.0.1", running.dimse_port, ae_title="PACSBRIDGE")
        assert assoc.is_established
    deadline = time.monotonic() + 10
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted and not assoc.is_established
    assert not list((tmp_path / "data" / "spool").glob("*"))


def test_an_ipv4_caller_of_a_dual_stack_listener_is_the_peer_it_claims() -> None:
    """A listener on "::" sees IPv4 callers as ::ffff:a.b.c.d, which never equalled the configured
    address: every IPv4 peer was refused."""
    access = PeerAccess([peer_of("RW", "192.0.2.10", None, True, ["dicomweb.read"], None)], open_to_any_ae=False)
    assert access.principal("RW", "::ffff:192.0.2.10") is not None
    assert access.principal("RW", "192.0.2.10") is not None
    assert access.principal("RW", "::ffff:192.0.2.11") is None


def test_c_move_sends_compressed_instances_to_a_destination_that_takes_them(tmp_path: Path) -> None:
    """The stored syntax and the uncompressed fallbacks shared one presentation context; Orthanc accepts
    one syntax per context and picked an uncompressed one, so an RLE instance could not be sent (A702,
    zero completed) although Orthanc stores RLE."""
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

    from ..support.orthanc import missing, orthanc

    reason = missing()
    if reason:
        pytest.fail(f"Orthanc is needed as the C-MOVE destination: {reason}")
    with orthanc(aet="DEST", modalities={"pb": ("PACSBRIDGE", "127.0.0.1", 104)}, parent=tmp_path) as dest:
        peers = [*PEERS, {"ae_title": "DEST", "host": "127.0.0.1", "port": dest.dicom_port}]
        settings = Settings(data_dir=tmp_path / "data", storage={"fsync": False}, dimse={"peers": peers})
        with serve(settings) as running:
            study, series = generate_uid(), generate_uid()
            compressed = instance(study, series, number=1, rows=64, columns=64)
            compressed.compress(RLELossless)
            plain = instance(study, series, number=2, rows=64, columns=64)
            sender = AE(ae_title="RW")
            sender.add_requested_context(CTImageStorage, [RLELossless])
            sender.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
            assoc = sender.associate("127.0.0.1", running.dimse_port, ae_title="PACSBRIDGE")
            assert assoc.is_established
            assert [assoc.send_c_store(ds).Status for ds in (compressed, plain)] == [0, 0]
            assoc.release()

            mover = AE(ae_title="RW")
            mover.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            assoc = mover.associate("127.0.0.1", running.dimse_port, ae_title="PACSBRIDGE")
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "STUDY"
            identifier.StudyInstanceUID = study
            answers = [status for status, _ in assoc.send_c_move(identifier, "DEST",
                                                                  StudyRootQueryRetrieveInformationModelMove)]
            assoc.release()
        final = answers[-1]
        assert final.Status == 0x0000, hex(final.Status)
        assert final.NumberOfCompletedSuboperations == 2
        syntaxes = {httpx.get(f"{dest.url}/instances/{i}/metadata/TransferSyntax").text
                    for i in httpx.get(f"{dest.url}/instances").json()}
        assert syntaxes == {RLELossless, ExplicitVRLittleEndian}
