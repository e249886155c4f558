"""Who is asking, and what they may see.

See: standards.md §F.1, §F.4. The search and retrieve use cases are the one place that applies
``Principal.patient_ids``, so every door gets the same rule.

Rules:
1. A token's claims become a principal here, whatever door or issuer it came from: ``sub`` and
   ``client_id`` say who, ``scope``/``scp`` what, and the patient claim whose studies alone it sees.
2. A token with only ``patient/...`` clinical scopes and no patient in context sees no patient at all
   (an empty set), never every patient.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .scopes import Need, grants_of, split_scope_claim


@dataclass(frozen=True)
class Principal:
    """An authenticated caller (or the operator's principal on a route opened in settings)."""

    subject: str
    client_id: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
    # None: no patient context, all patients visible. A set: only studies of these PatientIDs.
    patient_ids: frozenset[str] | None = None
    operator: bool = False  # the operator's principal on a route opened in settings: every need is met

    def sees_patient(self, patient_id: str | None) -> bool:
        return self.patient_ids is None or (patient_id is not None and patient_id in self.patient_ids)

    def allows(self, need: Need) -> bool:
        return self.operator or grants_of(self.scopes).allows(need)


ANONYMOUS = Principal(subject="anonymous")
SYSTEM = Principal(subject="system")


def principal_from_claims(claims: Mapping[str, Any], patient_claim: str = "patient") -> Principal:
    """The principal a validated token (JWT claims or an introspection answer) stands for."""
    scopes = split_scope_claim(claims.get("scope")) | split_scope_claim(claims.get("scp"))
    client_id = claims.get("client_id") or claims.get("azp") or claims.get("cid")
    subject = claims.get("sub") or client_id or "unknown"
    patient = claims.get(patient_claim)
    patient_ids: frozenset[str] | None
    if isinstance(patient, str) and patient:
        patient_ids = frozenset({patient})
    elif isinstance(patient, list) and patient:
        patient_ids = frozenset(p for p in patient if isinstance(p, str) and p)
    elif grants_of(scopes).patient_level_only:
        patient_ids = frozenset()
    else:
        patient_ids = None
    return Principal(subject=str(subject), client_id=str(client_id) if client_id else None,
                     scopes=scopes, patient_ids=patient_ids)
