"""The outbox job queue on SQLite and PostgreSQL: transactional enqueue, fan-out by topic, in-order claims
per subscriber, leases, concurrent claimers, retry, fail and requeue. Time is a fake clock, so due times
and lease expiry are tested without waiting."""

from __future__ import annotations

import math
import time

import anyio
import pytest
from sqlalchemy import Engine

from pacsbridge.backends.outbox.jobs import Job, JobQueue, Subscriber, enqueue
from pacsbridge.backends.sql.engine import InThread, make_engine
from pacsbridge.services.ports import Notification

pytestmark = pytest.mark.anyio

EMR = Subscriber("emr", "webhook", "http://127.0.0.1:9/hook")
FHIR = Subscriber("fhir", "fhir", "http://127.0.0.1:9/fhir")
RIS = Subscriber("ris", "webhook", "http://127.0.0.1:9/ris", topics=frozenset({"mpps.status"}))


class Clock:
    def __init__(self) -> None:
        self.now = float(math.floor(time.time()))

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(engine: Engine, clock: Clock) -> JobQueue:
    return JobQueue(engine, clock)


def note(topic: str, n: int) -> Notification:
    return Notification(topic, {"n": n, "resource": {"resourceType": "ImagingStudy", "id": f"s{n}"}})


async def add(engine: Engine, notes: list[Notification], subscribers: list[Subscriber]) -> int:
    return await InThread(engine).write(lambda conn: enqueue(conn, notes, subscribers))


async def take(queue: JobQueue, subscriber: str, lease_s: float = 60) -> Job:
    job = await queue.claim(subscriber, lease_s)
    assert job is not None, f"nothing claimable for {subscriber}"
    return job


async def test_enqueue_follows_the_callers_transaction(engine: Engine, queue: JobQueue) -> None:
    with engine.connect() as conn:
        transaction = conn.begin()
        assert enqueue(conn, [note("servicerequest.status", 1)], [EMR, FHIR]) == 2
        transaction.rollback()
    assert await queue.pending_count() == 0
    assert await queue.claim("emr", 60) is None
    with engine.begin() as conn:
        enqueue(conn, [note("servicerequest.status", 1)], [EMR, FHIR])
    assert await queue.pending_count() == 2


async def test_fan_out_by_topic(engine: Engine, queue: JobQueue) -> None:
    notes = [note("servicerequest.status", 1), note("imagingstudy.linked", 2), note("mpps.status", 3)]
    narrow_fhir = Subscriber("fhir-links", "fhir", "http://127.0.0.1:9/fhir", topics=frozenset({"imagingstudy.linked"}))
    assert await add(engine, notes, [EMR, FHIR, RIS, narrow_fhir]) == 3 + 2 + 1 + 1
    jobs = await queue.jobs()
    by_subscriber: dict[str, list[str]] = {}
    for job in reversed(jobs):  # oldest first
        by_subscriber.setdefault(job.subscriber, []).append(job.topic)
    assert by_subscriber == {
        "emr": ["servicerequest.status", "imagingstudy.linked", "mpps.status"],
        "fhir": ["servicerequest.status", "imagingstudy.linked"],
        "ris": ["mpps.status"],
        "fhir-links": ["imagingstudy.linked"],
    }
    assert len({j.key for j in jobs}) == len(jobs)
    assert all(j.state == "pending" and j.attempts == 0 and len(j.key) == 32 for j in jobs)
    assert jobs[-1].payload == notes[0].payload
    assert await queue.pending_count("emr") == 3


async def test_claims_follow_the_order_of_each_subscriber(engine: Engine, queue: JobQueue) -> None:
    await add(engine, [note("servicerequest.status", n) for n in range(4)], [EMR])
    seen = []
    for _ in range(4):
        job = await take(queue, "emr")
        assert await queue.claim("emr", 60) is None  # the head is leased: the next job waits behind it
        await queue.done(job)
        seen.append(job.payload["n"])
    assert seen == [0, 1, 2, 3]
    assert await queue.claim("emr", 60) is None
    assert [j.state for j in await queue.jobs()] == ["done"] * 4
    assert all(j.done_at for j in await queue.jobs())


