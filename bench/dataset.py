"""One generated benchmark data set, written once into a cache folder and described by a manifest.

Rules:
1. CT and MR studies of 512x512 16-bit slices (about 0.5 MB each) in 1–4 series, one patient per study,
   plus a few multi-frame XA (16-bit) and US (8-bit RGB) objects in studies of their own.
2. The folder is complete only when ``manifest.json`` exists (written last); an incomplete folder is
   generated again. The same folder is loaded into every server, so all get byte-identical files.
3. Everything is synthetic (``pacsbridge.synthetic``); no real patient data.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacsbridge.synthetic import CT_IMAGE, MR_IMAGE, XA_IMAGE, StudySpec, make_instance, study_specs

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
MB = 1 << 20


@dataclass(frozen=True)
class Item:
    """One file of the data set and the attributes the request lists are built from."""

    path: str
    size: int
    study_uid: str
    series_uid: str
    sop_uid: str
    frames: int
    modality: str
    patient_id: str
    patient_name: str
    study_date: str
    accession: str


@dataclass(frozen=True)
class MultiFrame:
    modality: str  # "XA" (16-bit grey) or "US" (8-bit RGB)
    rows: int
    columns: int
    frames: int


FULL_MULTIFRAME = (MultiFrame("XA", 512, 512, 100), MultiFrame("XA", 1024, 1024, 90),
                   MultiFrame("US", 480, 640, 120), MultiFrame("US", 600, 800, 60))
QUICK_MULTIFRAME = (MultiFrame("XA", 512, 512, 16), MultiFrame("US", 480, 640, 12))


def load_or_generate(cache: Path, instances: int, studies: int, multiframe: tuple[MultiFrame, ...],
                     seed: int = 7) -> list[Item]:
    """The cached data set for these parameters, generated first if missing."""
    key = f"n{instances}-s{studies}-mf{'_'.join(f'{m.modality}{m.rows}x{m.columns}x{m.frames}' for m in multiframe)}"
    folder = cache / key
    manifest = folder / "manifest.json"
    if manifest.exists():
        items = [Item(**row) for row in json.loads(manifest.read_text())]
        return [replace(i, path=str(folder / i.path)) for i in items]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.monotonic()
    items = _generate(folder, instances, studies, multiframe, seed)
    manifest.write_text(json.dumps([asdict(i) for i in items]))
    total = sum(i.size for i in items)
    print(f"generated {len(items)} files, {total / MB:.0f} MB in {time.monotonic() - started:.0f} s "
          f"into {folder}", flush=True)
    return [replace(i, path=str(folder / i.path)) for i in items]


def _split(total: int, parts: int, rnd: random.Random) -> list[int]:
    """``total`` split into ``parts`` positive, unequal counts."""
    weights = [rnd.uniform(0.3, 1.7) for _ in range(parts)]
    scale = sum(weights)
    counts = [max(1, int(total * w / scale)) for w in weights]
    i = 0
    while sum(counts) != total:
        j = i % parts
        if sum(counts) < total:
            counts[j] += 1
        elif counts[j] > 1:
            counts[j] -= 1
        i += 1
    return counts


def _generate(folder: Path, instances: int, studies: int, multiframe: tuple[MultiFrame, ...],
              seed: int) -> list[Item]:
    rnd = random.Random(seed)
    single = max(studies, instances - len(multiframe))
    specs = list(study_specs(studies, seed=seed, rows=512, columns=512))
    items: list[Item] = []
    for spec, count in zip(specs, _split(single, studies, rnd), strict=True):
        series_counts = _split(count, min(count, rnd.randint(1, 4)), rnd)
        sop_class = MR_IMAGE if spec.modality == "MR" else CT_IMAGE
        for number, in_series in enumerate(series_counts, start=1):
            series_uid = generate_uid()
            for n in range(1, in_series + 1):
                ds = make_instance(spec, series_uid, number, n, sop_class)
                items.append(_save(folder, ds, spec, 1))
    mf_specs = study_specs(len(multiframe), seed=seed + 50)
    for mf, spec in zip(multiframe, mf_specs, strict=True):
        spec = replace(spec, modality=mf.modality, rows=mf.rows, columns=mf.columns, frames=1)
        ds = make_instance(spec, generate_uid(), 1, 1, XA_IMAGE if mf.modality == "XA" else US_MULTIFRAME)
        ds.NumberOfFrames = mf.frames
        if mf.modality == "XA":
            ds.PixelData = _grey_frames(mf, rnd.randrange(1 << 30))
        else:
            _make_rgb(ds)
            ds.PixelData = _rgb_frames(mf, rnd.randrange(1 << 30))
        items.append(_save(folder, ds, spec, mf.frames))
    return items


def _grey_frames(mf: MultiFrame, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:mf.rows, 0:mf.columns]
    base = ((np.sin(x / 17.0) + np.cos(y / 23.0)) * 400 + 600).astype(np.float32)
    frames = [(base + rng.normal(0, 30, size=base.shape).astype(np.float32) + f * 3).clip(0, 4095)
              .astype("<u2").tobytes() for f in range(mf.frames)]
    return b"".join(frames)


def _rgb_frames(mf: MultiFrame, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:mf.rows, 0:mf.columns]
    cone = ((np.hypot(x - mf.columns / 2, y) < mf.rows * 0.9) * 90).astype(np.int16)
    frames = []
    for f in range(mf.frames):
        grey = (cone + rng.integers(0, 60, size=cone.shape, dtype=np.int16) + f % 20).clip(0, 255)
        frames.append(np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2).tobytes())
    return b"".join(frames)


def _make_rgb(ds: Dataset) -> None:
    """Turn a grey synthetic image into an 8-bit RGB ultrasound one (pixels are set by the caller)."""
    for keyword in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth", "ImagePositionPatient",
                    "ImageOrientationPatient", "SliceThickness"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7


def _save(folder: Path, ds: Dataset, spec: StudySpec, frames: int) -> Item:
    sop = str(ds.SOPInstanceUID)
    relative = Path(spec.study_uid[-12:]) / f"{sop}.dcm"
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return Item(path=str(relative), size=path.stat().st_size, study_uid=spec.study_uid,
                series_uid=str(ds.SeriesInstanceUID), sop_uid=sop, frames=frames,
                modality=spec.modality, patient_id=spec.patient_id, patient_name=spec.patient_name,
                study_date=spec.study_date, accession=spec.accession)
