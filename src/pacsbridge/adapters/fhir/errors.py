"""The one table from core errors to FHIR answers: HTTP status and OperationOutcome issue code.

See: FHIR R4 http.html (status codes of each interaction), operationoutcome.html, valueset-issue-type.
Messages come from the core, which never puts patient values in them (domain/errors.py); the door's own
messages follow the same rule.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import orjson
from starlette.responses import Response

from ...domain import errors
from ...formats.fhir_rest import Issue, IssueType, Severity, operation_outcome
from ...services.fhir_resources import Gone

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json; charset=utf-8"


class UnsupportedMediaType(errors.Unsupported):
    """A request body in a format the door does not read (415; only JSON is offered)."""


class InvalidResource(errors.InvalidInput):
    """A resource that fails FHIR R4 validation: one issue per problem, each naming its location."""

    def __init__(self, message: str, issues: Sequence[Issue]) -> None:
        super().__init__(message)
        self.issues = tuple(issues)


class EmittedInvalid(errors.PacsbridgeError):
    """A resource we were about to send fails FHIR R4 validation: our bug, or the mapping file's (500)."""


class MethodNotAllowed(errors.PacsbridgeError):
    """The path exists, the method does not (405)."""

    def __init__(self, message: str, allowed: Sequence[str]) -> None:
        super().__init__(message)
        self.allowed = tuple(allowed)


# Most specific first is not needed: the lookup walks each error's MRO (Gone before NotFound).
TABLE: dict[type[errors.PacsbridgeError], tuple[int, IssueType]] = {
    errors.InvalidInput: (400, "invalid"),
    errors.Forbidden: (403, "forbidden"),
    errors.NotFound: (404, "not-found"),
    Gone: (410, "deleted"),
    MethodNotAllowed: (405, "not-supported"),
    errors.Conflict: (409, "conflict"),
    errors.BusinessRule: (422, "business-rule"),
    errors.PreconditionFailed: (412, "conflict"),
    errors.Unsupported: (406, "not-supported"),
    UnsupportedMediaType: (415, "not-supported"),
    errors.TooLarge: (413, "too-long"),
    errors.MappingError: (422, "processing"),
    errors.UpstreamUnavailable: (503, "transient"),
    errors.UpstreamTimeout: (504, "timeout"),
    errors.UpstreamFailed: (502, "transient"),
    errors.CorruptData: (500, "exception"),
    EmittedInvalid: (500, "exception"),
}


def status_of(exc: errors.PacsbridgeError) -> tuple[int, IssueType]:
    for kind in type(exc).__mro__:
        if kind in TABLE:
            return TABLE[kind]
    return 500, "exception"


def fhir_response(body: object, status: int = 200, headers: dict[str, str] | None = None,
                  pretty: bool = False) -> Response:
    """A FHIR JSON answer (``application/fhir+json; charset=utf-8``)."""
    content = orjson.dumps(body, option=orjson.OPT_INDENT_2 if pretty else 0)
    return Response(content, status_code=status, headers=headers, media_type=FHIR_JSON)


def outcome_response(status: int, code: IssueType, diagnostics: str, expression: Sequence[str] = (),
                     headers: dict[str, str] | None = None) -> Response:
    """An answer whose body is an OperationOutcome with one issue (``error`` from 400 on)."""
    severity: Severity = "error" if status >= 400 else "information"
    return fhir_response(operation_outcome([Issue(severity, code, diagnostics, tuple(expression))]), status, headers)


def error_response(exc: errors.PacsbridgeError) -> Response:
    """The FHIR answer to a core error (the table above)."""
    status, code = status_of(exc)
    headers: dict[str, str] = {}
    if status in (503, 504):
        headers["Retry-After"] = "5"
    if isinstance(exc, MethodNotAllowed):
        headers["Allow"] = ", ".join(exc.allowed)
    if isinstance(exc, InvalidResource) and exc.issues:
        return fhir_response(operation_outcome(exc.issues), status, headers)
    return outcome_response(status, code, exc.message, headers=headers)


def unexpected_response() -> Response:
    """The answer to an exception the door did not expect (logged by the caller, never shown)."""
    return outcome_response(500, "exception", "internal error; the server log has the details")