async def test_a_head_not_yet_due_holds_back_its_subscriber_only(engine: Engine, queue: JobQueue,
                                                                  clock: Clock) -> None:
    await add(engine, [note("servicerequest.status", n) for n in range(2)], [EMR, FHIR])
    head = await take(queue, "emr")
    assert await queue.retry(head, "subscriber emr answered 503", 30)
    assert await queue.claim("emr", 60) is None  # job 1 is due, but behind the head
    other = await take(queue, "fhir")
    assert other.payload["n"] == 0
    clock.now += 29
    assert await queue.claim("emr", 60) is None
    clock.now += 1
    again = await take(queue, "emr")
    assert (again.id, again.key, again.attempts, again.last_error) == (
        head.id, head.key, 1, "subscriber emr answered 503")


async def test_an_expired_lease_gives_the_job_out_again_with_the_same_key(engine: Engine, queue: JobQueue,
                                                                          clock: Clock) -> None:
    await add(engine, [note("servicerequest.status", 1)], [EMR])
    first = await take(queue, "emr", lease_s=10)
    clock.now += 9
    assert await queue.claim("emr", 10) is None
    clock.now += 1
    second = await take(queue, "emr", lease_s=10)
    assert (second.id, second.key) == (first.id, first.key)
    # The first claimer's lease is gone: it can no longer release or fail the job.
    assert not await queue.retry(first, "late", 0)
    assert not await queue.fail(first, "late")
    assert await queue.claim("emr", 10) is None
    await queue.done(second)
    assert [j.state for j in await queue.jobs()] == ["done"]


async def test_concurrent_claimers_never_hold_the_same_job(engine: Engine, db_url: str) -> None:
    names = [f"s{i}" for i in range(4)]
    subscribers = [Subscriber(n, "webhook", "http://127.0.0.1:9/") for n in names]
    per_subscriber = 8
    await add(engine, [note("servicerequest.status", n) for n in range(per_subscriber)], subscribers)
    other = make_engine(db_url)  # a second engine: another instance's connection pool
    queues = [JobQueue(engine), JobQueue(other)]
    claimed: list[tuple[str, int]] = []
    total = len(names) * per_subscriber

    async def claimer(queue: JobQueue) -> None:
        with anyio.fail_after(30):
            while len(claimed) < total:
                for name in names:
                    job = await queue.claim(name, 60)
                    if job is not None:
                        claimed.append((name, job.payload["n"]))
                        await queue.done(job)
                await anyio.sleep(0)

    try:
        async with anyio.create_task_group() as group:
            for n in range(6):
                group.start_soon(claimer, queues[n % 2])
    finally:
        other.dispose()
    assert len(claimed) == total and len(set(claimed)) == total
    for name in names:  # each subscriber's jobs were handed out in order
        assert [n for s, n in claimed if s == name] == list(range(per_subscriber))


async def test_fail_requeue_and_the_admin_view(engine: Engine, queue: JobQueue) -> None:
    await add(engine, [note("servicerequest.status", n) for n in range(3)], [EMR])
    head = await take(queue, "emr")
    assert await queue.fail(head, "subscriber emr answered 400")
    nxt = await take(queue, "emr")  # a failed job no longer holds the queue
    assert nxt.payload["n"] == 1
    await queue.done(nxt)
    failed = await queue.jobs(state="failed")
    assert [(j.id, j.key, j.attempts, j.last_error) for j in failed] == [
        (head.id, head.key, 1, "subscriber emr answered 400")]
    assert await queue.pending_count() == 1
    assert await queue.requeue([head.id, nxt.id]) == 1  # only failed jobs come back
    assert await queue.requeue([]) == 0
    again = await take(queue, "emr")  # back at the head of the queue, same key, attempts afresh
    assert (again.id, again.key, again.attempts, again.state) == (head.id, head.key, 0, "pending")
    await queue.done(again)
    last = await take(queue, "emr")
    assert last.payload["n"] == 2
    assert len(await queue.jobs(limit=2)) == 2
    assert [j.state for j in await queue.jobs(state="done")] == ["done", "done"]
