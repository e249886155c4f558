"""What every FHIR interaction reads from a request and writes into an answer: JSON only.

See: FHIR R4 http.html (mime type, ``_format``, Prefer, ETag/Last-Modified/Location), search.html (POST
``_search`` with a form body).

Rules:
1. Answers are ``application/fhir+json; charset=utf-8``. A request that accepts neither that, JSON nor
   ``*/*`` (and names no JSON ``_format``) gets 406; a body in another format than JSON gets 415.
2. A body that is not JSON, not an object or of another resourceType is a 400 OperationOutcome; a body
   larger than ``max_resource_bytes`` a 413.
3. A search's parameters are the query's, and for ``POST _search`` also the form body's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ...domain.errors import InvalidInput, TooLarge, Unsupported
from ...formats.fhir_rest import Issue, Prefer, http_date, operation_outcome, parse_prefer, weak_etag
from ...formats.fhir_search import JSON_FORMATS
from ...services.ports import ResourceVersion
from .errors import UnsupportedMediaType, fhir_response
from .validation import check_input, check_output

FhirJson = dict[str, Any]
_ACCEPTED = frozenset({"*/*", "application/*", *JSON_FORMATS})
_BODY_TYPES = frozenset({"application/fhir+json", "application/json", "application/json+fhir"})


def check_negotiation(request: Request) -> None:
    """Rule 1 for the answer: ``_format`` (which wins over Accept) or Accept must allow JSON."""
    formats = request.query_params.getlist("_format")
    for value in formats:
        if _media(value) not in JSON_FORMATS:
            raise Unsupported("_format: only JSON is offered")
    accept = request.headers.get("accept")
    if formats or not accept or not accept.strip():
        return
    for item in accept.split(","):
        media, _, params = item.partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if _media(media) in _ACCEPTED and quality > 0:
            return
    raise Unsupported("only application/fhir+json is offered (Accept)")


def _media(text: str) -> str:
    # a '+' sent unencoded in a query arrives as a space
    return text.split(";")[0].strip().lower().replace(" ", "+")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_resource(request: Request, resource_type: str, limit: int) -> FhirJson:
    """The request's resource, JSON and valid FHIR R4 (rule 2)."""
    content_type = request.headers.get("content-type")
    if content_type and _media(content_type) not in _BODY_TYPES:
        raise UnsupportedMediaType("the body must be application/fhir+json")
    body = await read_body(request, limit)
    if not body.strip():
        raise InvalidInput(f"the body must be a {resource_type} resource; it is empty")
    try:
        resource = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidInput("the body is not JSON") from None
    if not isinstance(resource, dict):
        raise InvalidInput(f"the body must be a {resource_type} resource, a JSON object")
    return check_input(resource, resource_type)


async def search_params(request: Request, limit: int) -> list[tuple[str, str]]:
    """The search's parameters, percent-decoded (rule 3)."""
    params = list(request.query_params.multi_items())
    if request.method == "POST":
        content_type = request.headers.get("content-type")
        body = await read_body(request, limit)
        if body.strip():
            if not content_type or _media(content_type) != "application/x-www-form-urlencoded":
                raise UnsupportedMediaType("a POST _search body must be application/x-www-form-urlencoded")
            try:
                params += parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
            except UnicodeDecodeError:
                raise InvalidInput("the search form is not UTF-8") from None
    return params


def prefer_of(request: Request) -> Prefer:
    return parse_prefer(request.headers.get("prefer"))


def pretty(request: Request) -> bool:
    return request.query_params.get("_pretty") == "true"


def last_modified(version: ResourceVersion) -> datetime:
    return datetime.fromisoformat(version.last_updated)


def version_headers(version: ResourceVersion) -> dict[str, str]:
    """ETag and Last-Modified of one version (http.html#versioning)."""
    return {"ETag": weak_etag(str(version.version)), "Last-Modified": http_date(last_modified(version))}


def resource_answer(request: Request, resource: FhirJson, status: int = 200,
                    headers: dict[str, str] | None = None) -> Response:
    """A resource we hold or build, checked before it leaves (validation rule 3)."""
    return fhir_response(check_output(resource), status, headers, pretty=pretty(request))


def write_answer(request: Request, version: ResourceVersion, status: int, headers: dict[str, str],
                 what: str) -> Response:
    """The answer to a create or update, as ``Prefer: return=`` asks (http.html "Managing Return Content")."""
    preference = prefer_of(request).return_
    if preference == "minimal":
        return Response(status_code=status, headers=headers)
    if preference == "OperationOutcome":
        outcome = operation_outcome([Issue("information", "informational", what)])
        return fhir_response(outcome, status, headers, pretty=pretty(request))
    return resource_answer(request, version.resource or {}, status, headers)


def non_search_params(request: Request, allowed: Sequence[str] = ("_format", "_pretty")) -> list[str]:
    """Query parameters an interaction other than search does not take."""
    return [name for name in request.query_params if name not in allowed]
