"""uvicorn's HTTP protocol plus the ASGI zero-copy send extension: stored files go to the socket with
``sendfile``, never through Python.

Whole-study retrieval is mostly stored files sent as they are. Read and written through Python, every
byte is copied twice more in the kernel (page cache to a buffer, buffer to the socket) and allocated
once in Python. uvicorn implements no zero-copy send, but it accepts a protocol class (its ``http``
option): this one is its httptools protocol offering ``http.response.zerocopysend`` (ASGI HTTP spec,
extensions) in every request's scope.

How a zero-copy send is carried out:
1. Anything uvicorn has buffered for the connection (headers, framing) is flushed first: the write
   buffer limits drop to zero until the buffer is empty, so the bytes stay in order.
2. A range whose pages are in the page cache (its last byte reads with ``RWF_NOWAIT``; the retrieve
   use case asks the kernel to read files ahead) is sent from the event loop: ``sendfile`` on a
   duplicate of the socket's descriptor, waiting for room with a writer callback on that duplicate.
   No thread is woken: on this 2-core VM a thread hop per file cost more than the copy it saved.
3. Any other range is sent by a worker thread (``sendfile``, ``poll`` when the socket is full), so the
   event loop never waits for the disk.
4. Nothing else writes to the connection meanwhile: the application is waiting for its send. A
   connection that breaks or closes ends the send.

Only bodies with a Content-Length are sent with ``sendfile``; in a chunked body the file's bytes are
read and sent as an ordinary body message, and a HEAD request sends none.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import threading
from typing import IO, Any

import anyio
import anyio.to_thread
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

EXTENSION = "http.response.zerocopysend"
POLL_S = 0.5  # how often a thread waiting on a full socket looks whether the connection is gone
FLUSH_POLL_S = 0.001


class ZeroCopyHttpProtocol(HttpToolsProtocol):
    """httptools protocol whose requests may answer with ``http.response.zerocopysend`` messages."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lost = threading.Event()  # seen by sending threads
        self._out_fd: int | None = None  # duplicate of the socket for sends from the event loop
        self._writable: asyncio.Future[None] | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost.set()
        self._stop_waiting(ConnectionResetError(errno.ECONNRESET, "connection closed during a file send"))
        if self._out_fd is not None:
            os.close(self._out_fd)
            self._out_fd = None
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is None or cycle.scope is not self.scope:  # an upgrade: no HTTP cycle was started
            return
        self.scope.setdefault("extensions", {})[EXTENSION] = {}
        # The application's task is created but has not run yet, so it will get this send.
        cycle.send = _ZeroCopySend(self, cycle, cycle.send)  # type: ignore[method-assign]

    # --- sending from the event loop ----------------------------------------------------------------

    async def send_from_loop(self, file_fd: int, offset: int, count: int) -> None:
        if self._out_fd is None:
            self._out_fd = os.dup(self.transport.get_extra_info("socket").fileno())
        while count > 0:
            if self._out_fd is None:
                raise ConnectionResetError(errno.ECONNRESET, "connection closed during a file send")
            try:
                sent = os.sendfile(self._out_fd, file_fd, offset, count)
            except BlockingIOError:
                await self._room()
                continue
            if sent == 0:
                raise OSError(errno.EIO, f"file ended {count} bytes before the range sent")
            offset += sent
            count -= sent

    async def _room(self) -> None:
        """Wait until the socket takes more bytes (a writer callback on our duplicate descriptor: the
        transport owns the original)."""
        assert self._out_fd is not None
        loop = asyncio.get_running_loop()
        self._writable = loop.create_future()
        loop.add_writer(self._out_fd, self._stop_waiting, None)
        try:
            await self._writable
        finally:
            self._stop_waiting(None)

    def _stop_waiting(self, error: BaseException | None) -> None:
        waiter, self._writable = self._writable, None
        if waiter is None:
            return
        if self._out_fd is not None:
            self.loop.remove_writer(self._out_fd)
        if not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def send_from_thread(self, file_fd: int, offset: int, count: int) -> Any:
        sock_fd = self.transport.get_extra_info("socket").fileno()
        return anyio.to_thread.run_sync(_send_range, sock_fd, file_fd, offset, count, self._lost)


