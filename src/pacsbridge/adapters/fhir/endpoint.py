"""The one Endpoint: where the images of every ImagingStudy are retrieved (our DICOMweb service).

See: FHIR R4 endpoint.html, valueset-endpoint-connection-type.html; standards.md §E.4; SMART Imaging
Access (``requires-access-token``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from ...domain.errors import InvalidInput, NotFound
from ...formats.fhir_search import Criterion, SearchParam, SearchRequest, Token, string_matches, token_matches
from .context import FhirContext

FhirJson = dict[str, Any]

CONNECTION_TYPES = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
REQUIRES_ACCESS_TOKEN = "http://hl7.org/fhir/smart-app-launch/StructureDefinition/requires-access-token"
NAME = "pacsbridge DICOMweb"

ENDPOINT_PARAMS: dict[str, SearchParam] = {p.name: p for p in (
    SearchParam("_id", "token"),
    SearchParam("status", "token"),
    SearchParam("connection-type", "token"),
    SearchParam("name", "string"),
)}
ENDPOINT_DOCS = {"connection-type": f"{CONNECTION_TYPES}|dicom-wado-rs"}


def endpoint_id(ctx: FhirContext) -> str:
    return ctx.studies.view.endpoint_id


def endpoint(ctx: FhirContext, request: Request) -> FhirJson:
    """The Endpoint every ImagingStudy names: DICOMweb WADO-RS at our service base (§E.4)."""
    return {
        "resourceType": "Endpoint",
        "id": endpoint_id(ctx),
        "extension": [{"url": REQUIRES_ACCESS_TOKEN, "valueBoolean": True}],
        "status": "active",
        "connectionType": {"system": CONNECTION_TYPES, "code": "dicom-wado-rs", "display": "DICOM WADO-RS"},
        "name": NAME,
        "payloadType": [{"text": "DICOM WADO-RS"}],
        "payloadMimeType": ["application/dicom"],
        "address": ctx.dicomweb_url(request),
    }


def read(ctx: FhirContext, request: Request, id_: str) -> FhirJson:
    if id_ != endpoint_id(ctx):
        raise NotFound(f"Endpoint/{id_} is not known")
    return endpoint(ctx, request)


def matches(resource: FhirJson, search: SearchRequest) -> bool:
    """Whether the Endpoint meets every criterion of a search."""
    return all(_meets(resource, c) for c in search.criteria)


def _meets(resource: FhirJson, c: Criterion) -> bool:
    if c.modifier == "missing":
        return c.values[0] is False  # every declared element is present
    if c.name == "name":
        found = any(isinstance(v, str) and string_matches(v, resource["name"], c.modifier) for v in c.values)
    else:
        codes = {"_id": (None, resource["id"]), "status": (None, resource["status"]),
                 "connection-type": (resource["connectionType"]["system"], resource["connectionType"]["code"])}
        system, code = codes[c.name]
        if any(not isinstance(v, Token) for v in c.values):
            raise InvalidInput(f"{c.name}: not a token")
        found = any(token_matches(v, system, code) for v in c.values if isinstance(v, Token))
    return not found if c.modifier == "not" else found
