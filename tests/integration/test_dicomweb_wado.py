"""WADO-RS and WADO-URI against a running pacsbridge on loopback (PS3.18 §10.4, Ch. 9)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from ..support.dicom import instance
from ..support.http import read_dataset, split_multipart, stow_body
from ..support.servers import OPEN_DICOMWEB, RunningServer, serve

EVRLE = "1.2.840.10008.1.2.1"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, dict]]:
    from pacsbridge.settings import Settings

    settings = Settings(data_dir=tmp_path_factory.mktemp("wado") / "data", storage={"fsync": False},
                        cors={"allow_origins": ["http://viewer.example"]}, auth=OPEN_DICOMWEB)
    study_uid, series_uid = generate_uid(), generate_uid()
    single = instance(study_uid, series_uid, number=1, rows=32, columns=24)
    multi = instance(study_uid, series_uid, number=2, rows=8, columns=8, NumberOfFrames=3)
    frames = np.stack([np.full((8, 8), 100 * (f + 1), dtype="<u2") for f in range(3)])
    multi.PixelData = frames.tobytes()
    implicit = instance(study_uid, series_uid, number=3)
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    with serve(settings) as server:
        body, content_type = stow_body([single, multi, implicit])
        r = httpx.post(server.dicomweb + "/studies", content=body, headers={"Content-Type": content_type})
        assert r.status_code == 200, r.text
        yield server, {"study": study_uid, "series": series_uid, "single": single, "multi": multi,
                       "implicit": implicit}


def url(server: RunningServer, info: dict, sop: str | None = None, tail: str = "") -> str:
    base = f"{server.dicomweb}/studies/{info['study']}/series/{info['series']}"
    return base + (f"/instances/{sop}" if sop else "") + tail


def test_study_retrieve_defaults_to_explicit_vr_little_endian(study: tuple[RunningServer, dict]) -> None:
    server, info = study
    r = httpx.get(f"{server.dicomweb}/studies/{info['study']}",
                  headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert r.status_code == 200
    assert 'type="application/dicom"' in r.headers["content-type"]
    parts = split_multipart(r.content, r.headers["content-type"])
    assert len(parts) == 3
    for headers, data in parts:
        assert headers["content-type"] == f"application/dicom; transfer-syntax={EVRLE}"
        ds = read_dataset(data)
        assert ds.file_meta.TransferSyntaxUID == EVRLE  # implicit VR LE is never sent on the web
    sops = {read_dataset(d).SOPInstanceUID for _, d in parts}
    assert sops == {info["single"].SOPInstanceUID, info["multi"].SOPInstanceUID, info["implicit"].SOPInstanceUID}


def test_transfer_syntax_star_sends_as_stored_but_never_implicit(study: tuple[RunningServer, dict]) -> None:
    server, info = study
    r = httpx.get(url(server, info, info["implicit"].SOPInstanceUID),
                  headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    ((_, data),) = split_multipart(r.content, r.headers["content-type"])
    assert read_dataset(data).file_meta.TransferSyntaxUID == EVRLE
    assert np.array_equal(read_dataset(data).pixel_array, info["implicit"].pixel_array)


def test_single_part_instance(study: tuple[RunningServer, dict]) -> None:
    server, info = study
    r = httpx.get(url(server, info, info["single"].SOPInstanceUID), headers={"Accept": "application/dicom"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/dicom")
    assert read_dataset(r.content).SOPInstanceUID == info["single"].SOPInstanceUID


def test_unproducible_transfer_syntax_is_406(study: tuple[RunningServer, dict]) -> None:
    server, info = study
    r = httpx.get(f"{server.dicomweb}/studies/{info['study']}",
                  headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.3.4.5'})
    assert r.status_code == 406


def test_metadata_levels_and_bulk_data_uris(study: tuple[RunningServer, dict]) -> None:
    server, info = study
    study_md = httpx.get(f"{server.dicomweb}/studies/{info['study']}/metadata",
                         headers={"Accept": "application/dicom+json"})
    assert study_md.status_code == 200 and len(study_md.json()) == 3
    series_md = httpx.get(url(server, info, tail="/metadata")).json()
    assert len(series_md) == 3
    (one,) = httpx.get(url(server, info, info["single"].SOPInstanceUID, "/metadata")).json()
    assert one["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
    assert one["00280010"]["Value"] == [32]
    pixel = one["7FE00010"]
    assert set(pixel) == {"vr", "BulkDataURI"} and pixel["vr"] == "OW"
    assert pixel["BulkDataURI"] == url(server, info, info["single"].SOPInstanceUID, "/bulkdata/7FE00010")
    bulk = httpx.get(pixel["BulkDataURI"], headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert bulk.status_code == 200
    ((_, data),) = split_multipart(bulk.content, bulk.headers["content-type"])
    assert data == info["single"].PixelData


def test_frames_as_ohif_asks_for_them(study: tuple[RunningServer, dict]) -> None:
    server, info = study
    accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    r = httpx.get(url(server, info, info["multi"].SOPInstanceUID, "/frames/2"), headers={"Accept": accept})
    assert r.status_code == 200, r.text
    ((headers, data),) = split_multipart(r.content, r.headers["content-type"])
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EVRLE}"
    assert data == np.full((8, 8), 200, dtype="<u2").tobytes()
    r = httpx.get(url(server, info, info["multi"].SOPInstanceUID, "/frames/3,1"), headers={"Accept": accept})
    parts = split_multipart(r.content, r.headers["content-type"])
    assert [p[1][:2] for p in parts] == [np.uint16(300).tobytes(), np.uint16(100).tobytes()]


@pytest.mark.parametrize(("frames", "status"), [("4", 404), ("0", 400), ("a,b", 400)])
def test_bad_frame_numbers(study: tuple[RunningServer, dict], frames: str, status: int) -> None:
    server, info = study
    r = httpx.get(url(server, info, info["multi"].SOPInstanceUID, f"/frames/{frames}"),
                  headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert r.status_code == status


def test_rendered_and_thumbnail(study: tuple[RunningServer, dict]) -> None:
    server, info = study
    sop = info["single"].SOPInstanceUID
    r = httpx.get(url(server, info, sop, "/rendered"), headers={"Accept": "image/jpeg"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (24, 32)
    r = httpx.get(url(server, info, sop, "/rendered"), params={"window": "100,50"},
                  headers={"Accept": "image/png"})
    assert r.headers["content-type"] == "image/png"
    r = httpx.get(url(server, info, info["multi"].SOPInstanceUID, "/frames/2/rendered"))
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (8, 8)
    r = httpx.get(f"{server.dicomweb}/studies/{info['study']}/thumbnail", headers={"Accept": "image/jpeg"})
    assert r.status_code == 200 and max(Image.open(io.BytesIO(r.content)).size) <= 128
    r = httpx.get(url(server, info, sop, "/rendered"), params={"quality": "0"})
    assert r.status_code == 400


def test_wado_uri(study: tuple[RunningServer, dict]) -> None:
    server, info = study
    sop = info["single"].SOPInstanceUID
    params = {"requestType": "WADO", "studyUID": info["study"], "seriesUID": info["series"], "objectUID": sop}
    r = httpx.get(server.dicomweb + "/wado", params={**params, "contentType": "application/dicom"})
    assert r.status_code == 200 and read_dataset(r.content).SOPInstanceUID == sop
    r = httpx.get(server.dicomweb + "/wado", params=params)
    assert r.headers["content-type"] == "image/jpeg"
    r = httpx.get(server.dicomweb + "/wado", params={**params, "contentType": "application/dicom",
                                                     "windowCenter": "10", "windowWidth": "20"})
    assert r.status_code == 400
    r = httpx.get(server.dicomweb + "/wado", params={k: v for k, v in params.items() if k != "seriesUID"})
    assert r.status_code == 400


def test_unknown_things_are_404(study: tuple[RunningServer, dict]) -> None:
    server, info = study
    assert httpx.get(f"{server.dicomweb}/studies/{generate_uid()}/metadata").status_code == 404
    assert httpx.get(url(server, info, generate_uid(), "/metadata")).status_code == 404


def test_cors_preflight_and_cross_origin_isolation(study: tuple[RunningServer, dict]) -> None:
    server, _ = study
    r = httpx.options(server.dicomweb + "/studies", headers={
        "Origin": "http://viewer.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization,accept"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://viewer.example"
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = httpx.get(server.dicomweb + "/studies", headers={"Origin": "http://viewer.example"})
    assert r.headers["cross-origin-resource-policy"] == "cross-origin"
    assert r.headers["access-control-allow-origin"] == "http://viewer.example"
    assert {"warning", "www-authenticate"} <= set(r.headers["access-control-expose-headers"].lower().split(", "))
    r = httpx.options(server.dicomweb + "/studies", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers


def test_many_frames_are_streamed_in_order(server: RunningServer) -> None:
    """More frames than one worker call reads at once take the streaming path; order and bytes hold."""
    study_uid, series_uid = generate_uid(), generate_uid()
    ds = instance(study_uid, series_uid, rows=4, columns=4, NumberOfFrames=12)
    ds.PixelData = np.stack([np.full((4, 4), f, dtype="<u2") for f in range(12)]).tobytes()
    body, content_type = stow_body([ds])
    assert httpx.post(server.dicomweb + "/studies", content=body,
                      headers={"Content-Type": content_type}).status_code == 200
    base = f"{server.dicomweb}/studies/{study_uid}/series/{series_uid}/instances/{ds.SOPInstanceUID}"
    wanted = [12, *range(1, 12)]
    r = httpx.get(base + "/frames/" + ",".join(map(str, wanted)),
                  headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    parts = split_multipart(r.content, r.headers["content-type"])
    assert [np.frombuffer(data, "<u2")[0] for _, data in parts] == [n - 1 for n in wanted]
    assert [h["content-location"].rsplit("/", 1)[1] for h, _ in parts] == [str(n) for n in wanted]
    octets = {"Accept": 'multipart/related; type="application/octet-stream"'}
    bulk = httpx.get(base + "/bulkdata/7FE00010", headers=octets)
    assert b"".join(d for _, d in split_multipart(bulk.content, bulk.headers["content-type"])) == ds.PixelData


def test_a_broken_stored_object_is_a_server_error_not_a_bad_request(server: RunningServer) -> None:
    """Pixel Data shorter than Rows x Columns: stored (its header is fine), but a frame cannot be cut."""
    ds = instance(rows=16, columns=16)
    ds.PixelData = b"\x00\x01" * 50
    body, content_type = stow_body([ds])
    assert httpx.post(server.dicomweb + "/studies", content=body,
                      headers={"Content-Type": content_type}).status_code == 200
    octets = {"Accept": 'multipart/related; type="application/octet-stream"'}
    r = httpx.get(f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
                  f"{ds.SOPInstanceUID}/frames/1", headers=octets)
    assert r.status_code == 500
    assert "Pixel Data" in r.json()["message"]


def test_a_study_sent_as_stored_has_an_exact_content_length(server: RunningServer) -> None:
    """Every part as stored: the length is known from the index, so the body is not chunked."""
    study_uid = generate_uid()
    parts = [instance(study_uid, number=n) for n in range(1, 4)]
    body, content_type = stow_body(parts)
    assert httpx.post(server.dicomweb + "/studies", content=body, headers={"Content-Type": content_type}
                      ).status_code == 200
    with httpx.stream("GET", f"{server.dicomweb}/studies/{study_uid}",
                      headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}) as r:
        assert r.status_code == 200
        assert "transfer-encoding" not in r.headers
        data = r.read()
    assert int(r.headers["content-length"]) == len(data)
    got = split_multipart(data, r.headers["content-type"])
    assert sorted(read_dataset(d).SOPInstanceUID for _, d in got) == sorted(p.SOPInstanceUID for p in parts)


def test_a_stored_file_changed_behind_the_index_cuts_the_body_short(server: RunningServer) -> None:
    """A file whose size no longer matches its index row is not sent as if it did: the body stops (the
    client sees an incomplete message) instead of carrying a corrupt part under a promised length."""
    study_uid = generate_uid()
    parts = [instance(study_uid, number=n) for n in range(1, 3)]
    body, content_type = stow_body(parts)
    assert httpx.post(server.dicomweb + "/studies", content=body, headers={"Content-Type": content_type}
                      ).status_code == 200
    victim = next(p for p in (server.settings.data_dir / "files").rglob(f"{parts[1].SOPInstanceUID}.*.dcm"))
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{server.dicomweb}/studies/{study_uid}",
                  headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})


def test_frames_come_from_the_layout_kept_at_ingest_and_without_it_from_the_file(server: RunningServer) -> None:
    """The index row's pixel_layout is what a frame request reads by (shifting it shifts the frame);
    a row without one (stored before schema v3) is served by parsing the file, with the same bytes."""
    import json
    import sqlite3

    ds = instance(rows=4, columns=4)
    ds.PixelData = np.arange(16, dtype="<u2").tobytes()
    body, content_type = stow_body([ds])
    assert httpx.post(server.dicomweb + "/studies", content=body, headers={"Content-Type": content_type}
                      ).status_code == 200
    url = (f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
           f"{ds.SOPInstanceUID}/frames/1")
    octets = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}

    def frame() -> bytes:
        r = httpx.get(url, headers=octets)
        assert r.status_code == 200, r.text
        ((_, data),) = split_multipart(r.content, r.headers["content-type"])
        return data

    assert frame() == ds.PixelData
    db = sqlite3.connect(server.settings.data_dir / "index.sqlite")
    (layout,) = db.execute("SELECT pixel_layout FROM instances WHERE sop_uid = ?", (ds.SOPInstanceUID,)).fetchone()
    values = json.loads(layout)
    assert (values["rows"], values["columns"], values["pixel_length"]) == (4, 4, 32)
    values["pixel_offset"] -= 2  # two bytes earlier: the end of the element's length field
    with db:
        db.execute("UPDATE instances SET pixel_layout = ?", (json.dumps(values),))
    shifted = frame()
    assert shifted != ds.PixelData and shifted[2:] == ds.PixelData[:-2]
    with db:
        db.execute("UPDATE instances SET pixel_layout = NULL")
    assert frame() == ds.PixelData
    db.close()


def test_a_study_of_several_runs_of_opened_files_comes_whole_and_in_order_and_a_client_may_leave_midway(
        server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stored files are opened a run at a time (four here), small and large alike: every byte arrives,
    in index order; a client closing the connection in the middle of the body leaves the server serving."""
    from pacsbridge.adapters.dicomweb import wado

    monkeypatch.setattr(wado, "OPEN_RUN", 4)
    study_uid, series_uid = generate_uid(), generate_uid()
    sent = [instance(study_uid, series_uid, number=n, rows=512, columns=512) for n in range(1, 14)]
    sent.insert(6, instance(study_uid, series_uid, number=99, rows=1100, columns=1100))  # 2.4 MB
    for start in range(0, len(sent), 5):
        body, content_type = stow_body(sent[start:start + 5])
        assert httpx.post(server.dicomweb + "/studies", content=body,
                          headers={"Content-Type": content_type}).status_code == 200
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    r = httpx.get(f"{server.dicomweb}/studies/{study_uid}", headers=accept, timeout=30)
    parts = split_multipart(r.content, r.headers["content-type"])
    got = {read_dataset(d).SOPInstanceUID: read_dataset(d) for _, d in parts}
    assert len(parts) == 14 and set(got) == {ds.SOPInstanceUID for ds in sent}
    for ds in sent:
        assert got[ds.SOPInstanceUID].PixelData == ds.PixelData
    metadata = httpx.get(f"{server.dicomweb}/studies/{study_uid}/metadata").json()
    index_order = [m["00080018"]["Value"][0] for m in metadata]
    assert [read_dataset(d).SOPInstanceUID for _, d in parts] == index_order
    for _ in range(3):
        with httpx.stream("GET", f"{server.dicomweb}/studies/{study_uid}", headers=accept) as partial:
            next(partial.iter_raw(64 << 10))  # the first bytes only, then the connection closes
    again = httpx.get(f"{server.dicomweb}/studies/{study_uid}", headers=accept, timeout=30)
    assert [d for _, d in split_multipart(again.content, again.headers["content-type"])] == [d for _, d in parts]
