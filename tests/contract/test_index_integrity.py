"""What the embedded archive's index keeps true under faults and concurrent writers, on SQLite and on
PostgreSQL (found in review; each case failed before its fix).

The concurrent cases run two ``LocalArchive`` objects over one database and one file root, as two
worker processes do, and hold one transaction open (a sleep in its count refresh) while the other runs.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from pacsbridge.backends import blobs as blobs_module
from pacsbridge.backends.local import LocalArchive
from pacsbridge.backends.sql import counts
from pacsbridge.domain.store import FailureReason

from ..support.dicom import instance
from .conftest import ingest


def rows(embedded: LocalArchive, sql: str) -> list[tuple]:
    with embedded.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql)).all()]


def stored_files(embedded: LocalArchive) -> list[Path]:
    return sorted(p for p in embedded.blobs.files_dir.rglob("*") if p.is_file())


def test_an_index_failure_logs_no_patient_data(embedded: LocalArchive, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """A failed statement's exception text carried its bound values (patient ID and name) into the
    error log."""
    if embedded.engine.dialect.name == "sqlite":
        ddl = "CREATE TRIGGER full BEFORE INSERT ON studies BEGIN SELECT RAISE(ABORT, 'disk is full'); END"
    else:
        ddl = "ALTER TABLE studies ADD CONSTRAINT refuse CHECK (study_uid = '')"
    with embedded.engine.begin() as conn:
        conn.execute(text(ddl))
    caplog.set_level(logging.DEBUG)
    result = ingest(embedded, instance(PatientID="MRN-SECRET-42", PatientName="Secret^Patient"), tmp_path / "in")
    assert result.failure == FailureReason.PROCESSING_FAILURE
    logged = caplog.text + "".join(str(r.exc_info[1]) for r in caplog.records if r.exc_info)
    assert "storing" in logged  # the failure itself is logged
    assert "MRN-SECRET-42" not in logged and "Secret" not in logged


def test_sqlite_commits_are_synced(tmp_path: Path) -> None:
    """WAL with synchronous=NORMAL leaves a commit unsynced until a checkpoint: an instance answered as
    stored could vanish from the index after a power cut."""
    embedded = LocalArchive.open(f"sqlite:///{tmp_path / 'index.sqlite'}", tmp_path / "data", fsync=False)
    try:
        assert rows(embedded, "PRAGMA journal_mode") == [("wal",)]
        assert rows(embedded, "PRAGMA synchronous") == [(2,)]  # FULL
    finally:
        embedded.engine.dispose()


def test_new_folders_are_made_durable_in_their_parents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the series folder was fsync'd: the shard and study folders created for a new study could be
    lost by a power cut, taking the answered instance's file with them."""
    synced: list[Path] = []
    real = blobs_module.fsync_path
    monkeypatch.setattr(blobs_module, "fsync_path", lambda path: (synced.append(Path(path)), real(path)))
    embedded = LocalArchive.open(f"sqlite:///{tmp_path / 'index.sqlite'}", tmp_path / "data", fsync=True)
    try:
        ds = instance()
        assert ingest(embedded, ds, tmp_path / "in").ok
        (stored,) = stored_files(embedded)
        series, study, shard = stored.parent, stored.parent.parent, stored.parent.parent.parent
        assert {series, study, shard, embedded.blobs.files_dir} <= set(synced)
        synced.clear()
        assert ingest(embedded, instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, number=2), tmp_path / "in").ok
        assert synced == [series]  # an existing folder costs no more syncs
    finally:
        embedded.engine.dispose()


def test_a_series_of_another_study_is_refused_and_the_index_stays_whole(embedded: LocalArchive,
                                                                         tmp_path: Path) -> None:
    """The series row was silently moved to the newer study, leaving both studies' counts wrong."""
    first = instance("1.2.826.0.1.3680043.8.498.900", "1.2.826.0.1.3680043.8.498.900.1", number=1)
    clash = instance("1.2.826.0.1.3680043.8.498.901", "1.2.826.0.1.3680043.8.498.900.1", number=2)
    assert ingest(embedded, first, tmp_path / "in").ok
    result = ingest(embedded, clash, tmp_path / "in")
    assert result.failure == FailureReason.PROCESSING_FAILURE
    assert result.reason and "another study" in result.reason
    assert rows(embedded, "SELECT study_uid, num_series, num_instances FROM studies") == [
        ("1.2.826.0.1.3680043.8.498.900", 1, 1)]
    assert rows(embedded, "SELECT series_uid, study_uid, num_instances FROM series") == [
        ("1.2.826.0.1.3680043.8.498.900.1", "1.2.826.0.1.3680043.8.498.900", 1)]
    assert len(stored_files(embedded)) == 1


