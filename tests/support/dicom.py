"""Build small DICOM files for tests, with just the attributes a test cares about."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacsbridge.domain.model import InstanceRecord
from pacsbridge.formats.part10 import read_record
from pacsbridge.synthetic import StudySpec, make_instance


def instance(study_uid: str | None = None, series_uid: str | None = None, *, rows: int = 16,
             columns: int = 16, number: int = 1, series_number: int = 1, **attrs: Any) -> Dataset:
    """A small CT image; keyword arguments set or (with None) delete attributes."""
    spec = StudySpec(
        patient_id="PID-1", patient_name="Doe^Jane", birth_date="19700101", sex="F",
        study_uid=study_uid or generate_uid(), accession="ACC-1", study_date="20240131",
        rows=rows, columns=columns,
    )
    ds = make_instance(spec, series_uid or generate_uid(), series_number, number)
    for key, value in attrs.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write(ds: Dataset, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def record_of(path: Path) -> InstanceRecord:
    with open(path, "rb") as fp:
        return read_record(fp)
