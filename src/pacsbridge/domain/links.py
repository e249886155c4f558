"""How a study is linked to the request it answers, and which links act on their own.

See: docs/orders.md "Study arrival"; docs/matching.md.

Rules:
1. ``reference``: the study names the request (step ID, requested procedure ID, pre-assigned Study
   Instance UID, accession number). ``manual``: a person linked it. ``auto-certain`` / ``auto-unsure``:
   the matching file scored it. ``unlinked``: a person undid a link (kept, with its history).
2. Only ``reference``, ``manual`` and ``auto-certain`` links act: the request is completed, subscribers
   are told, ImagingStudy.basedOn names the request. ``auto-unsure`` waits for a person.
3. Every change of a link is kept as an event: who (``pacsbridge`` or the person), when, why.
"""

from __future__ import annotations

import enum


class LinkStatus(enum.Enum):
    REFERENCE = "reference"
    MANUAL = "manual"
    AUTO_CERTAIN = "auto-certain"
    AUTO_UNSURE = "auto-unsure"
    UNLINKED = "unlinked"

    @property
    def acts(self) -> bool:
        """Rule 2: does a link in this status complete its request and set basedOn?"""
        return self in (LinkStatus.REFERENCE, LinkStatus.MANUAL, LinkStatus.AUTO_CERTAIN)


ACTING = frozenset(s.value for s in LinkStatus if s.acts)
