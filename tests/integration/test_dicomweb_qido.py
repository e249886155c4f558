"""QIDO-RS against a running pacsbridge on loopback (PS3.18 §10.6), including what OHIF 3.13 sends."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from pydicom.uid import generate_uid

from ..support.dicom import instance
from ..support.http import stow_body
from ..support.servers import OPEN_DICOMWEB, RunningServer, serve

JSON = {"Accept": "application/dicom+json"}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, dict[str, str]]]:
    from pacsbridge.settings import Settings

    settings = Settings(data_dir=tmp_path_factory.mktemp("qido") / "data", storage={"fsync": False},
                        dicomweb={"qido_max_limit": 50}, auth=OPEN_DICOMWEB)
    studies = {"knee": generate_uid(), "head": generate_uid(), "chest": generate_uid()}
    knee_series = generate_uid()
    parts = [
        instance(studies["knee"], knee_series, PatientName="Müller^Jürgen", PatientID="PAT-abc-1", StudyDate="20240115",
                 AccessionNumber="A100", Modality="MR", StudyDescription="MR Knee"),
        instance(studies["knee"], knee_series, PatientName="Müller^Jürgen", PatientID="PAT-abc-1",
                 StudyDate="20240115", AccessionNumber="A100", Modality="MR", StudyDescription="MR Knee",
                 number=2),
        instance(studies["head"], PatientName="Doe^John", PatientID="PAT-xyz-2", StudyDate="20240302",
                 AccessionNumber="A200", Modality="CT", StudyDescription="CT Head"),
        instance(studies["chest"], PatientName="Doe^Jane", PatientID="PAT-xyz-3", StudyDate="20231224",
                 AccessionNumber="A300", Modality="CR", StudyDescription="Chest"),
    ]
    with serve(settings) as server:
        body, content_type = stow_body(parts)
        r = httpx.post(server.dicomweb + "/studies", content=body, headers={"Content-Type": content_type})
        assert r.status_code == 200, r.text
        yield server, studies


def get(server: RunningServer, path: str, raw_query: str = "", **headers: str) -> httpx.Response:
    url = server.dicomweb + path + (("?" + raw_query) if raw_query else "")
    return httpx.get(url, headers={**JSON, **headers})


def study_uids(r: httpx.Response) -> set[str]:
    assert r.status_code == 200, (r.status_code, r.text)
    return {item["0020000D"]["Value"][0] for item in r.json()}


def test_ohif_study_list_query(loaded: tuple[RunningServer, dict[str, str]]) -> None:
    server, studies = loaded
    r = get(server, "/studies", "limit=101&offset=0&fuzzymatching=true&includefield=00081030%2C00080060")
    assert study_uids(r) == set(studies.values())
    knee = next(i for i in r.json() if i["0020000D"]["Value"][0] == studies["knee"])
    assert knee["00081030"]["Value"] == ["MR Knee"]
    assert knee["00100010"]["Value"] == [{"Alphabetic": "Müller^Jürgen"}]
    assert knee["00080061"]["Value"] == ["MR"]
    assert knee["00201206"]["Value"] == [1] and knee["00201208"]["Value"] == [2]
    assert knee["00081190"]["Value"] == [f"{server.dicomweb}/studies/{studies['knee']}"]
    assert list(knee) == sorted(knee), "DICOM JSON keys are sorted"


@pytest.mark.parametrize(("raw", "expected"), [
    ("00100020=%2Aabc%2A", {"knee"}),                  # OHIF: tag form, percent-encoded wildcards
    ("PatientID=PAT-xyz-*", {"head", "chest"}),
    ("PatientName=m%C3%BCller%5Ej%C3%BCrgen", {"knee"}),  # UTF-8, %5E is ^, case-insensitive
    ("PatientName=Doe*&fuzzymatching=true", {"head", "chest"}),
    ("PatientName=jo&fuzzymatching=true", {"head"}),   # fuzzy: a word starts a name component
    ("StudyDate=20240101-20240331", {"knee", "head"}),
    ("StudyDate=-20231231", {"chest"}),
    ("AccessionNumber=A200", {"head"}),
    ("ModalitiesInStudy=CT", {"head"}),
    ("00080061=MR", {"knee"}),
])
def test_matching(loaded: tuple[RunningServer, dict[str, str]], raw: str, expected: set[str]) -> None:
    server, studies = loaded
    assert study_uids(get(server, "/studies", raw)) == {studies[k] for k in expected}


def test_uid_list_matching(loaded: tuple[RunningServer, dict[str, str]]) -> None:
    server, studies = loaded
    r = get(server, "/studies", f"StudyInstanceUID={studies['knee']},{studies['chest']}")
    assert study_uids(r) == {studies["knee"], studies["chest"]}


def test_no_match_is_204(loaded: tuple[RunningServer, dict[str, str]]) -> None:
    server, _ = loaded
    r = get(server, "/studies", "PatientID=nobody")
    assert r.status_code == 204 and r.content == b""


@pytest.mark.parametrize("raw", ["StudyDate=2024-13-45x", "limit=-1", "offset=abc", "fuzzymatching=maybe",
                                 "PatientID=a&PatientID=b", "StudyInstanceUID=1.2.abc", "includefield=NoSuchKeyword",
                                 "StudyDate=2024*"])
def test_bad_queries_are_400_with_a_reason(loaded: tuple[RunningServer, dict[str, str]], raw: str) -> None:
    server, _ = loaded
    r = get(server, "/studies", raw)
    assert r.status_code == 400, (raw, r.status_code)
    assert r.json()["message"]


def test_unknown_parameters_are_ignored(loaded: tuple[RunningServer, dict[str, str]]) -> None:
    server, studies = loaded
    assert study_uids(get(server, "/studies", "_dc=12345")) == set(studies.values())


def test_limit_offset_and_the_299_warning(loaded: tuple[RunningServer, dict[str, str]]) -> None:
    server, studies = loaded
    first = get(server, "/studies", "limit=2")
    assert len(first.json()) == 2
    assert first.headers["warning"].startswith("299 ") and "1 additional results" in first.headers["warning"]
    rest = get(server, "/studies", "limit=2&offset=2")
    assert "warning" not in rest.headers
    assert study_uids(first) | study_uids(rest) == set(studies.values())


def test_includefield_all_and_required_attributes(loaded: tuple[RunningServer, dict[str, str]]) -> None:
    server, studies = loaded
    r = get(server, "/studies", f"StudyInstanceUID={studies['head']}&includefield=all")
    (item,) = r.json()
    for tag in ("00080020", "00080030", "00080050", "00080061", "00080090", "00100010", "00100020",
                "00100030", "00100040", "0020000D", "00200010", "00201206", "00201208", "00081030"):
        assert tag in item, tag
    assert "00080060" not in item, "series-level attributes are not returned at the study level"


def test_series_and_instance_resources(loaded: tuple[RunningServer, dict[str, str]]) -> None:
    server, studies = loaded
    series = get(server, f"/studies/{studies['knee']}/series")
    assert series.status_code == 200
    (s,) = series.json()
    assert s["00080060"]["Value"] == ["MR"] and s["00201209"]["Value"] == [2]
    series_uid = s["0020000E"]["Value"][0]
    assert s["00081190"]["Value"] == [f"{server.dicomweb}/studies/{studies['knee']}/series/{series_uid}"]
    instances = get(server, f"/studies/{studies['knee']}/series/{series_uid}/instances")
    assert [i["00200013"]["Value"][0] for i in instances.json()] == [1, 2]
    assert all(i["00280010"]["Value"] == [16] for i in instances.json())
    # /series without a parent also returns the study attributes; /studies/{s}/instances works too
    everything = get(server, "/series", "Modality=CT").json()
    assert [i["0020000D"]["Value"][0] for i in everything] == [studies["head"]]
    assert everything[0]["00100010"]["Value"] == [{"Alphabetic": "Doe^John"}]
    assert len(get(server, f"/studies/{studies['knee']}/instances").json()) == 2
    assert len(get(server, "/instances", "SOPClassUID=1.2.840.10008.5.1.4.1.1.2").json()) == 4


def test_xml_is_not_offered(loaded: tuple[RunningServer, dict[str, str]]) -> None:
    server, _ = loaded
    r = httpx.get(server.dicomweb + "/studies", headers={"Accept": 'multipart/related; type="application/dicom+xml"'})
    assert r.status_code == 406


def test_no_limit_still_stops_at_the_server_maximum(tmp_path_factory: pytest.TempPathFactory) -> None:
    from pacsbridge.settings import Settings

    settings = Settings(data_dir=tmp_path_factory.mktemp("max") / "data", storage={"fsync": False},
                        dicomweb={"qido_max_limit": 2}, auth=OPEN_DICOMWEB)
    with serve(settings) as server:
        body, content_type = stow_body([instance() for _ in range(3)])
        assert httpx.post(server.dicomweb + "/studies", content=body,
                          headers={"Content-Type": content_type}).status_code == 200
        r = get(server, "/studies")
        assert len(r.json()) == 2 and "1 additional results" in r.headers["warning"]
