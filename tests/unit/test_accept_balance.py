"""The accept policy of one worker (accept_balance): a busy worker defers, and never loses a connection."""

from __future__ import annotations

import asyncio
import socket

from pacsbridge.accept_balance import STEP_S, BalancedAcceptLoop, BalancedServer


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


async def _echo_once(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    answer = await asyncio.wait_for(reader.readexactly(len(payload)), 5)
    writer.close()
    return answer


def test_a_busy_worker_still_takes_every_connection_after_its_wait() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        server = await loop.create_server(_Echo, sock=listener)
        assert isinstance(server, BalancedServer)
        _held_reader, held = await asyncio.open_connection("127.0.0.1", port)  # load 1 from here on
        await asyncio.sleep(0.05)
        assert server.load() == 1
        started = loop.time()
        answers = await asyncio.gather(*(_echo_once(port, f"ping {i}".encode()) for i in range(5)))
        assert answers == [f"ping {i}".encode() for i in range(5)]  # none refused, none lost
        assert loop.time() - started >= STEP_S  # the second connection waited (no idler worker here)
        held.close()
        server.close()
        assert not server.is_serving() and listener.fileno() == -1
        await server.wait_closed()

    runner = asyncio.Runner(loop_factory=BalancedAcceptLoop)
    with runner:
        runner.run(scenario())


def test_a_server_on_host_and_port_is_the_loop_s_own() -> None:
    """Only servers on an inherited socket (uvicorn's workers) are balanced."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Echo, host="127.0.0.1", port=0)
        assert not isinstance(server, BalancedServer)
        port = server.sockets[0].getsockname()[1]
        assert await _echo_once(port, b"plain") == b"plain"
        server.close()
        await server.wait_closed()

    with asyncio.Runner(loop_factory=BalancedAcceptLoop) as runner:
        runner.run(scenario())
