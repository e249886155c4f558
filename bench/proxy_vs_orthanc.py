"""pacsbridge as a proxy in front of an Orthanc, against that Orthanc's own DICOMweb: same data, one run.

Usage: .venv/bin/python bench/proxy_vs_orthanc.py [--quick] [--instances N] [--studies M] [--out FILE]
(``--quick``: 300 instances, 300 ingest files, about a minute; the default: the 5,000-instance data set
of ``bench/dicomweb_vs_orthanc.py``, 1,000 ingest files.)

Setup. One Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) holds the data set of ``bench/dataset.py``,
stored into it by STOW-RS before anything is timed. One pacsbridge process fronts it twice: as the
upstream ``dimse`` (C-FIND, C-GET; served at ``/upstreams/dimse/dicomweb``) and as the upstream ``web``
(Orthanc's DICOMweb; ``/upstreams/web/dicomweb``). pacsbridge's own archive stays the embedded one
(``archive: local``) for the C-STORE phase. Both servers keep their default durability: pacsbridge fsyncs
every stored and cached file (``storage.fsync`` true, its default), as Orthanc fsyncs its storage area
(``SyncStorageArea``). pacsbridge runs with its other defaults too (one HTTP worker per core), except that
its caches serve a fetched study for a day (``cache.fresh_seconds``), so "warm" below means no upstream
request at all (with the default 300 s, a study fetched longer ago costs one count query more).
Orthanc lists pacsbridge's calling AE title (C-FIND, C-GET) and storescu's (C-STORE) in ``DicomModalities``.
The client is ``http.client`` on one connection (far less CPU than httpx); its CPU share is printed.

Phases. Each alternates the order of the servers: the first half of the work A B C, the second C B A.
1. QIDO-RS study searches, sequential, one client on a keep-alive connection: the same list
   (PatientID exact, PatientName prefix wildcard, StudyDate range, ModalitiesInStudy) to (a) Orthanc's
   own QIDO-RS, (b) pacsbridge translating to C-FIND, (c) pacsbridge forwarding to Orthanc's QIDO-RS;
   a few untimed warm-up searches first. A latency runs from sending the request to the last byte of
   the answer. Afterwards every answer is checked against the studies the manifest says match: an error
   status stops the run, an answer naming other studies is counted per kind and reported under the
   table (``--strict``: it stops the run). Reported: p50 and p95 over all searches, and p50 per kind.
2. WADO-RS whole studies (``GET /studies/{uid}``, ``transfer-syntax=*``), sequential: every study once
   through each path ("cold": pacsbridge first fetches the study from Orthanc, by C-GET or by WADO-RS,
   into its cache; for Orthanc, its first retrieve), then every study again ``--warm-passes`` times
   ("warm": from pacsbridge's cache; Orthanc's later retrieves). MB/s is body bytes over the pass's
   wall time; every answer's multipart parts are counted as the body streams by (never kept) and
   must equal the study's instance count, its body at least the study's file bytes.
3. C-STORE ingest: DCMTK ``storescu +sd`` (one association, TCP_NODELAY=1) sends a fresh set of small CT
   images (256x256 16-bit, 50 per study) to pacsbridge's SCP (embedded archive) and to Orthanc's;
   instances/s is files over storescu's wall-clock time (its scan of the files before associating costs
   about 0.3 ms per file, the same for both). Each study's instance count is then checked by QIDO-RS.
Then a table: metric | pacsbridge | Orthanc | ratio (pacsbridge / Orthanc) | target | met?, with the
targets of issue 4: QIDO over DIMSE within 1.5x of Orthanc's own QIDO latency (p50 and p95), warm
WADO-RS at least Orthanc direct, C-STORE ingest at least Orthanc's.
CPU seconds of both servers and of this client, per run, are in the JSON output (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # run as a script: import ``bench`` and ``tests`` from the repository root

from tests.support.orthanc import OrthancServer, orthanc  # noqa: E402
from tests.support.servers import free_port  # noqa: E402

from bench.dataset import FULL_MULTIFRAME, MB, QUICK_MULTIFRAME, Item, load_or_generate  # noqa: E402
from bench.dicomweb_vs_orthanc import halves, log, machine, render  # noqa: E402
from bench.request_lists import ACCEPT_JSON, ACCEPT_STUDY, study_paths  # noqa: E402
from bench.servers import Target, cpu_seconds, pacsbridge  # noqa: E402
from bench.workload import COMMON_HEADERS, READ_CHUNK, TIMEOUT, RunResult, batches, stow  # noqa: E402
from bench.wrk_client import ReadFailure  # noqa: E402
from pacsbridge.formats.media import parse_content_type  # noqa: E402
from pacsbridge.synthetic import study_specs, write_study  # noqa: E402

T = TypeVar("T")
ORTHANC, VIA_DIMSE, VIA_WEB = "Orthanc", "pb-dimse", "pb-dicomweb"
PB_AET, STORESCU_AET = "PACSBRIDGE", "STORESCU"
STORESCU = Path("/usr/bin/storescu")  # DCMTK's; .venv/bin/storescu is pynetdicom's
PER_STUDY = 50  # ingest files per study (2 series of 25)
QIDO_KINDS = ("patient_id", "patient_name", "study_date", "modalities")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="300 instances, 300 ingest files, short bounds (~1 min)")
    p.add_argument("--instances", type=int, help="instances in the data set (default 5000; quick 300)")
    p.add_argument("--studies", type=int, help="studies in the data set (default 200; quick 20)")
    p.add_argument("--multiframe", choices=["quick", "full"],
                   help="the multi-frame objects of the data set (default full; quick: the small ones)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--cache", type=Path, default=ROOT / "bench" / "results" / "dataset-cache")
    p.add_argument("--workdir", type=Path, default=Path("/tmp"), help="where the servers' data folders go")
    p.add_argument("--qido-requests", type=int, help="timed searches per path (default 400; quick 120)")
    p.add_argument("--qido-seconds", type=float, help="time bound of the searches per path (default 240; quick 30)")
    p.add_argument("--warmup", type=int, default=8, help="untimed searches per path and round")
    p.add_argument("--strict", action="store_true", help="stop at the first QIDO answer naming the wrong studies "
                   "(default: count them per kind and report them under the table)")
    p.add_argument("--wado-seconds", type=float,
                   help="time bound of one pass of whole studies per path (default 900; quick 120)")
    p.add_argument("--warm-passes", type=int, default=3, help="times each study is retrieved warm (each timed)")
    p.add_argument("--ingest-files", type=int, help="C-STORE files, a multiple of 100 (default 1000; quick 300)")
    p.add_argument("--ingest-size", type=int, default=256, help="rows and columns of the C-STORE images")
    p.add_argument("--ingest-seconds", type=float, default=600, help="time bound of one storescu run")
    args = p.parse_args(argv)
    quick = args.quick
    args.instances = args.instances or (300 if quick else 5000)
    args.studies = args.studies or (20 if quick else 200)
    args.qido_requests = args.qido_requests or (120 if quick else 400)
    args.qido_seconds = args.qido_seconds or (30.0 if quick else 240.0)
    args.wado_seconds = args.wado_seconds or (120.0 if quick else 900.0)
    args.ingest_files = args.ingest_files or (300 if quick else 1000)
    if args.ingest_files % (2 * PER_STUDY):
        p.error(f"--ingest-files must be a multiple of {2 * PER_STUDY} (two halves of whole studies)")
    args.multiframe_kind = args.multiframe or ("quick" if quick else "full")
    args.multiframe = QUICK_MULTIFRAME if args.multiframe_kind == "quick" else FULL_MULTIFRAME
    return args


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class Run(RunResult):
    """A :class:`RunResult` with the CPU of both servers (``server_cpu_s`` is their sum) and latencies
    per query kind; ``complete`` is False when a time bound cut the run short."""

    pacsbridge_cpu_s: float = 0.0
    orthanc_cpu_s: float = 0.0
    by_kind: dict[str, list[float]] = field(default_factory=dict)
    wrong: dict[str, int] = field(default_factory=dict)  # answers naming other studies than expected, by kind
    complete: bool = True

    def add(self, other: RunResult) -> None:
        super().add(other)
        if isinstance(other, Run):
            self.pacsbridge_cpu_s += other.pacsbridge_cpu_s
            self.orthanc_cpu_s += other.orthanc_cpu_s
            self.complete = self.complete and other.complete
            for kind, values in other.by_kind.items():
                self.by_kind.setdefault(kind, []).extend(values)
            for kind, n in other.wrong.items():
                self.wrong[kind] = self.wrong.get(kind, 0) + n

    def kind_p50_ms(self, kind: str) -> float | None:
        values = self.by_kind.get(kind)
        return 1000 * statistics.median(values) if values else None

    def summary(self) -> dict[str, object]:
        return {**super().summary(), "pacsbridge_cpu_s": round(self.pacsbridge_cpu_s, 2),
                "orthanc_cpu_s": round(self.orthanc_cpu_s, 2), "complete": self.complete, "wrong_answers": self.wrong,
                "p50_ms_by_kind": {k: round(v, 2) for k in self.by_kind if (v := self.kind_p50_ms(k)) is not None}}


@dataclass(frozen=True)
class Servers:
    """The running pair: Orthanc, and pacsbridge with its two upstreams and its own SCP."""

    orthanc: OrthancServer
    pacsbridge: Target
    dimse_port: int

    def roots(self) -> dict[str, str]:
        """The three DICOMweb roots that serve the same data, by path name."""
        base = self.pacsbridge.dicomweb.rsplit("/dicomweb", 1)[0]
        return {ORTHANC: self.orthanc.dicomweb, VIA_DIMSE: f"{base}/upstreams/dimse/dicomweb",
                VIA_WEB: f"{base}/upstreams/web/dicomweb"}


@contextlib.contextmanager
def measured(run: Run, servers: Servers) -> Iterator[None]:
    """Wall time and the CPU time of pacsbridge, Orthanc and this client spent inside the block."""
    pb0, oc0, me0 = cpu_seconds(servers.pacsbridge.pid), cpu_seconds(servers.orthanc.pid), _own_cpu()
    started = time.perf_counter()
    try:
        yield
    finally:
        run.elapsed_s = time.perf_counter() - started
        run.pacsbridge_cpu_s = cpu_seconds(servers.pacsbridge.pid) - pb0
        run.orthanc_cpu_s = cpu_seconds(servers.orthanc.pid) - oc0
        run.server_cpu_s = run.pacsbridge_cpu_s + run.orthanc_cpu_s
        run.client_cpu_s = _own_cpu() - me0


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system  # children: storescu once reaped


def alternate(names: Sequence[str], work: tuple[T, T], job: Callable[[str, T], Run], phase: str) -> dict[str, Run]:
    """``job`` for every name on each half of the work, A B C then C B A; runs of one name are summed."""
    results: dict[str, Run] = {}
    for round_index, ordered in enumerate((list(names), list(reversed(names)))):
        for name in ordered:
            run = job(name, work[round_index])
            log(f"{phase:>10} {name:>11} round {round_index + 1}: {brief(run)}")
            if name in results:
                results[name].add(run)
            else:
                results[name] = run
    for name, run in results.items():
        log(f"{phase:>10} {name:>11}   total: {brief(run)}")
    return results


def brief(r: Run) -> str:
    return (f"{r.requests} in {r.elapsed_s:.1f} s, {r.mb_per_s:.1f} MB/s, p50 {r.percentile_ms(50):.1f} ms, "
            f"p95 {r.percentile_ms(95):.1f} ms, CPU pacsbridge {r.pacsbridge_cpu_s:.1f} s, "
            f"Orthanc {r.orthanc_cpu_s:.1f} s, client {r.client_cpu_s:.1f} s"
            + ("" if r.complete else " (cut short by the time bound)")
            + (f", WRONG answers {r.wrong}" if r.wrong else ""))


# --- the client ---------------------------------------------------------------------------------


class PartCounter:
    """Counts the parts of a multipart body as it streams by, without keeping it: delimiters
    (``--boundary``) are counted within each chunk and across each chunk edge."""

    def __init__(self, content_type: str) -> None:
        media, params = parse_content_type(content_type)
        if media != "multipart/related" or "boundary" not in params:
            raise ReadFailure(f"not a multipart answer: {content_type}")
        self.token = b"--" + params["boundary"].encode()
        self.delimiters = 0
        self.bytes = 0
        self.carry = b""  # the last len(token) - 1 bytes: a delimiter across the next edge starts here
        self.end = b""  # the last bytes, where the closing delimiter must be

    def feed(self, buffer: bytearray, length: int) -> None:
        """Count ``buffer[:length]``, the next bytes of the body (read into a reused buffer: no copy)."""
        edge, keep = len(self.token) - 1, len(self.token) + 8
        self.bytes += length
        head = bytes(buffer[:min(edge, length)])
        self.delimiters += (self.carry + head).count(self.token) + buffer.count(self.token, 0, length)
        self.carry = bytes(buffer[length - edge:length]) if length >= edge else (self.carry + head)[-edge:]
        self.end = (bytes(buffer[length - keep:length]) if length >= keep
                    else (self.end + bytes(buffer[:length]))[-keep:])

    @property
    def parts(self) -> int:
        """Parts between the first delimiter and the closing one (-1: no closing delimiter)."""
        closed = self.end.rstrip(b"\r\n").endswith(self.token + b"--")
        return self.delimiters - 1 if closed else -1


class Client:
    """One keep-alive HTTP/1.1 connection to a DICOMweb root, with ``http.client``: it costs far less
    CPU per request and per byte than httpx, and the client shares the two cores with both servers.
    A server that closes the connection after an answer (Orthanc after a whole study) gets a new one
    for the next request; a kept connection found closed when reused is opened again once."""

    def __init__(self, root: str) -> None:
        parts = urlsplit(root)
        self.prefix = parts.path
        self.connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=300)
        self.buffer = bytearray(READ_CHUNK)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.connection.close()

    def get(self, path: str, accept: str) -> tuple[int, bytes]:
        """Status and whole body."""
        response = self._send(path, accept)
        return response.status, response.read()

    def retrieve(self, path: str, accept: str) -> tuple[int, PartCounter | None, bytes]:
        """Status and the multipart body counted as it streams by (an error body is kept instead)."""
        response = self._send(path, accept)
        if response.status != 200:
            return response.status, None, response.read()[:300]
        counter = PartCounter(response.getheader("content-type", ""))
        view = memoryview(self.buffer)
        while length := response.readinto(view):
            counter.feed(self.buffer, length)
        return 200, counter, b""

    def _send(self, path: str, accept: str) -> http.client.HTTPResponse:
        headers = {**COMMON_HEADERS, "Accept": accept}
        reused = self.connection.sock is not None
        try:
            self.connection.request("GET", self.prefix + path, headers=headers)
            return self.connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            self.connection.close()
            self.connection.request("GET", self.prefix + path, headers=headers)
            return self.connection.getresponse()


# --- 1. QIDO-RS ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Search:
    kind: str
    path: str
    expected: frozenset[str]  # the StudyInstanceUIDs that match, from the manifest


def one_per_study(items: Sequence[Item]) -> list[Item]:
    seen: dict[str, Item] = {}
    for item in items:
        seen.setdefault(item.study_uid, item)
    return list(seen.values())


def searches(items: Sequence[Item], count: int, seed: int = 31) -> list[Search]:
    """``count`` study searches, the four kinds interleaved, values drawn from the data set."""
    rnd = random.Random(seed)
    studies = one_per_study(items)
    # Orthanc 1.10 matches no PN wildcard holding a non-ASCII letter: plain ASCII family names only.
    ascii_named = [s for s in studies if (f := s.patient_name.split("^")[0]).isascii() and f.isalpha()] or studies
    modalities: dict[str, set[str]] = {s.study_uid: set() for s in studies}
    for item in items:
        modalities[item.study_uid].add(item.modality)
    out = []
    for i in range(count):
        kind = QIDO_KINDS[i % len(QIDO_KINDS)]
        if kind == "patient_id":
            pid = rnd.choice(studies).patient_id
            out.append(Search(kind, f"/studies?PatientID={pid}",
                              frozenset(s.study_uid for s in studies if s.patient_id == pid)))
        elif kind == "patient_name":
            prefix = rnd.choice(ascii_named).patient_name[:2]
            out.append(Search(kind, f"/studies?PatientName={prefix}*",
                              frozenset(s.study_uid for s in studies if s.patient_name.startswith(prefix))))
        elif kind == "study_date":
            month = rnd.randint(1, 11)
            low, high = f"2025{month:02d}01", f"2025{month + 1:02d}28"
            out.append(Search(kind, f"/studies?StudyDate={low}-{high}",
                              frozenset(s.study_uid for s in studies if low <= s.study_date <= high)))
        else:
            modality = rnd.choice(["CT", "MR"])
            out.append(Search(kind, f"/studies?ModalitiesInStudy={modality}",
                              frozenset(uid for uid, found in modalities.items() if modality in found)))
    return out


def check_search(name: str, search: Search, status: int, body: bytes) -> str | None:
    """What is wrong with the answer (None: it names exactly the studies expected); an error status
    raises :class:`ReadFailure`."""
    if status == 204 or (status == 200 and not body.strip()):
        found: set[str] = set()
    elif status == 200:
        found = {study["0020000D"]["Value"][0] for study in json.loads(body)}
    else:
        raise ReadFailure(f"QIDO {name} {search.path}: HTTP {status}: {body[:300]!r}")
    if found == search.expected:
        return None
    return (f"QIDO {name} {search.path}: {len(found)} studies, expected {len(search.expected)} "
            f"({len(found - search.expected)} unexpected, {len(search.expected - found)} missing)")


def note_wrong(run: Run, search: Search, problem: str | None, strict: bool) -> None:
    """Count a wrong answer against its kind (``strict``: raise :class:`ReadFailure` instead)."""
    if problem is None:
        return
    if strict:
        raise ReadFailure(problem)
    if search.kind not in run.wrong:
        log(f"WRONG ANSWER (counted, not fatal without --strict): {problem}")
    run.wrong[search.kind] = run.wrong.get(search.kind, 0) + 1


def timed_searches(servers: Servers, name: str, work: Sequence[Search], *, warmup: int,
                   max_seconds: float, strict: bool) -> Run:
    """The searches one by one on one keep-alive client; checked after the timed loop (warm-up
    answers are checked too, but not counted)."""
    root = servers.roots()[name]
    run = Run()
    answers: list[tuple[Search, int, bytes]] = []
    with Client(root) as client:
        for search in work[:warmup]:
            status, body = client.get(search.path, ACCEPT_JSON)
            note_wrong(Run(), search, check_search(name, search, status, body), strict)
        deadline = time.monotonic() + max_seconds
        with measured(run, servers):
            for search in work:
                if time.monotonic() > deadline:
                    run.complete = False
                    break
                t0 = time.perf_counter()
                status, body = client.get(search.path, ACCEPT_JSON)
                latency = time.perf_counter() - t0
                run.latencies_s.append(latency)
                run.by_kind.setdefault(search.kind, []).append(latency)
                run.requests += 1
                run.bytes += len(body)
                run.statuses[status] += 1
                answers.append((search, status, body))
    for search, status, body in answers:
        note_wrong(run, search, check_search(name, search, status, body), strict)
    return run


# --- 2. WADO-RS whole studies -------------------------------------------------------------------


def timed_retrieves(servers: Servers, name: str, paths: Sequence[str], in_study: Mapping[str, tuple[int, int]],
                    max_seconds: float) -> Run:
    """Each study once, one after the other; any wrong answer raises :class:`ReadFailure`."""
    root = servers.roots()[name]
    run = Run()
    deadline = time.monotonic() + max_seconds
    with Client(root) as client, measured(run, servers):
        for path in paths:
            if time.monotonic() > deadline:
                run.complete = False
                break
            t0 = time.perf_counter()
            status, counter, error = client.retrieve(path, ACCEPT_STUDY)
            run.latencies_s.append(time.perf_counter() - t0)
            run.requests += 1
            run.statuses[status] += 1
            instances, size = in_study[path.rsplit("/", 1)[1]]
            if counter is None:
                raise ReadFailure(f"WADO {name} {path}: HTTP {status}: {error!r}")
            if counter.parts != instances or counter.bytes < size:
                raise ReadFailure(f"WADO {name} {path}: {counter.parts} parts, {counter.bytes} bytes; "
                                  f"the study has {instances} instances, {size} bytes")
            run.bytes += counter.bytes
    return run


def study_sizes(items: Sequence[Item]) -> dict[str, tuple[int, int]]:
    """Instances and file bytes of each study."""
    out: dict[str, tuple[int, int]] = {}
    for item in items:
        n, size = out.get(item.study_uid, (0, 0))
        out[item.study_uid] = (n + 1, size + item.size)
    return out


# --- 3. C-STORE ingest --------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestSet:
    """Half of the ingest files: one folder of whole studies."""

    folder: Path
    studies: tuple[str, ...]
    files: int
    bytes: int


def ingest_sets(parent: Path, files: int, size: int, seed: int = 91) -> tuple[IngestSet, IngestSet]:
    """Two folders of fresh CT studies (``PER_STUDY`` files each), ``files`` in all."""
    specs = list(study_specs(files // PER_STUDY, seed=seed, modality="CT", series=2,
                             instances_per_series=PER_STUDY // 2, rows=size, columns=size))
    middle = len(specs) // 2
    out = []
    for label, chunk in (("a", specs[:middle]), ("b", specs[middle:])):
        folder = parent / label
        written = [p for spec in chunk for p in write_study(spec, folder / spec.study_uid[-12:])]
        out.append(IngestSet(folder, tuple(s.study_uid for s in chunk), len(written),
                             sum(p.stat().st_size for p in written)))
    return out[0], out[1]


def storescu(servers: Servers, name: str, files: IngestSet, max_seconds: float) -> Run:
    """One ``storescu +sd`` association into ``name``'s SCP, then each study's count checked."""
    if name == ORTHANC:
        called, port, root = servers.orthanc.aet, servers.orthanc.dicom_port, servers.orthanc.dicomweb
    else:
        called, port, root = PB_AET, servers.dimse_port, servers.pacsbridge.dicomweb
    command = [str(STORESCU), "+sd", "+r", "-aet", STORESCU_AET, "-aec", called, "-to", "30", "-ta", "30",
               "-td", "120", "127.0.0.1", str(port), str(files.folder)]
    run = Run(requests=files.files, bytes=files.bytes)
    with measured(run, servers):
        done = subprocess.run(command, capture_output=True, text=True, timeout=max_seconds,
                              env={**os.environ, "TCP_NODELAY": "1"})
    run.latencies_s = [run.elapsed_s]
    if done.returncode != 0:
        raise ReadFailure(f"storescu into {name} exited with {done.returncode}: {done.stderr[-1000:]}")
    stored = study_counts(root, files.studies)
    if stored != [PER_STUDY] * len(files.studies):
        raise ReadFailure(f"storescu into {name}: the studies hold {stored} instances, {PER_STUDY} each expected")
    return run


def study_counts(root: str, study_uids: Sequence[str]) -> list[int]:
    """NumberOfStudyRelatedInstances of each study, by QIDO-RS (0: not found)."""
    counts = []
    with httpx.Client(headers={**COMMON_HEADERS, "Accept": ACCEPT_JSON}, timeout=TIMEOUT) as client:
        for uid in study_uids:
            r = client.get(f"{root}/studies", params={"StudyInstanceUID": uid, "includefield": "00201208"})
            found = r.json() if r.status_code == 200 and r.content.strip() else []
            counts.append(int(found[0]["00201208"]["Value"][0]) if found else 0)
    return counts


# --- servers ------------------------------------------------------------------------------------


def pacsbridge_config(pacs: OrthancServer, dimse_port: int) -> dict[str, Any]:
    """pacsbridge with its embedded archive, its SCP open to storescu, and Orthanc as two upstreams."""
    cache = {"fresh_seconds": 86400}
    return {
        "archive": "local",
        "dimse": {"port": dimse_port, "peers": [
            {"ae_title": STORESCU_AET, "host": "127.0.0.1", "scopes": ["dicomweb.write"]}]},
        "upstreams": [
            {"name": "dimse", "kind": "dimse", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port,
             "retrieve": "c-get", "cache": cache},
            {"name": "web", "kind": "dicomweb", "url": pacs.dicomweb, "cache": cache},
        ],
    }


@contextlib.contextmanager
def servers_with_data(args: argparse.Namespace, items: Sequence[Item]) -> Iterator[Servers]:
    """Orthanc holding ``items`` (STOW-RS, untimed) and pacsbridge in front of it; both stopped on exit."""
    dimse_port = free_port()
    modalities = {"pacsbridge": (PB_AET, "127.0.0.1", dimse_port), "storescu": (STORESCU_AET, "127.0.0.1", 1)}
    with orthanc(aet="ORTHANC", modalities=modalities, parent=args.workdir) as pacs:
        loaded = asyncio.run(stow(pacs.dicomweb, batches(items, 16, 32 * MB), pid=pacs.pid, uploaders=4,
                                  max_seconds=3600))
        count = httpx.get(pacs.url + "/statistics", timeout=60).json()["CountInstances"]
        if loaded.failed or count != len(items):
            raise ReadFailure(f"loading Orthanc: {count} instances stored of {len(items)}: {loaded.failures[:3]}")
        log(f"Orthanc pid {pacs.pid} holds {count} instances ({loaded.instances_per_s:.0f}/s by STOW-RS)")
        env = {"PACSBRIDGE_AUTH__OPEN_ROUTES": '["/dicomweb", "/upstreams"]'}
        with pacsbridge(args.workdir, env, pacsbridge_config(pacs, dimse_port)) as pb:
            servers = Servers(pacs, pb, dimse_port)
            log("paths: " + ", ".join(f"{k} {v}" for k, v in servers.roots().items())
                + f"; pacsbridge pid {pb.pid}, SCP port {dimse_port}")
            yield servers


# --- report -------------------------------------------------------------------------------------


def table(results: Mapping[str, Mapping[str, Run]]) -> list[dict[str, Any]]:
    """Rows of the comparison; ``ratio`` is pacsbridge / Orthanc."""

    def row(metric: str, phase: str, ours: str, theirs: str, get: Callable[[Run], float | None],
            target: str, ok: Callable[[float], bool] | None) -> dict[str, Any]:
        runs = results.get(phase, {})
        wrong = sum(runs[ours].wrong.values()) if ours in runs else 0
        metric += f" ({wrong} answers WRONG)" if wrong else ""
        pb = get(runs[ours]) if ours in runs else None
        oc = get(runs[theirs]) if theirs in runs else None
        ratio = pb / oc if pb is not None and oc else None
        return {"metric": metric, "pacsbridge": pb, "Orthanc": oc, "ratio": ratio, "target": target,
                "met": None if ok is None or ratio is None else ok(ratio)}

    def p50(r: Run) -> float:
        return r.percentile_ms(50)

    def p95(r: Run) -> float:
        return r.percentile_ms(95)

    def mbps(r: Run) -> float:
        return r.mb_per_s

    def within(factor: float) -> Callable[[float], bool]:
        return lambda ratio: ratio <= factor

    def at_least(factor: float) -> Callable[[float], bool]:
        return lambda ratio: ratio >= factor

    return [
        row("QIDO p50 ms, via C-FIND", "qido", VIA_DIMSE, ORTHANC, p50, "<= 1.5x", within(1.5)),
        row("QIDO p95 ms, via C-FIND", "qido", VIA_DIMSE, ORTHANC, p95, "<= 1.5x", within(1.5)),
        row("QIDO p50 ms, via QIDO-RS", "qido", VIA_WEB, ORTHANC, p50, "-", None),
        row("QIDO p95 ms, via QIDO-RS", "qido", VIA_WEB, ORTHANC, p95, "-", None),
        row("WADO-RS study MB/s, cold, via C-GET", "wado_cold", VIA_DIMSE, ORTHANC, mbps, "-", None),
        row("WADO-RS study MB/s, cold, via WADO-RS", "wado_cold", VIA_WEB, ORTHANC, mbps, "-", None),
        row("WADO-RS study MB/s, warm, via C-GET", "wado_warm", VIA_DIMSE, ORTHANC, mbps, ">= 1x", at_least(1.0)),
        row("WADO-RS study MB/s, warm, via WADO-RS", "wado_warm", VIA_WEB, ORTHANC, mbps, ">= 1x", at_least(1.0)),
        row("C-STORE ingest instances/s (storescu)", "ingest", "pacsbridge", ORTHANC, lambda r: r.rate, ">= 1x",
            at_least(1.0)),
    ]


def kind_table(qido: Mapping[str, Run]) -> str:
    """QIDO p50 per kind of search and path."""
    names = [n for n in (ORTHANC, VIA_DIMSE, VIA_WEB) if n in qido]
    lines = ["p50 ms by kind | " + " | ".join(names)]
    for kind in QIDO_KINDS:
        cells = [_kind_cell(qido[n], kind) for n in names]
        lines.append(f"{kind:>14} | " + " | ".join(cells))
    return "\n".join(lines)


def _kind_cell(run: Run, kind: str) -> str:
    p50 = run.kind_p50_ms(kind)
    wrong = run.wrong.get(kind, 0)
    return ("-" if p50 is None else f"{p50:.1f}") + (f" ({wrong} of {len(run.by_kind[kind])} WRONG)" if wrong else "")


# --- main ---------------------------------------------------------------------------------------


def run_phases(args: argparse.Namespace, items: Sequence[Item], servers: Servers,
               ingest: tuple[IngestSet, IngestSet]) -> dict[str, dict[str, Run]]:
    paths = (ORTHANC, VIA_DIMSE, VIA_WEB)
    results: dict[str, dict[str, Run]] = {}
    qido_rounds = halves(searches(items, args.qido_requests))
    results["qido"] = alternate(paths, qido_rounds, lambda name, work: timed_searches(
        servers, name, work, warmup=args.warmup, max_seconds=args.qido_seconds / 2, strict=args.strict), "qido")
    first, second = halves(study_paths(items))
    in_study = study_sizes(items)
    for phase, rounds in (("wado_cold", (first, second)),
                          ("wado_warm", (first * args.warm_passes, second * args.warm_passes))):
        results[phase] = alternate(paths, rounds, lambda name, work: timed_retrieves(
            servers, name, work, in_study, args.wado_seconds / 2), phase)
    results["ingest"] = alternate(("pacsbridge", ORTHANC), ingest, lambda name, files: storescu(
        servers, name, files, args.ingest_seconds), "ingest")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    if not STORESCU.exists():
        raise SystemExit(f"{STORESCU} not found (Debian package dcmtk)")
    log(f"data set: {args.instances} instances in {args.studies} studies + {len(args.multiframe)} multi-frame")
    items = load_or_generate(args.cache, args.instances, args.studies, args.multiframe)
    total_mb = sum(i.size for i in items) / MB
    log(f"data set ready: {len(items)} files, {total_mb:.0f} MB")
    with tempfile.TemporaryDirectory(prefix="pacsbridge-ingest-", dir=args.workdir) as folder:
        ingest = ingest_sets(Path(folder), args.ingest_files, args.ingest_size)
        log(f"ingest set: {args.ingest_files} files, {sum(s.bytes for s in ingest) / MB:.0f} MB")
        with servers_with_data(args, items) as servers:
            results = run_phases(args, items, servers, ingest)
    rows = table(results)
    report: dict[str, Any] = {
        "machine": machine(), "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                                       if k != "multiframe"},
        "dataset": {"files": len(items), "mb": round(total_mb, 1), "studies": len(one_per_study(items))},
        "results": {phase: {name: r.summary() for name, r in by.items()} for phase, by in results.items()},
        "table": rows, "elapsed_s": round(time.monotonic() - started, 1)}
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    print()
    print(render(rows))
    print()
    print(kind_table(results["qido"]))
    print("client CPU as a share of one core: " + "; ".join(
        f"{phase} " + ", ".join(f"{name} {r.client_cpu_share:.0%}" for name, r in by.items())
        for phase, by in results.items()))
    print(f"(total {report['elapsed_s']:.0f} s; CPU seconds of both servers and the client are in the JSON output)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
