"""Store instances, whichever door they came through (STOW-RS, C-STORE, file import).

See: DESIGN.md rule 3; PS3.18 §10.5 and PS3.4 Annex B for the failure reasons.

Rules:
1. Two steps: ``receive`` reads and describes one spooled Part 10 file (synchronous: the caller runs
   it in a worker thread, in the same hop that finished writing the file); ``store_received`` hands
   a batch of received files to the archive, which indexes them in one transaction.
2. A failed instance leaves nothing behind: its spool file is removed and no index row is written.
   One bad instance never fails the others of its batch.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import anyio.to_thread

from ..domain.errors import Conflict, UpstreamFailed, UpstreamUnavailable, without_values
from ..domain.model import InstanceRecord, Origin
from ..domain.store import FailureReason, StoreResult
from ..formats.part10 import PREAMBLE, Rejected, lacks_preamble, read_record
from . import audit
from .ports import Archive, Spool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestOptions:
    bulk_threshold: int = 1024


@dataclass(frozen=True)
class Received:
    """A spooled file and what ``receive`` made of it: its record, or the failure to report.
    ``staged`` is None for a part that could not even be written (nothing of it is on disk)."""

    staged: Path | None
    record: InstanceRecord | None = None
    failure: StoreResult | None = None


def write_failure(exc: OSError, sop_class_uid: str = "", sop_uid: str = "") -> StoreResult:
    """The result for an instance we could not write or read back (spooling it, or placing it in the
    archive): out of resources when the disk or quota is full (the sender may retry later), else a
    processing failure. Never the input's fault."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    log.error("writing %s failed: %s", sop_uid or "an instance", exc.strerror or type(exc).__name__)
    return StoreResult(sop_class_uid, sop_uid,
                       failure=FailureReason.OUT_OF_RESOURCES if full else FailureReason.PROCESSING_FAILURE,
                       reason="the archive could not write the instance")


