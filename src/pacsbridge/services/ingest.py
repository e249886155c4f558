"""Store instances, whichever door they came through (STOW-RS, C-STORE, file import).

See: DESIGN.md rule 3; PS3.18 §10.5 and PS3.4 Annex B for the failure reasons. A failed instance
leaves nothing behind: its spool file is removed and no index row is written.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import anyio.to_thread

from ..domain.model import InstanceRecord, Origin
from ..domain.store import FailureReason, StoreResult
from ..formats.part10 import PREAMBLE, Rejected, describe, lacks_preamble, read_header
from .ports import Archive, Spool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestOptions:
    bulk_threshold: int = 1024


class IngestService:
    """The one way an instance enters pacsbridge."""

    def __init__(self, archive: Archive, spool: Spool, options: IngestOptions | None = None) -> None:
        self.archive = archive
        self.spool = spool
        self.options = options or IngestOptions()

    def new_spool_file(self) -> tuple[Path, BinaryIO]:
        return self.spool.new_spool_file()

    async def store_file(self, staged: Path, origin: Origin, expected_study: str | None = None) -> StoreResult:
        """Validate, index and keep one spooled Part 10 file; it is consumed either way."""
        try:
            record = await anyio.to_thread.run_sync(self._describe, staged)
        except Rejected as exc:
            _discard(staged)
            return StoreResult(exc.sop_class_uid, exc.sop_uid, failure=exc.reason, reason=exc.message)
        except Exception as exc:  # a header pydicom reads but cannot make sense of
            _discard(staged)
            return StoreResult("", "", failure=FailureReason.CANNOT_UNDERSTAND,
                               reason=f"unreadable DICOM: {type(exc).__name__}")
        if expected_study is not None and record.ref.study_uid != expected_study:
            _discard(staged)
            return StoreResult(
                record.sop_class_uid, record.ref.sop_uid, failure=FailureReason.STUDY_INSTANCE_UID_MISMATCH,
                reason="StudyInstanceUID differs from the study in the request URL",
            )
        try:
            replaced = await self.archive.store(staged, record)
        except OSError as exc:
            _discard(staged)
            failure = (FailureReason.OUT_OF_RESOURCES if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                       else FailureReason.PROCESSING_FAILURE)
            log.error("storing %s from %s failed: %s", record.ref.sop_uid, origin.door, exc)
            return StoreResult(record.sop_class_uid, record.ref.sop_uid, failure=failure,
                               reason="the archive could not write the instance")
        except Exception:
            _discard(staged)
            log.exception("storing %s from %s failed", record.ref.sop_uid, origin.door)
            return StoreResult(record.sop_class_uid, record.ref.sop_uid,
                               failure=FailureReason.PROCESSING_FAILURE, reason="the archive failed")
        log.info("stored %s via %s%s", record.ref.sop_uid, origin.door, " (replaced)" if replaced else "")
        return StoreResult(record.sop_class_uid, record.ref.sop_uid, ref=record.ref, replaced=replaced)

    def _describe(self, staged: Path) -> InstanceRecord:
        with open(staged, "rb") as fp:
            fix = lacks_preamble(fp.read(132))
            if fix:
                _add_preamble(staged, fp)
        with open(staged, "rb") as fp:
            ds, pixel_vr = read_header(fp)
        return describe(ds, pixel_vr, self.options.bulk_threshold)


def _add_preamble(staged: Path, fp: BinaryIO) -> None:
    """Rewrite a spool file in place with the PS3.10 preamble in front (a temp file, then rename)."""
    fixed = staged.with_suffix(".preamble")
    fp.seek(0)
    with open(fixed, "wb") as out:
        out.write(PREAMBLE)
        shutil.copyfileobj(fp, out, 1 << 20)
    os.replace(fixed, staged)


def _discard(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
