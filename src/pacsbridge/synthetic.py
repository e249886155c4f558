"""Synthetic but realistic DICOM studies for the demo, the tests and the benchmarks.

Every value is made up; no real patient data ships with pacsbridge. Pixel content is a smooth pattern
plus noise so that compression and rendering behave as on real images.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
XA_IMAGE = "1.2.840.10008.5.1.4.1.1.12.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

NAMES = [("Müller", "Jürgen"), ("Doe", "Jane"), ("Smith", "John"), ("García", "José"), ("Øster", "Åsa"),
         ("Nguyen", "An"), ("Schäfer", "Björn"), ("O'Neil", "Mary"), ("Kowalski", "Łukasz"), ("Dubois", "Zoé")]


@dataclass(frozen=True)
class StudySpec:
    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    study_uid: str
    accession: str
    study_date: str
    modality: str = "CT"
    series: int = 2
    instances_per_series: int = 10
    rows: int = 256
    columns: int = 256
    frames: int = 1


def _pixels(rows: int, cols: int, frames: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    base = (np.sin(x / 17.0) + np.cos(y / 23.0)) * 400 + 600
    stack = [(base + rng.normal(0, 30, size=base.shape) + f * 5).clip(0, 4095) for f in range(frames)]
    return np.stack(stack).astype("<u2").tobytes()


def make_instance(spec: StudySpec, series_uid: str, series_number: int, number: int,
                  sop_class: str = CT_IMAGE) -> Dataset:
    """One instance of a study spec, with a file meta header, ready for ``save_as``."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.IssuerOfPatientID = "PACSBRIDGE-DEMO"
    ds.PatientBirthDate = spec.birth_date
    ds.PatientSex = spec.sex
    ds.StudyDate = spec.study_date
    ds.StudyTime = "101500"
    ds.SeriesDate = spec.study_date
    ds.AccessionNumber = spec.accession
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.StudyID = spec.accession[-6:]
    ds.StudyDescription = f"{spec.modality} demo study"
    ds.SeriesDescription = f"{spec.modality} series {series_number}"
    ds.Modality = spec.modality
    ds.Manufacturer = "pacsbridge synthetic"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [0.0, 0.0, float(number * 2)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 2.0
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[spec.study_uid, "frame-of-reference"])
    ds.Rows, ds.Columns = spec.rows, spec.columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.WindowCenter, ds.WindowWidth = 40, 400
    if spec.frames > 1:
        ds.NumberOfFrames = spec.frames
    ds.PixelData = _pixels(spec.rows, spec.columns, spec.frames, seed=number + series_number * 1000)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def study_specs(count: int, seed: int = 7, **overrides: object) -> Iterator[StudySpec]:
    rnd = random.Random(seed)
    for i in range(count):
        family, given = NAMES[i % len(NAMES)]
        yield StudySpec(**{  # type: ignore[arg-type]
            "patient_id": f"PB{seed:02d}{i:05d}",
            "patient_name": f"{family}^{given}",
            "birth_date": f"19{rnd.randint(30, 99)}0{rnd.randint(1, 9)}1{rnd.randint(0, 9)}",
            "sex": rnd.choice("MF"),
            "study_uid": generate_uid(),
            "accession": f"ACC{seed:02d}{i:06d}",
            "study_date": f"2025{rnd.randint(1, 12):02d}{rnd.randint(1, 28):02d}",
            "modality": rnd.choice(["CT", "MR"]),
            **overrides,
        })


def write_study(spec: StudySpec, folder: Path) -> list[Path]:
    """Write one study's files into ``folder`` and return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    sop_class = MR_IMAGE if spec.modality == "MR" else XA_IMAGE if spec.frames > 1 else CT_IMAGE
    paths = []
    for s in range(1, spec.series + 1):
        series_uid = generate_uid()
        for n in range(1, spec.instances_per_series + 1):
            ds = make_instance(spec, series_uid, s, n, sop_class)
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def write_demo(folder: Path, studies: int = 4) -> list[Path]:
    """A small demo data set: a few CT/MR studies and one multi-frame XA."""
    paths: list[Path] = []
    for spec in study_specs(studies, instances_per_series=8):
        paths += write_study(spec, folder / spec.study_uid)
    xa = next(study_specs(1, seed=99, modality="XA", series=1, instances_per_series=1, frames=12))
    paths += write_study(xa, folder / xa.study_uid)
    return paths
