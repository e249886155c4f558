"""The outbox: durable notifications of order-loop changes to subscribers (webhooks, FHIR push),
enqueued in the transaction of the change and delivered at least once, in order, by a worker."""

from .delivery import Outcome, deliver
from .jobs import Job, JobQueue, Subscriber, enqueue
from .worker import OutboxWorker, Policy

__all__ = ["Job", "JobQueue", "OutboxWorker", "Outcome", "Policy", "Subscriber", "deliver", "enqueue"]
