"""uvicorn's HTTP protocol plus the ASGI zero-copy send extension: stored files go to the socket with
``sendfile``, never through Python.

Whole-study retrieval is mostly stored files sent as they are. Read and written through Python, every
byte is copied twice more in the kernel (page cache to a buffer, buffer to the socket) and allocated
once in Python. uvicorn implements no zero-copy send, but it accepts a protocol class (its ``http``
option): this one is its httptools protocol offering ``http.response.zerocopysend`` (ASGI HTTP spec,
extensions) in every plain-HTTP request's scope (not over TLS, where the bytes must be encrypted).

How a zero-copy send is carried out:
1. Anything uvicorn has buffered for the connection (headers, framing) is flushed first: the write
   buffer limits drop to zero until the buffer is empty, so the bytes stay in order.
2. The range goes out in pieces of at most PIECE bytes with ``sendfile`` on a duplicate of the
   socket's descriptor, made for this send on the event loop and closed when it ends (so no thread
   ever holds a descriptor number the connection may have given back).
3. A piece whose last byte is in the page cache (a read with ``RWF_NOWAIT``; the retrieve use case asks
   the kernel to read files ahead) is sent from the event loop. Any other piece is sent by a worker
   thread, which may wait for the disk but never for the client: the socket is non-blocking.
   No thread is woken for cached data: on this 2-core VM a thread hop per file cost more than the
   copy it saved.
4. When the socket is full the send waits on the event loop for room (a writer callback on the
   duplicate: the transport owns the original). A connection that closes meanwhile ends the send.
5. Nothing else writes to the connection meanwhile: the application is waiting for its send.

Only bodies with a Content-Length are sent with ``sendfile``; in a chunked body the file's bytes are
read and sent as ordinary body messages, and a HEAD request sends none.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator
from typing import IO, Any

import anyio
import anyio.to_thread
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

EXTENSION = "http.response.zerocopysend"  # ASGI HTTP extension
PIECE = 1 << 20  # most bytes of one sendfile call: the page-cache probe vouches for this much
FLUSH_POLL_S = 0.001


class ZeroCopyHttpProtocol(HttpToolsProtocol):
    """httptools protocol whose requests may answer with ``http.response.zerocopysend`` messages."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._room: asyncio.Future[None] | None = None  # a send waiting for the socket to take more
        self._room_fd = -1

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting(ConnectionResetError(errno.ECONNRESET, "connection closed during a file send"))
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is None or cycle.scope is not self.scope:  # an upgrade: no HTTP cycle was started
            return
        if self.transport.get_extra_info("sslcontext"):
            return
        self.scope.setdefault("extensions", {})[EXTENSION] = {}
        # The application's task is created but has not run yet, so it will get this send.
        cycle.send = _ZeroCopySend(self, cycle, cycle.send)  # type: ignore[method-assign]

    async def send_file(self, file_fd: int, offset: int, count: int) -> None:
        """``count`` bytes of the file from ``offset`` to the connection (steps 2 to 4 above)."""
        if self.transport.is_closing():
            raise ConnectionResetError(errno.ECONNRESET, "connection closed before a file send")
        out = os.dup(self.transport.get_extra_info("socket").fileno())
        try:
            while count > 0:
                piece = min(count, PIECE)
                try:
                    if _in_page_cache(file_fd, offset + piece - 1):
                        sent = os.sendfile(out, file_fd, offset, piece)
                    else:
                        sent = await anyio.to_thread.run_sync(os.sendfile, out, file_fd, offset, piece)
                except BlockingIOError:
                    await self._wait_for_room(out)
                    continue
                if sent == 0:
                    raise OSError(errno.EIO, f"file ended {count} bytes before the range sent")
                offset += sent
                count -= sent
        finally:
            os.close(out)

    async def _wait_for_room(self, out: int) -> None:
        loop = asyncio.get_running_loop()
        self._room, self._room_fd = loop.create_future(), out
        loop.add_writer(out, self._stop_waiting, None)
        try:
            await self._room
        finally:
            self._stop_waiting(None)

    def _stop_waiting(self, error: BaseException | None) -> None:
        waiter, self._room = self._room, None
        if waiter is None:
            return
        self.loop.remove_writer(self._room_fd)
        if not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)


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
        if cycle.chunked_encoding:  # each piece needs its chunk framing: sent as ordinary body messages
            async for data in read_range(file.fileno(), offset, count, PIECE):
                await self.plain({"type": "http.response.body", "body": data, "more_body": True})
            await self.plain({"type": "http.response.body", "body": b"", "more_body": more_body})
            return
        if count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        await _flush(cycle)
        if cycle.disconnected:
            return
        try:
            await self.protocol.send_file(file.fileno(), offset, count)
        except ConnectionError:
            cycle.disconnected = True
            cycle.transport.close()
            return
        cycle.expected_content_length -= count
        if not more_body:
            await self.plain({"type": "http.response.body", "body": b"", "more_body": False})



async def read_range(fd: int, offset: int, count: int, piece: int) -> AsyncIterator[bytes]:
    """``count`` bytes of the file from ``offset``, read by worker threads ``piece`` bytes at a time: the
    way to send a file range where ``sendfile`` cannot be used. A file shorter than the range is an
    error, never a short body."""
    while count > 0:
        data = await anyio.to_thread.run_sync(os.pread, fd, min(count, piece), offset)
        if not data:
            raise OSError(errno.EIO, f"file ended {count} bytes before the range sent")
        offset += len(data)
        count -= len(data)
        yield data


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
        if not transport.is_closing():  # a closed transport refuses new limits (and needs none)
            transport.set_write_buffer_limits(high=high, low=low)
