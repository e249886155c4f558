"""Who is asking, and what they may see.

The security issue fills in how a principal is authenticated; the search and retrieve use cases are
the one place that applies `Principal.patient_ids` so every door gets the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Principal:
    """An authenticated caller (or the operator's anonymous principal where access is opened)."""

    subject: str
    client_id: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
    # None: no patient context, all patients visible. A set: only studies of these PatientIDs.
    patient_ids: frozenset[str] | None = None

    def sees_patient(self, patient_id: str | None) -> bool:
        return self.patient_ids is None or (patient_id is not None and patient_id in self.patient_ids)


ANONYMOUS = Principal(subject="anonymous")
SYSTEM = Principal(subject="system")
