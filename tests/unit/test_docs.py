"""The docs stay true: every setting, route and failure reason is documented (datasette's habit)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from pacsbridge.domain.store import FailureReason
from pacsbridge.settings import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs"


def setting_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            names += setting_names(kind, prefix + name + ".")
        else:
            names.append(prefix + name)
    return names


def test_every_setting_is_in_the_configuration_reference() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [name for name in setting_names(Settings) if f"| `{name}` |" not in text]
    assert not missing, f"document these settings in docs/configuration.md: {missing}"


def test_every_failure_reason_is_in_the_conformance_statement() -> None:
    text = (DOCS / "dicomweb.md").read_text()
    missing = [r.name for r in FailureReason if f"0x{r.value:04X}" not in text]
    assert not missing, f"document these STOW failure reasons in docs/dicomweb.md: {missing}"


def test_every_dicomweb_route_is_in_the_conformance_statement() -> None:
    from pacsbridge.adapters.dicomweb.routes import routes

    text = (DOCS / "dicomweb.md").read_text()
    paths = {route.path for route in routes(None)}  # type: ignore[arg-type]
    missing = [p for p in sorted(paths) if f"`{p}`" not in text]
    assert not missing, f"document these routes in docs/dicomweb.md: {missing}"


def test_every_fhir_search_parameter_is_in_the_conformance_statement() -> None:
    from pacsbridge.adapters.fhir.capability import DECLARED

    text = (DOCS / "fhir.md").read_text()
    missing = [f"{d.type}.{name}" for d in DECLARED for name in d.params if f"`{name}`" not in text]
    assert not missing, f"document these FHIR search parameters in docs/fhir.md: {missing}"
    assert all(f"`{d.type}`" in text for d in DECLARED)
