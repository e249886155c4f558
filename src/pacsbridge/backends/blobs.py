"""Instance files on disk, written so that a crash never leaves a half-written file in place.

Rules:
1. Incoming bytes go to a spool file in ``<root>/spool`` (same file system as the store).
2. A spool file is fdatasync'd when its writer seals it. A stored file gets a fresh name
   (``<sop>.<token>.dcm``) and arrives by rename, its folder fsync'd; the index is then pointed at it,
   and only then is a replaced file removed. A crash at any point leaves
   either the old or the new version indexed, never a partial one.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO


class BlobStore:
    """Files under one root folder."""

    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        self.spool_dir = root / "spool"
        self.files_dir = root / "files"
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.files_dir.mkdir(parents=True, exist_ok=True)

    def new_spool_file(self) -> tuple[Path, BinaryIO]:
        """A fresh spool file, open for writing; the caller seals it (and removes it on failure)."""
        path = self.spool_dir / f"in-{secrets.token_hex(8)}.part"
        return path, open(path, "xb")

    def seal(self, fp: BinaryIO) -> None:
        """Flush, fdatasync and close a finished spool file."""
        try:
            fp.flush()
            if self.fsync:
                # The data and what reading it back needs (size, blocks); not timestamps. The folder
                # entry is made durable by ``sync_folders`` after the rename.
                os.fdatasync(fp.fileno())
        finally:
            fp.close()

    def place(self, spooled: Path, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """Move a sealed spool file to its final, unique place, returning the new path.

        The rename is durable only once its folder is fsync'd: the caller does that with
        ``sync_folders``, once per folder for a whole batch.
        """
        shard = hashlib.sha1(study_uid.encode()).hexdigest()[:2]
        folder = self.files_dir / shard / study_uid / series_uid
        self._make_folder(folder)
        target = folder / f"{sop_uid}.{secrets.token_hex(4)}.dcm"
        os.rename(spooled, target)
        return target

    def _make_folder(self, folder: Path) -> None:
        """Create ``folder`` and its missing parents, each made durable in its own parent (fsync'd after
        the mkdir): ``sync_folders`` makes only the renames in the last folder durable. Once per
        series, so the cost is not paid per instance."""
        missing = []
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for created in reversed(missing):
            created.mkdir(exist_ok=True)
            if self.fsync:
                fsync_path(created.parent)

    def sync_folders(self, folders: Iterable[Path]) -> None:
        """fsync each folder once, so that the renames into it survive a crash."""
        if self.fsync:
            for folder in set(folders):
                fsync_path(folder)

    def remove(self, path: Path | str) -> None:
        """Remove a file if it exists, and its folders once empty."""
        path = Path(path)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        for folder in (path.parent, path.parent.parent):
            try:
                folder.rmdir()
            except OSError:
                break

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def absolute(self, stored: str) -> Path:
        return self.root / stored

    def clean_spool(self, older_than_s: float = 3600.0) -> int:
        """Remove spool files a crash left behind; the number removed.

        Only old files go: another instance sharing this folder may be writing the young ones.
        """
        import time

        removed = 0
        horizon = time.time() - older_than_s
        for leftover in self.spool_dir.glob("in-*.*"):  # .part, and .preamble (ingest's rewrite)
            try:
                if leftover.stat().st_mtime < horizon:
                    leftover.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by path (a folder: so that a rename in it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
