"""pacsbridge's DIMSE SCP with DCMTK as the caller: C-ECHO, C-STORE (storescu), C-FIND (findscu),
C-GET (getscu) and C-MOVE (movescu to a storescp) in the Study Root and Patient Root models, AE access
with scopes and patient context, and the audit trail.

The peers are configured as an operator would (``dimse.peers``); DCMTK runs with TCP_NODELAY=1.
"""

from __future__ import annotations

import os
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

from ..support.dicom import instance, write
from ..support.servers import RunningServer, free_port, serve

ENV = {**os.environ, "TCP_NODELAY": "1"}
STORESCP_PORT = free_port()
PEERS = [
    {"ae_title": "STORESCP", "host": "127.0.0.1", "port": STORESCP_PORT},  # a C-MOVE destination
    {"ae_title": "FINDSCU", "host": "127.0.0.1", "scopes": ["dicomweb.read"]},
    {"ae_title": "STORESCU", "host": "127.0.0.1", "scopes": ["dicomweb.read", "dicomweb.write"]},
    {"ae_title": "READER", "host": "127.0.0.1", "scopes": ["dicomweb.read"]},
    {"ae_title": "MODALITY", "host": "127.0.0.1", "scopes": ["dicomweb.write"]},  # stores, may not read
    {"ae_title": "WARD7", "host": "127.0.0.1", "scopes": ["dicomweb.read"], "patient_ids": ["PAT-B"]},
    {"ae_title": "FARAWAY", "host": "192.0.2.7", "scopes": ["dicomweb.read"]},  # TEST-NET: never us
]


@dataclass
class Stack:
    server: RunningServer
    port: int
    studies: dict[str, str]  # patient id -> study uid
    sop_uids: list[str]


def dcmtk(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=120, env=ENV)
    if check:
        assert done.returncode == 0, f"{args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def find(stack: Stack, out: Path, *keys: str, aet: str = "FINDSCU", model: str = "-S") -> list[pydicom.Dataset]:
    """findscu's answers, as the response files it extracts (rsp0001.dcm, ...)."""
    out.mkdir(parents=True, exist_ok=True)
    dcmtk("findscu", model, "-aet", aet, "-aec", "PACSBRIDGE", "-X", "-od", str(out),
          *[a for k in keys for a in ("-k", k)], "127.0.0.1", str(stack.port))
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("dimse")
    settings = Settings(data_dir=tmp / "data", storage={"fsync": False}, dimse={"peers": PEERS},
                        auth={"open_routes": ["/admin"]})
    with serve(settings) as server:
        studies, sops = {}, []
        for pid, name, charset in (("PAT-A", "Müller^Jürgen", "ISO_IR 100"), ("PAT-B", "Doe^Jane", None)):
            study, series = generate_uid(), generate_uid()
            studies[pid] = study
            for n in (1, 2, 3):
                ds = instance(study, series, number=n, PatientID=pid, PatientName=name, SpecificCharacterSet=charset,
                              AccessionNumber=f"ACC-{pid}")
                sops.append(str(ds.SOPInstanceUID))
                write(ds, tmp / "in")
        # The data arrive as a modality sends them: storescu, one association, every file.
        dcmtk("storescu", "-aet", "STORESCU", "-aec", "PACSBRIDGE", "+sd", "+r", "127.0.0.1", str(server.dimse_port),
              str(tmp / "in"))
        yield Stack(server, server.dimse_port, studies, sops)


def test_echo_answers_a_known_ae_and_refuses_strangers(stack: Stack) -> None:
    dcmtk("echoscu", "-aet", "FINDSCU", "-aec", "PACSBRIDGE", "127.0.0.1", str(stack.port))
    stranger = dcmtk("echoscu", "-aet", "STRANGER", "-aec", "PACSBRIDGE", "127.0.0.1", str(stack.port), check=False)
    assert stranger.returncode != 0 and "Calling AE Title Not Recognized" in stranger.stdout + stranger.stderr
    wrong = dcmtk("echoscu", "-aet", "FINDSCU", "-aec", "SOMEONE", "127.0.0.1", str(stack.port), check=False)
    assert wrong.returncode != 0 and "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr


def test_storescu_stores_through_the_same_ingest_as_stow(stack: Stack) -> None:
    for pid, study in stack.studies.items():
        r = httpx.get(f"{stack.server.url}/admin/audit", params={"study": study, "door": "dimse"})
        assert r.status_code == 200
        stored = [e for e in r.json() if e["method"] == "C-STORE" and e["status"] == 0]
        assert len(stored) == 3 and {e["subject"] for e in stored} == {"ae:STORESCU"}
        assert {p for e in stored for p in e["patient_ids"]} == {pid}
    token_free = httpx.get(f"{stack.server.url}/dicomweb/studies")  # the HTTP door stays closed
    assert token_free.status_code == 401


