"""Imaging orders: a requested procedure with its scheduled steps, and the one status machine that ties
the EMR's ServiceRequest status to the steps a modality works through.

See: PS3.3 §7.3 (Imaging Service Request → Requested Procedure → Scheduled Procedure Step); PS3.4 Annex K
(worklist) and Annex F.7 (MPPS); FHIR R4 ServiceRequest.status; docs/orders.md (the same tables).

Rules:
1. The EMR owns the request status; pacsbridge moves it only to ``completed`` (a study arrived for it,
   or every step ended with at least one completed) or ``revoked`` (every step was discontinued).
2. Allowed request moves (anything else is refused with ``BusinessRule``)::

       draft     -> draft, active, revoked, entered-in-error
       active    -> active, on-hold, revoked, completed, entered-in-error
       on-hold   -> on-hold, active, revoked, entered-in-error
       completed -> completed, entered-in-error
       revoked   -> revoked, entered-in-error
       entered-in-error -> entered-in-error

3. A request leaving ``active`` for ``revoked`` or ``completed`` discontinues its scheduled steps; it is
   refused while a step is in progress (the modality is working: let its MPPS end the step first).
   ``entered-in-error`` is always allowed (a correction) and discontinues every open step.
4. Step moves: scheduled -> in-progress | completed | discontinued; in-progress -> completed |
   discontinued. Completed and discontinued are final.
5. Only the steps of an ``active`` request are on the worklist, while scheduled or in progress.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace

from .errors import BusinessRule
from .model import DicomJson


class RequestStatus(enum.Enum):
    """FHIR R4 ServiceRequest.status (request-status value set), ``unknown`` aside."""

    DRAFT = "draft"
    ACTIVE = "active"
    ON_HOLD = "on-hold"
    REVOKED = "revoked"
    COMPLETED = "completed"
    ENTERED_IN_ERROR = "entered-in-error"


class StepStatus(enum.Enum):
    SCHEDULED = "scheduled"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    DISCONTINUED = "discontinued"

    @property
    def final(self) -> bool:
        return self in (StepStatus.COMPLETED, StepStatus.DISCONTINUED)

    @property
    def dicom(self) -> str:
        """ScheduledProcedureStepStatus (0040,0020) on the worklist (PS3.3 C.4.10 defined terms)."""
        return {"scheduled": "SCHEDULED", "in-progress": "STARTED"}.get(self.value, self.value.upper())


R, S = RequestStatus, StepStatus
REQUEST_MOVES: dict[RequestStatus, frozenset[RequestStatus]] = {
    R.DRAFT: frozenset({R.DRAFT, R.ACTIVE, R.REVOKED, R.ENTERED_IN_ERROR}),
    R.ACTIVE: frozenset({R.ACTIVE, R.ON_HOLD, R.REVOKED, R.COMPLETED, R.ENTERED_IN_ERROR}),
    R.ON_HOLD: frozenset({R.ON_HOLD, R.ACTIVE, R.REVOKED, R.ENTERED_IN_ERROR}),
    R.COMPLETED: frozenset({R.COMPLETED, R.ENTERED_IN_ERROR}),
    R.REVOKED: frozenset({R.REVOKED, R.ENTERED_IN_ERROR}),
    R.ENTERED_IN_ERROR: frozenset({R.ENTERED_IN_ERROR}),
}
STEP_MOVES: dict[StepStatus, frozenset[StepStatus]] = {
    S.SCHEDULED: frozenset({S.IN_PROGRESS, S.COMPLETED, S.DISCONTINUED}),
    S.IN_PROGRESS: frozenset({S.COMPLETED, S.DISCONTINUED}),
    S.COMPLETED: frozenset(),
    S.DISCONTINUED: frozenset(),
}


def parse_request_status(text: str) -> RequestStatus:
    try:
        return RequestStatus(text)
    except ValueError:
        raise BusinessRule(f"ServiceRequest.status {text!r} is not one pacsbridge accepts "
                           f"({', '.join(s.value for s in RequestStatus)})") from None


@dataclass(frozen=True)
class ScheduledStep:
    """One Scheduled Procedure Step: what the worklist shows a modality (``item`` is its SPS item)."""

    sps_id: str
    status: StepStatus
    station_ae: str | None
    modality: str | None
    start_date: str | None  # DA
    start_time: str | None  # TM
    item: DicomJson


@dataclass(frozen=True)
class ImagingRequest:
    """A requested procedure, held under its ServiceRequest's id; ``attributes`` are its worklist
    attributes above the SPS sequence (patient, accession, requested procedure)."""

    request_id: str
    status: RequestStatus
    accession_number: str
    requested_procedure_id: str
    study_uid: str
    patient_id: str
    attributes: DicomJson
    steps: tuple[ScheduledStep, ...]

    @property
    def on_worklist(self) -> bool:
        return self.status is RequestStatus.ACTIVE

    def step(self, sps_id: str) -> ScheduledStep | None:
        return next((s for s in self.steps if s.sps_id == sps_id), None)


def check_request_move(old: RequestStatus, new: RequestStatus, steps: Iterable[ScheduledStep]) -> None:
    """Refuse a status change the machine does not allow (rules 2 and 3)."""
    if new not in REQUEST_MOVES[old]:
        raise BusinessRule(f"a ServiceRequest cannot go from {old.value} to {new.value}")
    if old is R.ACTIVE and new in (R.REVOKED, R.COMPLETED) and any(s.status is S.IN_PROGRESS for s in steps):
        raise BusinessRule(f"a procedure step is in progress: it must end (MPPS) before the request is {new.value}")


def steps_after_request(new: RequestStatus, steps: Iterable[ScheduledStep]) -> tuple[ScheduledStep, ...]:
    """The steps once the request is in ``new`` (rule 3): open steps end when the request does."""
    ending = {R.REVOKED: (S.SCHEDULED,), R.COMPLETED: (S.SCHEDULED,),
              R.ENTERED_IN_ERROR: (S.SCHEDULED, S.IN_PROGRESS)}.get(new, ())
    return tuple(replace(s, status=S.DISCONTINUED) if s.status in ending else s for s in steps)


def move_step(step: ScheduledStep, new: StepStatus) -> ScheduledStep:
    """The step in its new status; BusinessRule if rule 4 forbids the move (same status: unchanged)."""
    if new is step.status:
        return step
    if new not in STEP_MOVES[step.status]:
        raise BusinessRule(f"procedure step {step.sps_id} cannot go from {step.status.value} to {new.value}")
    return replace(step, status=new)


def request_after_steps(request: ImagingRequest) -> RequestStatus:
    """What the steps make of an active request (rule 1): completed once all ended with one completed,
    revoked once all were discontinued; otherwise unchanged."""
    if request.status is not R.ACTIVE or not request.steps or not all(s.status.final for s in request.steps):
        return request.status
    return R.COMPLETED if any(s.status is S.COMPLETED for s in request.steps) else R.REVOKED
