"""FHIR R4 RESTful API pieces: OperationOutcome, searchset and history Bundles, ETags, Prefer, dates.

See: FHIR R4 (4.0.1) http.html (versioning, conditional create, Prefer), bundle.html, operationoutcome.html.

Rules:
1. JSON never carries an empty array or null: absent parts are left out (R4 json.html).
2. A version ETag is weak, ``W/"<versionId>"``; ``If-Match`` is read leniently, as HAPI does: ``W/"3"``,
   ``"3"`` and ``3`` are the same; ``*`` is returned as is; anything else is ``InvalidInput``.
3. ``Prefer`` values this server does not know are ignored (RFC 7240 §2).
4. Diagnostics are written by the caller and must hold no patient data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Literal
from urllib.parse import parse_qsl

from ..domain.errors import InvalidInput

Severity = Literal["fatal", "error", "warning", "information"]
IssueType = Literal[
    "invalid", "structure", "required", "value", "invariant", "security", "login", "unknown", "expired",
    "forbidden", "suppressed", "processing", "not-supported", "duplicate", "multiple-matches", "not-found",
    "deleted", "too-long", "code-invalid", "extension", "too-costly", "business-rule", "conflict", "transient",
    "lock-error", "no-store", "exception", "timeout", "incomplete", "throttled", "informational",
]
SearchMode = Literal["match", "include", "outcome"]
HttpVerb = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]

# http status -> issue type (R4 http.html, each interaction's status codes; valueset-issue-type)
STATUS_ISSUE: Mapping[int, IssueType] = {
    400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
    406: "not-supported", 408: "timeout", 409: "conflict", 410: "deleted", 412: "conflict", 413: "too-long",
    415: "not-supported", 422: "processing", 429: "throttled", 500: "exception", 501: "not-supported",
    502: "transient", 503: "transient", 504: "timeout",
}
_ETAG = re.compile(r'(?:[Ww]/)?"([A-Za-z0-9\-.]{1,64})"|([A-Za-z0-9\-.]{1,64})')
_PREFER_RETURN: Mapping[str, Literal["minimal", "representation", "OperationOutcome"]] = {
    "minimal": "minimal", "representation": "representation", "operationoutcome": "OperationOutcome",
}
_PREFER_HANDLING: Mapping[str, Literal["strict", "lenient"]] = {"strict": "strict", "lenient": "lenient"}
_DEFAULT_STATUS = {"POST": "201 Created", "PUT": "200 OK", "PATCH": "200 OK", "DELETE": "204 No Content"}


# --- OperationOutcome --------------------------------------------------------------------------

@dataclass(frozen=True)
class Issue:
    """One ``OperationOutcome.issue``; ``expression`` holds FHIRPath locations (``ImagingStudy.status``)."""

    severity: Severity
    code: IssueType
    diagnostics: str
    expression: tuple[str, ...] = ()


def operation_outcome(issues: Sequence[Issue]) -> dict[str, Any]:
    """An OperationOutcome resource; no issues gives the spec's "All OK" information issue.

    See: FHIR R4 operationoutcome.html (issue is 1..*; example ``allok``).
    """
    listed = issues or [Issue("information", "informational", "All OK")]
    out: list[dict[str, Any]] = []
    for issue in listed:
        entry: dict[str, Any] = {"severity": issue.severity, "code": issue.code}
        if issue.diagnostics:
            entry["diagnostics"] = issue.diagnostics
        if issue.expression:
            entry["expression"] = list(issue.expression)
        out.append(entry)
    return {"resourceType": "OperationOutcome", "issue": out}


def issue_type_for_status(http_status: int) -> IssueType:
    """The issue type that best says why a request ended with ``http_status``.

    See: FHIR R4 http.html, operationoutcome.html; 422 is ``processing`` (profile or business-rule failure), other 4xx
    ``invalid``, other 5xx ``exception``, below 400 ``informational``.
    """
    if http_status in STATUS_ISSUE:
        return STATUS_ISSUE[http_status]
    if http_status < 400:
        return "informational"
    return "invalid" if http_status < 500 else "exception"


def outcome_for_status(http_status: int, diagnostics: str) -> dict[str, Any]:
    """An OperationOutcome for an HTTP status: one issue, ``error`` from 400 on, else ``information``."""
    severity: Severity = "error" if http_status >= 400 else "information"
    return operation_outcome([Issue(severity, issue_type_for_status(http_status), diagnostics)])


# --- Bundles -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class BundleEntry:
    """A searchset entry; ``full_url`` may be None only for an ``outcome`` entry."""

    full_url: str | None
    resource: Mapping[str, Any]
    mode: SearchMode = "match"


@dataclass(frozen=True)
class HistoryEntry:
    """One version in a history Bundle; ``resource`` is None for a deletion.

    ``status`` defaults from ``method``: POST 201, PUT/PATCH 200, DELETE 204.
    """

    full_url: str
    resource: Mapping[str, Any] | None
    method: HttpVerb
    url: str
    version_id: str
    last_modified: datetime
    status: str | None = None


def _links(self_url: str, next_url: str | None, previous_url: str | None) -> list[dict[str, str]]:
    links = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    if previous_url is not None:
        links.append({"relation": "previous", "url": previous_url})
    return links


def searchset(
    entries: Sequence[BundleEntry],
    self_url: str,
    next_url: str | None = None,
    previous_url: str | None = None,
    total: int | None = None,
) -> dict[str, Any]:
    """A searchset Bundle; no entries is an empty Bundle (never a 404).

    See: FHIR R4 bundle.html (searchset, Bundle.entry.search.mode), http.html#paging.
    """
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = _links(self_url, next_url, previous_url)
    if entries:
        bundle["entry"] = [_search_entry(e) for e in entries]
    return bundle


def _search_entry(entry: BundleEntry) -> dict[str, Any]:
    out: dict[str, Any] = {} if entry.full_url is None else {"fullUrl": entry.full_url}
    out["resource"] = dict(entry.resource)
    out["search"] = {"mode": entry.mode}
    return out


def history_bundle(
    entries: Sequence[HistoryEntry],
    self_url: str,
    next_url: str | None = None,
    previous_url: str | None = None,
    total: int | None = None,
) -> dict[str, Any]:
    """A history Bundle of a resource's versions, newest first as the caller orders them.

    See: FHIR R4 http.html#history, bundle.html (entry.request, entry.response).
    """
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = _links(self_url, next_url, previous_url)
    if entries:
        bundle["entry"] = [_history_entry(e) for e in entries]
    return bundle


def _history_entry(entry: HistoryEntry) -> dict[str, Any]:
    out: dict[str, Any] = {"fullUrl": entry.full_url}
    if entry.resource is not None:
        out["resource"] = dict(entry.resource)
    out["request"] = {"method": entry.method, "url": entry.url}
    out["response"] = {
        "status": entry.status or _DEFAULT_STATUS.get(entry.method, "200 OK"),
        "etag": weak_etag(entry.version_id),
        "lastModified": fhir_instant(entry.last_modified),
    }
    return out


# --- headers -----------------------------------------------------------------------------------

def weak_etag(version_id: str) -> str:
    """``W/"<versionId>"``: the ETag of a resource version.

    See: FHIR R4 http.html#versioning.
    """
    if not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", version_id):
        raise ValueError("a versionId is a FHIR id")
    return f'W/"{version_id}"'


def parse_if_match(header: str | None) -> str | None:
    """The versionId an ``If-Match`` header asks for (``*``: any), or None without the header.

    See: FHIR R4 http.html#concurrency. Raises ``InvalidInput``.
    """
    if header is None or not header.strip():
        return None
    text = header.strip()
    if text == "*":
        return "*"
    match = _ETAG.fullmatch(text)
    if match is None:
        raise InvalidInput('If-Match must be one version ETag, such as W/"3"')
    return match.group(1) or match.group(2)


def parse_if_none_exist(header: str) -> list[tuple[str, str]]:
    """The search of a conditional create: the percent-decoded pairs of ``If-None-Exist``.

    See: FHIR R4 http.html#ccreate (§3.1.0.8.1). A leading ``?`` or ``Type?`` (sent by some clients) is dropped.
    Raises ``InvalidInput`` for a header with no parameter.
    """
    text = header.strip()
    if "?" in text:
        head, _, rest = text.partition("?")
        if not head or re.fullmatch(r"[A-Z][A-Za-z]{1,63}", head):
            text = rest
    pairs = parse_qsl(text, keep_blank_values=True)
    if not pairs or any(not name for name, _ in pairs):
        raise InvalidInput("If-None-Exist must be a search query, such as identifier=system|value")
    return pairs


@dataclass(frozen=True)
class Prefer:
    """What a ``Prefer`` header asks for; None where it says nothing (or something unknown)."""

    return_: Literal["minimal", "representation", "OperationOutcome"] | None = None
    handling: Literal["strict", "lenient"] | None = None

    @property
    def strict(self) -> bool:
        return self.handling == "strict"


def parse_prefer(header: str | None) -> Prefer:
    """The ``return`` and ``handling`` preferences of a ``Prefer`` header (the first of each wins).

    See: FHIR R4 http.html (Managing Return Content), search.html (Handling Errors); RFC 7240 §2.
    """
    return_: Literal["minimal", "representation", "OperationOutcome"] | None = None
    handling: Literal["strict", "lenient"] | None = None
    for preference in (header or "").split(","):
        token = preference.split(";")[0]
        name, _, value = token.partition("=")
        name, value = name.strip().lower(), value.strip().strip('"').lower()
        if name == "return" and return_ is None:
            return_ = _PREFER_RETURN.get(value)
        elif name == "handling" and handling is None:
            handling = _PREFER_HANDLING.get(value)
    return Prefer(return_, handling)


# --- dates and locations -----------------------------------------------------------------------

def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a naive datetime has no place on the wire")
    return moment.astimezone(UTC)


def http_date(moment: datetime) -> str:
    """RFC 7231 §7.1.1.1 IMF-fixdate (``Wed, 31 Jan 2024 14:25:30 GMT``) for ``Last-Modified``."""
    return format_datetime(_aware(moment).replace(microsecond=0), usegmt=True)


def fhir_instant(moment: datetime) -> str:
    """A FHIR instant in UTC with milliseconds and offset (``2024-01-31T14:25:30.123+00:00``).

    See: FHIR R4 datatypes.html#instant (meta.lastUpdated).
    """
    return _aware(moment).isoformat(timespec="milliseconds")


def resource_location(base: str, resource_type: str, resource_id: str, version_id: str) -> str:
    """``[base]/[type]/[id]/_history/[vid]``: the ``Location`` of a create or update.

    See: FHIR R4 http.html#create, http.html#update.
    """
    return f"{base.rstrip('/')}/{resource_type}/{resource_id}/_history/{version_id}"
