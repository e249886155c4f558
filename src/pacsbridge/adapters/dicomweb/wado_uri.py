"""WADO-URI: one instance by query parameters, as DICOM or as a rendered image.

See: PS3.18 Ch. 9, §9.1.2 (request parameters), §9.1.3 (response).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ...domain.errors import InvalidInput, Unsupported
from ...domain.model import EXPLICIT_VR_LITTLE_ENDIAN, Scope
from ...formats.render import parse_wado_uri_params
from ..auth.middleware import principal_of
from .context import DicomwebContext
from .wado import instance_response

RENDERED = ("image/jpeg", "image/png", "image/gif")
RENDER_ONLY = ("annotation", "rows", "columns", "region", "windowCenter", "windowWidth", "frameNumber",
               "imageQuality", "presentationUID", "presentationSeriesUID")


async def retrieve(ctx: DicomwebContext, request: Request) -> Response:
    q = request.query_params
    if q.get("requestType") != "WADO":
        raise InvalidInput("requestType=WADO is required")
    missing = [name for name in ("studyUID", "seriesUID", "objectUID") if not q.get(name)]
    if missing:
        raise InvalidInput("missing parameter(s): " + ", ".join(missing))
    if q.get("anonymize") == "yes":
        raise Unsupported("anonymize=yes is not offered by this server")
    scope = Scope(q["studyUID"], q["seriesUID"], q["objectUID"])
    content_types = [c.strip().split(";")[0] for c in q.get("contentType", "").split(",") if c.strip()]
    stored = await ctx.retrieve.instance(scope, principal_of(request))
    dicom_first = bool(content_types) and content_types[0] == "application/dicom"
    if dicom_first or (not content_types and stored.number_of_frames == 0):
        bad = [name for name in RENDER_ONLY if name in q]
        if bad:
            raise InvalidInput("rendering parameters are not valid with application/dicom: " + ", ".join(bad))
        # §9.1.2.1.7: Explicit VR Little Endian unless the client names another.
        wanted = q.get("transferSyntax") or EXPLICIT_VR_LITTLE_ENDIAN
        if not ctx.retrieve.can_transcode(stored.transfer_syntax, wanted):
            raise Unsupported(f"cannot provide transfer syntax {wanted}")
        return await instance_response(ctx, stored, wanted, "application/dicom")
    media = next((c for c in content_types if c in RENDERED), None) if content_types else "image/jpeg"
    if media is None:
        raise Unsupported("contentType must list application/dicom, image/jpeg, image/png or image/gif")
    options = parse_wado_uri_params({**dict(q), "contentType": media})
    return Response(await ctx.retrieve.render(stored, options), media_type=media)
