"""The interactions on the resources pacsbridge holds (ServiceRequest, Patient): create (also
conditional), read, vread, history, update, delete and search.

See: FHIR R4 http.html (#create, #ccreate, #read, #vread, #history, #update, #delete, #concurrency,
Managing Return Content), search.html, bundle.html.

Rules:
1. Writes go to the type's writer (ServiceRequest: ``OrderService``, with its worklist side effects);
   reads, history and searches to its ``ResourceService``.
2. A conditional create searches with ``Prefer: handling=strict`` semantics whatever the header says:
   an ignored parameter would widen the search. It needs the search and read scopes too, since it
   answers with the match it found.
3. A token bound to a patient is refused here (403): these resources are not filtered by patient.
4. Only dates (and ``_lastUpdated``) sort; any other ``_sort`` key is ignored (400 when strict).
   ``_include`` is not offered on these types.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response

from ...domain.access import Principal
from ...domain.errors import Forbidden, InvalidInput, NotFound, PreconditionFailed
from ...domain.scopes import Need
from ...formats.fhir_rest import (
    BundleEntry,
    HistoryEntry,
    Issue,
    history_bundle,
    operation_outcome,
    parse_if_match,
    parse_if_none_exist,
    resource_location,
    searchset,
)
from ...formats.fhir_search import SearchParam, SearchRequest, page_link, parse_search, self_link
from ...services.fhir_resources import ResourceService
from ...services.ports import ResourceVersion
from ..auth.middleware import principal_of
from .context import FhirContext
from .errors import fhir_response
from .messages import (
    last_modified,
    non_search_params,
    prefer_of,
    pretty,
    read_resource,
    resource_answer,
    search_params,
    version_headers,
    write_answer,
)
from .validation import check_output

FhirJson = dict[str, Any]
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_\-:.]{1,64}")


class Writer(Protocol):
    async def create(self, resource: FhirJson, matches: Sequence[ResourceVersion] | None = None
                     ) -> tuple[ResourceVersion, bool]: ...

    async def update(self, id_: str, resource: FhirJson, if_match: int | None = None
                     ) -> tuple[ResourceVersion, bool]: ...

    async def delete(self, id_: str) -> ResourceVersion | None: ...


@dataclass(frozen=True)
class Held:
    """A type the door holds: where it is read and written, its parameters, and its read/search needs."""

    type: str
    reader: ResourceService
    writer: Writer
    params: Mapping[str, SearchParam]
    read_need: Need
    search_need: Need


def _check_id(held: Held, id_: str) -> str:
    if not FHIR_ID.fullmatch(id_):
        raise NotFound(f"{held.type}: the id in the URL is not a FHIR id")
    return id_


def _refuse_patient_context(held: Held, principal: Principal) -> None:
    if principal.patient_ids is not None:  # rule 3
        raise Forbidden(f"{held.type} is not offered to a token bound to a patient")


def _no_parameters(request: Request, interaction: str) -> None:
    extra = non_search_params(request)
    if extra:
        raise InvalidInput(f"{interaction} takes no parameters besides _format and _pretty"
                           + (" (a conditional create names its search in If-None-Exist)"
                              if interaction == "create" else ""))


async def create(ctx: FhirContext, held: Held, request: Request) -> Response:
    principal = principal_of(request)
    _refuse_patient_context(held, principal)
    _no_parameters(request, "create")
    resource = await read_resource(request, held.type, ctx.config.max_resource_bytes)
    matches: list[ResourceVersion] | None = None
    condition = request.headers.get("if-none-exist")
    if condition is not None:
        if not (principal.allows(held.search_need) and principal.allows(held.read_need)):
            raise Forbidden(f"a conditional create searches and may answer with the match: it needs the "
                            f"{held.type} read and search scopes too")
        search = parse_search(parse_if_none_exist(condition), held.params, strict=True, default_count=2,
                              max_count=2, resource_type=held.type)  # rule 2
        if search.includes or search.sort:
            raise InvalidInput("If-None-Exist: only search parameters are allowed")
        found, _total = await held.reader.search(search.criteria, (), 0, 2)
        matches = list(found)  # two at most: the writer answers 412 for more than one
    version, created = await held.writer.create(resource, matches)
    base = ctx.base_url(request)
    location = resource_location(base, held.type, version.id, str(version.version))
    headers = {**version_headers(version), "Location": location}
    what = f"{held.type}/{version.id} version {version.version} " + ("created" if created else "already exists")
    return write_answer(request, version, 201 if created else 200, headers, what)


async def read(ctx: FhirContext, held: Held, request: Request) -> Response:
    _refuse_patient_context(held, principal_of(request))
    _no_parameters(request, "read")
    version = await held.reader.read(_check_id(held, request.path_params["id"]))
    headers = version_headers(version)
    wanted = request.headers.get("if-none-match")
    if wanted is not None and _same_version(wanted, version):
        return Response(status_code=304, headers=headers)
    return resource_answer(request, version.resource or {}, 200, headers)


def _same_version(header: str, version: ResourceVersion) -> bool:
    for tag in header.split(","):
        try:
            if parse_if_match(tag) in ("*", str(version.version)):
                return True
        except InvalidInput:
            continue
    return False


async def vread(ctx: FhirContext, held: Held, request: Request) -> Response:
    _refuse_patient_context(held, principal_of(request))
    _no_parameters(request, "vread")
    id_ = _check_id(held, request.path_params["id"])
    vid = request.path_params["vid"]
    if not vid.isdigit() or len(vid) > 9:
        raise NotFound(f"{held.type}/{id_} has no such version")
    version = await held.reader.read(id_, int(vid))
    return resource_answer(request, version.resource or {}, 200, version_headers(version))


async def history(ctx: FhirContext, held: Held, request: Request) -> Response:
    _refuse_patient_context(held, principal_of(request))
    _no_parameters(request, "history")
    id_ = _check_id(held, request.path_params["id"])
    versions = await held.reader.history(id_)
    base = ctx.base_url(request)
    entries = [
        HistoryEntry(
            full_url=f"{base}/{held.type}/{id_}",
            resource=check_output(v.resource) if v.resource is not None else None,
            method="POST" if v.method == "POST" else "DELETE" if v.method == "DELETE" else "PUT",
            url=held.type if v.method == "POST" else f"{held.type}/{id_}",
            version_id=str(v.version),
            last_modified=last_modified(v),
        )
        for v in versions
    ]
    bundle = history_bundle(entries, f"{base}/{held.type}/{id_}/_history", total=len(entries))
    return fhir_response(check_output(bundle), pretty=pretty(request))


async def update(ctx: FhirContext, held: Held, request: Request) -> Response:
    _refuse_patient_context(held, principal_of(request))
    _no_parameters(request, "update")
    id_ = request.path_params["id"]
    if not FHIR_ID.fullmatch(id_):
        raise InvalidInput(f"{held.type}: the id in the URL is not a FHIR id")
    resource = await read_resource(request, held.type, ctx.config.max_resource_bytes)
    if resource.get("id") != id_:
        raise InvalidInput(f"{held.type}.id must be present and equal the id in the URL")
    expected = parse_if_match(request.headers.get("if-match"))
    if_match: int | None = None
    if expected == "*":
        try:
            await held.reader.read(id_)
        except NotFound:
            raise PreconditionFailed(f"If-Match: * and {held.type}/{id_} does not exist") from None
    elif expected is not None:
        if not expected.isdigit() or len(expected) > 9:
            raise PreconditionFailed(f"{held.type}/{id_} has no version {expected}")
        if_match = int(expected)
    version, created = await held.writer.update(id_, resource, if_match)
    headers = version_headers(version)
    if created:
        headers["Location"] = resource_location(ctx.base_url(request), held.type, id_, str(version.version))
    what = f"{held.type}/{id_} version {version.version} " + ("created" if created else "updated")
    return write_answer(request, version, 201 if created else 200, headers, what)


async def delete(ctx: FhirContext, held: Held, request: Request) -> Response:
    _refuse_patient_context(held, principal_of(request))
    _no_parameters(request, "delete")
    gone = await held.writer.delete(_check_id(held, request.path_params["id"]))
    headers = {"ETag": version_headers(gone)["ETag"]} if gone is not None else {}
    return Response(status_code=204, headers=headers)


async def search(ctx: FhirContext, held: Held, request: Request) -> Response:
    _refuse_patient_context(held, principal_of(request))
    strict = prefer_of(request).strict
    parsed = parse_search(await search_params(request, ctx.config.max_resource_bytes), held.params,
                          strict=strict, default_count=ctx.config.default_count, max_count=ctx.config.max_count,
                          resource_type=held.type)
    parsed = _supported(parsed, held, strict)
    versions, total = await held.reader.search(parsed.criteria, parsed.sort, parsed.offset, parsed.count)
    base = ctx.base_url(request)
    entries = [BundleEntry(f"{base}/{held.type}/{v.id}", check_output(v.resource or {})) for v in versions]
    return fhir_response(page(base, held.type, parsed, entries, total), pretty=pretty(request))


def _supported(parsed: SearchRequest, held: Held, strict: bool) -> SearchRequest:
    """Rule 4: what of a parsed search these types honour; the rest is ignored (or 400 when strict)."""
    ignored = list(parsed.ignored)
    if parsed.includes:
        if strict:
            raise InvalidInput(f"_include is not supported on {held.type} (Prefer: handling=strict)")
        ignored.append("_include")
    sort = tuple(key for key in parsed.sort if held.params[key[0]].type == "date")
    if len(sort) != len(parsed.sort):
        if strict:
            raise InvalidInput("_sort: only date parameters sort (Prefer: handling=strict)")
        ignored.append("_sort")
    return replace(parsed, includes=(), sort=sort, ignored=tuple(dict.fromkeys(ignored)))


def page(base: str, resource_type: str, parsed: SearchRequest, entries: list[BundleEntry], total: int,
         extra: Sequence[BundleEntry] = ()) -> FhirJson:
    """A searchset page with its self, next and previous links; ignored parameters named in an outcome
    entry (search.html#errors), never echoed in the links."""
    understood = replace(parsed, ignored=())
    count, offset = parsed.count, parsed.offset
    next_url = (page_link(base, resource_type, understood, offset + count)
                if count and offset + count < total else None)
    previous_url = page_link(base, resource_type, understood, max(0, offset - count)) if count and offset else None
    listed = [*entries, *extra]
    if parsed.ignored:
        names = ", ".join(n for n in parsed.ignored if _SAFE_NAME.fullmatch(n)) or "some parameters"
        listed.append(BundleEntry(None, operation_outcome([Issue(
            "warning", "not-supported", f"ignored: {names}")]), "outcome"))
    return searchset(listed, self_link(base, resource_type, understood), next_url, previous_url,
                     None if parsed.total == "none" else total)
