"""STOW-RS against a running pacsbridge on loopback (PS3.18 §10.5)."""

from __future__ import annotations

import httpx
import pytest
from pydicom.uid import generate_uid

from ..support.dicom import instance, to_bytes
from ..support.http import stow_body
from ..support.servers import OPEN_DICOMWEB, RunningServer

JSON = {"Accept": "application/dicom+json"}


def post(server: RunningServer, parts: list, path: str = "/studies") -> httpx.Response:
    body, content_type = stow_body(parts)
    return httpx.post(server.dicomweb + path, content=body, headers={"Content-Type": content_type, **JSON})


def files_in(server: RunningServer) -> list:
    root = server.settings.data_dir
    return sorted(p for p in (root / "files").rglob("*") if p.is_file()) if (root / "files").exists() else []


def spool_leftovers(server: RunningServer) -> list:
    return list((server.settings.data_dir / "spool").glob("*"))


def count_instances(server: RunningServer) -> int:
    r = httpx.get(server.dicomweb + "/instances", headers=JSON)
    return 0 if r.status_code == 204 else len(r.json())


def test_all_stored_is_200_with_referenced_sops_and_retrieve_urls(server: RunningServer) -> None:
    study = generate_uid()
    parts = [instance(study, number=n) for n in range(1, 4)]
    r = post(server, parts)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/dicom+json")
    body = r.json()
    assert body["00081190"]["Value"] == [f"{server.dicomweb}/studies/{study}"]
    refs = body["00081199"]["Value"]
    assert {item["00081155"]["Value"][0] for item in refs} == {p.SOPInstanceUID for p in parts}
    for item in refs:
        url = item["00081190"]["Value"][0]
        assert url.startswith(f"{server.dicomweb}/studies/{study}/series/") and "/instances/" in url
    assert "00081198" not in body
    assert len(files_in(server)) == 3 and count_instances(server) == 3


def test_partial_success_is_202_and_the_bad_part_leaves_nothing(server: RunningServer) -> None:
    good = instance()
    r = post(server, [good, b"this is not DICOM at all" * 10])
    assert r.status_code == 202, r.text
    body = r.json()
    (failed,) = body["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    assert len(body["00081199"]["Value"]) == 1
    assert len(files_in(server)) == 1 and not spool_leftovers(server)


def test_instance_of_another_study_than_the_url_is_409(server: RunningServer) -> None:
    ds = instance()
    r = post(server, [ds], path=f"/studies/{generate_uid()}")
    assert r.status_code == 409
    (failed,) = r.json()["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [ds.SOPInstanceUID]
    assert failed["00081197"]["Value"] == [0xA901]
    assert files_in(server) == [] and count_instances(server) == 0


def test_unsupported_sop_class_is_409_with_0122(server: RunningServer) -> None:
    ds = instance(SOPClassUID="1.2.840.10008.1.1")  # Verification: not a storage class
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.1"
    r = post(server, [ds])
    assert r.status_code == 409
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0122]


def test_missing_uid_is_a900(server: RunningServer) -> None:
    ds = instance(SeriesInstanceUID=None)
    r = post(server, [ds])
    assert r.status_code == 409
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]


