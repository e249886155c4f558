"""The one table from core errors to DICOMweb HTTP answers (PS3.18 §8.5, §10.4.3, §10.6.3)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...domain import errors

STATUS: dict[type[errors.PacsbridgeError], int] = {
    errors.InvalidInput: 400,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Unsupported: 406,
    errors.Conflict: 409,
    errors.BusinessRule: 409,
    errors.PreconditionFailed: 412,
    errors.TooLarge: 413,
    errors.UpstreamFailed: 502,
    errors.UpstreamUnavailable: 503,
    errors.UpstreamTimeout: 504,
    errors.CorruptData: 500,
}


def status_for(exc: errors.PacsbridgeError) -> int:
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """A small JSON body every client can show; never echoes patient data (messages name tags only)."""
    return JSONResponse({"status": status, "message": message}, status_code=status, headers=headers)


async def handle_domain_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.PacsbridgeError)
    status = status_for(exc)
    headers = {"Retry-After": "5"} if status in (503, 504) else None
    return error_response(status, exc.message, headers)
