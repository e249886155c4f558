"""The servers under test as separate processes, and what /proc says about them (RSS, CPU time).

pacsbridge runs as ``pacsbridge serve`` (its defaults: SQLite index, fsync'd files, log level info);
Orthanc through ``tests.support.orthanc`` (its defaults: fsync'd storage area, SQLite index). Both
listen on 127.0.0.1 only as far as the benchmark is concerned; every request goes to loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tests.support.orthanc import orthanc
from tests.support.servers import free_port

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Target:
    """One server under test: its DICOMweb root and its process."""

    name: str
    dicomweb: str
    pid: int
    workdir: Path


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (pacsbridge with ``workers`` > 1 is a parent and its workers);
    every figure below sums over the tree so that one and several processes are measured alike."""
    found = [pid]
    for index in range(len(found) + 64):
        if index >= len(found):
            break
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{found[index]}/task").iterdir():
                with contextlib.suppress(OSError):
                    found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _one_rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as fp:
        return int(fp.read().split()[1]) * PAGE


def rss_bytes(pid: int) -> int:
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += _one_rss(member)
    return total


def peak_rss_bytes(pid: int) -> int:
    """Sum of VmHWM (the most each process had resident since start or ``reset_peak``) over the tree:
    an upper bound of the tree's simultaneous peak."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/status") as fp:
            for line in fp:
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
    return total


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS in every process of the tree (Linux >= 4.0; needs to own them)."""
    try:
        for member in process_tree(pid):
            with open(f"/proc/{member}/clear_refs", "w") as fp:
                fp.write("5")
        return True
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of every process in the tree."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/stat") as fp:
            fields = fp.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def settle(pids: Sequence[int], max_wait_s: float = 30.0, busy_share: float = 0.05) -> float:
    """Wait until every server is idle (under ``busy_share`` of a core over 0.5 s) and, where Linux
    reports it, the disk is quiet (I/O pressure avg10 under 5 %): a round must not pay for the work the
    other server is still finishing (Orthanc goes on reading files for requests wrk has given up on)
    or for writes still being flushed. Returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < max_wait_s:
        before = [cpu_seconds(pid) for pid in pids]
        time.sleep(0.5)
        busy = any((cpu_seconds(pid) - b) / 0.5 > busy_share for pid, b in zip(pids, before, strict=True))
        if not busy and _io_pressure() < 5.0:
            break
    return time.monotonic() - started


def _io_pressure() -> float:
    try:
        first = Path("/proc/pressure/io").read_text().splitlines()[0]
    except (OSError, IndexError):
        return 0.0
    return float(first.split("avg10=")[1].split()[0])


class RssSampler:
    """Samples a process's RSS every ``interval_s`` in a thread; ``peak`` is the largest sample."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_bytes(self.pid))
                self.samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _wait_for(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer in time")


@contextlib.contextmanager
def pacsbridge(parent: Path, env: Mapping[str, str] | None = None,
               config: Mapping[str, Any] | None = None) -> Iterator[Target]:
    """``pacsbridge serve`` with a fresh data folder on a free loopback port, stopped on exit;
    ``config``: settings given as a config file (the environment, ``env`` included, still wins)."""
    workdir = Path(tempfile.mkdtemp(prefix="pacsbridge-bench-", dir=parent))
    options: list[str] = []
    if config is not None:
        (workdir / "pacsbridge.yaml").write_text(json.dumps(config, indent=2))  # JSON is YAML
        options = ["--config", str(workdir / "pacsbridge.yaml")]
    port = free_port()
    exe = Path(sys.executable).with_name("pacsbridge")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PACSBRIDGE_")}
    # Orthanc runs without authentication in the benchmark, so pacsbridge's DICOMweb door is opened too.
    environment["PACSBRIDGE_AUTH__OPEN_ROUTES"] = '["/dicomweb"]'
    environment.update(env or {})
    with open(workdir / "pacsbridge.log", "wb") as log:
        process = subprocess.Popen(
            [str(exe), "serve", "--data-dir", str(workdir / "data"), "--host", "127.0.0.1", "--port", str(port),
             *options],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment, cwd=workdir,
        )
    try:
        _wait_for(f"http://127.0.0.1:{port}/health", process, 60)
        yield Target("pacsbridge", f"http://127.0.0.1:{port}/dicomweb", process.pid, workdir)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def orthanc_target(parent: Path) -> Iterator[Target]:
    """Debian Orthanc + DICOMweb plugin with a fresh storage folder, stopped on exit."""
    with orthanc(parent=parent) as server:
        yield Target("Orthanc", server.dicomweb, server.pid, server.workdir)
