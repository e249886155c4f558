"""STOW-RS: store instances sent as multipart/related application/dicom.

See: PS3.18 §10.5 (Store transaction), Annex I (Store Instances Response Module), Table 10.5.3-1.

Rules:
1. The body is parsed as it arrives; each part is written to a spool file and handed to a bounded
   pipeline (PIPELINE parts at most) that seals and describes it while the next part is received;
   described parts are stored in batches of BATCH (one index transaction each), in order, so memory
   and spool use stay bounded whatever the body size. Results keep the parts' order.
2. Each part is stored or reported in FailedSOPSequence with its reason; a failed part leaves no file
   and no index row.
3. 200 when all parts are stored; 202 when some failed; 409 when none was stored (503 when each failed
   for want of resources, as when an upstream archive is away: retry later); 400 when the body
   is not a multipart we can read and nothing was stored; 415 for a media type we do not take.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ...domain.errors import InvalidInput, PacsbridgeError, TooLarge
from ...domain.model import Origin
from ...domain.store import FailureReason, StoreResult
from ...formats.multipart import MultipartParser, PartData, PartEnd, PartStart, parse_content_type
from ...services.ingest import Received, write_failure
from ..auth.middleware import principal_of
from .context import DicomwebContext
from .errors import error_response

WRITE_BUFFER = 1 << 20
PIPELINE = 3  # parts being sealed and described while the next one is received
BATCH = 16  # parts stored in one index transaction


def _item(sop_class: str, sop: str) -> dict[str, Any]:
    item: dict[str, Any] = {}
    item["00081150"] = {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"}
    item["00081155"] = {"vr": "UI", "Value": [sop]} if sop else {"vr": "UI"}
    return item


def response_dataset(results: list[StoreResult], base: str, other_failures: list[str]) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 Annex I) as DICOM JSON."""
    stored = [r for r in results if r.ok and r.ref]
    failed = [r for r in results if not r.ok]
    body: dict[str, Any] = {}
    studies = {r.ref.study_uid for r in stored if r.ref}
    if len(studies) == 1:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{next(iter(studies))}"]}
    if failed:
        items = []
        for r in failed:
            item = _item(r.sop_class_uid, r.sop_uid)
            item["00081197"] = {"vr": "US", "Value": [int(r.failure or FailureReason.PROCESSING_FAILURE)]}
            items.append(dict(sorted(item.items())))
        body["00081198"] = {"vr": "SQ", "Value": items}
    if stored:
        items = []
        for r in stored:
            assert r.ref is not None
            item = _item(r.sop_class_uid, r.sop_uid)
            item["00081190"] = {"vr": "UR", "Value": [
                f"{base}/studies/{r.ref.study_uid}/series/{r.ref.series_uid}/instances/{r.ref.sop_uid}"]}
            if r.warning is not None:
                item["00081196"] = {"vr": "US", "Value": [int(r.warning)]}
            items.append(dict(sorted(item.items())))
        body["00081199"] = {"vr": "SQ", "Value": items}
    if other_failures:
        # The reason text goes to the log, not the dataset: no standard attribute carries it here.
        body["0008119A"] = {"vr": "SQ", "Value": [
            {"00081197": {"vr": "US", "Value": [int(FailureReason.CANNOT_UNDERSTAND)]}}
            for _reason in other_failures]}
    return dict(sorted(body.items()))


