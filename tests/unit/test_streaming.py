"""FileStreamingResponse under a server without zero-copy send: files are read and sent, then closed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pacsbridge.adapters import streaming
from pacsbridge.adapters.streaming import FileBody, FileStreamingResponse


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_files_are_read_in_pieces_and_closed_when_the_server_offers_no_zero_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streaming, "READ_CHUNK", 1000)
    big, small = tmp_path / "big", tmp_path / "small"
    big.write_bytes(bytes(range(256)) * 20)  # 5,120 bytes: six reads
    small.write_bytes(b"0123456789")
    opened: list[BinaryIO] = []

    async def body() -> AsyncIterator[bytes | FileBody]:
        yield b"<"
        for path, offset, count in ((big, 0, 5120), (small, 2, 5)):
            fp = path.open("rb")
            opened.append(fp)
            yield FileBody(fp, count, offset)
            yield b"|"
        yield b">"

    async def route(request: Request) -> Response:
        assert not streaming.offers_zero_copy(request.scope)
        return FileStreamingResponse(body())

    app = Starlette(routes=[Route("/", route)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r = await client.get("/")
    assert r.content == b"<" + big.read_bytes() + b"|" + b"23456" + b"|>"
    assert len(opened) == 2 and all(fp.closed for fp in opened)


@pytest.mark.anyio
async def test_a_file_shorter_than_its_range_fails_the_body_instead_of_padding_it(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"abc")

    async def body() -> AsyncIterator[bytes | FileBody]:
        yield FileBody(short.open("rb"), 10)

    async def route(request: Request) -> Response:
        return FileStreamingResponse(body())

    app = Starlette(routes=[Route("/", route)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        with pytest.raises(OSError, match="7 bytes before"):
            await client.get("/")
