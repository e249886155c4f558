"""QIDO-RS: search for studies, series and instances.

See: PS3.18 §10.6 (Search transaction), §8.3.4 (query parameters), §8.3.4.4.1 (204 and 299 warning).
"""

from __future__ import annotations

from dataclasses import replace

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ...domain.model import Level
from ...domain.query import Match, MatchKind
from ...formats.qido import parse_qido
from ..auth.middleware import principal_of
from .context import DicomwebContext
from .negotiation import choose_json, ranges

LEVELS = {"studies": Level.STUDY, "series": Level.SERIES, "instances": Level.INSTANCE}


def _retrieve_url(base: str, level: Level, result: dict[str, dict[str, list[str]]]) -> str | None:
    try:
        url = f"{base}/studies/{result['0020000D']['Value'][0]}"
        if level >= Level.SERIES:
            url += f"/series/{result['0020000E']['Value'][0]}"
        if level is Level.INSTANCE:
            url += f"/instances/{result['00080018']['Value'][0]}"
    except (KeyError, IndexError):
        return None
    return url


async def search(ctx: DicomwebContext, request: Request) -> Response:
    """One handler for the six QIDO-RS resources; path UIDs become UID match keys (§10.6.1.2)."""
    params = request.path_params
    level = LEVELS[params["resource"]]
    choose_json(ranges(request.headers.get("accept"), None, strict=False))
    query = parse_qido(
        list(request.query_params.multi_items()), level,
        default_limit=ctx.config.qido_default_limit, max_limit=ctx.config.qido_max_limit,
    )
    scoped: list[Match] = []
    if "study" in params:
        scoped.append(Match("0020000D", "UI", MatchKind.UID_LIST, values=(params["study"],)))
    if "series" in params:
        scoped.append(Match("0020000E", "UI", MatchKind.UID_LIST, values=(params["series"],)))
    keep = [m for m in query.matches if m.tag not in {s.tag for s in scoped}]
    with_parents = (level is Level.SERIES and "study" not in params) or (
        level is Level.INSTANCE and "series" not in params)
    # Never more than the configured maximum in one answer; the 299 warning tells of the rest.
    limit = ctx.config.qido_max_limit if query.limit is None else query.limit
    query = replace(query, matches=(*keep, *scoped), limit=limit,
                    extra={**query.extra, "with_parents": with_parents})
    page = await ctx.search.search(query, principal_of(request))
    headers: dict[str, str] = {}
    if page.remaining:
        headers["Warning"] = (f'299 {request.url.hostname}: "There are {page.remaining} additional '
                              'results that can be requested"')
    if not page.results:
        return Response(status_code=204, headers=headers)
    base = ctx.base_url(request)
    for result in page.results:
        url = _retrieve_url(base, level, result)
        if url:
            result["00081190"] = {"vr": "UR", "Value": [url]}
    # project() sorted the keys; RetrieveURL (0008,1190) was added last, so sort once more.
    body = orjson.dumps(page.results, option=orjson.OPT_SORT_KEYS)
    return Response(body, media_type="application/dicom+json", headers=headers)
