"""The EMR's FHIR server, read with our credentials: where the Patients a ServiceRequest references live."""

from __future__ import annotations

from typing import Any

from ..domain.errors import UpstreamFailed
from .http_client import AuthorizedClient

FHIR_JSON = "application/fhir+json"


class EmrFhir:
    """``PatientSource`` over an EMR's FHIR base (R4, JSON)."""

    def __init__(self, client: AuthorizedClient) -> None:
        self.client = client
        self.base_url = str(client.client.base_url)

    async def read(self, type_: str, id_: str) -> dict[str, Any] | None:
        response = await self.client.request("GET", f"/{type_}/{id_}", headers={"Accept": FHIR_JSON})
        if response.status_code in (404, 410):
            return None
        if response.status_code >= 300:
            raise UpstreamFailed(f"{self.client.remote} answered {response.status_code} to a {type_} read")
        try:
            resource = response.json()
        except ValueError:
            raise UpstreamFailed(f"{self.client.remote} sent a {type_} that is not JSON") from None
        if not isinstance(resource, dict) or resource.get("resourceType") != type_:
            raise UpstreamFailed(f"{self.client.remote} sent something else than a {type_}")
        return resource

    async def close(self) -> None:
        await self.client.close()
