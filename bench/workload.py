"""The Python client: asyncio + httpx, the same for every server. It sends the STOW-RS phases; the
read phases go through ``bench/wrk_client.py`` unless ``--read-client httpx`` asks for this one.

Rules:
1. Every loop is bounded twice, by a request count and by a deadline; after the deadline no new
   request starts, requests in flight finish and are counted.
2. Warm-up is the same for every server: the first ``warmup`` requests of the same list, untimed.
3. Bodies are counted as they arrive and then dropped, never parsed during a timed run (parsing would
   load the client, which shares the machine with the server). Correctness is checked beforehand.
4. ``Accept-Encoding: identity`` on every request: Orthanc would otherwise gzip JSON answers, which
   costs it CPU and buys nothing on loopback; pacsbridge does not compress.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import httpx

from .dataset import MB, Item
from .servers import cpu_seconds

COMMON_HEADERS = {"Accept-Encoding": "identity", "User-Agent": "pacsbridge-bench"}
READ_CHUNK = 1 << 20
TIMEOUT = httpx.Timeout(300.0, connect=10.0)


@dataclass
class RunResult:
    """What one timed run measured."""

    requests: int = 0
    errors: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def client_cpu_share(self) -> float:
        """The client's CPU time over the run's elapsed time: 1.0 is one core kept busy."""
        return round(self.client_cpu_s / self.elapsed_s, 3) if self.elapsed_s else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.elapsed_s if self.elapsed_s else 0.0

    def percentile_ms(self, q: float) -> float:
        if len(self.latencies_s) < 2:
            return 1000 * (self.latencies_s[0] if self.latencies_s else 0.0)
        return 1000 * statistics.quantiles(self.latencies_s, n=100, method="inclusive")[int(q) - 1]

    def add(self, other: RunResult) -> None:
        """Fold another run of the same phase into this one (rates then cover both)."""
        self.requests += other.requests
        self.errors += other.errors
        self.bytes += other.bytes
        self.elapsed_s += other.elapsed_s
        self.latencies_s += other.latencies_s
        self.statuses.update(other.statuses)
        self.server_cpu_s += other.server_cpu_s
        self.client_cpu_s += other.client_cpu_s

    def summary(self) -> dict[str, object]:
        return {
            "requests": self.requests, "errors": self.errors, "bytes": self.bytes,
            "elapsed_s": round(self.elapsed_s, 3), "per_s": round(self.rate, 2), "mb_per_s": round(self.mb_per_s, 2),
            "p50_ms": round(self.percentile_ms(50), 2), "p95_ms": round(self.percentile_ms(95), 2),
            "statuses": dict(self.statuses), "server_cpu_s": round(self.server_cpu_s, 2),
            "client_cpu_s": round(self.client_cpu_s, 2), "client_cpu_share": self.client_cpu_share,
        }


def _client(concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(headers=COMMON_HEADERS, limits=limits, timeout=TIMEOUT)


def _client_cpu() -> float:
    t = os.times()
    return t.user + t.system


async def _get(client: httpx.AsyncClient, url: str, accept: str) -> tuple[int, int]:
    received = 0
    async with client.stream("GET", url, headers={"Accept": accept}) as response:
        async for chunk in response.aiter_raw(READ_CHUNK):
            received += len(chunk)
    return response.status_code, received


async def timed_gets(base: str, paths: Sequence[str], accept: str, *, pid: int, concurrency: int,
                     max_requests: int, max_seconds: float, warmup: int, ok: frozenset[int] = frozenset({200})
                     ) -> RunResult:
    """GET ``paths`` in order (cycling) with ``concurrency`` workers, bounded by count and time."""
    result = RunResult()
    async with _client(concurrency) as client:
        for path in paths[:warmup]:
            await _get(client, base + path, accept)
        next_index = 0
        deadline = time.monotonic() + max_seconds
        cpu0, client0 = cpu_seconds(pid), _client_cpu()
        started = time.perf_counter()

        async def worker() -> None:
            nonlocal next_index
            while next_index < max_requests and time.monotonic() < deadline:
                path = paths[next_index % len(paths)]
                next_index += 1
                t0 = time.perf_counter()
                try:
                    status, received = await _get(client, base + path, accept)
                except httpx.HTTPError:
                    status, received = 0, 0
                result.latencies_s.append(time.perf_counter() - t0)
                result.requests += 1
                result.bytes += received
                result.statuses[status] += 1
                if status not in ok:
                    result.errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.elapsed_s = time.perf_counter() - started
        result.server_cpu_s = cpu_seconds(pid) - cpu0
        result.client_cpu_s = _client_cpu() - client0
    return result


# --- STOW-RS ------------------------------------------------------------------------------------


def batches(items: Sequence[Item], max_parts: int, max_bytes: int) -> list[list[Item]]:
    """Consecutive items grouped into STOW requests of at most ``max_parts`` parts / ``max_bytes``."""
    out: list[list[Item]] = []
    current: list[Item] = []
    size = 0
    for item in items:
        if current and (len(current) >= max_parts or size + item.size > max_bytes):
            out.append(current)
            current, size = [], 0
        current.append(item)
        size += item.size
    if current:
        out.append(current)
    return out


class _Body:
    """A multipart/related body streamed from files, with its length known in advance."""

    def __init__(self, items: Sequence[Item]) -> None:
        self.items = items
        self.boundary = secrets.token_hex(16)
        self.head = f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        self.tail = f"--{self.boundary}--\r\n".encode()
        self.length = sum(len(self.head) + i.size + 2 for i in items) + len(self.tail)

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    async def chunks(self) -> AsyncIterator[bytes]:
        for item in self.items:
            yield self.head
            with open(item.path, "rb") as fp:
                while chunk := fp.read(READ_CHUNK):
                    yield chunk
            yield b"\r\n"
        yield self.tail


@dataclass
class StowResult(RunResult):
    instances: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.elapsed_s if self.elapsed_s else 0.0

    def add(self, other: RunResult) -> None:
        super().add(other)
        if isinstance(other, StowResult):
            self.instances += other.instances
            self.failed += other.failed
            self.failures += other.failures

    def summary(self) -> dict[str, object]:
        return {**super().summary(), "instances": self.instances, "failed": self.failed,
                "instances_per_s": round(self.instances_per_s, 2), "failures": self.failures[:10]}


async def stow(base: str, requests: Sequence[Sequence[Item]], *, pid: int, uploaders: int,
               max_seconds: float) -> StowResult:
    """POST every batch to ``{base}/studies`` with ``uploaders`` concurrent uploaders."""
    result = StowResult()
    async with _client(uploaders) as client:
        next_index = 0
        deadline = time.monotonic() + max_seconds
        cpu0, client0 = cpu_seconds(pid), _client_cpu()
        started = time.perf_counter()

        async def uploader() -> None:
            nonlocal next_index
            while next_index < len(requests) and time.monotonic() < deadline:
                batch = requests[next_index]
                next_index += 1
                body = _Body(batch)
                headers = {"Content-Type": body.content_type, "Content-Length": str(body.length),
                           "Accept": "application/dicom+json"}
                t0 = time.perf_counter()
                try:
                    response = await client.post(base + "/studies", content=body.chunks(), headers=headers)
                    status = response.status_code
                    stored = _referenced(response) if status in (200, 202) else 0
                except httpx.HTTPError as exc:
                    status, stored = 0, 0
                    result.failures.append(f"{type(exc).__name__}: {exc}")
                result.latencies_s.append(time.perf_counter() - t0)
                result.requests += 1
                result.statuses[status] += 1
                result.bytes += sum(i.size for i in batch)
                result.instances += stored
                result.failed += len(batch) - stored
                if status != 200:
                    result.errors += 1
                    if status:
                        result.failures.append(f"HTTP {status}: {response.text[:200]}")

        await asyncio.gather(*(uploader() for _ in range(uploaders)))
        result.elapsed_s = time.perf_counter() - started
        result.server_cpu_s = cpu_seconds(pid) - cpu0
        result.client_cpu_s = _client_cpu() - client0
    return result


def _referenced(response: httpx.Response) -> int:
    try:
        return len(json.loads(response.content).get("00081199", {}).get("Value", []))
    except (ValueError, AttributeError):
        return 0
