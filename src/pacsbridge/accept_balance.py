"""Spread connections evenly over HTTP worker processes that share one listening socket.

uvicorn's workers each wait on the same socket, and the event loop of whichever wakes first accepts
every connection waiting (libuv and asyncio both accept in a loop until the queue is empty). A client
that opens a few keep-alive connections at once, as a modality gateway or a STOW uploader does, often
lands all or most of them on one process: that process runs at a full core while the other idles
(3 of 4 uploaders on one worker, 9.4 against 2.4 s of CPU in ``bench/``).

Rules:
1. Each worker accepts one connection per wake-up, never a batch.
2. A worker that already holds live connections waits ``load x STEP_S`` (at most MAX_DEFER_S)
   before taking the next one, so an idler worker, woken by the same connection, takes it first.
   After its wait it accepts whatever is still queued: a connection is never refused or lost, only
   delayed by a few milliseconds.
3. Nothing is shared between the processes: each knows only its own load.

``new_event_loop`` is the loop factory given to uvicorn (its ``loop`` option) when it runs several
workers; a single process keeps uvicorn's own loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

STEP_S = 0.005  # per live connection this worker already serves
MAX_DEFER_S = 0.05
RETRY_AFTER_ERROR_S = 1.0  # accept failed (EMFILE, ENOBUFS, ...): stop accepting for a moment, as asyncio does

try:
    import uvloop

    _BaseLoop: type[asyncio.AbstractEventLoop] = uvloop.Loop
except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop on Linux
    _BaseLoop = asyncio.SelectorEventLoop


class BalancedServer:
    """The listening side of one worker: accepts from a shared socket by the rules above.

    Offers what uvicorn uses of an ``asyncio.Server``: ``sockets``, ``close``, ``wait_closed``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol_factory: Callable[[], asyncio.BaseProtocol]) -> None:
        self.loop = loop
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.transports: list[asyncio.BaseTransport] = []
        # Accepted connections whose transport is being set up (already this worker's load); held here
        # because the loop keeps only weak references to tasks.
        self._setting_up: set[asyncio.Task[None]] = set()
        self.serving = False
        self._timer: asyncio.TimerHandle | None = None
        sock.setblocking(False)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self.sock,)

    def start(self) -> None:
        self.serving = True
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def load(self) -> int:
        """Connections of this worker that are still open or being set up."""
        self.transports = [t for t in self.transports if not t.is_closing()]
        return len(self.transports) + sum(1 for task in self._setting_up if not task.done())

    def _readable(self) -> None:
        load = self.load()
        if load == 0:
            self._accept_one()
            return
        self.loop.remove_reader(self.sock.fileno())
        self._timer = self.loop.call_later(min(MAX_DEFER_S, load * STEP_S), self._after_wait)

    def _after_wait(self) -> None:
        self._timer = None
        if not self.serving:
            return
        if self._accept_one():
            self.loop.add_reader(self.sock.fileno(), self._readable)

    def _accept_one(self) -> bool:
        """Accept a queued connection if there is one; False when accepting is paused instead."""
        try:
            conn, _address = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return True  # another worker took it, or the client gave up
        except OSError as exc:  # out of descriptors or memory, most likely: never spin on it
            log.error("cannot accept a connection (%s); pausing %.0f s", exc.strerror, RETRY_AFTER_ERROR_S)
            self.loop.remove_reader(self.sock.fileno())
            self._timer = self.loop.call_later(RETRY_AFTER_ERROR_S, self._after_wait)
            return False
        conn.setblocking(False)
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = self.loop.create_task(self._connect(conn))
        self._setting_up.add(task)
        task.add_done_callback(self._setting_up.discard)
        return True

    async def _connect(self, conn: socket.socket) -> None:
        try:
            transport, _protocol = await self.loop.connect_accepted_socket(self.protocol_factory, conn)
        except Exception:
            log.exception("could not set up an accepted connection")
            conn.close()
            return
        self.transports.append(transport)

    def close(self) -> None:
        """Stop accepting (connections already open are uvicorn's to finish) and close this worker's
        handle on the socket."""
        if not self.serving:
            return
        self.serving = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def is_serving(self) -> bool:
        return self.serving

    async def wait_closed(self) -> None:
        return None


class BalancedAcceptLoop(_BaseLoop):  # type: ignore[misc, valid-type]
    """uvicorn's usual event loop, except that a server on an inherited socket is a BalancedServer."""

    async def create_server(self, protocol_factory: Callable[[], asyncio.BaseProtocol],
                            host: Any = None, port: Any = None, *, sock: socket.socket | None = None,
                            ssl: Any = None, **kwargs: Any) -> Any:
        if sock is None or ssl is not None:
            return await super().create_server(protocol_factory, host, port, sock=sock, ssl=ssl, **kwargs)
        sock.listen(kwargs.get("backlog", 100))  # uvicorn binds the shared socket; the loop listens
        server = BalancedServer(self, sock, protocol_factory)
        server.start()
        return server


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The loop factory for uvicorn's ``loop`` option."""
    return BalancedAcceptLoop()
