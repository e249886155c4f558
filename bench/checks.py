"""Before timing: does each server answer the request lists correctly? Untimed, parsed, compared."""

from __future__ import annotations

from collections.abc import Sequence

import httpx
from tests.support.http import split_multipart

from .dataset import Item
from .request_lists import ACCEPT_FRAMES, ACCEPT_JSON, ACCEPT_STUDY, Qido
from .workload import COMMON_HEADERS


def _get(base: str, path: str, accept: str) -> httpx.Response:
    return httpx.get(base + path, headers={**COMMON_HEADERS, "Accept": accept}, timeout=120)


def qido_counts(base: str, queries: Sequence[Qido]) -> dict[str, int]:
    """Results of the first query of each kind (-1: an error status)."""
    counts: dict[str, int] = {}
    for q in queries:
        if q.kind in counts:
            continue
        r = _get(base, q.path, ACCEPT_JSON)
        counts[q.kind] = 0 if r.status_code == 204 else len(r.json()) if r.status_code == 200 else -1
    return counts


def retrieve_checks(base: str, items: Sequence[Item]) -> dict[str, object]:
    """One small study, one series' metadata and one frame, checked against the manifest."""
    by_study: dict[str, list[Item]] = {}
    for item in items:
        by_study.setdefault(item.study_uid, []).append(item)
    study_uid, members = min(by_study.items(), key=lambda kv: (len(kv[1]) < 2, len(kv[1])))
    out: dict[str, object] = {}
    r = _get(base, f"/studies/{study_uid}", ACCEPT_STUDY)
    parts = split_multipart(r.content, r.headers["content-type"]) if r.status_code == 200 else []
    out["study_parts"] = f"{len(parts)}/{len(members)}"
    out["study_ok"] = len(parts) == len(members)
    series_uid = members[0].series_uid
    in_series = [i for i in members if i.series_uid == series_uid]
    r = _get(base, f"/studies/{study_uid}/series/{series_uid}/metadata", ACCEPT_JSON)
    out["metadata_ok"] = r.status_code == 200 and len(r.json()) == len(in_series)
    item = in_series[0]
    r = _get(base, f"/studies/{study_uid}/series/{series_uid}/instances/{item.sop_uid}/frames/1", ACCEPT_FRAMES)
    frame = split_multipart(r.content, r.headers["content-type"]) if r.status_code == 200 else []
    out["frame_bytes"] = len(frame[0][1]) if frame else -1
    out["frame_ok"] = bool(frame) and len(frame[0][1]) == 512 * 512 * 2
    return out
