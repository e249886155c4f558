"""OAuth scopes: SMART v2 clinical scopes and pacsbridge's own door scopes, and what each route needs.

See: SMART App Launch v2 "Scopes and Launch Context"; standards.md §F.1–F.2.

Rules:
1. A SMART scope is ``<patient|user|system>/<Resource|*>.<perms>``, perms a non-empty subset of
   ``cruds`` in that order. The v1 forms ``.read`` (= ``rs``), ``.write`` (= ``cud``: write does not
   imply read) and ``.*`` (= ``cruds``) are accepted. Anything malformed grants nothing: a scope is
   never widened by guessing. Scopes with a ``?param=value`` restriction grant nothing here either
   (we cannot enforce the restriction on images, so we do not honour the grant).
2. Door scopes (``dicomweb.read``, ``dicomweb.write``, ...) name a door's capability directly; a need
   is met by its door scope or by a SMART scope on its FHIR resource with the needed permissions
   (SMART Imaging Access: ``ImagingStudy.rs`` reads images).
3. No scope string grants everything: a token saying ``*`` gets nothing for it. The operator's
   principal on routes opened in settings is marked as such (``Principal.operator``), not by a scope.
4. One need per action: a FHIR route that creates needs ``c``, one that updates ``u``, deletes ``d``,
   reads ``r``, searches ``s`` (SMART v2), so ``system/ServiceRequest.c`` may place orders and nothing else.
5. ``ANY_CALLER`` is met by whoever the access middleware let in (a valid token, or an opened route); it
   is only for answers that tell nothing beyond the public CapabilityStatement (the FHIR door's 404/405).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

PERMISSIONS = "cruds"
_SMART = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.([a-z*]+)$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}

# pacsbridge's door scopes, with what each allows (docs/security.md lists them).
DOOR_SCOPES = {
    "dicomweb.read": "QIDO-RS, WADO-RS, WADO-URI, rendered and thumbnails",
    "dicomweb.write": "STOW-RS",
    "worklist.read": "Modality Worklist queries",
    "worklist.write": "MPPS and worklist changes",
    "orders.read": "FHIR ServiceRequest and Patient: read, version read, history and search",
    "orders.write": "FHIR ServiceRequest and Patient: create, update and delete (the worklist follows)",
    "gdt": "the GDT file interface",
    "ecrf.read": "eCRF item links",
    "links.review": "review and change study-request links",
    "admin": "the admin API (audit trail, clients, keys)",
}


@dataclass(frozen=True)
class SmartScope:
    context: str  # patient | user | system
    resource: str  # a FHIR resource type or "*"
    permissions: frozenset[str]


@dataclass(frozen=True)
class Need:
    """What a route requires: its door scope, or a SMART scope on ``resource`` with ``permissions``."""

    scope: str
    resource: str | None = None
    permissions: str = ""
    anyone: bool = False  # rule 5

    def describe(self) -> str:
        """The scopes that would satisfy this need, for the ``scope`` of a 403's WWW-Authenticate."""
        if self.resource is None:
            return self.scope
        return f"{self.scope} system/{self.resource}.{self.permissions}"


DICOMWEB_SEARCH = Need("dicomweb.read", "ImagingStudy", "s")
DICOMWEB_READ = Need("dicomweb.read", "ImagingStudy", "r")
DICOMWEB_WRITE = Need("dicomweb.write", "ImagingStudy", "c")
ADMIN = Need("admin")
LINKS_REVIEW = Need("links.review")

# The FHIR door (rule 4); ImagingStudy and Endpoint use DICOMWEB_SEARCH / DICOMWEB_READ.
ORDERS_READ = Need("orders.read", "ServiceRequest", "r")
ORDERS_SEARCH = Need("orders.read", "ServiceRequest", "s")
ORDERS_CREATE = Need("orders.write", "ServiceRequest", "c")
ORDERS_UPDATE = Need("orders.write", "ServiceRequest", "u")
ORDERS_DELETE = Need("orders.write", "ServiceRequest", "d")
PATIENTS_READ = Need("orders.read", "Patient", "r")
PATIENTS_SEARCH = Need("orders.read", "Patient", "s")
PATIENTS_CREATE = Need("orders.write", "Patient", "c")
PATIENTS_UPDATE = Need("orders.write", "Patient", "u")
PATIENTS_DELETE = Need("orders.write", "Patient", "d")
ANY_CALLER = Need("fhir", anyone=True)  # rule 5


def parse_smart(scope: str) -> SmartScope | None:
    """A SMART clinical scope, or None when ``scope`` is not one (or is malformed)."""
    m = _SMART.match(scope)
    if m is None:
        return None
    context, resource, perms = m.groups()
    perms = _V1.get(perms, perms)
    if not perms or not _in_order(perms):
        return None
    return SmartScope(context, resource, frozenset(perms))


def _in_order(perms: str) -> bool:
    position = -1
    for letter in perms:
        found = PERMISSIONS.find(letter)
        if found <= position:  # unknown letter (-1), repeated or out of order
            return False
        position = found
    return True


@dataclass(frozen=True)
class Grants:
    """What a set of granted scopes allows."""

    plain: frozenset[str]
    smart: tuple[SmartScope, ...]

    def allows(self, need: Need) -> bool:
        if need.anyone or need.scope in self.plain:
            return True
        if need.resource is None:
            return False
        wanted = set(need.permissions)
        return any(s.resource in (need.resource, "*") and wanted <= s.permissions for s in self.smart)

    @property
    def patient_level_only(self) -> bool:
        """Every clinical grant is ``patient/...`` and there are no door scopes: the token is useless
        without a patient in context."""
        return bool(self.smart) and all(s.context == "patient" for s in self.smart) and not (
            self.plain & DOOR_SCOPES.keys())


@lru_cache(maxsize=1024)
def grants_of(scopes: frozenset[str]) -> Grants:
    smart = []
    plain = set()
    for scope in scopes:
        parsed = parse_smart(scope)
        if parsed is not None:
            smart.append(parsed)
        elif "/" not in scope and "?" not in scope:
            plain.add(scope)
    return Grants(frozenset(plain), tuple(sorted(smart, key=repr)))


def split_scope_claim(value: object) -> frozenset[str]:
    """The scopes of a token: ``scope`` is a space-separated string (RFC 8693/9068), ``scp`` a list
    (Entra ID, Okta); anything else carries none."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list | tuple):
        return frozenset(s for s in value if isinstance(s, str) and s and " " not in s)
    return frozenset()


def narrow(requested: frozenset[str], allowed: frozenset[str]) -> frozenset[str]:
    """The requested scopes a client may have: each one allowed as such, or a SMART scope covered by
    an allowed SMART scope of the same context (same resource or ``*``, at least its permissions)."""
    allowed_smart = [s for s in (parse_smart(a) for a in allowed) if s is not None]
    granted = set()
    for scope in requested:
        if scope in allowed:
            granted.add(scope)
            continue
        wanted = parse_smart(scope)
        if wanted is not None and any(
            a.context == wanted.context and a.resource in (wanted.resource, "*")
            and wanted.permissions <= a.permissions for a in allowed_smart
        ):
            granted.add(scope)
    return frozenset(granted)
