"""What went wrong, in the core's words; each door maps these to its own protocol once.

See: DESIGN.md rule 4. Messages must never contain PHI: they may name attributes and UIDs, not values
of patient attributes.
"""

from __future__ import annotations

import os
import traceback


class PacsbridgeError(Exception):
    """Base of every error the core raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(PacsbridgeError):
    """The caller sent something malformed (a bad query value, a corrupt instance)."""


class NotFound(PacsbridgeError):
    """The named study, series, instance, frame or attribute does not exist (here)."""


class Conflict(PacsbridgeError):
    """Well-formed, but at odds with what is stored or with the request's own context."""


class Forbidden(PacsbridgeError):
    """The principal may not see or change this."""


class CorruptData(PacsbridgeError):
    """A stored object cannot be read as its header says (short Pixel Data, broken fragments): a fault
    of the data we hold, not of the request."""


class Unsupported(PacsbridgeError):
    """Understood but not offered: a SOP class, transfer syntax or media type we cannot produce."""


class TooLarge(PacsbridgeError):
    """The request asks for more than the server is configured to give in one answer."""


class UpstreamUnavailable(PacsbridgeError):
    """A remote (archive, identity provider) cannot be reached or is out of service; retry later."""


class UpstreamTimeout(UpstreamUnavailable):
    """A remote archive did not answer within its configured timeout."""


class UpstreamFailed(UpstreamUnavailable):
    """A remote archive answered, but with an error or something we cannot read (a bad gateway)."""


class MappingError(PacsbridgeError):
    """A declarative mapping file is invalid; the message names file, line and field."""


class BusinessRule(PacsbridgeError):
    """Well-formed, but a move the workflow forbids (a ServiceRequest status change, an MPPS update
    after the step ended); FHIR answers 422 business-rule."""


class PreconditionFailed(PacsbridgeError):
    """A condition the caller set does not hold (If-Match with another version, a conditional create
    matching several resources); HTTP 412."""


def without_values(exc: BaseException) -> str:
    """An unexpected exception as the log may keep it: its class (and its driver error's class and
    SQLSTATE) and where it was raised, never its message. Database drivers put the offending row in
    theirs (PostgreSQL's DETAIL holds patient names and IDs), which the log must not receive."""
    names = [type(exc).__name__]
    original = getattr(exc, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's exception
    if isinstance(original, BaseException):
        names.append(type(original).__name__)
        state = getattr(original, "sqlstate", None)
        if isinstance(state, str):
            names.append(f"SQLSTATE {state}")
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = " < ".join(f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}" for f in reversed(frames))
    return " / ".join(names) + (f" at {where}" if where else "")
