"""Stored files sent with sendfile (``pacsbridge.zero_copy``) by the server the tests and `serve` run."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from pacsbridge import zero_copy
from pacsbridge.adapters.dicomweb import wado
from pacsbridge.zero_copy import ZeroCopyHttpProtocol

from ..support.dicom import instance
from ..support.http import read_dataset, split_multipart, stow_body
from ..support.servers import RunningServer

AS_STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


class Sends:
    """Counts the file ranges sent with sendfile, how many are being sent right now, and which threads
    made the sendfile calls: the event loop's or workers'."""

    def __init__(self) -> None:
        self.started = 0
        self.running = 0
        self.loop_threads: set[int] = set()
        self.calls: list[int] = []  # thread of each sendfile call

    @property
    def from_loop(self) -> int:
        return sum(1 for t in self.calls if t in self.loop_threads)

    @property
    def from_thread(self) -> int:
        return len(self.calls) - self.from_loop

    def reset(self) -> None:
        self.started = 0
        self.calls.clear()

    def wrap_send_file(self, real: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        async def counted(*args: object) -> None:
            self.loop_threads.add(threading.get_ident())
            self.started += 1
            self.running += 1
            try:
                await real(*args)
            finally:
                self.running -= 1
        return counted

    def wrap_sendfile(self, real: Callable[..., int]) -> Callable[..., int]:
        def counted(*args: int) -> int:
            self.calls.append(threading.get_ident())
            return real(*args)
        return counted


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> Sends:
    counter = Sends()
    monkeypatch.setattr(ZeroCopyHttpProtocol, "send_file", counter.wrap_send_file(ZeroCopyHttpProtocol.send_file))
    monkeypatch.setattr(os, "sendfile", counter.wrap_sendfile(os.sendfile))
    return counter


def store(server: RunningServer, parts: list[Dataset]) -> None:
    for start in range(0, len(parts), 6):
        body, content_type = stow_body(parts[start:start + 6])
        r = httpx.post(server.dicomweb + "/studies", content=body, headers={"Content-Type": content_type}, timeout=30)
        assert r.status_code == 200, r.text


def _descriptor_targets() -> list[str]:
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
    return targets


def open_sockets() -> list[str]:
    """Sockets this process holds (index connections that worker threads open lazily are files, not
    sockets, so the count does not move with them)."""
    return [t for t in _descriptor_targets() if t.startswith("socket:")]


def open_under(folder: Path) -> list[str]:
    return [t for t in _descriptor_targets() if t.startswith(str(folder))]


def small_window(server: RunningServer) -> socket.socket:
    return small_window_to(server.port)


def small_window_to(port: int) -> socket.socket:
    """A client socket with a 4 KB receive buffer (set before connecting, so the window stays small)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    return sock


def parts_of(response: httpx.Response) -> list[bytes]:
    return [data for _, data in split_multipart(response.content, response.headers["content-type"])]


def uids(body: bytes, content_type: str) -> list[str]:
    return [read_dataset(d).SOPInstanceUID for _, d in split_multipart(body, content_type)]


