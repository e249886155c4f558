"""The order status machine (domain.orders): every allowed move and every refusal of its rules."""

from __future__ import annotations

import itertools

import pytest

from pacsbridge.domain.errors import BusinessRule
from pacsbridge.domain.orders import (
    REQUEST_MOVES,
    ImagingRequest,
    RequestStatus,
    ScheduledStep,
    StepStatus,
    check_request_move,
    move_step,
    request_after_steps,
    steps_after_request,
)

R, S = RequestStatus, StepStatus


def step(sps_id: str, status: StepStatus) -> ScheduledStep:
    return ScheduledStep(sps_id, status, "CT01", "CT", "20260101", "1000", {})


def request(status: RequestStatus, *steps: ScheduledStep) -> ImagingRequest:
    return ImagingRequest("sr1", status, "A1", "A1", "2.25.1", "P1", {}, steps)


@pytest.mark.parametrize(("old", "new"), list(itertools.product(R, R)))
def test_request_moves_follow_the_documented_table(old: RequestStatus, new: RequestStatus) -> None:
    allowed = {
        R.DRAFT: {R.DRAFT, R.ACTIVE, R.REVOKED, R.ENTERED_IN_ERROR},
        R.ACTIVE: {R.ACTIVE, R.ON_HOLD, R.REVOKED, R.COMPLETED, R.ENTERED_IN_ERROR},
        R.ON_HOLD: {R.ON_HOLD, R.ACTIVE, R.REVOKED, R.ENTERED_IN_ERROR},
        R.COMPLETED: {R.COMPLETED, R.ENTERED_IN_ERROR},
        R.REVOKED: {R.REVOKED, R.ENTERED_IN_ERROR},
        R.ENTERED_IN_ERROR: {R.ENTERED_IN_ERROR},
    }
    assert REQUEST_MOVES[old] == allowed[old]
    if new in allowed[old]:
        check_request_move(old, new, ())
    else:
        with pytest.raises(BusinessRule, match=f"from {old.value} to {new.value}"):
            check_request_move(old, new, ())


@pytest.mark.parametrize("new", [R.REVOKED, R.COMPLETED])
def test_an_active_request_does_not_end_while_a_step_is_in_progress(new: RequestStatus) -> None:
    with pytest.raises(BusinessRule, match="in progress"):
        check_request_move(R.ACTIVE, new, [step("1", S.IN_PROGRESS)])
    check_request_move(R.ACTIVE, R.ENTERED_IN_ERROR, [step("1", S.IN_PROGRESS)])  # a correction: always


def test_ending_a_request_discontinues_its_open_steps() -> None:
    steps = (step("1", S.SCHEDULED), step("2", S.IN_PROGRESS), step("3", S.COMPLETED))
    assert [s.status for s in steps_after_request(R.REVOKED, steps)] == [S.DISCONTINUED, S.IN_PROGRESS, S.COMPLETED]
    assert [s.status for s in steps_after_request(R.ENTERED_IN_ERROR, steps)] == [
        S.DISCONTINUED, S.DISCONTINUED, S.COMPLETED]
    assert [s.status for s in steps_after_request(R.ON_HOLD, steps)] == [s.status for s in steps]


@pytest.mark.parametrize(("old", "new"), list(itertools.product(S, S)))
def test_step_moves(old: StepStatus, new: StepStatus) -> None:
    allowed = {(S.SCHEDULED, S.IN_PROGRESS), (S.SCHEDULED, S.COMPLETED), (S.SCHEDULED, S.DISCONTINUED),
               (S.IN_PROGRESS, S.COMPLETED), (S.IN_PROGRESS, S.DISCONTINUED)}
    if old is new:
        assert move_step(step("1", old), new).status is old
    elif (old, new) in allowed:
        assert move_step(step("1", old), new).status is new
    else:
        with pytest.raises(BusinessRule):
            move_step(step("1", old), new)


def test_the_request_follows_its_steps() -> None:
    assert request_after_steps(request(R.ACTIVE, step("1", S.COMPLETED), step("2", S.DISCONTINUED))) is R.COMPLETED
    assert request_after_steps(request(R.ACTIVE, step("1", S.DISCONTINUED))) is R.REVOKED
    assert request_after_steps(request(R.ACTIVE, step("1", S.COMPLETED), step("2", S.IN_PROGRESS))) is R.ACTIVE
    assert request_after_steps(request(R.ON_HOLD, step("1", S.COMPLETED))) is R.ON_HOLD  # only active ones move
    assert request_after_steps(request(R.ACTIVE)) is R.ACTIVE


def test_worklist_status_codes() -> None:
    assert S.SCHEDULED.dicom == "SCHEDULED" and S.IN_PROGRESS.dicom == "STARTED"
    assert request(R.ACTIVE).on_worklist and not request(R.ON_HOLD).on_worklist