class _HeldOpen:
    """Makes one archive's index transaction wait ``seconds`` in its count refresh (after its upserts,
    before its commit), so that another archive's transaction runs meanwhile."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, archive: LocalArchive, seconds: float) -> None:
        real = counts.refresh_study

        def refresh(conn, study_uid, series_uids=None):  # type: ignore[no-untyped-def]
            if conn.engine is archive.engine:
                time.sleep(seconds)
            return real(conn, study_uid, series_uids)

        monkeypatch.setattr(counts, "refresh_study", refresh)


def _in_thread(work) -> tuple[threading.Thread, dict]:  # type: ignore[no-untyped-def]
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("result", work()))
    thread.start()
    return thread, out


@pytest.mark.postgres
def test_the_same_instance_sent_twice_at_once_keeps_one_file(postgres, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers storing one SOP Instance UID at once both saw no old row: both answered 'new', and the
    loser's file stayed on disk, indexed by nothing."""
    url = str(postgres.new_database())
    first = LocalArchive.open(url, tmp_path / "data", fsync=False)
    second = LocalArchive.open(url, tmp_path / "data", fsync=False)
    try:
        ds = instance()
        _HeldOpen(monkeypatch, second, 1.0)
        thread, out = _in_thread(lambda: ingest(second, ds, tmp_path / "a"))
        time.sleep(0.3)
        mine = ingest(first, ds, tmp_path / "b")
        thread.join(30)
        theirs = out["result"]
        assert mine.ok and theirs.ok
        assert sorted([mine.replaced, theirs.replaced]) == [False, True]
        assert len(stored_files(first)) == 1
        assert rows(first, "SELECT count(*) FROM instances") == [(1,)]
    finally:
        first.engine.dispose()
        second.engine.dispose()


@pytest.mark.postgres
def test_an_instance_moving_out_of_a_series_never_takes_a_concurrent_store_with_it(  # type: ignore[no-untyped-def]
        postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """X is sent again under another study while Z is stored into X's old series: X's transaction found
    the series empty (Z not yet committed), deleted it, and the cascade removed Z, answered as stored."""
    url = str(postgres.new_database())
    first = LocalArchive.open(url, tmp_path / "data", fsync=False)
    second = LocalArchive.open(url, tmp_path / "data", fsync=False)
    try:
        study_a, series_1 = "1.2.826.0.1.3680043.8.498.200", "1.2.826.0.1.3680043.8.498.200.1"
        study_b, series_2 = "1.2.826.0.1.3680043.8.498.300", "1.2.826.0.1.3680043.8.498.300.1"
        x = instance(study_a, series_1, number=1)
        assert ingest(first, x, tmp_path / "x").ok
        z = instance(study_a, series_1, number=2)
        moved = instance(study_b, series_2, number=1, SOPInstanceUID=x.SOPInstanceUID)
        moved.file_meta.MediaStorageSOPInstanceUID = x.SOPInstanceUID
        _HeldOpen(monkeypatch, second, 1.0)
        thread, out = _in_thread(lambda: ingest(second, z, tmp_path / "z"))
        time.sleep(0.3)
        assert ingest(first, moved, tmp_path / "moved").ok
        thread.join(30)
        assert out["result"].ok
        assert rows(first, f"SELECT sop_uid FROM instances WHERE study_uid = '{study_a}'") == [(z.SOPInstanceUID,)]
        assert rows(first, "SELECT study_uid, num_series, num_instances FROM studies ORDER BY study_uid") == [
            (study_a, 1, 1), (study_b, 1, 1)]
        assert len(stored_files(first)) == 2
    finally:
        first.engine.dispose()
        second.engine.dispose()

