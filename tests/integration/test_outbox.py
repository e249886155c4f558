"""The outbox worker against a real HTTP subscriber on loopback (uvicorn in a thread) that records every
request, can answer a scripted status first, and runs a client-credentials token endpoint: webhooks
signed and delivered once, retries with the same key and in order, refusals that fail one job only, FHIR
push with a token fetched and refetched after 401, redelivery after a killed worker's lease, and a clean
stop."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
import pytest
import uvicorn
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pacsbridge.backends.http_client import Auth, ClientCredentials
from pacsbridge.backends.outbox import JobQueue, OutboxWorker, Policy, Subscriber, enqueue
from pacsbridge.backends.sql.engine import InThread, make_engine
from pacsbridge.backends.sql.migrations import migrate
from pacsbridge.services.ports import Notification

from ..support.servers import free_port

pytestmark = pytest.mark.anyio

CLIENT_ID, CLIENT_SECRET, SECRET = "pacsbridge-push", "push-secret", "webhook-signing-key"
FAST = Policy(lease_s=1, base_s=0.05, max_s=0.5, poll_s=0.05)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Peer:
    """The subscriber's state, shared with the server thread."""

    url: str
    requests: list[Seen] = field(default_factory=list)
    script: dict[str, list[tuple[int, dict[str, str], float]]] = field(default_factory=dict)
    token_requests: list[tuple[str, str, str]] = field(default_factory=list)
    valid_tokens: set[str] = field(default_factory=set)

    def answer_first(self, path: str, *answers: int | tuple[int, dict[str, str], float]) -> None:
        self.script[path] = [a if isinstance(a, tuple) else (a, {}, 0.0) for a in answers]

    def at(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]


