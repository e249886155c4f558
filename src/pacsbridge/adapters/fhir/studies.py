"""ImagingStudy (read, search with ``_include=ImagingStudy:endpoint``) and Endpoint (read, search).

See: FHIR R4 imagingstudy.html, endpoint.html, search.html#include; standards.md §E.2, §E.4.
ImagingStudy goes through ``ImagingStudyService`` with the caller's principal, so patient context applies
as in QIDO-RS and C-FIND.
"""

from __future__ import annotations

from dataclasses import replace

from starlette.requests import Request
from starlette.responses import Response

from ...domain.errors import InvalidInput, NotFound
from ...formats.fhir_rest import BundleEntry
from ...formats.fhir_search import SearchRequest, parse_search
from ..auth.middleware import principal_of
from . import endpoint
from .context import FhirContext
from .errors import fhir_response
from .imaging import IMAGING_STUDY_PARAMS, study_criteria
from .messages import non_search_params, prefer_of, pretty, resource_answer, search_params
from .resources import FHIR_ID, page
from .validation import check_output


async def read_study(ctx: FhirContext, request: Request) -> Response:
    study_uid = request.path_params["id"]
    if non_search_params(request):
        raise InvalidInput("read takes no parameters besides _format and _pretty")
    if not FHIR_ID.fullmatch(study_uid):
        raise NotFound("ImagingStudy: the id in the URL is not a FHIR id")
    resource = await ctx.studies.read(study_uid, principal_of(request))
    return resource_answer(request, resource)


async def search_studies(ctx: FhirContext, request: Request) -> Response:
    strict = prefer_of(request).strict
    parsed = parse_search(await search_params(request, ctx.config.max_resource_bytes), IMAGING_STUDY_PARAMS,
                          strict=strict, default_count=ctx.config.default_count, max_count=ctx.config.max_count,
                          resource_type="ImagingStudy")
    parsed = _supported(parsed, strict)
    base = ctx.base_url(request)
    criteria = await study_criteria(parsed, ctx, base)
    # _count=0 asks for the total alone; the archive is asked for one study and it is dropped
    studies, total = await ctx.studies.search(replace(criteria, count=max(criteria.count, 1)), principal_of(request))
    studies = studies[:parsed.count]
    entries = [BundleEntry(f"{base}/ImagingStudy/{s['id']}", check_output(s)) for s in studies]
    included = []
    if parsed.includes and studies:
        included.append(BundleEntry(f"{base}/Endpoint/{endpoint.endpoint_id(ctx)}",
                                    check_output(endpoint.endpoint(ctx, request)), "include"))
    return fhir_response(page(base, "ImagingStudy", parsed, entries, total, included), pretty=pretty(request))


def _supported(parsed: SearchRequest, strict: bool) -> SearchRequest:
    """``_include=ImagingStudy:endpoint`` is honoured; other includes and ``_sort`` are ignored (400 strict)."""
    ignored = list(parsed.ignored)
    kept = tuple(i for i in parsed.includes if i.param == "endpoint" and i.target in (None, "Endpoint"))
    if len(kept) != len(parsed.includes):
        if strict:
            raise InvalidInput("_include: only ImagingStudy:endpoint is supported (Prefer: handling=strict)")
        ignored.append("_include")
    if parsed.sort:
        if strict:
            raise InvalidInput("_sort is not supported on ImagingStudy (Prefer: handling=strict)")
        ignored.append("_sort")
    return replace(parsed, includes=kept[:1], sort=(), ignored=tuple(dict.fromkeys(ignored)))


async def read_endpoint(ctx: FhirContext, request: Request) -> Response:
    if non_search_params(request):
        raise InvalidInput("read takes no parameters besides _format and _pretty")
    return resource_answer(request, endpoint.read(ctx, request, request.path_params["id"]))


async def search_endpoints(ctx: FhirContext, request: Request) -> Response:
    strict = prefer_of(request).strict
    parsed = parse_search(await search_params(request, ctx.config.max_resource_bytes), endpoint.ENDPOINT_PARAMS,
                          strict=strict, default_count=ctx.config.default_count, max_count=ctx.config.max_count,
                          resource_type="Endpoint")
    if parsed.includes or parsed.sort:
        if strict:
            raise InvalidInput("_include and _sort are not supported on Endpoint (Prefer: handling=strict)")
        parsed = replace(parsed, includes=(), sort=(), ignored=tuple(dict.fromkeys(
            [*parsed.ignored, *(["_include"] if parsed.includes else []), *(["_sort"] if parsed.sort else [])])))
    base = ctx.base_url(request)
    resource = endpoint.endpoint(ctx, request)
    found = [resource] if endpoint.matches(resource, parsed) else []
    total = len(found)
    shown = found[parsed.offset:parsed.offset + parsed.count]
    entries = [BundleEntry(f"{base}/Endpoint/{r['id']}", check_output(r)) for r in shown]
    return fhir_response(page(base, "Endpoint", parsed, entries, total), pretty=pretty(request))

