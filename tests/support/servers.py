"""Run pacsbridge (uvicorn in a thread) and PostgreSQL (a throwaway cluster) on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from pacsbridge.settings import Settings
from pacsbridge.zero_copy import ZeroCopyHttpProtocol

OPEN_DICOMWEB = {"open_routes": ["/dicomweb"]}
"""Auth settings for functional tests of the DICOMweb door: the operator opens it (tests/security
covers the closed default and every token case)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningServer:
    def __init__(self, settings: Settings, port: int) -> None:
        self.settings = settings
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.dicomweb = self.url + settings.dicomweb.root
        from pacsbridge.app import build_app

        self.app = build_app(settings)

    @property
    def dimse_port(self) -> int:
        """Where the DIMSE SCP listens (started with the app)."""
        return int(self.app.state.dimse.port)


@contextlib.contextmanager
def serve(settings: Settings, port: int | None = None) -> Iterator[RunningServer]:
    """pacsbridge on loopback (a free port unless given), stopped on exit."""
    port = port or free_port()
    if settings.dimse.enabled and "port" not in settings.dimse.model_fields_set:
        # The default DIMSE port is one per machine; a test server takes whatever port is free.
        settings = settings.model_copy(update={"dimse": settings.dimse.model_copy(update={"port": 0})})
    running = RunningServer(settings, port)
    # The protocol `pacsbridge serve` runs: stored files go out with sendfile.
    config = uvicorn.Config(running.app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                            http=ZeroCopyHttpProtocol)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("pacsbridge did not start")
        time.sleep(0.02)
    try:
        yield running
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _pg_bin() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    return None


class Postgres:
    """A throwaway PostgreSQL cluster owned by the ``postgres`` user, listening on loopback only."""

    def __init__(self) -> None:
        bin_dir = _pg_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries not found (Debian package postgresql)")
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="pacsbridge-pg-"))
        self.port = free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.dir / "data"), "-U", "postgres", "-A", "trust", "-E", "UTF8")
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w", "-o",
                  f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off -c synchronous_commit=off", "start")
        self._counter = 0

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def new_database(self) -> str:
        """A fresh empty database's SQLAlchemy URL."""
        import psycopg

        self._counter += 1
        name = f"pb_{os.getpid()}_{self._counter}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
