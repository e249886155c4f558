"""WADO-RS: retrieve instances, metadata, frames, bulk data, rendered images and thumbnails.

See: PS3.18 §10.4 (Retrieve transaction), §8.6 (multipart payloads), §8.7 (negotiation).
Bodies are streamed part by part; a study is never held in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import BinaryIO

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ...domain.errors import InvalidInput, NotFound
from ...domain.model import Scope, StoredInstance
from ...formats.media import MediaRange
from ...formats.multipart import MultipartWriter, multipart_related_type, new_boundary
from ...formats.render import parse_render_params
from ..auth.middleware import principal_of
from ..streaming import FileBody, FileStreamingResponse
from .context import DicomwebContext
from .negotiation import (
    ANY_TS,
    choose_frames,
    choose_instances,
    choose_json,
    choose_rendered,
    ranges,
    web_syntax,
)

OPEN_RUN = 32  # stored files opened in one worker call


def scope_of(request: Request) -> Scope:
    p = request.path_params
    return Scope(p["study"], p.get("series"), p.get("instance"))


def _accept(ctx: DicomwebContext, request: Request) -> list[MediaRange]:
    return ranges(request.headers.get("accept"), request.query_params.get("accept"),
                  ctx.config.strict_accept)


async def retrieve_instances(ctx: DicomwebContext, request: Request) -> Response:
    """Study, series or instance as Part 10 files (§10.4.1.1.1)."""
    scope = scope_of(request)
    accept = _accept(ctx, request)
    found = await ctx.retrieve.instances(scope, principal_of(request))
    choice = choose_instances(accept, {i.transfer_syntax for i in found}, ctx.retrieve.can_transcode,
                              single_allowed=scope.sop_uid is not None)
    if not choice.multipart:
        stored = found[0]
        ts = _target(stored, choice.transfer_syntax)
        return await instance_response(ctx, stored, ts, f"application/dicom; transfer-syntax={ts}")
    boundary = new_boundary()
    writer = MultipartWriter(boundary)

    def as_stored(stored: StoredInstance) -> bool:
        return _target(stored, choice.transfer_syntax) == stored.transfer_syntax

    def header(stored: StoredInstance, ts: str) -> bytes:
        extra = {"Content-Length": str(stored.size)} if ts == stored.transfer_syntax else {}
        return writer.part_header(f"application/dicom; transfer-syntax={ts}", extra)

    async def body() -> AsyncIterator[bytes | FileBody]:
        # Instances sent as stored go out as files (sendfile under our server), opened a run at a time;
        # the small framing pieces go out between them.
        pending = b""  # framing to send before the next data: the previous part's end, the next header
        opened: list[BinaryIO] = []
        try:
            for group in _runs(found, as_stored):
                if as_stored(group[0]):
                    opened = await ctx.retrieve.open_stored(group)
                    for member, fp in zip(group, opened, strict=True):
                        yield pending + header(member, member.transfer_syntax)
                        yield FileBody(fp, member.size)  # the response closes it
                        pending = writer.part_end()
                    opened = []
                    continue
                stored = group[0]
                ts = _target(stored, choice.transfer_syntax)
                yield pending + header(stored, ts)
                async for chunk in ctx.retrieve.instance_bytes(stored, ts):
                    yield chunk
                pending = writer.part_end()
            yield pending + writer.close()
        finally:
            for fp in opened:  # the client went away: files opened but not sent (closing twice is harmless)
                fp.close()

    headers = {"Content-Type": multipart_related_type("application/dicom", boundary)}
    if all(as_stored(s) for s in found):
        # Every length is known from the index: the client gets a Content-Length and no chunked framing.
        total = sum(len(header(s, s.transfer_syntax)) + s.size + len(writer.part_end()) for s in found)
        headers["Content-Length"] = str(total + len(writer.close()))
        if request.method == "HEAD":  # the headers say it all: no file is opened or read ahead
            return Response(headers=headers)
    return FileStreamingResponse(body(), headers=headers)


async def instance_response(ctx: DicomwebContext, stored: StoredInstance, ts: str, media_type: str) -> Response:
    """One instance as a Part 10 body: the stored file itself, with its Content-Length, when no
    conversion is needed; otherwise converted and streamed."""
    if ts != stored.transfer_syntax:
        return StreamingResponse(ctx.retrieve.instance_bytes(stored, ts), media_type=media_type)
    (fp,) = await ctx.retrieve.open_stored([stored])

    async def body() -> AsyncIterator[FileBody]:
        yield FileBody(fp, stored.size)

    return FileStreamingResponse(body(), media_type=media_type, headers={"Content-Length": str(stored.size)},
                                 background=BackgroundTask(fp.close))  # if the body never ran


def _runs(found: list[StoredInstance], as_stored: Callable[[StoredInstance], bool]) -> list[list[StoredInstance]]:
    """The instances in order: runs of up to OPEN_RUN instances sent as stored (opened together), every
    other instance alone (converted and streamed)."""
    groups: list[list[StoredInstance]] = []
    for stored in found:
        if as_stored(stored) and groups and as_stored(groups[-1][0]) and len(groups[-1]) < OPEN_RUN:
            groups[-1].append(stored)
        else:
            groups.append([stored])
    return groups


def _target(stored: StoredInstance, wanted: str | None) -> str:
    if wanted in (None, ANY_TS):
        return web_syntax(stored.transfer_syntax)
    return wanted


async def metadata(ctx: DicomwebContext, request: Request) -> Response:
    """DICOM JSON metadata of every instance in the scope (§10.4.1.1.2, Annex F)."""
    choose_json(_accept(ctx, request))
    texts = await ctx.retrieve.metadata(scope_of(request), principal_of(request), ctx.base_url(request))
    body = "[" + ",".join(texts) + "]"
    return Response(body.encode("utf-8"), media_type="application/dicom+json")


def parse_frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError as exc:
        raise InvalidInput("frame numbers must be a comma-separated list of positive integers") from exc
    if not numbers or any(n < 1 for n in numbers):
        raise InvalidInput("frame numbers start at 1")
    return numbers


async def frames(ctx: DicomwebContext, request: Request) -> Response:
    """One or more frames, one frame per part (§10.4.1.1.3, §8.7.3.3)."""
    numbers = parse_frame_numbers(request.path_params["frames"])
    stored = await ctx.retrieve.instance(scope_of(request), principal_of(request))
    if stored.number_of_frames == 0:
        raise NotFound("this instance has no pixel data")
    choice = choose_frames(_accept(ctx, request), stored.transfer_syntax, ctx.retrieve.can_transcode)
    ts = choice.transfer_syntax or stored.transfer_syntax
    data = await ctx.retrieve.frames(stored, numbers, ts)
    base = str(request.url).split("?")[0].rsplit("/frames/", 1)[0]
    locations = [f"{base}/frames/{n}" for n in numbers]
    return _multipart(data, f"{choice.media_type}; transfer-syntax={ts}", choice.media_type, locations)


async def bulkdata(ctx: DicomwebContext, request: Request) -> Response:
    """A value issued as a BulkDataURI in the metadata (§10.4.1.1.5); Pixel Data one frame per part."""
    path = request.path_params["path"]
    stored = await ctx.retrieve.instance(scope_of(request), principal_of(request))
    location = str(request.url).split("?")[0]
    if path.strip("/").upper() in ("7FE00010", "7FE00008", "7FE00009"):
        if stored.number_of_frames == 0:
            raise NotFound("this instance has no pixel data")
        choice = choose_frames(_accept(ctx, request), stored.transfer_syntax, ctx.retrieve.can_transcode)
        ts = choice.transfer_syntax or stored.transfer_syntax
        data = await ctx.retrieve.frames(stored, range(1, stored.number_of_frames + 1), ts)
        return _multipart(data, f"{choice.media_type}; transfer-syntax={ts}", choice.media_type,
                          [location] * stored.number_of_frames)
    value = await ctx.retrieve.bulkdata(stored, path)
    return _multipart([value], "application/octet-stream", "application/octet-stream", [location])


def _multipart(parts: list[bytes] | AsyncIterator[bytes], part_type: str, media_type: str,
               locations: list[str]) -> Response:
    """Parts as multipart/related, each with its Content-Location and Content-Length; a list (a few
    frames) in one body with a Content-Length, an async iterator streamed."""
    boundary = new_boundary()
    writer = MultipartWriter(boundary)
    content_type = multipart_related_type(media_type, boundary)
    if isinstance(parts, list):
        chunks: list[bytes] = []
        for location, part in zip(locations, parts, strict=True):
            chunks += [writer.part_header(part_type, {"Content-Location": location,
                                                      "Content-Length": str(len(part))}), part, writer.part_end()]
        chunks.append(writer.close())
        return Response(b"".join(chunks), headers={"Content-Type": content_type})

    async def body() -> AsyncIterator[bytes]:
        index = 0
        async for part in parts:
            yield writer.part_header(part_type, {"Content-Location": locations[index],
                                                 "Content-Length": str(len(part))})
            yield part
            yield writer.part_end()
            index += 1
        yield writer.close()

    return StreamingResponse(body(), headers={"Content-Type": content_type})


def _frame_param(request: Request) -> int:
    if "frame" not in request.path_params:
        return 1
    return parse_frame_numbers(request.path_params["frame"])[0]


async def rendered(ctx: DicomwebContext, request: Request) -> Response:
    """An instance or frame rendered as a consumer image (§10.4.1.1.4, §8.3.5.1)."""
    media_type = choose_rendered(_accept(ctx, request))
    options = parse_render_params(dict(request.query_params), media_type=media_type,
                                  frame=_frame_param(request))
    stored = await _representative(ctx, request)
    return Response(await ctx.retrieve.render(stored, options), media_type=options.media_type)


async def thumbnail(ctx: DicomwebContext, request: Request) -> Response:
    """A small rendering of the study, series, instance or frame; never with burned-in PHI."""
    media_type = choose_rendered(_accept(ctx, request))
    options = parse_render_params(dict(request.query_params), media_type=media_type,
                                  frame=_frame_param(request), thumbnail=True)
    stored = await _representative(ctx, request)
    return Response(await ctx.retrieve.render(stored, options), media_type=options.media_type)


async def _representative(ctx: DicomwebContext, request: Request) -> StoredInstance:
    """The instance itself, or for a study/series the middle image of its first series with pixels."""
    found = await ctx.retrieve.instances(scope_of(request), principal_of(request))
    with_pixels = [i for i in found if i.number_of_frames > 0]
    if not with_pixels:
        raise NotFound("nothing to render here")
    first_series = [i for i in with_pixels if i.ref.series_uid == with_pixels[0].ref.series_uid]
    return first_series[len(first_series) // 2]
