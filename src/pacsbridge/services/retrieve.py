"""Retrieve instances, metadata, frames, bulk data and rendered images, whichever door asked.

See: PS3.18 §10.4 (WADO-RS), Ch. 9 (WADO-URI). Patient context is checked here: a principal bound to
patients gets NotFound (not Forbidden) for anything else, so existence does not leak.
StoredInstance paths are local files (upstream archives fetch into a local cache before answering).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import anyio.to_thread
import pydicom

from ..domain.access import Principal
from ..domain.errors import CorruptData, NotFound, Unsupported
from ..domain.model import BULK_BASE, Scope, StoredInstance
from ..formats import frames as frame_codec
from ..formats import render as renderer
from ..formats import transcode as transcoder
from . import audit
from .ports import Archive

CHUNK = 4 << 20  # files up to this size are read in one worker call, larger ones in such chunks
READ_AHEAD = 8 << 20  # of a stored file about to be sent, read ahead by the kernel when it is opened
SMALL_FRAME_REQUEST = 8  # frames read together in one worker call
PIXEL_INFO_CACHE = 4096


class RetrieveService:
    """WADO-RS, WADO-URI, C-GET/C-MOVE (later) all read through here."""

    def __init__(self, archive: Archive, scratch_dir: Path | None = None) -> None:
        self.archive = archive
        self.scratch_dir = scratch_dir
        self._pixel_infos: dict[str, frame_codec.PixelInfo] = {}
        self._cache_lock = threading.Lock()

    async def _check_study(self, study_uid: str, principal: Principal) -> None:
        patient = await self.archive.patient_of(study_uid)
        if not principal.sees_patient(patient):
            raise NotFound(f"no study {study_uid} here")
        audit.touched(patient, study_uid)

    async def instances(self, scope: Scope, principal: Principal) -> list[StoredInstance]:
        found = await self.archive.locate(scope)
        if principal.patient_ids is not None:
            found = [i for i in found if principal.sees_patient(i.patient_id)]
            if not found:
                raise NotFound(f"no {scope.level.name.lower()} here")
        audit.touched_all({(i.patient_id, i.ref.study_uid) for i in found})
        return found

    async def instance(self, scope: Scope, principal: Principal) -> StoredInstance:
        if scope.sop_uid is None:
            raise NotFound("an instance UID is needed")
        return (await self.instances(scope, principal))[0]

    async def metadata(self, scope: Scope, principal: Principal, base_url: str) -> list[str]:
        """The metadata JSON text of each instance, with BulkDataURIs under ``base_url``."""
        await self._check_study(scope.study_uid, principal)
        texts = await self.archive.metadata(scope)
        placeholder = '"BulkDataURI":"' + BULK_BASE
        actual = '"BulkDataURI":' + json.dumps(base_url)[:-1]
        return [t.replace(placeholder, actual) for t in texts]

    # --- instance bodies ------------------------------------------------------------------------

    @staticmethod
    def can_transcode(stored: str, wanted: str) -> bool:
        return stored == wanted or transcoder.can_transcode(stored, wanted)

    async def instance_bytes(self, stored: StoredInstance, wanted_ts: str) -> AsyncIterator[bytes]:
        """The Part 10 file in ``wanted_ts``, in chunks; transcoded through a scratch file if needed."""
        if not transcoder.needs_transcode(stored.transfer_syntax, wanted_ts):
            async for chunk in _read_file(stored.path):
                yield chunk
            return
        if not transcoder.can_transcode(stored.transfer_syntax, wanted_ts):
            raise Unsupported(f"cannot convert {stored.transfer_syntax} to {wanted_ts}")
        fd, scratch = tempfile.mkstemp(suffix=".dcm", dir=self.scratch_dir)
        os.close(fd)
        try:
            await anyio.to_thread.run_sync(_transcode_file, stored.path, scratch, wanted_ts)
            async for chunk in _read_file(scratch):
                yield chunk
        finally:
            os.unlink(scratch)

    async def open_stored(self, stored: Sequence[StoredInstance]) -> list[BinaryIO]:
        """Stored files opened for sending as they are, in one worker call. Each must have the size its
        index row says (names are unique and files never change), or the body already promised would
        be wrong: CorruptData then. The kernel is asked to start reading them (up to READ_AHEAD bytes each)
        at once, so that sending them seldom waits for the disk."""
        def run() -> list[BinaryIO]:
            opened: list[BinaryIO] = []
            try:
                for member in stored:
                    fp = open(member.path, "rb")  # noqa: SIM115 - the caller closes it
                    opened.append(fp)
                    size = os.fstat(fp.fileno()).st_size
                    if size != member.size:
                        raise CorruptData(f"stored file of {member.ref.sop_uid} has {size} bytes, "
                                          f"its index row says {member.size}")
                    os.posix_fadvise(fp.fileno(), 0, min(size, READ_AHEAD), os.POSIX_FADV_WILLNEED)
            except BaseException:
                for fp in opened:
                    fp.close()
                raise
            return opened

        return await anyio.to_thread.run_sync(run)

    # --- frames, bulk data, rendered ------------------------------------------------------------

    def _pixel_info(self, stored: StoredInstance, fp: BinaryIO) -> frame_codec.PixelInfo:
        """Where the frames are: the layout kept at ingest, or (rows stored before schema v3) the file's
        header parsed once and cached by path (a stored file's name changes whenever its content does)."""
        if stored.pixel_layout is not None:
            return frame_codec.layout_from_json(stored.pixel_layout)
        path = stored.path
        info = self._pixel_infos.get(path)
        if info is None:
            info = frame_codec.pixel_info(fp)
            with self._cache_lock:  # worker threads share the cache
                if len(self._pixel_infos) >= PIXEL_INFO_CACHE:
                    self._pixel_infos.pop(next(iter(self._pixel_infos)))
                self._pixel_infos[path] = info
        return info

    async def frames(self, stored: StoredInstance, numbers: Sequence[int], wanted_ts: str
                     ) -> list[bytes] | AsyncIterator[bytes]:
        """Frames (1-based) in ``wanted_ts``: a few as a list read in one worker call, many as a stream
        read one at a time, so a 1 GB object never sits in memory.

        Frame numbers are checked before the first frame is produced (NotFound when out of range), so
        a caller can still answer 404 instead of a broken multipart body.
        """
        if len(numbers) <= SMALL_FRAME_REQUEST:
            def read_all() -> list[bytes]:
                with open(stored.path, "rb") as fp:
                    info = self._pixel_info(stored, fp)
                    return [frame_codec.frame_as(f, info, wanted_ts)
                            for f in frame_codec.read_frames(fp, numbers, info)]

            return await anyio.to_thread.run_sync(read_all)

        fp = await anyio.to_thread.run_sync(open, stored.path, "rb")
        try:
            info = await anyio.to_thread.run_sync(self._pixel_info, stored, fp)
            raw = await anyio.to_thread.run_sync(frame_codec.read_frames, fp, numbers, info)

            def next_frame() -> bytes | None:
                frame = next(raw, None)
                return None if frame is None else frame_codec.frame_as(frame, info, wanted_ts)

            first = await anyio.to_thread.run_sync(next_frame)
        except BaseException:
            fp.close()
            raise
        return self._frame_stream(fp, first, next_frame)

    @staticmethod
    async def _frame_stream(fp: BinaryIO, first: bytes | None, next_frame: Callable[[], bytes | None]
                            ) -> AsyncIterator[bytes]:
        try:
            frame = first
            while frame is not None:
                yield frame
                frame = await anyio.to_thread.run_sync(next_frame)
        finally:
            fp.close()

    async def bulkdata(self, stored: StoredInstance, path: str) -> bytes:
        """One bulk value by its path (``TAG[/ITEM/TAG]...``) as issued in the metadata."""
        return await anyio.to_thread.run_sync(_bulk_value, stored.path, path)

    async def render(self, stored: StoredInstance, options: renderer.RenderOptions) -> bytes:
        def run() -> bytes:
            with open(stored.path, "rb") as fp:
                return renderer.render(fp, options)

        return await anyio.to_thread.run_sync(run)


async def _read_file(path: str | os.PathLike[str]) -> AsyncIterator[bytes]:
    """A file in chunks of CHUNK bytes; a small file costs one worker call, open to close."""
    def first_chunk() -> tuple[bytes, BinaryIO | None]:
        fp = open(path, "rb")  # noqa: SIM115 - closed below or handed on
        data = fp.read(CHUNK)
        if len(data) < CHUNK:
            fp.close()
            return data, None
        return data, fp

    data, fp = await anyio.to_thread.run_sync(first_chunk)
    if fp is None:
        yield data
        return
    try:
        while data:
            yield data
            data = await anyio.to_thread.run_sync(fp.read, CHUNK)
    finally:
        fp.close()


def _transcode_file(src: str, dst: str, wanted_ts: str) -> None:
    with open(src, "rb") as source, open(dst, "wb") as target:
        transcoder.transcode(source, target, wanted_ts)


def _bulk_value(file_path: str, path: str) -> bytes:
    parts = path.strip("/").split("/")
    try:
        tags = [int(p, 16) for p in parts[0::2]]
        items = [int(p) for p in parts[1::2]]
    except ValueError as exc:
        raise NotFound("no such bulk data") from exc
    pixel = tags[0] in (0x7FE00010, 0x7FE00008, 0x7FE00009) and len(tags) == 1
    ds = pydicom.dcmread(file_path, stop_before_pixels=not pixel)
    node = ds
    for depth, tag in enumerate(tags):
        if tag not in node:
            raise NotFound("no such bulk data")
        element = node[tag]
        if depth < len(items):
            try:
                node = element.value[items[depth]]
            except (IndexError, TypeError) as exc:
                raise NotFound("no such bulk data") from exc
        else:
            value = element.value
            if isinstance(value, bytes | bytearray):
                return bytes(value)
            raise NotFound("that attribute is not bulk data")
    raise NotFound("no such bulk data")