def test_a_reader_may_not_store(stack: Stack, tmp_path: Path) -> None:
    path = write(instance(PatientID="PAT-X"), tmp_path)
    done = dcmtk("storescu", "-v", "-aet", "READER", "-aec", "PACSBRIDGE", "127.0.0.1", str(stack.port), str(path),
                 check=False)
    assert "Status: 0x124" in done.stdout + done.stderr, done.stdout + done.stderr  # Refused: Not Authorized
    answers = find(stack, tmp_path / "f", "QueryRetrieveLevel=STUDY", "PatientID=PAT-X")
    assert answers == []


def test_study_root_find_returns_exactly_the_requested_keys(stack: Stack, tmp_path: Path) -> None:
    answers = find(stack, tmp_path, "QueryRetrieveLevel=STUDY", "PatientName=M*ller*", "StudyInstanceUID",
                   "AccessionNumber", "NumberOfStudyRelatedInstances", "ModalitiesInStudy", "RetrieveAETitle")
    assert len(answers) == 1
    ds = answers[0]
    assert ds.StudyInstanceUID == stack.studies["PAT-A"]
    assert str(ds.PatientName) == "Müller^Jürgen"  # sent as ISO_IR 192, read back as the same name
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.AccessionNumber == "ACC-PAT-A" and int(ds.NumberOfStudyRelatedInstances) == 3
    assert ds.ModalitiesInStudy == "CT" and ds.RetrieveAETitle == "PACSBRIDGE"
    assert "StudyDate" not in ds  # not asked for, not returned


def test_series_and_image_levels_and_uid_lists(stack: Stack, tmp_path: Path) -> None:
    both = "\\".join(stack.studies.values())
    series = find(stack, tmp_path / "s", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={both}",
                  "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances")
    assert len(series) == 2 and {int(s.NumberOfSeriesRelatedInstances) for s in series} == {3}
    b_series = next(s.SeriesInstanceUID for s in series if s.StudyInstanceUID == stack.studies["PAT-B"])
    images = find(stack, tmp_path / "i", "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={stack.studies['PAT-B']}",
                  f"SeriesInstanceUID={b_series}", "SOPInstanceUID", "InstanceNumber")
    assert sorted(int(i.InstanceNumber) for i in images) == [1, 2, 3]
    assert {i.SOPInstanceUID for i in images} <= set(stack.sop_uids)


def test_patient_root_patient_level(stack: Stack, tmp_path: Path) -> None:
    answers = find(stack, tmp_path, "QueryRetrieveLevel=PATIENT", "PatientID", "PatientName",
                   "NumberOfPatientRelatedStudies", model="-P")
    assert {(a.PatientID, int(a.NumberOfPatientRelatedStudies)) for a in answers} == {("PAT-A", 1), ("PAT-B", 1)}


def test_patient_context_and_host_check_apply_to_dimse(stack: Stack, tmp_path: Path) -> None:
    answers = find(stack, tmp_path / "w", "QueryRetrieveLevel=STUDY", "PatientID", "StudyInstanceUID", aet="WARD7")
    assert [a.PatientID for a in answers] == ["PAT-B"]
    far = dcmtk("findscu", "-v", "-S", "-aet", "FARAWAY", "-aec", "PACSBRIDGE", "-k", "QueryRetrieveLevel=STUDY",
                "-k", "PatientID", "127.0.0.1", str(stack.port), check=False)
    assert "Status: 0x124" in far.stdout + far.stderr, far.stdout + far.stderr


