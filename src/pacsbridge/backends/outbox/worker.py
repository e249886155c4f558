"""The outbox worker: one delivery loop per subscriber, claiming, delivering and settling jobs.

Rules:
1. Each subscriber has its own loop, so one that is down (timing out, backing off) holds back only its
   own jobs. A loop never dies of an error: it logs, waits a poll interval and goes on.
2. A failed attempt is retried after ``min(base_s * 2**attempts, max_s)`` ±20 % (jitter spreads the
   retries of many instances), and no sooner than the subscriber's Retry-After.
3. An idle loop looks again every ``poll_s``, or at once after ``wake()`` (called when a commit enqueued
   jobs). Several instances may run workers over one database: the claim keeps them apart.
4. Cancelling ``run`` may leave a job leased and perhaps delivered; it is claimed again once the lease
   expires and delivered with the same key, which the subscriber recognises. ``lease_s`` must therefore
   outlast a delivery (the subscriber's timeout, plus a token request).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anyio

from ...domain.errors import without_values
from ..http_client import AuthorizedClient
from .delivery import client_for, deliver
from .jobs import Job, JobQueue, Subscriber

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    lease_s: float = 60
    base_s: float = 1
    max_s: float = 300
    poll_s: float = 1.0

    def backoff(self, attempts: int) -> float:
        """The delay before the next attempt after ``attempts`` failed ones, jittered by ±20 %."""
        return min(self.base_s * 2 ** min(attempts, 32), self.max_s) * random.uniform(0.8, 1.2)


class OutboxWorker:
    """Delivers the outbox to its subscribers; owns their clients (``clients`` by subscriber name, made
    from the subscriber's settings where missing) and closes them in ``close``."""

    def __init__(self, queue: JobQueue, subscribers: Sequence[Subscriber],
                 clients: Mapping[str, AuthorizedClient] | None = None, policy: Policy | None = None) -> None:
        self.queue = queue
        self.subscribers = list(subscribers)
        self.policy = policy or Policy()
        given = dict(clients or {})
        self.clients = {s.name: given.get(s.name) or client_for(s) for s in self.subscribers}
        self._wakeups = {s.name: anyio.Event() for s in self.subscribers}

    async def run(self) -> None:
        """Deliver until cancelled (the app's lifespan owns this task)."""
        async with anyio.create_task_group() as group:
            for subscriber in self.subscribers:
                group.start_soon(self._loop, subscriber, name=f"outbox {subscriber.name}")

    def wake(self) -> None:
        """Look for jobs now (from the event loop's thread, after a commit that enqueued some)."""
        for event in self._wakeups.values():
            event.set()

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()

    async def _loop(self, subscriber: Subscriber) -> None:
        while True:
            self._wakeups[subscriber.name] = anyio.Event()  # a wake() from here on is for the next claim
            try:
                busy = await self._once(subscriber)
            except Exception as exc:
                log.error("the outbox loop of subscriber %s failed (%s); it goes on", subscriber.name,
                          without_values(exc))
                busy = False
            if not busy:
                with anyio.move_on_after(self.policy.poll_s):
                    await self._wakeups[subscriber.name].wait()

    async def _once(self, subscriber: Subscriber) -> bool:
        """Claim and settle one job; False when there was none to claim."""
        job = await self.queue.claim(subscriber.name, self.policy.lease_s)
        if job is None:
            return False
        try:
            outcome = await deliver(self.clients[subscriber.name], subscriber, job)
        except Exception as exc:  # a fault of ours: retried, so a fix in the next release delivers it
            log.error("delivering job %d to subscriber %s failed: %s", job.id, subscriber.name, without_values(exc))
            await self._retry(job, f"internal error ({type(exc).__name__})", None)
            return True
        if outcome.state == "done":
            await self.queue.done(job)
        elif outcome.state == "retry":
            await self._retry(job, outcome.error or "retry", outcome.retry_after_s)
        elif not await self.queue.fail(job, outcome.error or "refused"):
            log.warning("job %d of subscriber %s outlived its lease", job.id, subscriber.name)
        return True

    async def _retry(self, job: Job, error: str, retry_after_s: float | None) -> None:
        delay = max(self.policy.backoff(job.attempts), retry_after_s or 0)
        log.info("job %d for subscriber %s: %s; next attempt in %.1f s", job.id, job.subscriber, error, delay)
        if not await self.queue.retry(job, error, delay):
            log.warning("job %d of subscriber %s outlived its lease", job.id, job.subscriber)
