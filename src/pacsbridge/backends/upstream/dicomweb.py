"""An upstream DICOMweb server: QIDO-RS for searches, WADO-RS for instances, STOW-RS to forward writes.

See: PS3.18 §10.4 (WADO-RS, ``transfer-syntax=*`` to get instances as stored), §10.5 (STOW-RS response
module), §10.6 (QIDO-RS); RFC 6749 §4.4 (client credentials).

Rules:
1. One ``AuthorizedClient`` per upstream (``backends/http_client.py``): its own connection limit and
   timeouts; basic, bearer or client-credentials authentication; transport errors translated there.
2. Bodies stream both ways: WADO-RS multipart is parsed as it arrives and written part by part to spool
   files; STOW-RS bodies are read from the files as they are sent.
3. Answers are judged once (``_check``): unreachable 503, timed out 504, any other error answer 502;
   404 on a retrieve is NotFound, 400 on a search is InvalidInput.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode

import anyio
import anyio.to_thread
import httpx
import orjson

from ...domain.errors import (
    InvalidInput,
    NotFound,
    PacsbridgeError,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ...domain.model import DicomJson, InstanceRecord, Level, Scope
from ...domain.query import Query
from ...formats.multipart import MultipartParser, MultipartWriter, PartData, PartEnd, PartStart
from ...formats.qido import encode_qido
from ...services.ports import Spool
from ..http_client import Auth, AuthorizedClient, ClientCredentials  # app.py imports ClientCredentials here
from .remote import Capabilities

log = logging.getLogger(__name__)

RESOURCES = {Level.STUDY: "/studies", Level.SERIES: "/series", Level.INSTANCE: "/instances"}
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DEFAULT_SYNTAX = 'multipart/related; type="application/dicom"'
WRITE_BUFFER = 1 << 20
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class DicomwebUpstream:
    url: str
    timeout_s: float = 30
    connect_timeout_s: float = 5
    max_connections: int = 8
    capabilities: Capabilities = field(default_factory=Capabilities)
    basic: tuple[str, str] | None = None
    bearer: str | None = None
    client_credentials: ClientCredentials | None = None


class DicomwebRemote:
    """Remote over an upstream's DICOMweb root."""

    def __init__(self, name: str, config: DicomwebUpstream, transport: httpx.AsyncBaseTransport | None = None
                 ) -> None:
        self.name = name
        self.config = config
        self.capabilities = config.capabilities
        self.http = AuthorizedClient(
            f"upstream {name}", config.url,
            Auth(basic=config.basic, bearer=config.bearer, client_credentials=config.client_credentials),
            timeout_s=config.timeout_s, connect_timeout_s=config.connect_timeout_s,
            max_connections=config.max_connections, transport=transport)
        self._as_stored = True  # ask for transfer-syntax=* until the upstream refuses it

    # --- the Remote port ------------------------------------------------------------------------

    async def search(self, query: Query) -> list[DicomJson]:
        if not self.capabilities.includefield:
            query = replace(query, includefields=(), include_all=False)
        # DICOM wildcards and name separators stay literal: Orthanc does not take %2A for a wildcard.
        target = RESOURCES[query.level] + "?" + urlencode(encode_qido(query), safe="*?^,", quote_via=quote)
        async with self.http.stream("GET", target, headers={"Accept": "application/dicom+json"}) as response:
            if response.status_code == 204:
                return []
            if response.status_code == 400:
                raise InvalidInput(f"upstream {self.name} refused the query as invalid (400)")
            self._check(response)
            body = await response.aread()
        try:
            results = orjson.loads(body) if body.strip() else []
        except orjson.JSONDecodeError:
            raise UpstreamFailed(f"upstream {self.name} sent a search answer that is not JSON") from None
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            raise UpstreamFailed(f"upstream {self.name} sent a search answer that is not a list of datasets")
        return results

    async def fetch(self, scope: Scope, spool: Spool) -> AsyncIterator[Path]:
        path = f"/studies/{scope.study_uid}"
        if scope.series_uid:
            path += f"/series/{scope.series_uid}"
        if scope.sop_uid:
            path += f"/instances/{scope.sop_uid}"
        while True:
            accept = AS_STORED if self._as_stored else DEFAULT_SYNTAX
            # Not gzip: instances are mostly pixels, and a gzipping upstream spends seconds per study on them.
            headers = {"Accept": accept, "Accept-Encoding": "identity"}
            async with self.http.stream("GET", path, headers=headers) as response:
                if response.status_code in (400, 406) and self._as_stored:
                    log.warning("upstream %s refuses transfer-syntax=*; instances now come as it chooses", self.name)
                    self._as_stored = False
                    continue
                if response.status_code in (204, 404):
                    raise NotFound(f"upstream {self.name} has no {scope.level.name.lower()} {_uid(scope)}")
                self._check(response)
                content_type = response.headers.get("content-type", "")
                try:
                    parser = MultipartParser.for_content_type(content_type)
                except (InvalidInput, ValueError):
                    raise UpstreamFailed(f"upstream {self.name} answered a retrieve with {content_type!r}") from None
                async for staged in _spool_parts(parser, _chunks(response, self.name), spool):
                    yield staged
            return

    async def store_many(self, items: Sequence[tuple[Path, InstanceRecord]]) -> list[bool | Exception]:
        if not items:
            return []
        writer = MultipartWriter()
        headers = {"Content-Type": writer.content_type("application/dicom"), "Accept": "application/dicom+json"}
        try:
            async with self.http.stream("POST", "/studies", content=_stow_body(writer, [p for p, _r in items]),
                                     headers=headers) as response:
                body = await response.aread()
                if response.status_code not in (200, 202, 409):
                    self._check(response)
                    raise UpstreamFailed(f"upstream {self.name} answered STOW-RS with {response.status_code}")
        except PacsbridgeError as exc:
            return [exc] * len(items)
        return _store_outcomes(self.name, body, [record.ref.sop_uid for _p, record in items])

    async def close(self) -> None:
        await self.http.close()

    # --- HTTP ---------------------------------------------------------------------------------------

    def _check(self, response: httpx.Response) -> None:
        status = response.status_code
        if status < 300:
            return
        if status == 503:
            raise UpstreamUnavailable(f"upstream {self.name} is out of service (503)")
        if status == 504:
            raise UpstreamTimeout(f"upstream {self.name} timed out behind its own gateway (504)")
        if status in (401, 403):
            raise UpstreamFailed(f"upstream {self.name} refused our credentials ({status})")
        raise UpstreamFailed(f"upstream {self.name} answered {status}")


