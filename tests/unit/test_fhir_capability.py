"""The CapabilityStatement is valid FHIR R4 and says exactly what the FHIR door's routes do
(adapters/fhir/capability.py, routes.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from pacsbridge.adapters.auth.middleware import GuardedRoute
from pacsbridge.adapters.fhir.capability import DECLARED, capability_statement
from pacsbridge.adapters.fhir.context import FhirConfig, FhirContext
from pacsbridge.adapters.fhir.routes import NEEDS, FhirRoute, public_routes, routes
from pacsbridge.domain.scopes import ANY_CALLER, grants_of

BASE = "https://pacs.example/fhir"


def statement() -> dict:
    return capability_statement(BASE, "1.2.3", datetime(2024, 1, 31, tzinfo=UTC))


def door_routes() -> list:
    ctx = FhirContext(None, None, None, None, None, FhirConfig())  # type: ignore[arg-type]  # routes only
    return routes(ctx)


def by_type(cs: dict) -> dict[str, dict]:
    (rest,) = cs["rest"]
    return {r["type"]: r for r in rest["resource"]}


def test_it_validates_as_fhir_r4() -> None:
    cs = statement()
    CapabilityStatement.model_validate(cs)
    assert cs["fhirVersion"] == "4.0.1" and cs["kind"] == "instance" and cs["format"] == ["json"]
    assert cs["software"] == {"name": "pacsbridge", "version": "1.2.3"}
    assert cs["implementation"]["url"] == BASE
    (rest,) = cs["rest"]
    assert rest["mode"] == "server"
    (service,) = rest["security"]["service"]
    assert service["coding"] == [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                  "code": "SMART-on-FHIR"}]


def test_each_route_interaction_is_declared_and_each_declared_one_has_a_route() -> None:
    served = {(r.resource_type, r.interaction) for r in door_routes() if isinstance(r, FhirRoute)}
    declared = {(t, i["code"]) for t, r in by_type(statement()).items() for i in r["interaction"]}
    assert served == declared
    assert served == set(NEEDS)
    assert {t for t, _ in served} == {"ServiceRequest", "Patient", "ImagingStudy", "Endpoint"}


def test_per_resource_flags() -> None:
    resources = by_type(statement())
    for held in ("ServiceRequest", "Patient"):
        r = resources[held]
        assert {i["code"] for i in r["interaction"]} == {
            "read", "vread", "update", "delete", "history-instance", "create", "search-type"}
        assert r["conditionalCreate"] is True and r["versioning"] == "versioned-update" and r["readHistory"] is True
    assert resources["ImagingStudy"]["searchInclude"] == ["ImagingStudy:endpoint"]
    assert {i["code"] for i in resources["ImagingStudy"]["interaction"]} == {"read", "search-type"}
    assert resources["ImagingStudy"]["versioning"] == "no-version"


def test_search_params_come_from_the_declared_tables() -> None:
    resources = by_type(statement())
    for declared in DECLARED:
        listed = {(p["name"], p["type"]) for p in resources[declared.type]["searchParam"]}
        assert listed == {(p.name, p.type) for p in declared.params.values()}
    names = {p["name"] for p in resources["ImagingStudy"]["searchParam"]}
    assert {"identifier", "patient", "subject", "started", "modality", "status", "basedon", "endpoint"} <= names
    assert {"identifier", "status", "patient", "authored", "code"} <= {
        p["name"] for p in resources["ServiceRequest"]["searchParam"]}


def test_every_route_needs_the_scope_of_its_action() -> None:
    letters = {"read": "r", "vread": "r", "history-instance": "r", "search-type": "s", "create": "c",
               "update": "u", "delete": "d"}
    for route in door_routes():
        assert isinstance(route, GuardedRoute)
        if not isinstance(route, FhirRoute):
            assert route.need is ANY_CALLER  # the 404/405 answer
            continue
        need = route.need
        assert need.permissions == letters[route.interaction], route.path
        smart = f"system/{need.resource}.{need.permissions}"
        assert grants_of(frozenset({smart})).allows(need)
        other = "cruds".replace(need.permissions, "")
        assert not grants_of(frozenset({f"system/{need.resource}.{other}"})).allows(need), route.path
        if route.resource_type in ("ServiceRequest", "Patient"):
            assert need.resource == route.resource_type
            assert need.scope == ("orders.read" if need.permissions in "rs" else "orders.write")


def test_metadata_is_the_one_public_route() -> None:
    ctx = FhirContext(None, None, None, None, None, FhirConfig(root="/fhir"))  # type: ignore[arg-type]
    (route,) = public_routes(ctx)
    assert route.path == "/fhir/metadata" and route.methods == {"GET", "HEAD"}