def peer_app(peer: Peer) -> Starlette:
    async def token(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        basic = request.headers.get("authorization", "")
        if basic.startswith("Basic "):
            client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
        peer.token_requests.append((client_id, secret, form.get("grant_type", "")))
        if (client_id, secret) != (CLIENT_ID, CLIENT_SECRET):
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        issued = f"tok-{len(peer.token_requests)}"
        peer.valid_tokens.add(issued)
        return JSONResponse({"access_token": issued, "token_type": "Bearer", "expires_in": 3600})

    async def anything(request: Request) -> Response:
        body = await request.body()
        peer.requests.append(Seen(request.method, request.url.path, dict(request.headers), body, time.monotonic()))
        if request.url.path.startswith("/fhir/"):
            bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
            if bearer not in peer.valid_tokens:
                return Response(status_code=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        scripted = peer.script.get(request.url.path)
        if scripted:
            status, headers, delay = scripted.pop(0)
            await asyncio.sleep(delay)
            return Response(b'{"patient":"must not be logged"}', status_code=status, headers=headers)
        return Response(status_code=201 if request.method == "PUT" else 204)

    return Starlette(routes=[Route("/token", token, methods=["POST"]),
                             Route("/{path:path}", anything, methods=["POST", "PUT"])])


@pytest.fixture(scope="module")
def server() -> Iterator[Peer]:
    port = free_port()
    peer = Peer(f"http://127.0.0.1:{port}")
    config = uvicorn.Config(peer_app(peer), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the subscriber did not start"
        time.sleep(0.02)
    yield peer
    running.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def peer(server: Peer) -> Peer:
    server.requests.clear()
    server.script.clear()
    server.token_requests.clear()
    server.valid_tokens.clear()
    return server


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'records.sqlite'}")
    migrate(engine)
    yield engine
    engine.dispose()


async def add(engine: Engine, subscribers: list[Subscriber], *notes: Notification) -> None:
    await InThread(engine).write(lambda conn: enqueue(conn, notes, subscribers))


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 8) -> None:
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(worker: OutboxWorker) -> AsyncIterator[OutboxWorker]:
    """The worker running in a task group; cancelled and closed on exit."""
    async with anyio.create_task_group() as group:
        group.start_soon(worker.run)
        try:
            yield worker
        finally:
            group.cancel_scope.cancel()
    await worker.close()


def status(n: int) -> Notification:
    return Notification("servicerequest.status", {
        "n": n, "resource": {"resourceType": "ServiceRequest", "id": f"sr-{n}", "status": "active"}})


def webhook(peer: Peer, path: str = "/hook", **over: Any) -> Subscriber:
    return Subscriber("emr", "webhook", peer.url + path, **over)


async def test_a_webhook_is_delivered_once_and_signed(peer: Peer, engine: Engine) -> None:
    queue, emr = JobQueue(engine), webhook(peer, secret=SECRET)
    await add(engine, [emr], status(1))
    async with running(OutboxWorker(queue, [emr], policy=FAST)) as worker:
        worker.wake()
        await until(lambda: done(queue))
        await anyio.sleep(0.3)  # time for a second delivery, which must not come
    [job] = await queue.jobs()
    [seen] = peer.at("/hook")
    assert seen.method == "POST" and seen.headers["content-type"] == "application/json"
    assert seen.headers["idempotency-key"] == job.key and seen.headers["x-pacsbridge-topic"] == job.topic
    expected = "sha256=" + hmac.new(SECRET.encode(), seen.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(seen.headers["x-pacsbridge-signature"], expected)
    body = seen.json()
    assert (body["id"], body["topic"], body["occurredAt"]) == (job.key, "servicerequest.status", job.created_at)
    assert body["resource"]["id"] == "sr-1" and body["n"] == 1
    assert job.state == "done" and job.attempts == 0


async def test_unavailable_is_retried_with_the_same_key_and_in_order(peer: Peer, engine: Engine) -> None:
    queue, emr = JobQueue(engine), webhook(peer)
    peer.answer_first("/hook", (503, {"Retry-After": "1"}, 0.0), 429)
    await add(engine, [emr], status(1), status(2), status(3))
    async with running(OutboxWorker(queue, [emr], policy=FAST)):
        await until(lambda: done(queue))
    seen = peer.at("/hook")
    assert [r.json()["n"] for r in seen] == [1, 1, 1, 2, 3]
    assert len({r.headers["idempotency-key"] for r in seen[:3]}) == 1
    assert seen[1].at - seen[0].at >= 0.95  # the Retry-After was honoured
    assert "x-pacsbridge-signature" not in seen[0].headers  # no secret, no signature
    jobs = sorted(await queue.jobs(), key=lambda j: j.id)
    assert [(j.state, j.attempts) for j in jobs] == [("done", 2), ("done", 0), ("done", 0)]
    assert jobs[0].last_error == "subscriber emr answered 429"


async def test_a_refusal_fails_its_job_and_the_next_still_goes(peer: Peer, engine: Engine,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    queue, emr = JobQueue(engine), webhook(peer)
    peer.answer_first("/hook", 400)
    await add(engine, [emr], status(1), status(2))
    async with running(OutboxWorker(queue, [emr], policy=FAST)):
        await until(lambda: done(queue))
    assert [r.json()["n"] for r in peer.at("/hook")] == [1, 2]
    first, second = sorted(await queue.jobs(), key=lambda j: j.id)
    assert (first.state, first.last_error) == ("failed", "subscriber emr answered 400")
    assert second.state == "done"
    assert "400" in caplog.text and "must not be logged" not in caplog.text


async def test_fhir_push_with_client_credentials_and_a_new_token_after_401(peer: Peer, engine: Engine) -> None:
    credentials = ClientCredentials(peer.url + "/token", CLIENT_ID, CLIENT_SECRET, scope="system/*.write")
    fhir = Subscriber("chart", "fhir", peer.url + "/fhir/", auth=Auth(client_credentials=credentials))
    study = {"resourceType": "ImagingStudy", "id": "st-1", "status": "available"}
    linked = Notification("imagingstudy.linked", {"resource": study, "request": "ServiceRequest/sr-1"})
    queue = JobQueue(engine)
    async with running(OutboxWorker(queue, [fhir], policy=FAST)) as worker:
        await add(engine, [fhir], linked, Notification("mpps.status", {"n": 0}))  # not a FHIR topic
        worker.wake()
        await until(lambda: done(queue))
        assert peer.token_requests == [(CLIENT_ID, CLIENT_SECRET, "client_credentials")]
        [put] = peer.at("/fhir/ImagingStudy/st-1")
        assert put.method == "PUT" and put.headers["authorization"] == "Bearer tok-1"
        assert put.headers["content-type"] == "application/fhir+json" and put.json() == study
        peer.valid_tokens.clear()  # the server forgets its tokens: the next PUT is answered 401
        again = Notification("imagingstudy.linked", {"resource": {**study, "id": "st-2"}})
        await add(engine, [fhir], again)
        worker.wake()
        await until(lambda: done(queue))
    assert len(peer.token_requests) == 2
    refused, accepted = peer.at("/fhir/ImagingStudy/st-2")
    assert refused.headers["authorization"] == "Bearer tok-1" and accepted.headers["authorization"] == "Bearer tok-2"
    assert refused.headers["idempotency-key"] == accepted.headers["idempotency-key"]
    assert [j.state for j in await queue.jobs()] == ["done", "done"]


async def test_a_job_left_by_a_killed_worker_is_delivered_again_with_the_same_key(peer: Peer,
                                                                                  engine: Engine) -> None:
    queue, emr = JobQueue(engine), webhook(peer)
    peer.answer_first("/hook", (200, {}, 2.0))  # the first answer comes too late for the first worker
    await add(engine, [emr], status(1))
    async with running(OutboxWorker(queue, [emr], policy=FAST)):
        await until(lambda: received(peer, 1))
    [job] = await queue.jobs()
    assert job.state == "pending" and job.attempts == 0  # the killed worker settled nothing
    async with running(OutboxWorker(queue, [emr], policy=FAST)):
        await until(lambda: done(queue))
    first, second = peer.at("/hook")
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"] == job.key
    assert second.at - first.at >= 0.8  # only after the lease (1 s from the claim) ran out
    assert (await queue.jobs())[0].state == "done"


async def test_a_subscriber_that_is_down_holds_back_nobody_and_the_worker_stops_cleanly(
        peer: Peer, engine: Engine) -> None:
    queue = JobQueue(engine)
    down = Subscriber("down", "webhook", f"http://127.0.0.1:{free_port()}/hook", timeout_s=1)
    up = webhook(peer)
    await add(engine, [down, up], status(1), status(2))
    threads = {t for t in threading.enumerate() if not t.name.startswith("AnyIO worker")}
    tasks = asyncio.all_tasks()
    worker = OutboxWorker(queue, [down, up], policy=FAST)
    async with anyio.create_task_group() as group:
        group.start_soon(worker.run)
        await until(lambda: done(queue, "up"))
        await until(lambda: retried(queue, "down"))
        group.cancel_scope.cancel()
    await worker.close()
    assert [r.json()["n"] for r in peer.at("/hook")] == [1, 2]
    [head, _] = sorted((j for j in await queue.jobs() if j.subscriber == "down"), key=lambda j: j.id)
    assert head.state == "pending" and head.attempts >= 1 and "cannot be reached" in (head.last_error or "")
    assert asyncio.all_tasks() == tasks
    assert {t for t in threading.enumerate() if not t.name.startswith("AnyIO worker")} == threads
    assert all(c.client.is_closed for c in worker.clients.values())


async def done(queue: JobQueue, subscriber: str | None = None) -> bool:
    return await queue.pending_count(subscriber) == 0


async def retried(queue: JobQueue, subscriber: str) -> bool:
    return any(j.attempts >= 2 for j in await queue.jobs() if j.subscriber == subscriber)


async def received(peer: Peer, count: int) -> bool:
    return len(peer.requests) >= count
