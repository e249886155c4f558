"""Every resource the FHIR door accepts or emits is checked against the FHIR R4 model (fhir.resources R4B).

See: FHIR R4 validation.html, operationoutcome.html (issue.expression is a FHIRPath location).

Rules:
1. A resource that fails is refused with one issue per problem, located by ``expression``
   (``ServiceRequest.contained[0].birthDate``) and never carrying the value: pydantic's errors hold the
   input, which may be a patient's name or birth date, and some messages quote it.
2. fhir.resources does not check required value-set bindings; the few codes the door relies on are
   checked here (``REQUIRED_CODES``).
3. A resource we emit that fails is our bug or the mapping file's: the answer is a 500 OperationOutcome,
   and the log names the resource and the failing elements (never their values).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from functools import cache
from typing import Any

import pydantic
from fhir.resources.R4B import get_fhir_model_class

from ...formats.fhir_rest import Issue, IssueType
from .errors import EmittedInvalid, InvalidResource

log = logging.getLogger(__name__)

FhirJson = dict[str, Any]

# Required bindings (R4 valuesets) of top-level codes the door and its use cases read.
REQUIRED_CODES: Mapping[tuple[str, str], frozenset[str]] = {
    ("ServiceRequest", "status"): frozenset(
        {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}),
    ("ServiceRequest", "intent"): frozenset(
        {"proposal", "plan", "directive", "order", "original-order", "reflex-order", "filler-order",
         "instance-order", "option"}),
    ("ServiceRequest", "priority"): frozenset({"routine", "urgent", "asap", "stat"}),
    ("Patient", "gender"): frozenset({"male", "female", "other", "unknown"}),
    ("ImagingStudy", "status"): frozenset({"registered", "available", "cancelled", "entered-in-error", "unknown"}),
    ("Endpoint", "status"): frozenset({"active", "suspended", "error", "off", "entered-in-error", "test"}),
}
_ELEMENT = re.compile(r"_?[A-Za-z][A-Za-z0-9]*")
_ISSUE_OF: Mapping[str, IssueType] = {"missing": "required", "extra_forbidden": "structure"}


@cache
def _model(resource_type: str) -> type[Any] | None:
    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError, AttributeError):
        return None


def problems(resource: FhirJson) -> list[Issue]:
    """What is wrong with a FHIR resource (JSON); empty when it is valid."""
    resource_type = resource.get("resourceType")
    model = _model(resource_type) if isinstance(resource_type, str) and _ELEMENT.fullmatch(resource_type) else None
    if model is None or not isinstance(resource_type, str):
        return [Issue("error", "structure", "resourceType is not a FHIR R4 resource type")]
    issues = [
        Issue("error", "code-invalid", f"{name} is not a code of its required value set", (f"{resource_type}.{name}",))
        for (kind, name), codes in REQUIRED_CODES.items()
        if kind == resource_type and name in resource and resource[name] not in codes
    ]
    try:
        model.model_validate(resource)
    except pydantic.ValidationError as exc:
        issues += [_issue(resource_type, error) for error in exc.errors(include_url=False)]
    except Exception as exc:  # fhir.resources raises KeyError/TypeError for some shapes (an unknown contained type)
        issues.append(Issue("error", "structure", f"the resource cannot be read as FHIR R4 ({type(exc).__name__})"))
    return issues


def check_input(resource: FhirJson, resource_type: str) -> FhirJson:
    """``resource`` if it is a valid ``resource_type``; else InvalidResource (400) listing every problem."""
    if resource.get("resourceType") != resource_type:
        raise InvalidResource(f"the body must be a {resource_type} resource", [
            Issue("error", "invalid", f"the body must be a {resource_type} resource", ("resourceType",))])
    issues = problems(resource)
    if issues:
        raise InvalidResource(f"the {resource_type} is not valid FHIR R4", issues)
    return resource


def check_output(resource: FhirJson) -> FhirJson:
    """``resource`` as it is sent (resourceType, id and meta first) if it is valid; else EmittedInvalid (500),
    logged with the failing elements (rule 3)."""
    issues = problems(resource)
    if not issues:
        head: FhirJson = {k: resource[k] for k in ("resourceType", "id", "meta") if k in resource}
        return {**head, **resource}
    kind, id_ = resource.get("resourceType"), resource.get("id")
    where = sorted({e for issue in issues for e in issue.expression} or {"(the resource)"})
    log.error("emitted %s/%s fails FHIR R4 validation at %s (a pacsbridge bug, or a bug of the mapping "
              "file that built it)", kind, id_, ", ".join(where))
    raise EmittedInvalid(f"{kind}/{id_} as built here is not valid FHIR R4 (at {', '.join(where)}); "
                         "the server log says more")


def _issue(resource_type: str, error: Any) -> Issue:
    location = _expression(resource_type, error.get("loc", ()))
    kind = str(error.get("type", ""))
    return Issue("error", _ISSUE_OF.get(kind, "value"), _message(error), (location,))


def _expression(resource_type: str, loc: tuple[Any, ...]) -> str:
    """A FHIRPath-like location from pydantic's ``loc`` (list indexes in brackets, validator names dropped)."""
    out = resource_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and _ELEMENT.fullmatch(part):
            out += "." + part
    return out


def _message(error: Mapping[str, Any]) -> str:
    """pydantic's message without the input (rule 1)."""
    kind = str(error.get("type", ""))
    if kind == "missing":
        return "required element is missing"
    if kind == "extra_forbidden":
        return "unknown element"
    text = str(error.get("msg", "")).removeprefix("Value error, ").strip()
    given = error.get("input")
    if isinstance(given, dict | list) or given is None:
        return text or "invalid value"
    shown = str(given)
    if not text or (shown and shown in text) or (len(shown) > 2 and shown.lower() in text.lower()):
        return f"invalid value ({kind or 'value_error'})"
    return text
