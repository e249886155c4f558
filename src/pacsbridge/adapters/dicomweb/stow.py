"""STOW-RS: store instances sent as multipart/related application/dicom.

See: PS3.18 §10.5 (Store transaction), Annex I (Store Instances Response Module), Table 10.5.3-1.

Rules:
1. The body is parsed as it arrives; each part is written to a spool file and handed to a bounded
   pipeline (PIPELINE parts at most) that validates and stores it while the next part is received, so
   memory stays bounded whatever the body size. Results keep the parts' order.
2. Each part is stored or reported in FailedSOPSequence with its reason; a failed part leaves no file
   and no index row.
3. 200 when all parts are stored; 202 when some failed; 409 when none was stored; 400 when the body
   is not a multipart we can read and nothing was stored; 415 for a media type we do not take.
"""

from __future__ import annotations

import json
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
from .context import DicomwebContext, principal_of
from .errors import error_response

WRITE_BUFFER = 1 << 20
PIPELINE = 3  # parts being validated and stored while the next one is received


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
    """Writes the current part to a spool file, in 1 MiB writes done by a worker thread."""

    def __init__(self, ctx: DicomwebContext) -> None:
        self.ctx = ctx
        self.path: Path | None = None
        self.fp: BinaryIO | None = None
        self.buffer = bytearray()
        self.acceptable = True

    async def open(self, acceptable: bool) -> None:
        self.acceptable = acceptable
        self.path, self.fp = await anyio.to_thread.run_sync(self.ctx.ingest.new_spool_file)

    async def write(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= WRITE_BUFFER and self.fp is not None:
            chunk, self.buffer = bytes(self.buffer), bytearray()
            await anyio.to_thread.run_sync(self.fp.write, chunk)

    async def finish(self) -> Path:
        assert self.fp is not None and self.path is not None
        fp, rest = self.fp, bytes(self.buffer)

        def close() -> None:
            fp.write(rest)
            fp.close()

        await anyio.to_thread.run_sync(close)
        self.buffer.clear()
        path, self.path, self.fp = self.path, None, None
        return path

    def abandon(self) -> None:
        if self.fp is not None:
            self.fp.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        self.path, self.fp = None, None
        self.buffer.clear()


class _Pipeline:
    """Stores finished parts in the background, at most PIPELINE at a time, keeping their order."""

    def __init__(self, ctx: DicomwebContext, tg: TaskGroup, origin: Origin, expected_study: str | None) -> None:
        self.ctx, self.tg, self.origin, self.expected_study = ctx, tg, origin, expected_study
        self.results: list[StoreResult | None] = []
        self.slots = anyio.Semaphore(PIPELINE)

    async def submit(self, staged: Path) -> None:
        index = len(self.results)
        self.results.append(None)
        await self.slots.acquire()
        self.tg.start_soon(self._store, index, staged)

    def fail(self, result: StoreResult) -> None:
        self.results.append(result)

    async def _store(self, index: int, staged: Path) -> None:
        try:
            self.results[index] = await self.ctx.ingest.store_file(staged, self.origin, self.expected_study)
        finally:
            self.slots.release()

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
            if pipeline.results:
                other_failures.append(exc.message)
            else:
                error = exc
        except ClientDisconnect:
            sink.abandon()
            disconnected = True
        except BaseException:
            sink.abandon()
            raise
    if error is not None:
        raise error
    if disconnected:
        return Response(status_code=400)
    results = pipeline.done()
    if not results and not other_failures:
        raise InvalidInput("the request holds no parts")
    return _answer(results, other_failures, ctx.base_url(request))


def _origin(request: Request) -> Origin:
    return Origin("stow-rs", request.client.host if request.client else None, principal_of(request).subject)


async def _on_event(event: object, sink: _PartSink, pipeline: _Pipeline) -> None:
    if isinstance(event, PartStart):
        part_media = parse_content_type(event.headers.get("content-type", "application/dicom"))[0]
        await sink.open(acceptable=part_media == "application/dicom")
    elif isinstance(event, PartData):
        await sink.write(event.data)
    elif isinstance(event, PartEnd):
        if not sink.acceptable:
            sink.abandon()
            pipeline.fail(StoreResult("", "", failure=FailureReason.CANNOT_UNDERSTAND,
                                      reason="part is not application/dicom"))
            return
        await pipeline.submit(await sink.finish())


async def _store_single(ctx: DicomwebContext, request: Request, expected_study: str | None) -> Response:
    """A bare application/dicom body: one instance (a vendor extension some clients use)."""
    origin = _origin(request)
    sink = _PartSink(ctx)
    await sink.open(acceptable=True)
    try:
        async for chunk in request.stream():
            await sink.write(chunk)
        staged = await sink.finish()
    except BaseException:
        sink.abandon()
        raise
    result = await ctx.ingest.store_file(staged, origin, expected_study)
    return _answer([result], [], ctx.base_url(request))


def _answer(results: list[StoreResult], other_failures: list[str], base: str) -> Response:
    stored = sum(1 for r in results if r.ok)
    failed = len(results) - stored + len(other_failures)
    status = 200 if failed == 0 else 202 if stored else 409
    body = json.dumps(response_dataset(results, base, other_failures), separators=(",", ":"))
    return Response(body.encode(), status_code=status, media_type="application/dicom+json")