async def _chunks(response: httpx.Response, name: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_bytes(READ_CHUNK):
            yield chunk
    except httpx.TimeoutException:
        raise UpstreamTimeout(f"upstream {name} stalled while sending instances") from None
    except httpx.HTTPError as exc:
        raise UpstreamFailed(f"upstream {name} broke off while sending instances ({type(exc).__name__})") from None


async def _spool_parts(parser: MultipartParser, chunks: AsyncIterator[bytes], spool: Spool) -> AsyncIterator[Path]:
    """Each part of a multipart body as a sealed spool file; a part cut short is removed."""
    current: tuple[Path, BinaryIO] | None = None
    buffer = bytearray()

    async def flush(seal: bool) -> None:
        assert current is not None
        data = bytes(buffer)
        buffer.clear()

        def run() -> None:
            fp = current[1]
            fp.write(data)
            if seal:
                spool.seal(fp)

        await anyio.to_thread.run_sync(run)

    try:
        async for chunk in chunks:
            for event in parser.feed(chunk):
                if isinstance(event, PartStart):
                    current = await anyio.to_thread.run_sync(spool.new_spool_file)
                elif isinstance(event, PartData) and current is not None:
                    buffer += event.data
                    if len(buffer) >= WRITE_BUFFER:
                        await flush(seal=False)
                elif isinstance(event, PartEnd) and current is not None:
                    await flush(seal=True)
                    done, current = current[0], None
                    yield done
        parser.close()
    except (InvalidInput, ValueError) as exc:
        raise UpstreamFailed(f"a retrieve answer is not readable multipart ({exc})") from None
    finally:
        if current is not None:
            current[1].close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(current[0])


async def _stow_body(writer: MultipartWriter, paths: list[Path]) -> AsyncIterator[bytes]:
    for path in paths:
        yield writer.part_header("application/dicom")
        fp = await anyio.to_thread.run_sync(open, path, "rb")
        try:
            while chunk := await anyio.to_thread.run_sync(fp.read, READ_CHUNK):
                yield chunk
        finally:
            fp.close()
        yield writer.part_end()
    yield writer.close()


def _store_outcomes(name: str, body: bytes, sops: list[str]) -> list[bool | Exception]:
    """Each forwarded instance's outcome from a Store Instances Response (PS3.18 Annex I)."""
    try:
        answer = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError:
        answer = {}
    if not isinstance(answer, dict):
        answer = {}

    def items(tag: str) -> list[dict[str, Any]]:
        value = answer.get(tag, {}).get("Value") or []
        return [i for i in value if isinstance(i, dict)]

    def sop_of(item: dict[str, Any]) -> str | None:
        values = item.get("00081155", {}).get("Value") or [None]
        return str(values[0]) if values[0] else None

    stored = {sop_of(i) for i in items("00081199")}
    failed = {sop_of(i): (i.get("00081197", {}).get("Value") or [0xC000])[0] for i in items("00081198")}
    outcomes: list[bool | Exception] = []
    for sop in sops:
        if sop in stored:
            outcomes.append(False)
        elif sop in failed:
            outcomes.append(UpstreamFailed(f"upstream {name} refused the instance (0x{int(failed[sop]):04X})"))
        else:
            outcomes.append(UpstreamFailed(f"upstream {name} did not report on the instance"))
    return outcomes


def _uid(scope: Scope) -> str:
    return scope.sop_uid or scope.series_uid or scope.study_uid
