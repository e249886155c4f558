"""The read client: Debian's ``wrk`` (C, HTTP/1.1 keep-alive) with ``bench/wrk_reads.lua``.

An asyncio + httpx client needs most of a core for ~1,000 small requests/s or ~550 MB/s of multipart
on this machine, and shares the cores with the server under test; wrk needs a few percent of one.

Rules:
1. The request list (paths and ``Accept``) is the one ``bench/request_lists.py`` builds, sent in order
   and cycled, the same for every server; the warm-up is the first ``warmup`` requests of that list,
   sent one by one with httpx, untimed.
2. Bounded by count (the script stops each wrk thread after its share) and by time (an interrupt at
   the deadline; requests in flight are then dropped, not counted). Elapsed time is wrk's own.
3. Loud failures: a status outside ``ok``, a socket error or timeout, a multipart answer without its
   closing delimiter, a count that does not add up raise :class:`ReadFailure`; nothing is reported.
4. Bytes are whole response bodies: wrk hands a body to the script only once http-parser has read all
   of it. Whole studies are timed "lean" (wrk alone reads the bodies: copying them into Lua would cost
   more than the transfer), then an untimed pass over the same list checks every answer.
5. Client CPU is wrk's own (``/proc/PID/stat``), read just before the interrupt.
6. Latencies are the ones wrk measured, without the samples its coordinated-omission correction adds.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .servers import cpu_seconds
from .workload import COMMON_HEADERS, READ_CHUNK, TIMEOUT, RunResult

SCRIPT = Path(__file__).with_name("wrk_reads.lua")
MARK = b"wrk-bench: "
TIMEOUT_S = 60  # wrk keeps a latency histogram up to its timeout: one 8-byte slot per microsecond


class ReadFailure(RuntimeError):
    """A read run got wrong answers, or lost some: its figures would mean nothing."""


@dataclass
class WrkResult(RunResult):
    """A :class:`RunResult` with what wrk and the Lua script counted besides."""

    parts: int = 0  # multipart parts in the answers ("check" mode)
    incomplete: int = 0  # multipart answers without their closing delimiter ("check" mode)
    wire_bytes: int = 0  # everything wrk read, headers and chunk framing included
    answered: int = 0  # answers as the script counted them
    sent: int = 0  # requests the script let wrk send
    eof_delimited: int = 0  # answers whose end was the connection's ("check" mode)
    socket_errors: Counter[str] = field(default_factory=Counter)
    lean: bool = False

    def add(self, other: RunResult) -> None:
        super().add(other)
        if isinstance(other, WrkResult):
            self.parts += other.parts
            self.incomplete += other.incomplete
            self.wire_bytes += other.wire_bytes
            self.answered += other.answered
            self.sent += other.sent
            self.eof_delimited += other.eof_delimited
            self.socket_errors.update(other.socket_errors)

    def summary(self) -> dict[str, object]:
        return {**super().summary(), "client": "wrk lean" if self.lean else "wrk", "multipart_parts": self.parts,
                "incomplete": self.incomplete, "wire_bytes": self.wire_bytes, "eof_delimited": self.eof_delimited,
                "socket_errors": dict(self.socket_errors)}


def wrk_version() -> str:
    run = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return (run.stdout + run.stderr).split("\n")[0].strip()


def warm_up(base: str, paths: Sequence[str], accept: str) -> None:
    with httpx.Client(headers=COMMON_HEADERS, timeout=TIMEOUT) as client:
        for path in paths:
            with client.stream("GET", base + path, headers={"Accept": accept}) as response:
                for _ in response.iter_raw(READ_CHUNK):
                    pass


def wrk_gets(base: str, paths: Sequence[str], accept: str, *, pid: int, concurrency: int, threads: int,
             max_requests: int, max_seconds: float, warmup: int, ok: frozenset[int] = frozenset({200}),
             label: str = "", lean: bool = False, expect: tuple[int, int] | None = None) -> WrkResult:
    """GET ``paths`` in order (cycling) over ``concurrency`` keep-alive connections, bounded by count
    and time; raise :class:`ReadFailure` on any wrong or lost answer.

    ``lean``: the timed run leaves bodies to wrk alone (bytes are then wrk's bytes read); an untimed pass
    over the whole list with every answer checked follows it, and the run must have read as many bytes as
    that pass when it too covered the whole list. ``expect``: (multipart parts, least body bytes) of the whole list
    answered once, checked on that pass (or on the run, when it is not lean and covers the list)."""
    if shutil.which("wrk") is None:
        raise ReadFailure("wrk is not installed (scripts/install-peers installs it)")
    threads = max(1, min(threads, concurrency, max_requests))
    while concurrency % threads:  # wrk gives each thread connections // threads
        threads -= 1
    whole_list = max_requests == len(paths)
    checked: WrkResult | None = None
    with tempfile.NamedTemporaryFile("w", prefix="wrk-paths-", suffix=".txt") as listing:
        listing.write("\n".join(paths) + "\n")
        listing.flush()

        def run(mode: str, count: int, seconds: float) -> WrkResult:
            report, server_cpu, client_cpu = _wrk(base, listing.name, accept, mode, pid=pid, threads=threads,
                                                  concurrency=concurrency, max_requests=count,
                                                  max_seconds=seconds, label=label)
            return _result(report, server_cpu, client_cpu, concurrency, ok, mode)

        warm_up(base, paths[:warmup], accept)
        result = run("lean" if lean else "check", max_requests, max_seconds)
        if lean:  # after the timed run, so that the warm-up stays the same as for every other phase
            checked = run("check", len(paths), max(60.0, 4 * max_seconds))
            if _dropped(checked) and not checked.errors:
                # A connection the server dropped (seen once from Orthanc after its slow multi-frame
                # answers) is retried once; a second failure is reported like any other.
                checked = run("check", len(paths), max(60.0, 4 * max_seconds))
            # The checked pass verifies bodies; a dropped connection there (Orthanc after its slow
            # multi-frame answers, seen twice in a row) is noted, not fatal, up to one in a hundred.
            _check(checked, f"{label} (checked pass)", concurrency=concurrency, whole_list=False,
                   expect=None, dropped_ok=max(1, len(paths) // 100))
            if not _dropped(checked):
                _check(checked, f"{label} (checked pass)", concurrency=concurrency, whole_list=True, expect=expect)
    clean = checked is not None and not _dropped(checked)
    _check(result, label, concurrency=concurrency, whole_list=whole_list, expect=None if lean else expect,
           reference=checked if clean else None)
    return result


def _wrk(base: str, listing: str, accept: str, mode: str, *, pid: int, threads: int, concurrency: int,
         max_requests: int, max_seconds: float, label: str) -> tuple[dict[str, Any], float, float]:
    """One wrk process: its report, and the CPU seconds of the server and of wrk during the run."""
    command = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{math.ceil(max_seconds) + 1}s",
               "--timeout", f"{TIMEOUT_S}s", "-s", str(SCRIPT), base,
               "--", listing, accept, str(max_requests), str(threads), mode, str(concurrency // threads)]
    cpu0 = cpu_seconds(pid)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        output, errors, client_cpu = _run(process, threads, time.monotonic() + max_seconds)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return _report(output, errors, process.returncode, label), cpu_seconds(pid) - cpu0, client_cpu


def _result(report: dict[str, Any], server_cpu: float, client_cpu: float, connections: int, ok: frozenset[int],
            mode: str) -> WrkResult:
    lean = mode == "lean"
    latencies = _measured(report["latency_us"], report["duration_us"], report["requests"], connections)
    errors = report["socket_errors"]
    result = WrkResult(
        requests=report["requests"], bytes=report["bytes"] if lean else report["body_bytes"],
        elapsed_s=report["duration_us"] / 1e6,
        latencies_s=[v / 1e6 for v, n in sorted(latencies.items()) for _ in range(n)],
        statuses=Counter({int(k): v for k, v in report["statuses"].items()}),
        server_cpu_s=server_cpu, client_cpu_s=client_cpu, parts=report["parts"], incomplete=report["incomplete"],
        wire_bytes=report["bytes"], answered=report["answered"], sent=report["sent"],
        eof_delimited=report["eof_delimited"], socket_errors=Counter({k: v for k, v in errors.items() if v}),
        lean=lean,
    )
    # lean: no status reaches the script; wrk itself counts those above 399
    result.errors = errors["status"] if lean else sum(n for s, n in result.statuses.items() if s not in ok)
    return result


def _run(process: subprocess.Popen[bytes], threads: int, deadline: float) -> tuple[bytes, bytes, float]:
    """Wait for every thread's quota line or the deadline, then interrupt wrk (it then prints its
    report); return its output, its error output and the CPU seconds it had used before the interrupt."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    output = b""
    while output.count(MARK + b"quota\n") < threads:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            break
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        output += chunk
    client_cpu = 0.0
    with contextlib.suppress(OSError):
        client_cpu = cpu_seconds(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    rest, errors = process.communicate(timeout=300)
    return output + rest, errors, client_cpu


def _report(output: bytes, errors: bytes, returncode: int, label: str) -> dict[str, Any]:
    lines = [line for line in output.split(b"\n") if line.startswith(MARK + b"{")]
    if returncode != 0 or not lines:
        raise ReadFailure(f"{label}: wrk exited with {returncode} and no report: "
                          f"{output.decode(errors='replace')[-2000:]} {errors.decode(errors='replace')[-2000:]}")
    report: dict[str, Any] = json.loads(lines[-1][len(MARK):])
    return report


def _measured(histogram: list[list[int]], duration_us: int, requests: int, connections: int) -> dict[int, int]:
    """The latencies wrk measured, without the samples its coordinated-omission correction adds.

    wrk 4 corrects its histogram before ``done()`` sees it (``stats_correct`` in its ``stats.c``): with
    e = duration / (requests // connections) microseconds, each latency n >= 2e adds one sample at each of
    n - e, n - 2e, ... above e. Those samples depend on the run's length (a run stopped by its count has a
    small e) and the httpx client had none, so they are taken out again: going down from the largest
    value, the samples at n are what was measured at n plus what was measured at n + e, n + 2e, ...
    """
    observed = {value: count for value, count in histogram}
    if requests // connections == 0:
        return observed
    e = duration_us // (requests // connections)
    measured: dict[int, int] = {}
    above: dict[int, int] = {}  # n -> what was measured at n + e, n + 2e, ...
    for n in sorted(observed, reverse=True):
        above[n] = measured.get(n + e, 0) + above.get(n + e, 0) if n > e else 0
        measured[n] = observed[n] - above[n]
    return {n: count for n, count in measured.items() if count}


def _dropped(result: WrkResult) -> int:
    """Connections lost without an answer: socket errors other than the reads that end answers whose
    body is delimited by the end of the connection (Orthanc's whole studies)."""
    errors = +result.socket_errors
    other = sum(count for kind, count in errors.items() if kind not in ("read", "status"))
    return other + max(0, errors["read"] - result.eof_delimited)


def _check(result: WrkResult, label: str, *, concurrency: int, whole_list: bool, expect: tuple[int, int] | None,
           reference: WrkResult | None = None, dropped_ok: int = 0) -> None:
    """Raise :class:`ReadFailure` unless every answer of the run was right and is counted."""
    problems = []
    if result.errors:
        problems.append(f"{result.errors} answers with an unexpected status {dict(result.statuses)}")
    # A body that ends with its connection (Orthanc's whole studies) makes wrk count one read error
    # after the answer; in a lean run, the checked pass over the same list tells how many answers do.
    eof_share = (reference.eof_delimited / reference.requests if reference and reference.requests
                 else result.eof_delimited / result.requests if result.requests else 0.0)
    socket_errors = result.socket_errors - Counter({"status": result.socket_errors["status"]})
    if socket_errors["read"] <= math.ceil(eof_share * result.requests) + dropped_ok:
        if socket_errors["read"] > math.ceil(eof_share * result.requests):
            print(f"note: {label}: the server dropped {socket_errors['read']} connection(s); "
                  "the answers received were all checked", file=sys.stderr)
        del socket_errors["read"]
    if socket_errors:
        problems.append(f"socket errors {dict(socket_errors)}")
    if result.incomplete:
        problems.append(f"{result.incomplete} multipart answers without a closing delimiter or parts")
    # lean: an answer is counted at the next delay() call, which an interrupt may have cut off
    slack = concurrency if result.lean else 0
    if not result.answered <= result.requests <= result.answered + slack or (
            not result.lean and sum(result.statuses.values()) != result.requests):
        problems.append(f"wrk counted {result.requests} answers, the script {result.answered}")
    if len(result.latencies_s) != result.requests:
        problems.append(f"{len(result.latencies_s)} latencies for {result.requests} answers")
    if result.requests == 0:
        problems.append("no answer at all")
    complete = whole_list and result.requests == result.sent
    if expect and complete:
        parts, file_bytes = expect
        if result.parts != parts or result.bytes < file_bytes:
            problems.append(f"the whole list once: {result.parts} parts, {result.bytes} body bytes; "
                            f"the data set has {parts} instances, {file_bytes} bytes")
    if reference and complete and abs(result.wire_bytes - reference.wire_bytes) > 0.001 * reference.wire_bytes:
        problems.append(f"the whole list once: {result.wire_bytes} bytes read, "
                        f"{reference.wire_bytes} in the checked pass")
    if problems:
        raise ReadFailure(f"{label}: " + "; ".join(problems))
