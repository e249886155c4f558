"""The file door: import folders, zip files and DICOMDIRs through the same ingest as STOW-RS.

See: PS3.10 §8 (DICOMDIR, File-set). Each file is copied into a spool file first, so the source is
never moved or changed, and then stored exactly like a STOW-RS part.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any

import anyio.to_thread
import pydicom

from ..domain.model import Origin
from ..services.ingest import IngestService

Opener = Callable[[], AbstractContextManager[IO[bytes]]]
SKIP_NAMES = {"DICOMDIR", ".DS_Store", "Thumbs.db"}


def _dicomdir_files(dicomdir: Path) -> Iterator[Path]:
    ds = pydicom.dcmread(dicomdir)
    root = dicomdir.parent
    for record in ds.get("DirectoryRecordSequence", []):
        file_id = record.get("ReferencedFileID")
        if file_id:
            parts = [file_id] if isinstance(file_id, str) else list(file_id)
            yield root.joinpath(*parts)


def sources(paths: list[Path]) -> Iterator[tuple[str, Opener | None]]:
    """(display name, opener) for every candidate file; opener None means skipped."""
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                yield str(file), None if file.name in SKIP_NAMES else _file_opener(file)
        elif path.name.upper() == "DICOMDIR":
            for file in _dicomdir_files(path):
                yield str(file), _file_opener(file)
        elif zipfile.is_zipfile(path):
            archive = zipfile.ZipFile(path)
            for info in archive.infolist():
                if info.is_dir():
                    continue
                name = f"{path}!{info.filename}"
                skip = Path(info.filename).name in SKIP_NAMES
                yield name, None if skip else (lambda info=info, archive=archive: archive.open(info))
        else:
            yield str(path), _file_opener(path)


def _file_opener(path: Path) -> Opener:
    return lambda: open(path, "rb")


async def import_paths(ingest: IngestService, paths: list[Path], progress: bool = True) -> dict[str, Any]:
    """Store every file found; returns counts and the failures with their reasons."""
    missing = [p for p in paths if not p.exists()]
    summary: dict[str, Any] = {"stored": 0, "replaced": 0, "skipped": 0,
                               "failed": [(str(p), "no such file or folder") for p in missing]}
    found = list(sources([p for p in paths if p.exists()]))
    origin = Origin("import")
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=False)
        bar.start()
        task = bar.add_task("importing", total=len(found))
    try:
        for name, opener in found:
            if opener is None:
                summary["skipped"] += 1
            else:
                await _import_one(ingest, name, opener, origin, summary)
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    return summary


async def _import_one(ingest: IngestService, name: str, opener: Opener, origin: Origin,
                      summary: dict[str, Any]) -> None:
    staged, fp = ingest.new_spool_file()

    def copy() -> None:
        try:
            with opener() as source:
                shutil.copyfileobj(source, fp, 1 << 20)
        finally:
            ingest.seal(fp)

    try:
        await anyio.to_thread.run_sync(copy)
    except (OSError, zipfile.BadZipFile, RuntimeError) as exc:
        # A member zipfile cannot give (bad CRC, encrypted, truncated archive) fails alone; the import
        # goes on with the next file.
        staged.unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        summary["failed"].append((name, f"cannot read: {reason}"))
        return
    result = await ingest.store_file(staged, origin)
    if result.ok:
        summary["stored"] += 1
        summary["replaced"] += int(result.replaced)
    else:
        summary["failed"].append((name, f"{result.reason} (status 0x{int(result.failure or 0):04X})"))
