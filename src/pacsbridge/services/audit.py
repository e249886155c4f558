"""Noting which patients and studies a request touched, for the audit trail.

The door that received the request opens a note (``noting``) and records the event when the answer
is sent; the use cases (search, retrieve, ingest) add what they touched with ``touched``. A context
variable carries the note, so no use case signature changes and one made without a note (a CLI
import, a test) simply notes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

from ..domain.audit import AccessNote

_current: ContextVar[AccessNote | None] = ContextVar("pacsbridge_access_note", default=None)


@contextlib.contextmanager
def noting() -> Iterator[AccessNote]:
    note = AccessNote()
    token = _current.set(note)
    try:
        yield note
    finally:
        _current.reset(token)


def touched(patient_id: str | None, study_uid: str | None) -> None:
    note = _current.get()
    if note is not None:
        note.add(patient_id, study_uid)


def touched_all(pairs: Iterable[tuple[str | None, str | None]]) -> None:
    note = _current.get()
    if note is not None:
        for patient_id, study_uid in pairs:
            note.add(patient_id, study_uid)
