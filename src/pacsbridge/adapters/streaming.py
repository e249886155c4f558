"""Streamed responses whose body mixes bytes with stored files sent as they are.

A ``FileBody`` goes out with the ASGI zero-copy send extension when the server offers it
(``pacsbridge.zero_copy``: ``sendfile``, the bytes never enter Python); under any other server
(tests' in-process clients, uvicorn started by hand) it is read in chunks and sent as ordinary body
messages. Either way each file is closed once sent, or when the response ends early.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import BinaryIO

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..zero_copy import EXTENSION, read_range

ZERO_COPY = EXTENSION
READ_CHUNK = 4 << 20  # without zero-copy send, a file is read and sent in pieces of this size


@dataclass(frozen=True)
class FileBody:
    """``count`` bytes of an open file from ``offset``; the response closes the file."""

    file: BinaryIO
    count: int
    offset: int = 0


def offers_zero_copy(scope: Scope) -> bool:
    return ZERO_COPY in scope.get("extensions", {})


class FileStreamingResponse(StreamingResponse):
    """A StreamingResponse whose iterator yields bytes and ``FileBody`` items."""

    body_iterator: AsyncIterator[bytes | FileBody]  # type: ignore[assignment]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._zero_copy = offers_zero_copy(scope)
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:  # a generator cut short closes the files it still holds now
                await aclose()

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for item in self.body_iterator:
            if isinstance(item, FileBody):
                try:
                    await self._send_file(item, send)
                finally:
                    item.file.close()
            else:
                await send({"type": "http.response.body", "body": item, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_file(self, item: FileBody, send: Send) -> None:
        if self._zero_copy:
            await send({"type": ZERO_COPY, "file": item.file, "offset": item.offset, "count": item.count,
                        "more_body": True})
            return
        async for data in read_range(item.file.fileno(), item.offset, item.count, READ_CHUNK):
            await send({"type": "http.response.body", "body": data, "more_body": True})
