"""FHIR resources pacsbridge holds for others (the EMR's Patients) and reads of the ServiceRequests it
holds: versioned create, read, vread, update, delete, history and search.

See: FHIR R4 http.html (create, update, conditional create, delete, vread, history; versions and ETags).

Rules:
1. Every write is a new version (``meta.versionId`` counts from 1, ``meta.lastUpdated`` is set here);
   a delete is a version too, after which a read answers 410 and an update creates the next version.
2. ``If-Match`` is checked against the version read, and again in the commit (``ResourceWrite.expected``),
   so two writers of the same version never both succeed.
3. Types with side effects (ServiceRequest) are written through their own use case; this service then
   only reads them (``writable=False``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from ..domain.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from ..formats.fhir_search import Criterion
from .fhir_index import index_entries
from .orders import fhir_now, next_version
from .ports import OrderChange, OrderRecords, ResourceVersion, ResourceWrite

FhirJson = dict[str, Any]


class Gone(NotFound):
    """The resource existed and was deleted (HTTP 410)."""


class ResourceService:
    def __init__(self, records: OrderRecords, type_: str, writable: bool = True) -> None:
        self.records = records
        self.type = type_
        self.writable = writable

    async def read(self, id_: str, version: int | None = None) -> ResourceVersion:
        found = await self.records.resource(self.type, id_, version)
        if found is None:
            raise NotFound(f"{self.type}/{id_}" + (f" version {version}" if version else "") + " is not known")
        if found.resource is None:
            raise Gone(f"{self.type}/{id_} was deleted")
        return found

    async def history(self, id_: str) -> list[ResourceVersion]:
        versions = await self.records.history(self.type, id_)
        if not versions:
            raise NotFound(f"{self.type}/{id_} is not known")
        return versions

    async def search(self, where: Sequence[Criterion], sort: Sequence[tuple[str, bool]], offset: int, count: int
                     ) -> tuple[list[ResourceVersion], int]:
        return await self.records.find_resources(self.type, where, sort, offset, count)

    async def create(self, resource: FhirJson, matches: Sequence[ResourceVersion] | None = None
                     ) -> tuple[ResourceVersion, bool]:
        """POST (``matches``: what If-None-Exist found, None when unconditional); (version, created)."""
        self._check_writable()
        if matches is not None:
            if len(matches) > 1:
                raise PreconditionFailed(f"If-None-Exist matches {len(matches)} resources")
            if matches:
                return matches[0], False
        return await self._write(str(uuid.uuid4()), resource, None, "POST"), True

    async def update(self, id_: str, resource: FhirJson, if_match: int | None = None) -> tuple[ResourceVersion, bool]:
        """PUT (update, or create under the client's id); (version, created)."""
        self._check_writable()
        if resource.get("id") != id_:
            raise InvalidInput("the resource's id must equal the id in the URL")
        current = await self.records.resource(self.type, id_)
        if if_match is not None and (current is None or current.version != if_match):
            raise PreconditionFailed(f"{self.type}/{id_} is not at version {if_match}")
        created = current is None or current.resource is None
        return await self._write(id_, resource, current, "PUT"), created

    async def delete(self, id_: str) -> ResourceVersion | None:
        self._check_writable()
        current = await self.records.resource(self.type, id_)
        if current is None or current.resource is None:
            return None
        gone = ResourceVersion(self.type, id_, current.version + 1, fhir_now(), None, "DELETE")
        await self.records.commit(OrderChange(resources=(ResourceWrite(gone, current.version),)))
        return gone

    async def _write(self, id_: str, given: FhirJson, current: ResourceVersion | None, method: str) -> ResourceVersion:
        stored = next_version(self.type, id_, given, current.version if current else 0, method)
        try:
            await self.records.commit(OrderChange(resources=(
                ResourceWrite(stored, current.version if current else 0, index_entries(stored.resource or {})),)))
        except Conflict as exc:
            raise PreconditionFailed(f"{self.type}/{id_} changed meanwhile: {exc.message}") from None
        return stored

    def _check_writable(self) -> None:
        if not self.writable:
            raise InvalidInput(f"{self.type} is written through its own workflow")