class IngestService:
    """The one way an instance enters pacsbridge."""

    def __init__(self, archive: Archive, spool: Spool, options: IngestOptions | None = None) -> None:
        self.archive = archive
        self.spool = spool
        self.options = options or IngestOptions()

    def new_spool_file(self) -> tuple[Path, BinaryIO]:
        return self.spool.new_spool_file()

    def seal(self, fp: BinaryIO) -> None:
        """Close a finished spool file durably (see ``Spool.seal``)."""
        self.spool.seal(fp)

    def receive(self, staged: Path, content: bytes | None = None) -> Received:
        """Read and describe one spooled file (blocking; run it in a worker thread). Never raises:
        a file that cannot be stored is removed and its failure returned.

        ``content``, the whole file when the caller still has it in memory, is parsed instead of the
        file: pydicom's many small seeks and reads on a file are each a system call.
        """
        try:
            return Received(staged, record=self._describe(staged, content))
        except Rejected as exc:
            failure = StoreResult(exc.sop_class_uid, exc.sop_uid, failure=exc.reason, reason=exc.message)
        except OSError as exc:  # our own file work (the preamble rewrite, reading back): not the input's fault
            failure = write_failure(exc)
        except Exception as exc:  # a header pydicom reads but cannot make sense of
            failure = StoreResult("", "", failure=FailureReason.CANNOT_UNDERSTAND,
                                  reason=f"unreadable DICOM: {type(exc).__name__}")
        _discard(staged)
        return Received(staged, failure=failure)

    async def store_received(self, received: Sequence[Received], origin: Origin,
                             expected_study: str | None = None) -> list[StoreResult]:
        """Store a batch of received files; one result per file, in order. Every file is consumed."""
        results: list[StoreResult | None] = [None] * len(received)
        accepted: list[tuple[int, Received, InstanceRecord]] = []
        for i, item in enumerate(received):
            if item.record is None:
                results[i] = item.failure or StoreResult("", "", failure=FailureReason.PROCESSING_FAILURE)
            elif expected_study is not None and item.record.ref.study_uid != expected_study:
                _discard(item.staged)
                results[i] = StoreResult(
                    item.record.sop_class_uid, item.record.ref.sop_uid,
                    failure=FailureReason.STUDY_INSTANCE_UID_MISMATCH,
                    reason="StudyInstanceUID differs from the study in the request URL")
            else:
                accepted.append((i, item, item.record))
        if accepted:
            outcomes = await self.archive.store_many([(_path(item), record) for _i, item, record in accepted])
            for (i, item, record), outcome in zip(accepted, outcomes, strict=True):
                results[i] = _result(item, record, outcome, origin)
        audit.touched_all((record.patient_id, record.ref.study_uid) for _i, _item, record in accepted)
        stored = [r for r in results if r is not None and r.ok]
        if stored:
            replaced = sum(1 for r in stored if r.replaced)
            log.info("stored %d instance(s) via %s%s", len(stored), origin.door,
                     f" ({replaced} replaced)" if replaced else "")
        return [r for r in results if r is not None]

    async def store_file(self, staged: Path, origin: Origin, expected_study: str | None = None) -> StoreResult:
        """Validate, index and keep one spooled Part 10 file; it is consumed either way."""
        received = await anyio.to_thread.run_sync(self.receive, staged)
        return (await self.store_received([received], origin, expected_study))[0]

    def _describe(self, staged: Path, content: bytes | None = None) -> InstanceRecord:
        head = content[:132] if content is not None else _read_head(staged)
        if lacks_preamble(head):
            with open(staged, "rb") as fp:
                self._add_preamble(staged, fp)
            if content is not None:
                content = PREAMBLE + content
        with io.BytesIO(content) if content is not None else open(staged, "rb") as source:
            return read_record(source, self.options.bulk_threshold)

    def _add_preamble(self, staged: Path, fp: BinaryIO) -> None:
        """Rewrite a spool file with the PS3.10 preamble in front (a sealed temp file, then rename; the
        temp file is removed if that fails)."""
        fixed = staged.with_suffix(".preamble")
        fp.seek(0)
        try:
            with open(fixed, "wb") as out:
                out.write(PREAMBLE)
                shutil.copyfileobj(fp, out, 1 << 20)
                self.spool.seal(out)
            os.replace(fixed, staged)
        except BaseException:
            fixed.unlink(missing_ok=True)
            raise


def _result(item: Received, record: InstanceRecord, outcome: bool | Exception, origin: Origin) -> StoreResult:
    """The StoreResult for one archive outcome: True/False (replaced or not) or the error that kept it out."""
    sop = record.ref.sop_uid
    if not isinstance(outcome, Exception):
        log.debug("stored %s via %s%s", sop, origin.door, " (replaced)" if outcome else "")
        return StoreResult(record.sop_class_uid, sop, ref=record.ref, replaced=outcome)
    _discard(item.staged)
    # At odds with what is stored (a series of another study), or refused by the upstream archive.
    if isinstance(outcome, Conflict | UpstreamFailed):
        log.warning("storing %s from %s: %s", sop, origin.door, outcome.message)
        return StoreResult(record.sop_class_uid, sop, failure=FailureReason.PROCESSING_FAILURE, reason=outcome.message)
    if isinstance(outcome, UpstreamUnavailable):  # away or too slow: the sender may retry
        log.warning("storing %s from %s: %s", sop, origin.door, outcome.message)
        return StoreResult(record.sop_class_uid, sop, failure=FailureReason.OUT_OF_RESOURCES, reason=outcome.message)
    if isinstance(outcome, OSError):
        return write_failure(outcome, record.sop_class_uid, sop)
    log.error("storing %s from %s failed: %s", sop, origin.door, without_values(outcome))
    return StoreResult(record.sop_class_uid, sop, failure=FailureReason.PROCESSING_FAILURE,
                       reason="the archive failed")


def _path(item: Received) -> Path:
    assert item.staged is not None, "a received record always has its file"
    return item.staged


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as fp:
        return fp.read(132)


def _discard(path: Path | None) -> None:
    if path is None:
        return
    try:
        path.unlink()
    except FileNotFoundError:
        pass
