"""What every DICOMweb handler needs: the services, the settings it reads, and per-request helpers."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from ...services.ingest import IngestService
from ...services.retrieve import RetrieveService
from ...services.search import SearchService


@dataclass(frozen=True)
class DicomwebConfig:
    root: str = "/dicomweb"
    public_url: str | None = None
    qido_default_limit: int | None = None
    qido_max_limit: int = 1000
    strict_accept: bool = False
    stow_max_bytes: int = 0


@dataclass(frozen=True)
class DicomwebContext:
    search: SearchService
    retrieve: RetrieveService
    ingest: IngestService
    config: DicomwebConfig

    def base_url(self, request: Request) -> str:
        """The DICOMweb root as the client reaches it (for RetrieveURL and BulkDataURI)."""
        if self.config.public_url:
            return self.config.public_url.rstrip("/") + self.config.root
        return str(request.base_url).rstrip("/") + self.config.root