class _PartSink:
    """Writes the current part to a spool file: chunks are collected and written in 1 MiB batches by a
    worker thread, and the last write, the seal and ``IngestService.receive`` share one thread hop.
    A part that cannot be written (disk full, I/O error) is dropped at once and reported when it ends;
    the rest of the body is still read and stored."""

    def __init__(self, ctx: DicomwebContext) -> None:
        self.ingest = ctx.ingest
        self.path: Path | None = None
        self.fp: BinaryIO | None = None
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.acceptable = True
        self.failed: OSError | None = None

    def open(self, acceptable: bool) -> None:
        self.acceptable = acceptable
        self.failed = None

    async def write(self, data: bytes) -> None:
        if self.failed is not None:
            return
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered >= WRITE_BUFFER:
            chunks, self.chunks, self.buffered = self.chunks, [], 0
            try:
                await anyio.to_thread.run_sync(self._write, chunks)
            except OSError as exc:
                self.failed = exc
                self.abandon()

    def _write(self, chunks: list[bytes]) -> None:
        if self.fp is None:
            self.path, self.fp = self.ingest.new_spool_file()
        self.fp.writelines(chunks)

    def finish(self) -> Callable[[], Received]:
        """Hand the part over: a blocking call (for a worker thread) that writes what is left, seals the
        file and receives it. The sink is ready for the next part at once."""
        chunks, self.chunks, self.buffered = self.chunks, [], 0
        ingest = self.ingest
        opened, failed = (self.path, self.fp), self.failed
        self.path, self.fp, self.failed = None, None, None

        def complete() -> Received:
            if failed is not None:
                return Received(None, failure=write_failure(failed))
            path, fp = opened
            content = None
            try:
                if fp is None:  # the whole part is in memory: one write, and the header parsed from memory
                    path, fp = ingest.new_spool_file()
                    content = b"".join(chunks)
                try:
                    if content is None:
                        fp.writelines(chunks)
                    else:
                        fp.write(content)
                finally:
                    ingest.seal(fp)
            except OSError as exc:
                if path is not None:
                    path.unlink(missing_ok=True)
                return Received(None, failure=write_failure(exc))
            assert path is not None
            return ingest.receive(path, content)

        return complete

    def abandon(self) -> None:
        if self.fp is not None:
            with contextlib.suppress(OSError):  # closing flushes: it fails again on a full disk
                self.fp.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        self.path, self.fp = None, None
        self.chunks, self.buffered = [], 0


class _Pipeline:
    """Receives finished parts in the background (at most PIPELINE at a time) and stores them in
    batches of BATCH, one batch at a time and in order, while the rest of the body arrives."""

    def __init__(self, ctx: DicomwebContext, tg: TaskGroup, origin: Origin, expected_study: str | None) -> None:
        self.ingest, self.tg, self.origin, self.expected_study = ctx.ingest, tg, origin, expected_study
        self.received: list[Received | None] = []
        self.results: list[StoreResult | None] = []
        self.flushed = 0  # parts before this index are stored (or being stored)
        self.slots = anyio.Semaphore(PIPELINE)
        self.waiting = anyio.Semaphore(2 * BATCH)  # received, not yet stored: bounds spool use
        self.flush_lock = anyio.Lock()

    async def submit(self, complete: Callable[[], Received]) -> None:
        index = len(self.received)
        self.received.append(None)
        self.results.append(None)
        await self.waiting.acquire()
        await self.slots.acquire()
        self.tg.start_soon(self._receive, index, complete)

    def fail(self, result: StoreResult) -> None:
        self.received.append(None)
        self.results.append(result)

    async def _receive(self, index: int, complete: Callable[[], Received]) -> None:
        try:
            self.received[index] = await anyio.to_thread.run_sync(complete)
        finally:
            self.slots.release()
        if self._ready() - self.flushed >= BATCH:
            await self.flush()

    def _ready(self) -> int:
        """The end of the run of parts, from ``flushed`` on, that are received or already failed."""
        end = self.flushed
        while end < len(self.received) and (self.received[end] is not None or self.results[end] is not None):
            end += 1
        return end

    async def flush(self) -> None:
        """Store every part received so far that directly follows the stored ones."""
        async with self.flush_lock:
            start, end = self.flushed, self._ready()
            if start == end:
                return
            self.flushed = end
            batch = [(i, r) for i in range(start, end) if (r := self.received[i]) is not None]
            try:
                results = await self.ingest.store_received([r for _i, r in batch], self.origin, self.expected_study)
            finally:
                for i, _r in batch:
                    self.received[i] = None
                    self.waiting.release()
            for (i, _r), result in zip(batch, results, strict=True):
                self.results[i] = result

    def discard_unstored(self) -> None:
        """Remove the spool files of received parts that will not be stored (the request was cancelled)."""
        for i, r in enumerate(self.received):
            if r is not None and r.staged is not None and self.results[i] is None:
                r.staged.unlink(missing_ok=True)

    def done(self) -> list[StoreResult]:
        return [r for r in self.results if r is not None]