def test_truncated_multipart_is_400_and_stores_nothing(server: RunningServer) -> None:
    body, content_type = stow_body([instance()])
    r = httpx.post(server.dicomweb + "/studies", content=body[: len(body) // 2],
                   headers={"Content-Type": content_type})
    assert r.status_code == 400
    assert files_in(server) == [] and not spool_leftovers(server)


@pytest.mark.parametrize("content_type", [
    "application/json", 'multipart/related; type="application/dicom+xml"; boundary=x'])
def test_unsupported_media_type_is_415(server: RunningServer, content_type: str) -> None:
    r = httpx.post(server.dicomweb + "/studies", content=b"{}", headers={"Content-Type": content_type})
    assert r.status_code == 415


def test_empty_body_is_400(server: RunningServer) -> None:
    r = httpx.post(server.dicomweb + "/studies", content=b"--b--\r\n",
                   headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert r.status_code == 400


def test_storing_the_same_instance_again_replaces_it(server: RunningServer) -> None:
    ds = instance(PatientName="Before^Name")
    assert post(server, [ds]).status_code == 200
    ds.PatientName = "After^Name"
    assert post(server, [ds]).status_code == 200
    assert count_instances(server) == 1 and len(files_in(server)) == 1
    r = httpx.get(server.dicomweb + "/studies", params={"PatientName": "After^Name"}, headers=JSON)
    assert r.status_code == 200 and len(r.json()) == 1


def test_single_part_application_dicom_body(server: RunningServer) -> None:
    ds = instance()
    r = httpx.post(server.dicomweb + "/studies", content=to_bytes(ds),
                   headers={"Content-Type": "application/dicom", **JSON})
    assert r.status_code == 200
    assert r.json()["00081199"]["Value"][0]["00081155"]["Value"] == [ds.SOPInstanceUID]


def test_a_body_over_the_configured_limit_is_413(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pacsbridge.settings import Settings

    from ..support.servers import serve

    settings = Settings(data_dir=tmp_path / "d", storage={"fsync": False}, dicomweb={"stow_max_bytes": 4096},
                        auth=OPEN_DICOMWEB)
    with serve(settings) as small:
        r = post(small, [instance(rows=64, columns=64)])
        assert r.status_code == 413
        assert files_in(small) == [] and not spool_leftovers(small)


def test_a_client_that_dies_mid_upload_leaves_nothing_half_written(server: RunningServer) -> None:
    """The first part arrives whole and is stored; the second is cut off: no spool file, no partial
    instance, and the server keeps serving."""
    import socket
    import time

    first, second = instance(rows=64, columns=64), instance(rows=64, columns=64)
    body, content_type = stow_body([first, second])
    cut = body[: len(body) - 3000]  # inside the second part's pixel data
    host, port = "127.0.0.1", server.port
    with socket.create_connection((host, port)) as sock:
        head = (f"POST {server.settings.dicomweb.root}/studies HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        sock.sendall(head + cut)
        time.sleep(0.5)
    deadline = time.monotonic() + 10
    while spool_leftovers(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not spool_leftovers(server)
    r = httpx.get(server.dicomweb + "/instances", headers=JSON)
    stored = {i["00080018"]["Value"][0] for i in r.json()} if r.status_code == 200 else set()
    assert stored == {first.SOPInstanceUID}  # the whole first part is kept, the cut one is not
    assert len(files_in(server)) == 1
    assert httpx.get(server.url + "/health").status_code == 200


def test_a_request_of_many_batches_keeps_every_part_and_its_order(server: RunningServer) -> None:
    """More parts than one index batch (stow.BATCH), with failed parts among them: every good part is
    stored, every bad one reported, in the order sent; no spool file is left."""
    from pacsbridge.adapters.dicomweb.stow import BATCH

    study = generate_uid()
    parts: list = [instance(study, number=n) for n in range(1, 2 * BATCH + 6)]
    bad_at = {3, BATCH, BATCH + 1, 2 * BATCH + 2}
    for i in sorted(bad_at):
        parts.insert(i, b"not DICOM " * 20)
    r = post(server, parts)
    assert r.status_code == 202, r.text
    body = r.json()
    sent = [p.SOPInstanceUID for p in parts if not isinstance(p, bytes)]
    assert [item["00081155"]["Value"][0] for item in body["00081199"]["Value"]] == sent
    assert len(body["00081198"]["Value"]) == len(bad_at)
    assert count_instances(server) == len(sent) and len(files_in(server)) == len(sent)
    assert not spool_leftovers(server)
    (row,) = httpx.get(server.dicomweb + "/studies", params={"StudyInstanceUID": study}, headers=JSON).json()
    assert row["00201208"]["Value"] == [len(sent)]


def test_a_bare_application_dicom_body_over_the_limit_is_413(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The configured limit holds for a single-instance body too, not only for multipart."""
    from pacsbridge.settings import Settings

    from ..support.servers import serve

    settings = Settings(data_dir=tmp_path / "d", storage={"fsync": False}, dicomweb={"stow_max_bytes": 4096},
                        auth=OPEN_DICOMWEB)
    with serve(settings) as small:
        r = httpx.post(small.dicomweb + "/studies", content=to_bytes(instance(rows=64, columns=64)),
                       headers={"Content-Type": "application/dicom", **JSON})
        assert r.status_code == 413
        assert files_in(small) == [] and not spool_leftovers(small)


class _FullDisk:
    """Fault injection (a full disk cannot be produced by a peer): the spool's files refuse their
    ``fail_on``-th seal, or every write once ``write_limit`` bytes went into one file."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_on: set[int] | None = None,
                 write_limit: int | None = None) -> None:
        import errno

        from pacsbridge.backends.blobs import BlobStore

        self.seals = 0
        seal, new_spool_file = BlobStore.seal, BlobStore.new_spool_file
        full = OSError(errno.ENOSPC, "No space left on device")

        def failing_seal(store: BlobStore, fp) -> None:  # type: ignore[no-untyped-def]
            self.seals += 1
            if fail_on and self.seals in fail_on:
                fp.close()
                raise full
            seal(store, fp)

        class Limited:
            def __init__(self, fp) -> None:  # type: ignore[no-untyped-def]
                self.fp, self.written = fp, 0

            def write(self, data: bytes) -> int:
                self.written += len(data)
                if write_limit is not None and self.written > write_limit:
                    raise full
                return int(self.fp.write(data))

            def writelines(self, chunks) -> None:  # type: ignore[no-untyped-def]
                for chunk in chunks:
                    self.write(chunk)

            def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
                return getattr(self.fp, name)

            def __enter__(self):  # type: ignore[no-untyped-def]
                return self

            def __exit__(self, *exc) -> None:  # type: ignore[no-untyped-def]
                self.fp.close()

        def limited_spool_file(store: BlobStore):  # type: ignore[no-untyped-def]
            path, fp = new_spool_file(store)
            return path, Limited(fp)

        monkeypatch.setattr(BlobStore, "seal", failing_seal)
        if write_limit is not None:
            monkeypatch.setattr(BlobStore, "new_spool_file", limited_spool_file)


def test_a_full_disk_fails_that_part_with_a700_and_keeps_the_others(
        server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: a seal that failed (ENOSPC) escaped as a plain 500 and left its spool file; the
    good parts of the request were lost with it."""
    _FullDisk(monkeypatch, fail_on={2})
    study = generate_uid()
    parts = [instance(study, number=n) for n in (1, 2, 3)]
    r = post(server, parts)
    assert r.status_code == 202, r.text
    body = r.json()
    (failed,) = body["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA700]
    assert len(body["00081199"]["Value"]) == 2
    assert count_instances(server) == 2 and len(files_in(server)) == 2
    assert not spool_leftovers(server)


def test_a_full_disk_for_every_part_is_503_with_retry_after(server: RunningServer,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _FullDisk(monkeypatch, fail_on=set(range(1, 10)))
    r = post(server, [instance(), instance()])
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"]
    assert [f["00081197"]["Value"] for f in r.json()["00081198"]["Value"]] == [[0xA700], [0xA700]]
    assert files_in(server) == [] and not spool_leftovers(server)


def test_a_full_disk_while_a_large_part_streams_in_fails_that_part_only(
        server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A part larger than the sink's write buffer is written while it arrives; a write refused midway
    drops that part (no spool file) and the next part is still read and stored."""
    from pacsbridge.adapters.dicomweb.stow import WRITE_BUFFER

    _FullDisk(monkeypatch, write_limit=WRITE_BUFFER // 2)
    large, small = instance(rows=1024, columns=1024), instance(rows=8, columns=8)
    assert len(to_bytes(large)) > WRITE_BUFFER
    r = post(server, [large, small])
    assert r.status_code == 202, r.text
    body = r.json()
    assert [f["00081197"]["Value"] for f in body["00081198"]["Value"]] == [[0xA700]]
    assert [i["00081155"]["Value"][0] for i in body["00081199"]["Value"]] == [small.SOPInstanceUID]
    assert not spool_leftovers(server)