def test_a_study_sent_as_stored_goes_out_by_sendfile_exactly_and_keeps_the_connection(
        server: RunningServer, sends: Sends, monkeypatch: pytest.MonkeyPatch) -> None:
    """One sendfile per stored file, opened a few at a time; the bytes are the stored files in index
    order, with an exact Content-Length; the same connection then serves the next request."""
    monkeypatch.setattr(wado, "OPEN_RUN", 3)  # several runs of opened files
    monkeypatch.setattr(zero_copy, "PIECE", 100_000)  # files go out in several sendfile calls
    study_uid = generate_uid()
    parts = [instance(study_uid, number=n, rows=256, columns=256) for n in range(1, 8)]
    parts.insert(3, instance(study_uid, number=50, rows=1200, columns=1200))  # 2.9 MB: fills the socket
    store(server, parts)
    with httpx.Client(timeout=30) as client:
        first = client.get(f"{server.dicomweb}/studies/{study_uid}", headers=AS_STORED)
        assert first.status_code == 200
        assert "transfer-encoding" not in first.headers
        assert int(first.headers["content-length"]) == len(first.content)
        assert sends.started == len(parts)
        assert sends.from_loop >= len(parts) and sends.from_thread == 0  # just written: in the page cache
        second = client.get(f"{server.dicomweb}/studies/{study_uid}", headers=AS_STORED)
        assert parts_of(second) == parts_of(first) and sends.started == 2 * len(parts)
        metadata = client.get(f"{server.dicomweb}/studies/{study_uid}/metadata").json()
    assert uids(first.content, first.headers["content-type"]) == [m["00080018"]["Value"][0] for m in metadata]
    got = {read_dataset(d).SOPInstanceUID: read_dataset(d) for _, d in
           split_multipart(first.content, first.headers["content-type"])}
    for ds in parts:
        assert got[ds.SOPInstanceUID].PixelData == ds.PixelData


