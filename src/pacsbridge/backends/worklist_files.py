"""The open worklist entries as ``.wl`` files in a folder, for a site that keeps Orthanc (its
ModalityWorklists plugin, ``Worklists.Database``) or DCMTK's wlmscpfs as its worklist server.

See: Orthanc Book, "Modality worklists plugin" (it reads every ``*.wl`` file of the folder at each C-FIND);
PS3.10 §7 (the file), PS3.4 Annex K (one item per Scheduled Procedure Step).

Rules:
1. One file per step, ``pacsbridge-<worklist_uid>.wl``: present while the request is on the worklist and
   the step is open (scheduled or in progress), absent otherwise. The ``pacsbridge-`` prefix marks the
   files this class owns; an operator's own ``.wl`` files in the same folder are never touched.
2. A file appears whole or not at all: it is written under a name the worklist server does not read
   (``.pacsbridge-<uid>.<token>.tmp``), fsync'd, then renamed over the old one; the folder is fsync'd
   after renames and removals. A failed write leaves no temporary file behind.
3. The files follow the database, never the reverse: a failure (full disk, missing folder, permissions)
   is logged at WARNING without patient data and swallowed, so the FHIR request whose commit caused it
   still succeeds; the next change of that request, or ``sync_all`` at start-up, repairs the folder.
4. Files are created 0640: the worklist server reads them through a shared group (a setgid folder of
   its group); patient data is not world-readable.
5. File I/O and encoding run in a worker thread; one lock keeps the writes of one process in commit order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

import anyio
import anyio.to_thread

from ..domain.errors import CorruptData, InvalidInput
from ..domain.orders import ImagingRequest, StepStatus
from ..formats.worklist import worklist_file, worklist_uid
from ..services.orders import worklist_item
from .blobs import fsync_path

log = logging.getLogger(__name__)

PREFIX = "pacsbridge-"
SUFFIX = ".wl"
TMP_SUFFIX = ".tmp"
FILE_MODE = 0o640
OPEN_STEPS = frozenset({StepStatus.SCHEDULED, StepStatus.IN_PROGRESS})


class WorklistFolder:
    """The ``.wl`` files of the open worklist entries in ``folder`` (rules 1-5)."""

    def __init__(self, folder: Path, fsync: bool = True) -> None:
        self.folder = folder
        self.fsync = fsync
        self._lock = anyio.Lock()

    async def publish(self, request: ImagingRequest) -> None:
        """Write the files of the request's open steps and remove those of its other steps."""
        async with self._lock:
            await anyio.to_thread.run_sync(self._apply, request)

    async def sync_all(self, requests: Iterable[ImagingRequest]) -> None:
        """Make the folder hold exactly the open steps of ``requests`` (start-up): write theirs, remove
        every other ``pacsbridge-*.wl`` and any temporary file left by a crash."""
        async with self._lock:
            await anyio.to_thread.run_sync(self._sync, list(requests))

    # --- in the worker thread ------------------------------------------------------------------------

    def _apply(self, request: ImagingRequest) -> None:
        wanted, gone = _files_of(request)  # encoding too stays off the event loop
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for name, content in wanted.items():
                self._write(name, content)
            removed = [self._remove(name) for name in gone]
            if self.fsync and (wanted or any(removed)):
                fsync_path(self.folder)
        except OSError as exc:
            log.warning("worklist folder %s: the files of ServiceRequest/%s were not updated (%s: %s); "
                        "Orthanc's worklist is stale until the request changes again or pacsbridge restarts",
                        self.folder, request.request_id, type(exc).__name__, exc.strerror or exc)

    def _sync(self, requests: list[ImagingRequest]) -> None:
        wanted: dict[str, bytes] = {}
        for request in requests:
            wanted.update(_files_of(request)[0])
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for path in self.folder.iterdir():
                name = path.name
                stale_tmp = name.startswith("." + PREFIX) and name.endswith(TMP_SUFFIX)
                if stale_tmp or (name.startswith(PREFIX) and name.endswith(SUFFIX) and name not in wanted):
                    path.unlink(missing_ok=True)
            for name, content in wanted.items():
                if _content(self.folder / name) != content:
                    self._write(name, content)
            if self.fsync:
                fsync_path(self.folder)
        except OSError as exc:
            log.warning("worklist folder %s could not be brought up to date (%s: %s)", self.folder,
                        type(exc).__name__, exc.strerror or exc)

    def _write(self, name: str, content: bytes) -> None:
        """``name`` holds ``content``, by rename of a fsync'd temporary file (rule 2)."""
        tmp = self.folder / f".{name.removesuffix(SUFFIX)}.{secrets.token_hex(4)}{TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            with os.fdopen(fd, "wb") as fp:
                fp.write(content)
                fp.flush()
                if self.fsync:
                    os.fsync(fp.fileno())
            os.replace(tmp, self.folder / name)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise

    def _remove(self, name: str) -> bool:
        try:
            (self.folder / name).unlink()
        except FileNotFoundError:
            return False
        return True


def _files_of(request: ImagingRequest) -> tuple[dict[str, bytes], list[str]]:
    """The files a request's open steps need (name → content) and the names of its other steps' files.
    A step too incomplete to be named is left out (as the SCP leaves it out of its answers)."""
    wanted: dict[str, bytes] = {}
    gone: list[str] = []
    for step in request.steps:
        item = worklist_item(request, step)
        try:
            name = f"{PREFIX}{worklist_uid(item)}{SUFFIX}"
            if request.on_worklist and step.status in OPEN_STEPS:
                wanted[name] = worklist_file(item)
            else:
                gone.append(name)
        except (CorruptData, InvalidInput) as exc:  # the data we hold: logged by tag, never by value
            log.warning("ServiceRequest/%s: a step has no worklist file (%s)", request.request_id, exc)
    return wanted, gone


def _content(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
