"""Engines for the index and records database, and the one-writer lock SQLite needs across processes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
from sqlalchemy import Connection, Engine, create_engine, event

T = TypeVar("T")


def make_engine(url: str) -> Engine:
    """An engine with the per-dialect settings the index relies on.

    ``hide_parameters``: a failed statement's exception text would otherwise carry its bound values
    (patient names and IDs) into the log. ``synchronous=FULL``: in WAL mode, NORMAL leaves a commit
    unsynced until the next checkpoint, so an instance already answered as stored could be lost from
    the index by a power cut; FULL syncs the WAL at each commit (one sync per index transaction, a
    whole STOW batch).
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            # DICOM single-value matching is case-sensitive (PS3.4 C.2.2.2.1); PN uses folded columns.
            cursor.execute("PRAGMA case_sensitive_like=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True, hide_parameters=True)


class SqliteWriter:
    """The one writer of an SQLite index: a thread lock within the process and an ``flock`` on a file
    beside the database across worker processes. Both block and wake at once when released, where
    SQLite's own busy handler would poll with sleeps of up to 100 ms."""

    def __init__(self, database: Path) -> None:
        self.lock_path = database.with_name(database.name + ".write-lock")
        self.thread_lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self.thread_lock:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the lock


def holding(writer: SqliteWriter | None) -> contextlib.AbstractContextManager[object]:
    """The writer lock where there is one (SQLite file); nothing to hold for PostgreSQL."""
    return writer.hold() if writer is not None else contextlib.nullcontext()


def writer_for(engine: Engine) -> SqliteWriter | None:
    """The writer lock of an SQLite file database; None for PostgreSQL (row locks) or in-memory."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    return SqliteWriter(Path(database)) if database and database != ":memory:" else None


class InThread:
    """Runs SQLAlchemy work in a worker thread (SQLAlchemy is synchronous; DESIGN rule 6): reads on a
    plain connection, writes in one transaction that holds the SQLite writer lock."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = writer_for(engine)

    async def read(self, work: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self.engine.connect() as conn:
                return work(conn)

        return await anyio.to_thread.run_sync(run)

    async def write(self, work: Callable[[Connection], T]) -> T:
        def run() -> T:
            with holding(self._writer), self.engine.begin() as conn:
                return work(conn)

        return await anyio.to_thread.run_sync(run)