def test_a_slow_reader_with_a_small_window_gets_every_byte(server: RunningServer, sends: Sends) -> None:
    """A client reading a little at a time keeps the socket full: each send waits for room (and the
    framing written between files waits for the file before it), and the body is still exact."""
    study_uid = generate_uid()
    parts = [instance(study_uid, number=n, rows=700, columns=700) for n in range(1, 4)]
    store(server, parts)
    expected = httpx.get(f"{server.dicomweb}/studies/{study_uid}", headers=AS_STORED, timeout=30)
    sends.reset()
    with small_window(server) as sock:
        sock.sendall(f"GET /dicomweb/studies/{study_uid} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     f"Accept: {AS_STORED['Accept']}\r\n\r\n".encode())
        received = bytearray()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            chunk = sock.recv(16 << 10)
            if not chunk:
                break
            received += chunk
            time.sleep(0.0005)
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    assert status.startswith("HTTP/1.1 200") and int(headers["content-length"]) == len(body)
    assert [data for _, data in split_multipart(body, headers["content-type"])] == parts_of(expected)
    assert sends.started == len(parts)


@pytest.mark.parametrize("cached", [True, False], ids=["from-the-loop", "from-a-thread"])
def test_a_client_leaving_mid_file_ends_the_send_and_the_server_goes_on(
        server: RunningServer, sends: Sends, monkeypatch: pytest.MonkeyPatch, cached: bool) -> None:
    """A client that stops reading, then closes: the send waiting for room gives up, nothing is left
    running, and the next client gets the whole study."""
    monkeypatch.setattr(zero_copy, "_in_page_cache", lambda fd, position: cached)
    study_uid = generate_uid()
    parts = [instance(study_uid, number=n, rows=1200, columns=1200) for n in range(1, 3)]
    store(server, parts)
    sockets = open_sockets()  # the server runs in this process
    for _ in range(3):
        with small_window(server) as sock:
            sock.sendall(f"GET /dicomweb/studies/{study_uid} HTTP/1.1\r\nHost: x\r\n"
                         f"Accept: {AS_STORED['Accept']}\r\n\r\n".encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            deadline = time.monotonic() + 10
            while sends.running == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert sends.running == 1  # blocked on the full socket
    deadline = time.monotonic() + 10
    while sends.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sends.running == 0
    r = httpx.get(f"{server.dicomweb}/studies/{study_uid}", headers=AS_STORED, timeout=30)
    assert sorted(uids(r.content, r.headers["content-type"])) == sorted(p.SOPInstanceUID for p in parts)
    files = server.settings.data_dir / "files"
    deadline = time.monotonic() + 10
    while (len(open_sockets()) > len(sockets) or open_under(files)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(open_sockets()) <= len(sockets)  # no socket duplicate left open
    assert open_under(files) == []  # no stored file left open


def test_a_chunked_body_and_a_head_request_send_no_file_by_sendfile(
        server: RunningServer, sends: Sends, monkeypatch: pytest.MonkeyPatch) -> None:
    """A study with a part to convert has no known length: it is chunked, and the stored parts in it
    are read (a piece at a time) and framed as chunks. A HEAD request gets the headers and no body."""
    monkeypatch.setattr(zero_copy, "PIECE", 100)
    study_uid = generate_uid()
    implicit = instance(study_uid, number=2)
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    parts = [instance(study_uid, number=1), implicit, instance(study_uid, number=3)]
    store(server, parts)
    r = httpx.get(f"{server.dicomweb}/studies/{study_uid}", timeout=30)  # Explicit VR LE by default
    assert r.status_code == 200 and r.headers["transfer-encoding"] == "chunked"
    assert sorted(uids(r.content, r.headers["content-type"])) == sorted(p.SOPInstanceUID for p in parts)
    assert sends.started == 0
    other_study = generate_uid()
    as_stored = [instance(other_study, number=n) for n in range(1, 3)]
    store(server, as_stored)
    opened: list[int] = []
    real_open = server.app.state.services.retrieve.open_stored

    async def counting_open(stored: list) -> list:
        opened.append(len(stored))
        return await real_open(stored)

    monkeypatch.setattr(server.app.state.services.retrieve, "open_stored", counting_open)
    with httpx.Client(timeout=30) as client:
        head = client.head(f"{server.dicomweb}/studies/{as_stored[0].StudyInstanceUID}", headers=AS_STORED)
        assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
        assert sends.started == 0 and opened == []  # no file opened (nor read ahead) for a HEAD
        after = client.get(f"{server.dicomweb}/studies/{as_stored[0].StudyInstanceUID}", headers=AS_STORED)
    assert int(head.headers["content-length"]) == len(after.content)
    assert sends.started == len(as_stored)


def test_a_file_not_in_the_page_cache_is_sent_by_a_thread(
        server: RunningServer, sends: Sends, monkeypatch: pytest.MonkeyPatch) -> None:
    """The event loop never waits for the disk: a range whose pages may have to be read is sent from a
    worker thread, with the same bytes."""
    study_uid = generate_uid()
    parts = [instance(study_uid, number=n, rows=600, columns=600) for n in range(1, 5)]
    store(server, parts)
    from_loop = httpx.get(f"{server.dicomweb}/studies/{study_uid}", headers=AS_STORED, timeout=30)
    assert sends.started == len(parts) and sends.from_loop >= len(parts) and sends.from_thread == 0
    sends.reset()
    monkeypatch.setattr(zero_copy, "_in_page_cache", lambda fd, position: False)
    from_thread = httpx.get(f"{server.dicomweb}/studies/{study_uid}", headers=AS_STORED, timeout=30)
    assert sends.started == len(parts) and sends.from_loop == 0 and sends.from_thread >= len(parts)
    assert parts_of(from_thread) == parts_of(from_loop)


def test_the_page_cache_probe_tells_cached_from_dropped_pages(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * (1 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # clean pages can be dropped
        assert zero_copy._in_page_cache(fd, (1 << 20) - 1)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert not zero_copy._in_page_cache(fd, (1 << 20) - 1)
        os.pread(fd, 1, (1 << 20) - 1)
        assert zero_copy._in_page_cache(fd, (1 << 20) - 1)
    finally:
        os.close(fd)


class MessageThenFile:
    """An ASGI app answering every request with an 8 MB body message (more than the socket takes, so
    uvicorn buffers the rest) followed by ``blob`` as a zero-copy send; it records what it raised."""

    first = b"A" * (8 << 20)

    def __init__(self, blob: Path) -> None:
        self.blob = blob
        self.errors: list[BaseException] = []
        self.finished = threading.Event()

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return
        try:
            assert "http.response.zerocopysend" in scope["extensions"]
            size = len(self.first) + self.blob.stat().st_size
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(size).encode())]})
            await send({"type": "http.response.body", "body": self.first, "more_body": True})
            with self.blob.open("rb") as fp:
                await send({"type": "http.response.zerocopysend", "file": fp, "more_body": False})
        except BaseException as exc:
            self.errors.append(exc)
            raise
        finally:
            self.finished.set()


@contextlib.contextmanager
def serving(app: MessageThenFile) -> Iterator[int]:
    """uvicorn with pacsbridge's protocol serving ``app`` on a free loopback port, stopped on exit."""
    import uvicorn

    from ..support.servers import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           http=ZeroCopyHttpProtocol, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_bytes_the_transport_still_holds_go_out_before_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body message larger than the socket takes stays in uvicorn's buffer; a file sent next must wait
    for it, or the client would get the file's bytes in the middle of the message's."""
    blob = tmp_path / "file"
    blob.write_bytes(bytes(range(251)) * 4000)  # ~1 MB
    waits: list[int] = []
    real_flush = zero_copy._flush

    async def flush(cycle: object) -> None:
        waits.append(cycle.transport.get_write_buffer_size())  # type: ignore[attr-defined]
        await real_flush(cycle)  # type: ignore[arg-type]

    monkeypatch.setattr(zero_copy, "_flush", flush)
    app = MessageThenFile(blob)
    with serving(app) as port, httpx.stream("GET", f"http://127.0.0.1:{port}/", timeout=30) as r:
        time.sleep(0.3)  # let the socket fill and uvicorn buffer the rest of the first message
        body = r.read()
    assert waits and waits[0] > 0  # something was still buffered when the file's turn came
    assert body == app.first + blob.read_bytes()
    assert app.errors == []


def test_a_single_instance_as_stored_is_the_stored_file_with_its_length(server: RunningServer, sends: Sends) -> None:
    """WADO-RS instance as ``application/dicom`` and WADO-URI: the stored file, byte for byte, with a
    Content-Length; a conversion is streamed without one."""
    ds = instance(rows=300, columns=300)
    store(server, [ds])
    stored = next((server.settings.data_dir / "files").rglob(f"{ds.SOPInstanceUID}.*.dcm")).read_bytes()
    path = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    wado_rs = httpx.get(server.dicomweb + path, headers={"Accept": "application/dicom; transfer-syntax=*"})
    wado_uri = httpx.get(server.dicomweb + "/wado", params={
        "requestType": "WADO", "studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID,
        "objectUID": ds.SOPInstanceUID, "contentType": "application/dicom"})
    for r in (wado_rs, wado_uri):
        assert r.status_code == 200 and r.content == stored
        assert int(r.headers["content-length"]) == len(stored) and "transfer-encoding" not in r.headers
    assert sends.started == 2
    implicit = instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, number=2)
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # never sent as stored on the web
    store(server, [implicit])
    converted = httpx.get(f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/"
                          f"instances/{implicit.SOPInstanceUID}", headers={"Accept": "application/dicom"})
    assert converted.status_code == 200 and converted.headers["transfer-encoding"] == "chunked"
    assert read_dataset(converted.content).SOPInstanceUID == implicit.SOPInstanceUID
    assert sends.started == 2


def test_a_client_leaving_while_its_buffered_bytes_drain_ends_the_send_quietly(tmp_path: Path) -> None:
    """The client closes while the send still waits for uvicorn's buffer to empty: the send ends
    without an error (the closed transport is not given its buffer limits back)."""
    blob = tmp_path / "file"
    blob.write_bytes(b"f" * 100_000)
    app = MessageThenFile(blob)
    with serving(app) as port:
        sock = small_window_to(port)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(0.3)  # the rest of the first message is in uvicorn's buffer, the file waits behind it
        sock.close()
        assert app.finished.wait(10)
    assert app.errors == []
