"""The DICOM information-model values every door talks about.

See: PS3.4 §C.6 (the Patient/Study/Series/Instance hierarchy). Attribute sets are DICOM JSON objects
(PS3.18 Annex F): plain dicts keyed by 8-hex tags, the one representation shared by QIDO results,
WADO metadata, C-FIND identifiers and FHIR mappings.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

DicomJson = dict[str, Any]
"""One DICOM JSON object: ``{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}, ...}``."""

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
NATIVE_TRANSFER_SYNTAXES = frozenset(
    {EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN,
     DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN}
)


class Level(enum.Enum):
    """Query/retrieve level, ordered from the top of the hierarchy down."""

    STUDY = 1
    SERIES = 2
    INSTANCE = 3

    def __lt__(self, other: Level) -> bool:
        return self.value < other.value

    def __le__(self, other: Level) -> bool:
        return self.value <= other.value


@dataclass(frozen=True)
class Scope:
    """A retrieve target: a study, a series in it, or one instance (PS3.18 §10.4.1)."""

    study_uid: str
    series_uid: str | None = None
    sop_uid: str | None = None

    def __post_init__(self) -> None:
        if self.sop_uid is not None and self.series_uid is None:
            raise ValueError("an instance scope needs its series")

    @property
    def level(self) -> Level:
        if self.sop_uid is not None:
            return Level.INSTANCE
        if self.series_uid is not None:
            return Level.SERIES
        return Level.STUDY


@dataclass(frozen=True)
class InstanceRef:
    """The three UIDs that address one stored instance."""

    study_uid: str
    series_uid: str
    sop_uid: str


@dataclass(frozen=True)
class StoredInstance:
    """Where an instance's Part 10 bytes are, and what a retriever needs to know before opening it."""

    ref: InstanceRef
    sop_class_uid: str
    transfer_syntax: str
    path: str
    size: int
    number_of_frames: int
    patient_id: str | None = None
    pixel_layout: str | None = None  # where Pixel Data sits (formats/frames.py), found at ingest


@dataclass(frozen=True)
class InstanceRecord:
    """Everything the index keeps about one instance, computed once at ingest.

    ``study``/``series``/``instance`` hold the attributes of each level (DICOM JSON, without bulk data);
    ``metadata`` is the full WADO-RS metadata object as JSON text, whose BulkDataURIs start with
    ``BULK_BASE`` so that the retriever can put the request's own base URL in front.
    """

    ref: InstanceRef
    sop_class_uid: str
    transfer_syntax: str
    patient_id: str | None
    study: DicomJson
    series: DicomJson
    instance: DicomJson
    metadata: str
    number_of_frames: int
    pixel_layout: str | None = None  # JSON of formats.frames.PixelInfo; None: no frame access


BULK_BASE = "pacsbridge-bulk-base:"
"""Placeholder at the start of every stored BulkDataURI; replaced by the request's base URL on output.

Only the sequence ``"BulkDataURI":"`` + BULK_BASE is replaced, so attribute values that happen to
contain the placeholder text are never touched."""


@dataclass(frozen=True)
class Origin:
    """Where a request came from, for audit and for routing rules: the door and the remote peer."""

    door: str  # "stow-rs", "c-store", "import", ...
    remote: str | None = None
    subject: str | None = None


def first_text(attributes: DicomJson, tag: str) -> str | None:
    """The first value of an element of a DICOM JSON object when it is a non-empty string (a UID, an ID,
    a code, a date); None when the element is absent, empty or not text."""
    values = (attributes.get(tag) or {}).get("Value") or []
    return values[0] if values and isinstance(values[0], str) and values[0] else None
