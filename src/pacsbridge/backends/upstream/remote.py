"""What the proxy archive needs from one upstream, whatever protocol it speaks.

Rules:
1. A remote translates its protocol's failures at this seam: ``UpstreamUnavailable`` when it cannot be
   reached (connection refused, association rejected or aborted), ``UpstreamTimeout`` when it did not
   answer within its timeout, ``UpstreamFailed`` when it answered with an error or something unreadable;
   ``NotFound`` for a scope it does not hold; ``InvalidInput`` for a query it refuses as malformed.
2. ``fetch`` writes each instance to a sealed spool file of the cache and yields its path; a remote whose
   instances arrive by another way (C-MOVE to our own SCP, which stores them in the cache) yields none.
3. ``store_many`` forwards files and never consumes them: the caller decides where they go next.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ...domain.model import DicomJson, InstanceRecord, Scope
from ...domain.query import Query
from ...services.ports import Spool


@dataclass(frozen=True)
class Capabilities:
    """What an upstream can do itself; the proxy does the rest locally (declared in settings)."""

    includefield: bool = True  # QIDO includefield (DIMSE: any return key)
    fuzzy_matching: bool = False  # fuzzymatching=true on person names
    uid_lists_anywhere: bool = False  # value lists beyond UI attributes (the patient context)


class Remote(Protocol):
    name: str
    capabilities: Capabilities

    async def search(self, query: Query) -> list[DicomJson]:
        """Results of a query as DICOM JSON, honouring its limit and offset."""
        ...

    def fetch(self, scope: Scope, spool: Spool) -> AsyncIterator[Path]:
        """The instances of a scope as sealed spool files (see rule 2); NotFound if it holds none."""
        ...

    async def store_many(self, items: Sequence[tuple[Path, InstanceRecord]]) -> list[bool | Exception]:
        """Forward Part 10 files; per item False (stored) or the exception that kept it out."""
        ...

    async def close(self) -> None: ...
