"""Run a Debian Orthanc with its DICOMweb plugin on loopback: an independent peer for tests and benchmarks.

Rules:
1. Everything Orthanc writes (configuration, storage area, SQLite index, log) lives in one temporary
   folder, removed on stop unless ``keep`` is set.
2. Orthanc 1.10 cannot bind to one address, so it listens on every interface; ``RemoteAccessAllowed:
   false`` makes it answer HTTP only to loopback clients, and no DICOM peer may store, find, get or move
   unless listed in ``DicomModalities``. Authentication is off only because of that; callers speak to
   127.0.0.1 only.
3. Durability is Orthanc's default: ``SyncStorageArea: true`` (one fdatasync per stored file, no
   folder sync) and its SQLite index in WAL mode, not synced per commit (as seen with strace).
4. Started means ``GET /system`` answered (200, or 401 when ``RegisteredUsers`` closes it); stopped
   means SIGTERM, then SIGKILL after a grace time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .servers import free_port

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
WORKLISTS_PLUGIN = Path("/usr/share/orthanc/plugins/libModalityWorklists.so")  # Debian package orthanc
DICOMWEB_ROOT = "/dicom-web/"


def missing(*plugins: Path) -> str | None:
    """Why Orthanc cannot run here (Debian ``orthanc`` and ``orthanc-dicomweb``, and the extra
    ``plugins``), or None."""
    for path, package in ((ORTHANC, "orthanc"), (DICOMWEB_PLUGIN, "orthanc-dicomweb"),
                          *((p, "orthanc") for p in plugins)):
        if not path.exists():
            return f"{path} not found (Debian package {package})"
    return None


def orthanc_config(workdir: Path, http_port: int, dicom_port: int, aet: str = "ORTHANC",
                   modalities: Mapping[str, tuple[str, str, int]] | None = None,
                   extra: Mapping[str, Any] | None = None, plugins: Sequence[Path] = ()) -> dict[str, Any]:
    """The JSON configuration of one loopback-only Orthanc; ``plugins`` are loaded after the DICOMweb
    plugin, ``extra`` overrides top-level keys (a plugin's section, such as ``Worklists``)."""
    config: dict[str, Any] = {
        "Name": f"pacsbridge-peer-{aet}",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "Plugins": [str(DICOMWEB_PLUGIN), *map(str, plugins)],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomModalities": {name: list(entry) for name, entry in (modalities or {}).items()},
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowFindWorklist": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "OrthancPeers": {},
        "SaveJobs": False,
        "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT, "EnableWado": True, "WadoRoot": "/wado",
                     "Host": f"127.0.0.1:{http_port}", "Ssl": False},
    }
    config.update(extra or {})
    return config


@dataclass
class OrthancServer:
    """A running Orthanc; ``url`` is its REST API, ``dicomweb`` its DICOMweb root (no trailing slash)."""

    workdir: Path
    http_port: int
    dicom_port: int
    aet: str
    process: subprocess.Popen[bytes]
    keep: bool = False
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return self.url + DICOMWEB_ROOT.rstrip("/")

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, grace_s: float = 30.0) -> None:
        """Ask Orthanc to exit (SIGTERM), kill it after ``grace_s``, and remove its folder unless kept."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_orthanc(*, aet: str = "ORTHANC", modalities: Mapping[str, tuple[str, str, int]] | None = None,
                  extra_config: Mapping[str, Any] | None = None, plugins: Sequence[Path] = (),
                  parent: Path | None = None, keep: bool = False, timeout_s: float = 60.0) -> OrthancServer:
    """Start Orthanc on free loopback ports and wait until ``/system`` answers; the caller stops it."""
    reason = missing(*plugins)
    if reason:
        raise RuntimeError(reason)
    workdir = Path(tempfile.mkdtemp(prefix="pacsbridge-orthanc-", dir=parent))
    http_port, dicom_port = free_port(), free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    config = orthanc_config(workdir, http_port, dicom_port, aet, modalities, extra_config, plugins)
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    env = {**os.environ, "TCP_NODELAY": "1"}
    with open(workdir / "orthanc.log", "wb") as log:
        process = subprocess.Popen([str(ORTHANC), "--no-jobs", str(config_path)], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=workdir)
    server = OrthancServer(workdir, http_port, dicom_port, aet, process, keep)
    try:
        _wait_until_up(server, timeout_s)
    except BaseException:
        tail = server.log_tail()
        server.stop()
        raise RuntimeError(f"Orthanc did not start; its log ends with:\n{tail}") from None
    return server


def _wait_until_up(server: OrthancServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {server.process.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(server.url + "/system", timeout=2).status_code in (200, 401):  # 401: users configured
                return
        time.sleep(0.1)
    raise TimeoutError("Orthanc did not answer /system in time")


@contextlib.contextmanager
def orthanc(**options: Any) -> Iterator[OrthancServer]:
    """``start_orthanc(**options)`` as a context manager that stops it on exit."""
    server = start_orthanc(**options)
    try:
        yield server
    finally:
        server.stop()