class _ZeroCopySend:
    """The cycle's ``send``, which also carries out zero-copy messages."""

    def __init__(self, protocol: ZeroCopyHttpProtocol, cycle: RequestResponseCycle, plain: Any) -> None:
        self.protocol = protocol
        self.cycle = cycle
        self.plain = plain

    async def __call__(self, message: Any) -> None:
        if message["type"] != EXTENSION:
            await self.plain(message)
            return
        cycle = self.cycle
        file: IO[bytes] = message["file"]
        offset = int(message.get("offset") or 0)
        count = message.get("count")
        more_body = bool(message.get("more_body", False))
        if count is None:
            count = os.fstat(file.fileno()).st_size - offset
        if cycle.disconnected:
            return
        if not cycle.response_started or cycle.response_complete:
            raise RuntimeError(f"Unexpected ASGI message '{EXTENSION}' outside a response body.")
        if cycle.scope["method"] == "HEAD":  # headers only: nothing to read
            await self.plain({"type": "http.response.body", "body": b"", "more_body": more_body})
            return
        if cycle.chunked_encoding:  # each piece needs its chunk framing: sent as an ordinary body
            body = await anyio.to_thread.run_sync(os.pread, file.fileno(), count, offset)
            await self.plain({"type": "http.response.body", "body": body, "more_body": more_body})
            return
        if count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        await _flush(cycle)
        if cycle.disconnected:
            return
        try:
            if count == 0:
                pass
            elif _in_page_cache(file.fileno(), offset + count - 1):
                await self.protocol.send_from_loop(file.fileno(), offset, count)
            else:
                await self.protocol.send_from_thread(file.fileno(), offset, count)
        except ConnectionError:
            cycle.disconnected = True
            cycle.transport.close()
            return
        cycle.expected_content_length -= count
        if not more_body:
            await self.plain({"type": "http.response.body", "body": b"", "more_body": False})


def _in_page_cache(fd: int, position: int) -> bool:
    """Whether the byte at ``position`` can be read without waiting for the disk."""
    try:
        os.preadv(fd, [bytearray(1)], position, os.RWF_NOWAIT)
    except OSError:  # BlockingIOError: not cached; EOPNOTSUPP: the file system cannot tell
        return False
    return True


async def _flush(cycle: RequestResponseCycle) -> None:
    """Wait until the transport has written everything it holds for this connection."""
    transport = cycle.transport
    if not transport.get_write_buffer_size():
        return
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0, low=0)  # pause_writing now, resume_writing when empty
    try:
        while transport.get_write_buffer_size() and not cycle.disconnected:
            if cycle.flow.write_paused:
                await cycle.flow.drain()
            else:  # a transport that did not pause its protocol: look again shortly, never spin
                await anyio.sleep(FLUSH_POLL_S)
    finally:
        transport.set_write_buffer_limits(high=high, low=low)


def _send_range(sock_fd: int, file_fd: int, offset: int, count: int, lost: threading.Event) -> None:
    """``count`` bytes of the file from ``offset`` to the (non-blocking) socket. Runs in a thread, on a
    duplicate descriptor, so that a connection closed meanwhile never lets it write to a reused number."""
    out = os.dup(sock_fd)
    try:
        poller = select.poll()
        poller.register(out, select.POLLOUT)
        while count > 0:
            try:
                sent = os.sendfile(out, file_fd, offset, count)
            except BlockingIOError:
                while not poller.poll(POLL_S * 1000):
                    if lost.is_set():
                        raise ConnectionResetError(errno.ECONNRESET, "connection closed during a file send") from None
                continue
            if sent == 0:
                raise OSError(errno.EIO, f"file ended {count} bytes before the range sent")
            offset += sent
            count -= sent
    finally:
        os.close(out)