def test_a_malformed_identifier_gets_a_failure_status_not_a_crash(stack: Stack, tmp_path: Path) -> None:
    bad = dcmtk("findscu", "-v", "-S", "-aet", "FINDSCU", "-aec", "PACSBRIDGE", "-k", "QueryRetrieveLevel=WARD",
                "127.0.0.1", str(stack.port), check=False)
    assert "DataSetDoesNotMatchSOPClass" in bad.stdout + bad.stderr, bad.stdout + bad.stderr  # 0xA900
    ok = find(stack, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=PAT-B")
    assert len(ok) == 1  # and the SCP still answers


def test_without_configured_peers_nobody_may_associate(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", storage={"fsync": False})
    with serve(settings) as server:
        refused = dcmtk("echoscu", "-aet", "ANYONE", "-aec", "PACSBRIDGE", "127.0.0.1", str(server.dimse_port),
                        check=False)
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stdout + refused.stderr


def received(folder: Path) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in folder.iterdir() if p.is_file()}


def study_sops(stack: Stack, pid: str) -> set[str]:
    return set(stack.sop_uids[:3] if pid == "PAT-A" else stack.sop_uids[3:])


def test_getscu_retrieves_a_study_over_its_own_association(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "got"
    out.mkdir()
    dcmtk("getscu", "-S", "-aet", "FINDSCU", "-aec", "PACSBRIDGE", "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
          "-k", f"StudyInstanceUID={stack.studies['PAT-B']}", "127.0.0.1", str(stack.port))
    assert received(out) == study_sops(stack, "PAT-B")


def test_getscu_by_patient_in_the_patient_root_model(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "got"
    out.mkdir()
    dcmtk("getscu", "-P", "-aet", "FINDSCU", "-aec", "PACSBRIDGE", "-od", str(out), "-k",
          "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PAT-A", "127.0.0.1", str(stack.port))
    assert received(out) == study_sops(stack, "PAT-A")


def test_a_patient_bound_ae_retrieves_nothing_of_another_patient(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "got"
    out.mkdir()
    dcmtk("getscu", "-S", "-aet", "WARD7", "-aec", "PACSBRIDGE", "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
          "-k", f"StudyInstanceUID={stack.studies['PAT-A']}", "127.0.0.1", str(stack.port), check=False)
    assert received(out) == set()


def test_movescu_sends_a_series_to_a_configured_destination(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "moved"
    out.mkdir()
    scp = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(out), str(STORESCP_PORT)], env=ENV,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 15
        while dcmtk("echoscu", "-aet", "PROBE", "-aec", "STORESCP", "127.0.0.1", str(STORESCP_PORT),
                    check=False).returncode != 0:
            assert scp.poll() is None and time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.1)
        series = find(stack, tmp_path / "f", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={stack.studies['PAT-A']}",
                      "SeriesInstanceUID")
        assert len(series) == 1
        dcmtk("movescu", "-S", "-aet", "FINDSCU", "-aem", "STORESCP", "-aec", "PACSBRIDGE",
              "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={stack.studies['PAT-A']}",
              "-k", f"SeriesInstanceUID={series[0].SeriesInstanceUID}", "127.0.0.1", str(stack.port))
        unknown = dcmtk("movescu", "-v", "-S", "-aet", "FINDSCU", "-aem", "NOWHERE", "-aec", "PACSBRIDGE",
                        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={stack.studies['PAT-A']}",
                        "127.0.0.1", str(stack.port), check=False)
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    assert received(out) == study_sops(stack, "PAT-A")
    assert "MoveDestinationUnknown" in unknown.stdout + unknown.stderr or "0xa801" in (
        unknown.stdout + unknown.stderr).lower(), unknown.stdout + unknown.stderr


def test_refused_and_malformed_retrieves_get_a_failure_status(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "got"
    out.mkdir()
    refused = dcmtk("getscu", "-v", "-S", "-aet", "MODALITY", "-aec", "PACSBRIDGE", "-od", str(out),
                    "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={stack.studies['PAT-A']}",
                    "127.0.0.1", str(stack.port), check=False)
    assert "0x0124" in refused.stdout + refused.stderr or "Status: 0x124" in refused.stdout + refused.stderr, (
        refused.stdout + refused.stderr)
    malformed = dcmtk("getscu", "-v", "-S", "-aet", "FINDSCU", "-aec", "PACSBRIDGE", "-od", str(out),
                      "-k", "QueryRetrieveLevel=SERIES", "127.0.0.1", str(stack.port), check=False)
    assert "a900" in (malformed.stdout + malformed.stderr).lower() or "DataSetDoesNotMatchSOPClass" in (
        malformed.stdout + malformed.stderr), malformed.stdout + malformed.stderr
    assert received(out) == set()


def test_a_patient_retrieve_takes_the_patient_id_as_a_value_not_a_pattern(stack: Stack, tmp_path: Path) -> None:
    """PatientID is the unique key of a PATIENT retrieve (PS3.4 C.4.2.1.4): ``*`` names no patient."""
    out = tmp_path / "got"
    out.mkdir()
    dcmtk("getscu", "-P", "-aet", "FINDSCU", "-aec", "PACSBRIDGE", "-od", str(out), "-k",
          "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PAT-*", "127.0.0.1", str(stack.port), check=False)
    assert received(out) == set()
