"""The one text form of a moment that pacsbridge's own records use (signing keys, clients, audit)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_stamp(moment: datetime | None = None) -> str:
    """ISO 8601 in UTC with microseconds and ``Z`` (``2026-11-22T06:31:23.123456Z``): sorts as text."""
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
