"""Scored matching at scale (issue 6, deliverable 6): N open requests against M studies.

    .venv/bin/python bench/matching_scale.py --requests 100000 --studies 100000 --seed 20240611

What it does, as the service does it (``services/matching.py``, ``backends/orders.py``):

1. **Population.** The patients, requests and studies of ``tests/support/matching_population.py``
   (same name lists of five cultures and hyphenated names, same birth-date distribution, same
   worklist items and modality-sent study documents, same thirteen adversarial scenarios in the
   same proportions: typos, swapped names, married names, twins, same-day namesakes, missing and
   wrong accessions, umlauts/transliterations, another PatientID namespace, ...): its
   ``ScenarioStream``, which the safety test collects, streamed here one study at a time.
2. **Requests in SQLite.** A fresh, migrated SQLite database (``make_engine`` + ``migrate``, WAL,
   as the service opens it). Each request becomes an ``ImagingRequest`` with one scheduled step; its
   blocking keys are ``services.matching.request_keys``. They are written with the records backend's
   own writers (``backends.orders._write_request`` and ``_write_keys``, the two calls
   ``SqlOrderRecords.commit`` makes for ``OrderChange(request=..., request_keys=...)``) through the
   records' ``InThread`` writer, 1,000 requests per transaction rather than one commit each (one
   commit per request is the service's path; batching only shortens the set-up).
3. **Matching.** For each study, in arrival order: its blocking keys (``rules.blocking_keys``), the
   candidates by ``SqlOrderRecords.requests_by_keys`` (the real query over ``request_keys``, one
   worker-thread hop per study), each candidate's worklist item (``worklist_item``) scored by
   ``rules.score``, best first, and the decision as ``StudyMatcher.study_arrived`` takes it
   (``rules.choose``: a tie at the top, or a rival within the margin, is never auto-certain). The
   loop is ``StudyMatcher.candidates`` with timers; the first studies are checked against
   ``StudyMatcher.candidates`` itself. Nothing is written back (links
   would remove requests from later blocks and make the figures depend on the order).
4. **Report.** Time per phase, per study mean/p50/p95/max, candidates per study (mean, p95, max and
   the share of the N x M pairs actually scored), the decisions and how many auto-certain links
   went to the wrong request, peak RSS (``getrusage``) and the peak of traced Python allocations
   (``tracemalloc``). Tracing slows this code four- to fivefold, so the timed pass runs untraced and a
   second pass rebuilds the population under ``tracemalloc`` and matches the first
   ``--traced-studies`` studies again: the Python heap of the population and the matching loop's peak
   above it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # run as a script: import ``tests`` from the repository root

from tests.support.matching_population import DicomJson, Request, ScenarioStream  # noqa: E402

from pacsbridge.backends.orders import SqlOrderRecords, _write_keys, _write_request  # noqa: E402
from pacsbridge.backends.sql.engine import make_engine  # noqa: E402
from pacsbridge.backends.sql.migrations import migrate  # noqa: E402
from pacsbridge.domain.orders import ImagingRequest, RequestStatus, ScheduledStep, StepStatus  # noqa: E402
from pacsbridge.mapping import load_matching  # noqa: E402
from pacsbridge.services.matching import StudyMatcher, request_keys  # noqa: E402
from pacsbridge.services.orders import SPS_ID, SPS_SEQUENCE, worklist_item  # noqa: E402

DEFAULT_RULES = ROOT / "mappings" / "matching" / "default.yaml"
RESULTS = ROOT / "bench" / "results" / "matching-scale.json"
BATCH = 1000
CHECK_FIRST = 200  # studies compared with StudyMatcher.candidates itself


def imaging_request(r: Request, document: DicomJson) -> ImagingRequest:
    """The ImagingRequest the order service keeps for a worklist item (one scheduled step)."""
    attributes = {k: v for k, v in document.items() if k != SPS_SEQUENCE}
    sps = document[SPS_SEQUENCE]["Value"][0]
    sps_id = f"{r.accession}-1"[-16:]
    item = {**sps, SPS_ID: {"vr": "SH", "Value": [sps_id]}}
    return ImagingRequest(r.id, RequestStatus.ACTIVE, r.accession, f"RP{r.id[1:]}", r.study_uid, r.patient.pid,
                          attributes, (ScheduledStep(sps_id, StepStatus.SCHEDULED, f"{r.station}_AE", r.modality,
                                                     r.day.strftime("%Y%m%d"), r.time, item),))


# --- measuring -------------------------------------------------------------------------------------

def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rules = load_matching(args.rules)

    t0 = time.perf_counter()
    population = ScenarioStream(args.seed, args.requests, args.studies)
    t_generate = time.perf_counter() - t0
    log(f"population: {len(population.requests):,} requests of {len(population.b.patients):,} patients "
        f"in {t_generate:.1f} s")

    workdir = Path(tempfile.mkdtemp(prefix="pb-matching-scale-", dir=args.tmp))
    database = workdir / "index.sqlite"
    engine = make_engine(f"sqlite:///{database}")
    migrate(engine)
    records = SqlOrderRecords(engine)
    t0 = time.perf_counter()
    t_keys_requests = 0.0
    key_rows = 0
    batch: list[tuple[ImagingRequest, tuple[str, ...]]] = []

    async def flush() -> None:
        pending = list(batch)
        batch.clear()

        def work(conn: Any) -> None:
            for request, keys in pending:
                _write_request(conn, request)
                _write_keys(conn, request.request_id, keys)

        await records._db.write(work)

    for r in population.requests:
        request = imaging_request(r, population.b.request_document(r))
        k0 = time.perf_counter()
        keys = request_keys(rules, request)
        t_keys_requests += time.perf_counter() - k0
        key_rows += len(keys)
        batch.append((request, keys))
        if len(batch) >= BATCH:
            await flush()
    if batch:
        await flush()
    t_store = time.perf_counter() - t0
    distinct_keys = await records._db.read(
        lambda c: c.exec_driver_sql("SELECT count(DISTINCT key) FROM request_keys").scalar_one())
    log(f"stored {len(population.requests):,} requests, {key_rows:,} key rows ({distinct_keys:,} distinct keys) "
        f"in {t_store:.1f} s (keys {t_keys_requests:.1f} s); db {database.stat().st_size / 1e6:.0f} MB")

    rss_before = rss_mb()
    matcher = StudyMatcher(records, rules, link=None)  # type: ignore[arg-type]
    per_study: list[float] = []
    candidates: list[int] = []
    t_keys = t_sql = t_score = t_gen_studies = 0.0
    decisions: Counter[str] = Counter()
    scenario_rows: dict[str, Counter[str]] = defaultdict(Counter)
    wrong_certain = truth_missed = checked = 0
    held_back: Counter[str] = Counter()
    owner = {r.id: r.patient.key for r in population.requests}
    wrong_rows: dict[str, Counter[str]] = defaultdict(Counter)
    scored_pairs = 0
    t_match0 = time.perf_counter()
    deadline = t_match0 + args.max_minutes * 60
    studies = population.studies()
    aborted = False
    while True:
        g0 = time.perf_counter()
        study = next(studies, None)
        t_gen_studies += time.perf_counter() - g0
        if study is None:
            break
        doc, index = study.document, int(study.id[1:])
        s0 = time.perf_counter()
        keys = sorted(rules.blocking_keys(doc, "study"))
        s1 = time.perf_counter()
        found = await records.requests_by_keys(keys)
        s2 = time.perf_counter()
        scored = []
        for request in found:
            if not request.steps:
                continue
            results = [rules.score(worklist_item(request, step), doc) for step in request.steps]
            scored_pairs += len(results)
            scored.append((max(results, key=lambda r: r.confidence), request.request_id))
        scored.sort(key=lambda c: (-c[0].confidence, c[1]))
        s3 = time.perf_counter()
        t_keys += s1 - s0
        t_sql += s2 - s1
        t_score += s3 - s2
        per_study.append(s3 - s0)
        candidates.append(len(found))
        if study.truth is not None and study.truth not in {r.request_id for r in found}:
            truth_missed += 1
        choice = rules.choose([res for res, _ in scored])  # as StudyMatcher._decide takes it
        decision, chosen = choice.decision, scored[0][1] if choice.decision != "unlinked" else None
        held_back[choice.held_back or "-"] += 1
        decisions[decision] += 1
        scenario_rows[study.scenario][decision] += 1
        if decision == "auto-certain" and chosen != study.truth:
            wrong_certain += 1
            same = owner.get(chosen or "") == study.patient
            wrong_rows[study.scenario]["same patient, other request" if same else "OTHER PATIENT"] += 1
        if checked < CHECK_FIRST:  # the loop above is StudyMatcher.candidates with timers
            reference = await matcher.candidates(doc)
            assert [(c.request.request_id, c.result.confidence) for c in reference] == [
                (rid, res.confidence) for res, rid in scored], f"study {index}: differs from StudyMatcher"
            checked += 1
        if index % args.progress == 0:
            elapsed = time.perf_counter() - t_match0
            log(f"  {index:,} studies, {elapsed:.0f} s, mean {statistics.fmean(candidates):.1f} candidates")
        if time.perf_counter() > deadline:
            log(f"ABORTED after {args.max_minutes} minutes at study {index:,}")
            aborted = True
            break
    t_match = time.perf_counter() - t_match0
    traced = await traced_pass(args, rules, records) if args.traced_studies else None
    engine.dispose()
    if not args.keep_db:
        for f in workdir.iterdir():
            f.unlink()
        workdir.rmdir()

    n_studies = len(per_study)
    n_requests = len(population.requests)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "benchmark": "bench/matching_scale.py",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count(),
                    "platform": platform.platform()},
        "matching_file": str(Path(args.rules).resolve().relative_to(ROOT)) if Path(args.rules).resolve()
        .is_relative_to(ROOT) else str(args.rules),
        "seed": args.seed,
        "requests": n_requests,
        "patients": len(population.b.patients),
        "studies": n_studies,
        "aborted": aborted,
        "store": {"seconds": round(t_store, 2), "keys_seconds": round(t_keys_requests, 2),
                  "key_rows": key_rows, "distinct_keys": distinct_keys,
                  "keys_per_request": round(key_rows / n_requests, 2),
                  "requests_per_s": round(n_requests / t_store, 1), "batch": BATCH},
        "generate_seconds": round(t_generate, 2),
        "matching": {
            "seconds": round(t_match, 2),
            "seconds_without_study_generation": round(t_match - t_gen_studies, 2),
            "studies_per_s": round(n_studies / (t_match - t_gen_studies), 1),
            "per_study_ms": {"mean": round(1000 * statistics.fmean(per_study), 3),
                             "p50": round(1000 * pct(per_study, 0.5), 3),
                             "p95": round(1000 * pct(per_study, 0.95), 3),
                             "p99": round(1000 * pct(per_study, 0.99), 3),
                             "max": round(1000 * max(per_study), 3)},
            "split_seconds": {"keys": round(t_keys, 2), "sql_lookup": round(t_sql, 2),
                              "scoring": round(t_score, 2), "study_generation": round(t_gen_studies, 2)},
            "candidates": {"mean": round(statistics.fmean(candidates), 2), "p50": pct(candidates, 0.5),
                           "p95": pct(candidates, 0.95), "p99": pct(candidates, 0.99), "max": max(candidates),
                           "none": sum(1 for c in candidates if c == 0),
                           "scored_pairs": scored_pairs,
                           "share_of_all_pairs": scored_pairs / (n_requests * n_studies),
                           "mean_as_share_of_requests": round(statistics.fmean(candidates) / n_requests, 6)},
            "checked_against_study_matcher": checked,
        },
        "decisions": dict(sorted(decisions.items())),
        "held_back_to_unsure": {k: v for k, v in sorted(held_back.items()) if k != "-"},
        "wrong_auto_certain": wrong_certain,
        "wrong_auto_certain_by_scenario": {s: dict(c) for s, c in wrong_rows.items()},
        "truth_not_in_candidates": truth_missed,
        "by_scenario": {s: dict(sorted(c.items())) for s, c in scenario_rows.items()},
        "memory": {"peak_rss_mb": round(rss_mb(), 1), "rss_before_matching_mb": round(rss_before, 1),
                   "tracemalloc": traced},
    }


async def traced_pass(args: argparse.Namespace, rules: Any, records: SqlOrderRecords) -> dict[str, Any]:
    """Python allocations, traced in a second pass (tracing slows this code four- to fivefold, so the
    timed pass runs without it): the population rebuilt from the same seed, then the first
    ``--traced-studies`` studies matched again against the same database."""
    tracemalloc.start()
    population = ScenarioStream(args.seed, args.requests, args.studies)
    built, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    done = 0
    for study in population.studies():
        keys = sorted(rules.blocking_keys(study.document, "study"))
        scored = []
        for request in await records.requests_by_keys(keys):
            results = [rules.score(worklist_item(request, step), study.document) for step in request.steps]
            scored.append((max(results, key=lambda r: r.confidence), request.request_id))
        scored.sort(key=lambda c: (-c[0].confidence, c[1]))
        done += 1
        if done >= args.traced_studies:
            break
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    log(f"traced pass: population {built / 2**20:.0f} MB, matching {done:,} studies peaked "
        f"{(peak - built) / 2**20:.1f} MB above it")
    return {"studies": done, "population_mb": round(built / 2**20, 1), "peak_mb": round(peak / 2**20, 1),
            "matching_peak_above_population_mb": round((peak - built) / 2**20, 1)}


def render(r: dict[str, Any]) -> str:
    m, c, mem = r["matching"], r["matching"]["candidates"], r["memory"]
    rows = [
        ("requests / studies", f"{r['requests']:,} / {r['studies']:,}" + (" (ABORTED)" if r["aborted"] else "")),
        ("store requests (keys + SQL)", f"{r['store']['seconds']:.1f} s ({r['store']['requests_per_s']:,.0f}/s, "
                                        f"{r['store']['keys_per_request']} keys each)"),
        ("match all studies", f"{m['seconds_without_study_generation']:.1f} s ({m['studies_per_s']:,.0f} studies/s)"),
        ("  keys / SQL lookup / scoring", f"{m['split_seconds']['keys']:.1f} / {m['split_seconds']['sql_lookup']:.1f}"
                                          f" / {m['split_seconds']['scoring']:.1f} s"),
        ("per study ms mean / p50 / p95 / max", f"{m['per_study_ms']['mean']:.2f} / {m['per_study_ms']['p50']:.2f} / "
                                                f"{m['per_study_ms']['p95']:.2f} / {m['per_study_ms']['max']:.1f}"),
        ("candidates mean / p95 / max", f"{c['mean']:.1f} / {c['p95']} / {c['max']} (of {r['requests']:,})"),
        ("pairs scored / all pairs", f"{c['scored_pairs']:,} / {r['requests'] * r['studies']:,} "
                                     f"({100 * c['share_of_all_pairs']:.4f} %)"),
        ("decisions", ", ".join(f"{k} {v:,}" for k, v in r["decisions"].items())),
        ("held back to auto-unsure", ", ".join(f"{k} {v:,}" for k, v in r["held_back_to_unsure"].items()) or "none"),
        ("wrong auto-certain", f"{r['wrong_auto_certain']} " + json.dumps(r["wrong_auto_certain_by_scenario"],
                                                                        ensure_ascii=False)),
        ("peak RSS", f"{mem['peak_rss_mb']:.0f} MB (before matching {mem['rss_before_matching_mb']:.0f} MB)"),
        ("tracemalloc peak (second pass)", "off" if not (t := mem["tracemalloc"]) else
         f"{t['peak_mb']:.0f} MB: population {t['population_mb']:.0f} MB, matching "
         f"{t['studies']:,} studies +{t['matching_peak_above_population_mb']:.1f} MB"),
    ]
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--rules", type=Path, default=DEFAULT_RULES, help="matching file")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON results (e.g. {RESULTS.relative_to(ROOT)})")
    parser.add_argument("--tmp", default=None, help="folder of the temporary SQLite database")
    parser.add_argument("--keep-db", action="store_true")
    parser.add_argument("--traced-studies", type=int, default=2000,
                        help="studies matched again under tracemalloc after the timed pass (0: none)")
    parser.add_argument("--max-minutes", type=float, default=20.0, help="stop matching after this long")
    parser.add_argument("--progress", type=int, default=10_000, help="log every this many studies")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(render(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