async def store(ctx: DicomwebContext, request: Request) -> Response:
    expected_study = request.path_params.get("study")
    media, params = parse_content_type(request.headers.get("content-type", ""))
    if media == "application/dicom":
        return await _store_single(ctx, request, expected_study)
    if media != "multipart/related":
        return error_response(415, "STOW-RS takes multipart/related; type=\"application/dicom\"")
    part_type = (params.get("type") or "application/dicom").lower()
    if part_type != "application/dicom":
        return error_response(415, f"multipart/related parts of type {part_type} are not supported; "
                                   "send application/dicom parts")
    boundary = params.get("boundary")
    if not boundary:
        raise InvalidInput("the multipart/related Content-Type has no boundary parameter")
    origin = _origin(request)
    parser = MultipartParser(boundary.encode("latin-1"))
    sink = _PartSink(ctx)
    other_failures: list[str] = []
    received = 0
    limit = ctx.config.stow_max_bytes
    disconnected = False
    # Errors are kept and raised after the task group has finished the parts already handed to it
    # (raised inside, they would arrive wrapped in an ExceptionGroup).
    error: PacsbridgeError | None = None
    pipeline: _Pipeline | None = None
    try:
        async with anyio.create_task_group() as tg:
            pipeline = _Pipeline(ctx, tg, origin, expected_study)
            try:
                async for chunk in request.stream():
                    received += len(chunk)
                    if limit and received > limit:
                        raise TooLarge(f"the STOW-RS body exceeds the configured {limit} bytes")
                    for event in parser.feed(chunk):
                        await _on_event(event, sink, pipeline)
                for event in parser.close():
                    await _on_event(event, sink, pipeline)
            except (InvalidInput, TooLarge) as exc:
                # Parts stored before the body broke (or grew too large) stay stored and are reported.
                sink.abandon()
                if pipeline.received:
                    other_failures.append(exc.message)
                else:
                    error = exc
            except ClientDisconnect:
                sink.abandon()
                disconnected = True
            except BaseException:
                sink.abandon()
                raise
        await pipeline.flush()  # parts received before the body ended, broke or was cut are stored
    except BaseException:
        if pipeline is not None:
            pipeline.discard_unstored()
        raise
    if error is not None:
        raise error
    if disconnected:
        return Response(status_code=400)
    assert pipeline is not None
    results = pipeline.done()
    if not results and not other_failures:
        raise InvalidInput("the request holds no parts")
    return _answer(results, other_failures, ctx.base_url(request))


def _origin(request: Request) -> Origin:
    return Origin("stow-rs", request.client.host if request.client else None, principal_of(request).subject)


async def _on_event(event: object, sink: _PartSink, pipeline: _Pipeline) -> None:
    if isinstance(event, PartStart):
        part_media = parse_content_type(event.headers.get("content-type", "application/dicom"))[0]
        sink.open(acceptable=part_media == "application/dicom")
    elif isinstance(event, PartData):
        await sink.write(event.data)
    elif isinstance(event, PartEnd):
        if not sink.acceptable:
            sink.abandon()
            pipeline.fail(StoreResult("", "", failure=FailureReason.CANNOT_UNDERSTAND,
                                      reason="part is not application/dicom"))
            return
        await pipeline.submit(sink.finish())


async def _store_single(ctx: DicomwebContext, request: Request, expected_study: str | None) -> Response:
    """A bare application/dicom body: one instance (a vendor extension some clients use)."""
    origin = _origin(request)
    sink = _PartSink(ctx)
    limit, size = ctx.config.stow_max_bytes, 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if limit and size > limit:
                raise TooLarge(f"the STOW-RS body exceeds the configured {limit} bytes")
            await sink.write(chunk)
    except BaseException:
        sink.abandon()
        raise
    received = await anyio.to_thread.run_sync(sink.finish())
    results = await ctx.ingest.store_received([received], origin, expected_study)
    return _answer(results, [], ctx.base_url(request))


def _answer(results: list[StoreResult], other_failures: list[str], base: str) -> Response:
    stored = sum(1 for r in results if r.ok)
    failed = len(results) - stored + len(other_failures)
    status = 200 if failed == 0 else 202 if stored else 409
    headers = None
    if not stored and not other_failures and results and all(
            r.failure == FailureReason.OUT_OF_RESOURCES for r in results):
        status, headers = 503, {"Retry-After": "5"}  # nothing lost: the archive (an upstream) is away
    body = json.dumps(response_dataset(results, base, other_failures), separators=(",", ":"))
    return Response(body.encode(), status_code=status, media_type="application/dicom+json", headers=headers)
