"""The one table from core errors to DIMSE failure statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).

Upstream failures take codes of the "Unable to process" range (C000-CFFF, meaning left to the
implementation), one per cause, so that an SCU's log tells them apart; the ErrorComment says more.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from ...domain import errors

UNABLE_TO_PROCESS = 0xC000
UPSTREAM_UNAVAILABLE = 0xC001
UPSTREAM_TIMEOUT = 0xC002
UPSTREAM_FAILED = 0xC003
IDENTIFIER_DOES_NOT_MATCH = 0xA900

STATUS: dict[type[errors.PacsbridgeError], int] = {
    errors.UpstreamFailed: UPSTREAM_FAILED,
    errors.UpstreamTimeout: UPSTREAM_TIMEOUT,
    errors.UpstreamUnavailable: UPSTREAM_UNAVAILABLE,
    errors.InvalidInput: IDENTIFIER_DOES_NOT_MATCH,
}


def status_for(exc: errors.PacsbridgeError) -> int:
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return UNABLE_TO_PROCESS


def status_dataset(code: int, comment: str = "") -> Dataset:
    """A DIMSE status with its Error Comment (LO: at most 64 characters; never patient data)."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds
