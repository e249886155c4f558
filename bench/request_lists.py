"""Request lists built once from the data set's manifest and sent, byte for byte, to every server.

QIDO-RS queries are the ones a viewer's study list sends: OHIF's default page
(``limit=101&offset=0&fuzzymatching=true&includefield=00081030%2C00080060``) alone and with a date
range, a patient name wildcard, a patient ID, an accession number, a modality, or a study UID.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from .dataset import Item

OHIF_STUDY_LIST = "limit=101&offset=0&fuzzymatching=true&includefield=00081030%2C00080060"
ACCEPT_JSON = "application/dicom+json"
ACCEPT_STUDY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


@dataclass(frozen=True)
class Qido:
    kind: str
    path: str
    expected: int  # how many studies match, from the manifest (capped at the page size of 101)


def _studies(items: Sequence[Item]) -> list[Item]:
    """One representative item per study, in manifest order."""
    seen: dict[str, Item] = {}
    for item in items:
        seen.setdefault(item.study_uid, item)
    return list(seen.values())


def _q(value: str) -> str:
    return quote(value, safe="*-")


def qido_queries(items: Sequence[Item], count: int, seed: int = 11) -> list[Qido]:
    """``count`` study searches, the kinds interleaved, values drawn from the data set."""
    rnd = random.Random(seed)
    studies = _studies(items)
    page = 101
    out: list[Qido] = []

    def capped(n: int) -> int:
        return min(n, page)

    # Orthanc 1.10 matches no PN wildcard holding a non-ASCII letter ("Mü*") or an apostrophe ("*'Ne*"):
    # name searches use plain ASCII family names, so both servers do the same work for the same answer.
    ascii_named = [x for x in studies if (f := x.patient_name.split("^")[0]).isascii() and f.isalpha()] or studies
    kinds = ["list", "date", "name_prefix", "name_substring", "patient_id", "accession", "modality", "study_uid"]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        s = rnd.choice(studies)
        if kind == "list":
            out.append(Qido(kind, f"/studies?{OHIF_STUDY_LIST}", capped(len(studies))))
        elif kind == "date":
            month = rnd.randint(1, 11)
            low, high = f"2025{month:02d}01", f"2025{month + 1:02d}28"
            n = sum(1 for x in studies if low <= x.study_date <= high)
            out.append(Qido(kind, f"/studies?{OHIF_STUDY_LIST}&StudyDate={low}-{high}", capped(n)))
        elif kind == "name_prefix":
            s = rnd.choice(ascii_named)
            prefix = s.patient_name.split("^")[0][:2]
            n = sum(1 for x in studies if x.patient_name.lower().startswith(prefix.lower()))
            out.append(Qido(kind, f"/studies?{OHIF_STUDY_LIST}&PatientName={_q(prefix + '*')}", capped(n)))
        elif kind == "name_substring":
            s = rnd.choice(ascii_named)
            middle = s.patient_name.split("^")[0][1:4]
            n = sum(1 for x in studies if middle.lower() in x.patient_name.lower())
            out.append(Qido(kind, f"/studies?{OHIF_STUDY_LIST}&PatientName={_q('*' + middle + '*')}", capped(n)))
        elif kind == "patient_id":
            n = sum(1 for x in studies if x.patient_id == s.patient_id)
            out.append(Qido(kind, f"/studies?{OHIF_STUDY_LIST}&PatientID={_q(s.patient_id)}", capped(n)))
        elif kind == "accession":
            n = sum(1 for x in studies if x.accession == s.accession)
            out.append(Qido(kind, f"/studies?{OHIF_STUDY_LIST}&AccessionNumber={_q(s.accession)}", capped(n)))
        elif kind == "modality":
            modality = rnd.choice(["CT", "MR"])
            n = len({x.study_uid for x in items if x.modality == modality})
            out.append(Qido(kind, f"/studies?{OHIF_STUDY_LIST}&ModalitiesInStudy={modality}", capped(n)))
        else:
            out.append(Qido(kind, f"/studies?StudyInstanceUID={s.study_uid}", 1))
    return out


def study_paths(items: Sequence[Item], seed: int = 12, passes: int = 1) -> list[str]:
    """Every study ``passes`` times, each pass in its own shuffled order: ``/studies/{uid}`` (WADO-RS
    retrieve study)."""
    paths: list[str] = []
    for n in range(passes):
        uids = [s.study_uid for s in _studies(items)]
        random.Random(seed + n).shuffle(uids)
        paths.extend(f"/studies/{uid}" for uid in uids)
    return paths


def series_metadata_paths(items: Sequence[Item], seed: int = 13) -> list[str]:
    """Every series once, shuffled: ``/studies/{uid}/series/{uid}/metadata``."""
    pairs = sorted({(i.study_uid, i.series_uid) for i in items})
    random.Random(seed).shuffle(pairs)
    return [f"/studies/{st}/series/{se}/metadata" for st, se in pairs]


def frame_paths(items: Sequence[Item], count: int, seed: int = 14, multiframe_every: int = 10) -> list[str]:
    """Single frames as a viewer fetches them: slices, and one request in ``multiframe_every`` a frame of
    a multi-frame object (0: slices only)."""
    rnd = random.Random(seed)
    slices = [i for i in items if i.frames == 1]
    multi = [i for i in items if i.frames > 1]
    out = []
    for n in range(count):
        if multi and multiframe_every and n % multiframe_every == multiframe_every - 1:
            item = rnd.choice(multi)
            frame = rnd.randint(1, item.frames)
        else:
            item, frame = rnd.choice(slices), 1
        out.append(f"/studies/{item.study_uid}/series/{item.series_uid}/instances/{item.sop_uid}/frames/{frame}")
    return out
