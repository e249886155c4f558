"""One delivery attempt of one job: a webhook POST or a FHIR PUT, and what its answer means.

See: RFC 9110 §10.2.3 (Retry-After), §15.5.9 (408), RFC 8470 §5.2 (425), RFC 6585 §4 (429); FHIR R4
RESTful API "update" (PUT [base]/[type]/[id]); the Idempotency-Key header (IETF httpapi draft).

Rules:
1. Every attempt of a job carries the job's key as ``Idempotency-Key`` (and a webhook body's ``id``), so
   the subscriber can drop repeats: delivery is at least once, the effect exactly once.
2. 2xx is done. 408, 425, 429, 5xx, timeouts and unreachable subscribers are retried, no sooner than a
   ``Retry-After`` asks. Any other answer is a permanent refusal: the job fails and the queue moves on.
3. A refusal is logged with its status only: a subscriber's answer may echo the patient data we sent.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from ...domain.errors import UpstreamUnavailable
from ..http_client import AuthorizedClient
from .jobs import Job, Subscriber

log = logging.getLogger(__name__)

RETRIED = frozenset({408, 425, 429})
FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True)
class Outcome:
    """What became of an attempt: ``done``, ``retry`` (no sooner than ``retry_after_s``, if given) or
    ``failed``; ``error`` says why, without patient data."""

    state: str
    error: str | None = None
    retry_after_s: float | None = None


def client_for(subscriber: Subscriber) -> AuthorizedClient:
    """The subscriber's own HTTP client (one connection at a time: delivery is in order anyway)."""
    return AuthorizedClient(f"subscriber {subscriber.name}", subscriber.url, subscriber.auth,
                            timeout_s=subscriber.timeout_s, connect_timeout_s=min(5, subscriber.timeout_s),
                            max_connections=1)


async def deliver(client: AuthorizedClient, subscriber: Subscriber, job: Job) -> Outcome:
    """Try once to hand ``job`` to ``subscriber``."""
    request = _fhir_put(subscriber, job) if subscriber.kind == "fhir" else _webhook_post(subscriber, job)
    if isinstance(request, Outcome):
        return request
    url, headers, body = request
    method = "PUT" if subscriber.kind == "fhir" else "POST"
    try:
        response = await client.request(method, url, content=body, headers=headers)
    except UpstreamUnavailable as exc:  # unreachable, timed out, broken off, or no token
        return Outcome("retry", exc.message)
    return _judge(subscriber, job, response)


def signature(secret: str, body: bytes) -> str:
    """The ``X-Pacsbridge-Signature`` of a webhook body: ``sha256=`` and the hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _webhook_post(subscriber: Subscriber, job: Job) -> tuple[str, dict[str, str], bytes]:
    message: dict[str, object] = {"id": job.key, "topic": job.topic, "occurredAt": job.created_at}
    for name, value in job.payload.items():
        message.setdefault(name, value)  # the envelope's own fields win over a payload's
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", "Idempotency-Key": job.key, "X-Pacsbridge-Topic": job.topic}
    if subscriber.secret:
        headers["X-Pacsbridge-Signature"] = signature(subscriber.secret, body)
    return subscriber.url, headers, body


def _fhir_put(subscriber: Subscriber, job: Job) -> tuple[str, dict[str, str], bytes] | Outcome:
    resource = job.payload.get("resource")
    if not isinstance(resource, dict) or not resource.get("resourceType") or not resource.get("id"):
        return Outcome("failed", f"job of topic {job.topic} has no resource with a type and id to PUT")
    url = f"{subscriber.url.rstrip('/')}/{quote(str(resource['resourceType']), safe='')}/" \
          f"{quote(str(resource['id']), safe='')}"
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, "Idempotency-Key": job.key}
    return url, headers, json.dumps(resource, separators=(",", ":"), ensure_ascii=False).encode()


def _judge(subscriber: Subscriber, job: Job, response: httpx.Response) -> Outcome:
    status = response.status_code
    if 200 <= status < 300:
        return Outcome("done")
    error = f"subscriber {subscriber.name} answered {status}"
    if status in RETRIED or status >= 500:
        return Outcome("retry", error, _retry_after(response.headers.get("retry-after")))
    log.warning("subscriber %s refused job %d (topic %s) with %d; it is failed until requeued",
                subscriber.name, job.id, job.topic, status)
    return Outcome("failed", error)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After of delta-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())
