"""What the FHIR door's routes are given (built by ``app.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from ...services.fhir_resources import ResourceService
from ...services.imaging_studies import ImagingStudyService
from ...services.orders import OrderService
from ...services.patients import PatientDirectory


@dataclass(frozen=True)
class FhirConfig:
    root: str = "/fhir"
    public_url: str | None = None  # else the request's own base URL
    dicomweb_url: str | None = None  # the Endpoint's address; else <server>/<dicomweb_root>
    dicomweb_root: str = "/dicomweb"
    default_count: int = 20
    max_count: int = 200
    software_version: str = "0"
    max_resource_bytes: int = 4 * 1024 * 1024  # a larger request body is refused (413 too-long)


@dataclass(frozen=True)
class FhirContext:
    orders: OrderService  # ServiceRequest writes (with their worklist side effects)
    service_requests: ResourceService  # ServiceRequest reads, history and search
    patients: ResourceService  # Patient: create, read, update, delete, search
    directory: PatientDirectory  # patient=Patient/x in ImagingStudy searches
    studies: ImagingStudyService
    config: FhirConfig

    def server_url(self, request: Request) -> str:
        """The server as the client reaches it (``public_url``, else the request's own)."""
        return (self.config.public_url or str(request.base_url)).rstrip("/")

    def base_url(self, request: Request) -> str:
        """The FHIR base (``[base]`` of http.html): fullUrls, links and Locations start with it."""
        return self.server_url(request) + self.config.root

    def dicomweb_url(self, request: Request) -> str:
        """The DICOMweb service base the Endpoint names."""
        return (self.config.dicomweb_url or self.server_url(request) + self.config.dicomweb_root).rstrip("/")
