"""Read a DICOM Part 10 file's header and describe it for the index.

See: PS3.10 §7 (file format), PS3.4 Annex B (storage SOP classes). Pixel Data is never loaded: the
header is read with ``stop_before_pixels`` and the pixel element's VR is read from its own header.
"""

from __future__ import annotations

import json
import re
import struct
from typing import BinaryIO, Literal

import pydicom
from pydicom._uid_dict import UID_dictionary
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..domain.errors import InvalidInput, PacsbridgeError
from ..domain.levels import split_levels
from ..domain.model import BULK_BASE, InstanceRecord, InstanceRef
from ..domain.store import FailureReason
from .dicom_json import dataset_to_json
from .frames import layout_to_json, locate_pixel_data

STORAGE_SOP_CLASSES: frozenset[str] = frozenset(
    uid for uid, (name, kind, *_rest) in UID_dictionary.items()
    if kind == "SOP Class" and "Storage" in name and "Commitment" not in name
    and name != "Media Storage Directory Storage"
)
KNOWN_TRANSFER_SYNTAXES: frozenset[str] = frozenset(
    uid for uid, (_name, kind, *_rest) in UID_dictionary.items() if kind == "Transfer Syntax"
)
PIXEL_TAGS = {0x7FE00010: "7FE00010", 0x7FE00008: "7FE00008", 0x7FE00009: "7FE00009"}
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class Rejected(InvalidInput):
    """An instance that cannot be stored, with the DICOM failure reason to report."""

    def __init__(self, reason: FailureReason, message: str, sop_class_uid: str = "", sop_uid: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.sop_class_uid = sop_class_uid
        self.sop_uid = sop_uid


def lacks_preamble(head: bytes) -> bool:
    """True for a file that starts right at its File Meta group (no 128-byte preamble + ``DICM``).

    pydicom's ``dcmwrite`` produces these unless told ``enforce_file_format=True``, and clients built on
    it (dicomweb-client) send them in STOW-RS; we accept them and store them with a preamble.
    """
    return head[128:132] != b"DICM" and head[:2] == b"\x02\x00" and head[4:6].isalpha()


PREAMBLE = b"\x00" * 128 + b"DICM"


def read_header(fp: BinaryIO) -> tuple[Dataset, str | None]:
    """The dataset without pixel data, and the VR of the pixel element that follows (None if none).

    ``fp`` is left at that element, so that ``pixel_layout`` can be called next.
    """
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
    except (InvalidDicomError, EOFError) as exc:
        raise Rejected(FailureReason.CANNOT_UNDERSTAND,
                       "not a DICOM Part 10 file (no 128-byte preamble and 'DICM' prefix)") from exc
    except Exception as exc:  # pydicom raises many types on truncated or garbled input
        raise Rejected(FailureReason.CANNOT_UNDERSTAND, f"unreadable DICOM: {type(exc).__name__}") from exc
    if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        raise Rejected(FailureReason.CANNOT_UNDERSTAND, "no File Meta Information (PS3.10 §7.1)")
    tag_offset = fp.tell()
    head = fp.read(8)
    fp.seek(tag_offset)  # leave the file at the element after the header, for ``pixel_layout``
    pixel_vr = None
    if len(head) >= 4:
        big = ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2"
        order: Literal["little", "big"] = "big" if big else "little"
        tag = (int.from_bytes(head[0:2], order) << 16) | int.from_bytes(head[2:4], order)
        if tag in PIXEL_TAGS:
            explicit = ds.file_meta.TransferSyntaxUID != "1.2.840.10008.1.2"
            raw_vr = head[4:6].decode("ascii", "replace") if explicit and len(head) >= 6 else ""
            pixel_vr = raw_vr if raw_vr in {"OB", "OW", "OF", "OD"} else _default_pixel_vr(ds, tag)
    return ds, pixel_vr


def _default_pixel_vr(ds: Dataset, tag: int) -> str:
    if tag == 0x7FE00008:
        return "OF"
    if tag == 0x7FE00009:
        return "OD"
    return "OW" if int(ds.get("BitsAllocated", 16) or 16) > 8 else "OB"


def _uid(ds: Dataset, keyword: str, sop_class: str, sop: str) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    if not value or len(value) > 64 or not _UID.match(value):
        raise Rejected(
            FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"{keyword} is missing or not a valid UID", sop_class, sop,
        )
    return value


def pixel_layout(ds: Dataset, fp: BinaryIO) -> str | None:
    """Where the Pixel Data value of the file sits (``frames.PixelInfo`` as JSON), read right after
    ``read_header``; None when frames cannot be cut from it (no pixel data, float pixels, a broken
    element): frame requests then parse the file and report why."""
    try:
        return layout_to_json(locate_pixel_data(ds, fp))
    except (PacsbridgeError, ValueError, struct.error):
        return None


def read_record(fp: BinaryIO, bulk_threshold: int = 1024) -> InstanceRecord:
    """Read a Part 10 file's header and describe it, its pixel layout included (``Rejected`` if it
    cannot be stored)."""
    ds, pixel_vr = read_header(fp)
    layout = pixel_layout(ds, fp) if pixel_vr is not None else None
    return describe(ds, pixel_vr, bulk_threshold, layout)


def describe(ds: Dataset, pixel_vr: str | None, bulk_threshold: int = 1024,
             layout: str | None = None) -> InstanceRecord:
    """Validate an instance header and compute everything the index keeps about it."""
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    sop = str(ds.get("SOPInstanceUID", "") or "").strip()
    sop = _uid(ds, "SOPInstanceUID", sop_class, sop)
    sop_class = _uid(ds, "SOPClassUID", sop_class, sop)
    study = _uid(ds, "StudyInstanceUID", sop_class, sop)
    series = _uid(ds, "SeriesInstanceUID", sop_class, sop)
    meta = ds.file_meta
    transfer_syntax = str(meta.TransferSyntaxUID)
    if transfer_syntax not in KNOWN_TRANSFER_SYNTAXES:
        raise Rejected(FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED,
                       f"unknown transfer syntax {transfer_syntax}", sop_class, sop)
    if sop_class not in STORAGE_SOP_CLASSES:
        raise Rejected(FailureReason.SOP_CLASS_NOT_SUPPORTED,
                       f"SOP class {sop_class} is not a storage SOP class", sop_class, sop)
    meta_sop = str(meta.get("MediaStorageSOPInstanceUID", sop) or sop).strip()
    if meta_sop != sop:
        raise Rejected(FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                       "File Meta MediaStorageSOPInstanceUID differs from SOPInstanceUID", sop_class, sop)

    instance_base = f"{BULK_BASE}/studies/{study}/series/{series}/instances/{sop}/bulkdata/"
    try:
        attributes = dataset_to_json(ds, lambda path: instance_base + path, bulk_threshold)
    except Exception as exc:
        raise Rejected(FailureReason.CANNOT_UNDERSTAND,
                       f"attributes cannot be decoded: {type(exc).__name__}", sop_class, sop) from exc
    metadata = dict(attributes)
    if pixel_vr is not None:
        metadata["7FE00010"] = {"vr": pixel_vr, "BulkDataURI": instance_base + "7FE00010"}
    # Levels keep only inline values: the index must stay small and bulk URIs are per instance.
    inline = {k: v for k, v in attributes.items() if "BulkDataURI" not in v and "InlineBinary" not in v}
    study_attrs, series_attrs, instance_attrs = split_levels(inline)
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    patient_id = str(ds.get("PatientID", "") or "").strip() or None
    return InstanceRecord(
        ref=InstanceRef(study, series, sop),
        sop_class_uid=sop_class,
        transfer_syntax=transfer_syntax,
        patient_id=patient_id,
        study=study_attrs,
        series=series_attrs,
        instance=instance_attrs,
        metadata=json.dumps(dict(sorted(metadata.items())), ensure_ascii=False, separators=(",", ":")),
        number_of_frames=frames if pixel_vr is not None else 0,
        pixel_layout=layout if pixel_vr is not None else None,
    )
