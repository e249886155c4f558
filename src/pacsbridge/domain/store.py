"""Outcomes of storing one instance, shared by STOW-RS, C-STORE and file import.

See: PS3.4 Annex B.2.3 and PS3.7 Annex C (status codes), PS3.18 Annex I (FailureReason/WarningReason).
The enum values are the DICOM status codes themselves, so every door reports the same number.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .model import InstanceRef


class FailureReason(enum.IntEnum):
    PROCESSING_FAILURE = 0x0110
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NOT_AUTHORIZED = 0x0124
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    # Not standardised (PS3.18 §10.5.5): instance of another study than the STOW URL names.
    STUDY_INSTANCE_UID_MISMATCH = 0xA901
    CANNOT_UNDERSTAND = 0xC000
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122


class WarningReason(enum.IntEnum):
    COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xB007


@dataclass(frozen=True)
class StoreResult:
    """One instance's outcome. ``ref`` may be partial (empty strings) for unreadable input."""

    sop_class_uid: str
    sop_uid: str
    ref: InstanceRef | None = None
    failure: FailureReason | None = None
    warning: WarningReason | None = None
    reason: str = ""
    replaced: bool = False

    @property
    def ok(self) -> bool:
        return self.failure is None
