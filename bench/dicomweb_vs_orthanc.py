"""pacsbridge against Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``): same data, same clients, same run.

Usage: .venv/bin/python bench/dicomweb_vs_orthanc.py [--quick] [--instances N] [--studies M] [--out FILE]

Phases, each run against both servers with identical inputs, in two rounds (A B, then B A) that
each take half of the work, so that neither server always goes first:
1. STOW-RS the whole generated data set (several parts per request, a few concurrent uploaders).
2. Check each server's answers (QIDO counts, one study, one series' metadata, one frame), untimed.
3. QIDO-RS study searches, WADO-RS whole studies, series metadata, single frames: Debian's ``wrk``
   (C, keep-alive connections; ``bench/wrk_client.py``) over the same request lists, bounded by count
   and time, same warm-up; any non-2xx answer or incomplete body stops the run. Whole studies and
   frames: the timed run, then an untimed pass over the round's list with every answer checked.
4. On fresh servers: STOW about 1 GB while sampling the server's resident memory.
Then a table: metric | pacsbridge | Orthanc | ratio | target | met?
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # run as a script: import ``bench`` and ``tests`` from the repository root

from bench import checks, request_lists  # noqa: E402
from bench.dataset import FULL_MULTIFRAME, MB, QUICK_MULTIFRAME, Item, load_or_generate  # noqa: E402
from bench.servers import (  # noqa: E402
    RssSampler,
    Target,
    orthanc_target,
    pacsbridge,
    peak_rss_bytes,
    reset_peak,
    rss_bytes,
    settle,
)
from bench.workload import RunResult, StowResult, batches, stow, timed_gets  # noqa: E402
from bench.wrk_client import wrk_gets, wrk_version  # noqa: E402

T = TypeVar("T")
# Phases whose bodies wrk alone reads while timed (whole studies, 0.5 MB frames): copying each body
# into the Lua checks would cost the client more than the transfer; an untimed pass then checks them.
LEAN_PHASES = frozenset({"wado_study", "frames"})
PHASES = ("stow", "qido", "wado_study", "metadata", "frames", "memory")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="300 instances, small multi-frame, short runs (~2 min)")
    p.add_argument("--instances", type=int, help="instances in the data set (default 5000; quick 300)")
    p.add_argument("--studies", type=int, help="studies in the data set (default 200; quick 20)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--cache", type=Path, default=ROOT / "bench" / "results" / "dataset-cache")
    p.add_argument("--workdir", type=Path, default=Path("/tmp"), help="where the servers' data folders go")
    p.add_argument("--concurrency", type=int, default=8, help="workers for QIDO, metadata and frames")
    p.add_argument("--wado-concurrency", type=int, default=4, help="workers for whole-study retrieves")
    p.add_argument("--read-client", choices=["wrk", "httpx"], default="wrk",
                   help="client of the read phases (httpx: the old Python client, itself CPU-bound here)")
    p.add_argument("--wado-passes", type=int, default=3,
                   help="whole-study retrieves ask every study this many times (one pass takes about 1 s "
                        "for pacsbridge here: too short to measure alone)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads for the read phases")
    p.add_argument("--wado-wrk-threads", type=int, default=2,
                   help="wrk threads for whole-study retrieves (one thread reading pacsbridge's bodies used 83%% "
                        "of a core and was the limit, not the server)")
    p.add_argument("--uploaders", type=int, default=4, help="concurrent STOW-RS requests")
    p.add_argument("--stow-parts", type=int, default=16, help="most parts in one STOW-RS request")
    p.add_argument("--stow-mb", type=int, default=32, help="most MB in one STOW-RS request (a larger file goes alone)")
    p.add_argument("--read-seconds", type=float, help="time bound of each read run (default 30; quick 8)")
    p.add_argument("--read-requests", type=int, help="count bound of each read run (default 3000; quick 600)")
    p.add_argument("--rss-mb", type=int, help="size of the memory STOW (default 1024; quick 150)")
    p.add_argument("--frame-mix", type=int, default=10, metavar="N",
                   help="one frames request in N asks for a frame of a multi-frame object (0: slices only)")
    p.add_argument("--pacsbridge-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for pacsbridge (experiments only; the reported run uses none)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="record py-spy profiles of pacsbridge per phase into DIR (slows it: not for figures)")
    p.add_argument("--only", choices=["pacsbridge", "orthanc"], help="run one server only (profiling)")
    p.add_argument("--phases", default=",".join(PHASES),
                   help=f"comma-separated phases to run (default all: {','.join(PHASES)}); stow always runs")
    args = p.parse_args(argv)
    args.phases = {"stow", *(name.strip() for name in args.phases.split(",") if name.strip())}
    unknown = args.phases - set(PHASES)
    if unknown:
        p.error(f"unknown phases: {', '.join(sorted(unknown))}")
    quick = args.quick
    args.instances = args.instances or (300 if quick else 5000)
    args.studies = args.studies or (20 if quick else 200)
    args.read_seconds = args.read_seconds or (8.0 if quick else 30.0)
    args.read_requests = args.read_requests or (600 if quick else 3000)
    args.rss_mb = args.rss_mb or (150 if quick else 1024)
    args.multiframe = QUICK_MULTIFRAME if quick else FULL_MULTIFRAME
    return args


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextlib.contextmanager
def profiled(args: argparse.Namespace, target: Target, phase: str) -> Iterator[None]:
    """py-spy samples pacsbridge during one phase when ``--profile`` is given."""
    if args.profile is None or target.name != "pacsbridge":
        yield
        return
    args.profile.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    out = args.profile / f"{phase}.txt"
    process = subprocess.Popen([str(spy), "record", "--pid", str(target.pid), "--rate", "200", "--format", "raw",
                                "--output", str(out), "--duration", "600", "--nonblocking", "--subprocesses"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def run_phase(args: argparse.Namespace, targets: list[Target], phase: str,
              job: Callable[[Target, int], RunResult]) -> dict[str, RunResult]:
    """One phase in two rounds, A B then B A, so that neither server always goes first and a change
    of load on the shared machine falls on both; each round gets its half of the work."""
    results: dict[str, RunResult] = {}
    for round_index in (0, 1):
        ordered = targets if round_index == 0 else list(reversed(targets))
        for target in ordered:
            waited = settle([t.pid for t in targets])
            if waited > 1.0:
                log(f"{phase:>10} waited {waited:.1f} s for the servers and the disk to go quiet")
            with profiled(args, target, f"{phase}-{round_index}"):
                result = job(target, round_index)
            log(f"{phase:>10} {target.name:>10} round {round_index + 1}: {_brief(result)}")
            if target.name in results:
                results[target.name].add(result)
            else:
                results[target.name] = result
    for name, result in results.items():
        log(f"{phase:>10} {name:>10}   total: {_brief(result)}")
    return results


def halves(values: Sequence[T]) -> tuple[list[T], list[T]]:
    middle = (len(values) + 1) // 2
    return list(values[:middle]), list(values[middle:]) or list(values[:middle])


def _brief(r: RunResult) -> str:
    extra = f", {r.instances_per_s:.1f} instances/s, failed {r.failed}" if isinstance(r, StowResult) else ""
    return (f"{r.requests} requests in {r.elapsed_s:.1f} s = {r.rate:.1f}/s, {r.mb_per_s:.1f} MB/s, "
            f"p50 {r.percentile_ms(50):.1f} ms, p95 {r.percentile_ms(95):.1f} ms, errors {r.errors}, "
            f"server CPU {r.server_cpu_s:.1f} s, client CPU {r.client_cpu_s:.1f} s ({r.client_cpu_share:.0%}){extra}")


def stow_batches(args: argparse.Namespace, items: Sequence[Item]) -> list[list[Item]]:
    return batches(items, args.stow_parts, args.stow_mb * MB)


def memory_set(items: Sequence[Item], megabytes: int) -> tuple[list[Item], Item]:
    """About ``megabytes`` of the data set, multi-frame objects first, and one other slice for warm-up."""
    ordered = sorted(items, key=lambda i: i.frames == 1)
    chosen: list[Item] = []
    total = 0
    for item in ordered[:-1]:
        if total >= megabytes * MB:
            break
        chosen.append(item)
        total += item.size
    return chosen, ordered[-1]


def memory_phase(args: argparse.Namespace, target: Target, items: Sequence[Item], warmup: Item) -> dict[str, Any]:
    """Resident memory of ``target`` around a STOW of ``items`` (after a one-instance warm-up STOW)."""
    start_rss = rss_bytes(target.pid)
    asyncio.run(stow(target.dicomweb, [[warmup]], pid=target.pid, uploaders=1, max_seconds=60))
    time.sleep(1.0)
    baseline = rss_bytes(target.pid)
    hwm_reset = reset_peak(target.pid)
    with RssSampler(target.pid) as sampler:
        result = asyncio.run(stow(target.dicomweb, stow_batches(args, items), pid=target.pid,
                                  uploaders=args.uploaders, max_seconds=1800))
    after = rss_bytes(target.pid)
    peak = max(sampler.peak, peak_rss_bytes(target.pid) if hwm_reset else 0)
    return {
        "stowed_mb": round(result.bytes / MB, 1), "instances": result.instances, "failed": result.failed,
        "rss_at_start_mb": round(start_rss / MB, 1), "rss_baseline_mb": round(baseline / MB, 1),
        "rss_peak_mb": round(peak / MB, 1), "rss_after_mb": round(after / MB, 1),
        "rss_growth_mb": round((peak - baseline) / MB, 1), "samples": sampler.samples, "hwm_reset": hwm_reset,
        "stow": result.summary(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.pacsbridge_env)
    started = time.monotonic()
    log(f"data set: {args.instances} instances in {args.studies} studies + {len(args.multiframe)} multi-frame")
    items = load_or_generate(args.cache, args.instances, args.studies, args.multiframe)
    total_mb = sum(i.size for i in items) / MB
    log(f"data set ready: {len(items)} files, {total_mb:.0f} MB")
    report: dict[str, Any] = {"machine": machine(), "args": _jsonable(vars(args)),
                              "dataset": {"files": len(items), "mb": round(total_mb, 1),
                                          "studies": len({i.study_uid for i in items}),
                                          "series": len({i.series_uid for i in items}),
                                          "multiframe_bytes": [i.size for i in items if i.frames > 1]}}
    report["client"] = {"stow_and_memory": "httpx", "reads": args.read_client,
                        "wrk": wrk_version() if args.read_client == "wrk" else None,
                        "wrk_threads": args.wrk_threads if args.read_client == "wrk" else None,
                        "wado_wrk_threads": args.wado_wrk_threads if args.read_client == "wrk" else None}
    results, report["checks"] = throughput_phases(args, items, env)
    memory = memory_phases(args, items, env) if "memory" in args.phases else {}
    report["results"] = {phase: {name: r.summary() for name, r in by.items()} for phase, by in results.items()}
    report["memory"] = memory
    report["table"] = table(results, memory)
    report["client"]["cpu_share"] = {phase: {name: r.client_cpu_share for name, r in by.items()}
                                     for phase, by in results.items()}
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print()
    print(render(report["table"]))
    print(f"\nread client {args.read_client}, its CPU as a share of one core:")
    for phase, by in report["client"]["cpu_share"].items():
        if phase != "stow":
            print(f"  {phase:>10}: " + ", ".join(f"{name} {share:.1%}" for name, share in by.items()))
    print(f"(total {report['elapsed_s']:.0f} s; CPU seconds per phase are in the JSON output)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        log(f"wrote {args.out}")
    return 0


def throughput_phases(args: argparse.Namespace, items: Sequence[Item], env: dict[str, str]
                      ) -> tuple[dict[str, dict[str, RunResult]], dict[str, Any]]:
    """Both servers side by side: STOW everything, check answers, then the timed reads."""
    queries = request_lists.qido_queries(items, max(args.read_requests, 400))
    results: dict[str, dict[str, RunResult]] = {}
    report: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        targets = []
        if args.only != "orthanc":
            targets.append(stack.enter_context(pacsbridge(args.workdir, env)))
        if args.only != "pacsbridge":
            targets.append(stack.enter_context(orthanc_target(args.workdir)))
        log("servers: " + ", ".join(f"{t.name} pid {t.pid} at {t.dicomweb}" for t in targets))
        stow_rounds = halves(stow_batches(args, items))
        results["stow"] = run_phase(args, targets, "stow", lambda t, r: asyncio.run(stow(
            t.dicomweb, stow_rounds[r], pid=t.pid, uploaders=args.uploaders, max_seconds=3600)))
        for t in targets:
            report[t.name] = {"qido_counts": checks.qido_counts(t.dicomweb, queries),
                              **checks.retrieve_checks(t.dicomweb, items)}
        report["qido_expected"] = {q.kind: q.expected for q in queries[:8]}
        log(f"checks: {json.dumps(report)}")
        frames = request_lists.frame_paths(items, max(args.read_requests, 400), multiframe_every=args.frame_mix)
        reads = [
            ("qido", [q.path for q in queries], request_lists.ACCEPT_JSON, args.concurrency, frozenset({200, 204})),
            ("wado_study", request_lists.study_paths(items, passes=args.wado_passes), request_lists.ACCEPT_STUDY,
             args.wado_concurrency, frozenset({200})),
            ("metadata", request_lists.series_metadata_paths(items), request_lists.ACCEPT_JSON, args.concurrency,
             frozenset({200})),
            ("frames", frames, request_lists.ACCEPT_FRAMES, args.concurrency, frozenset({200})),
        ]
        in_study: dict[str, tuple[int, int]] = {}
        for i in items:
            n, size = in_study.get(i.study_uid, (0, 0))
            in_study[i.study_uid] = (n + 1, size + i.size)
        for phase, paths, accept, concurrency, ok in reads:
            if phase not in args.phases:
                continue
            rounds = halves(paths)

            def job(t: Target, r: int, rounds: tuple[list[str], list[str]] = rounds, phase: str = phase,
                    a: str = accept, c: int = concurrency, o: frozenset[int] = ok) -> RunResult:
                p = rounds[r]
                bound = len(p) if phase == "wado_study" else args.read_requests // 2
                warmup, seconds = min(2 * c, 16), args.read_seconds / 2
                if args.read_client == "httpx":
                    return asyncio.run(timed_gets(t.dicomweb, p, a, pid=t.pid, concurrency=c, max_requests=bound,
                                                  max_seconds=seconds, warmup=warmup, ok=o))
                expect = None
                if phase == "wado_study":  # each study wado_passes times: every instance, every byte
                    per_study = [in_study[path.rsplit("/", 1)[1]] for path in p]
                    expect = (sum(n for n, _ in per_study), sum(size for _, size in per_study))
                threads = args.wado_wrk_threads if phase == "wado_study" else args.wrk_threads
                return wrk_gets(t.dicomweb, p, a, pid=t.pid, concurrency=c, threads=threads,
                                max_requests=bound, max_seconds=seconds, warmup=warmup, ok=o,
                                label=f"{phase} {t.name} round {r + 1}", lean=phase in LEAN_PHASES,
                                expect=expect)

            results[phase] = run_phase(args, targets, phase, job)
    return results, report


def memory_phases(args: argparse.Namespace, items: Sequence[Item], env: dict[str, str]) -> dict[str, Any]:
    """Each server fresh and alone: resident memory around a STOW of about ``--rss-mb``."""
    memory_items, warmup = memory_set(items, args.rss_mb)
    memory: dict[str, Any] = {}
    starters: list[tuple[str, Callable[[], contextlib.AbstractContextManager[Target]]]] = [
        ("pacsbridge", lambda: pacsbridge(args.workdir, env)), ("Orthanc", lambda: orthanc_target(args.workdir))]
    for name, start in starters:
        if args.only and args.only != name.lower():
            continue
        with start() as target, profiled(args, target, "memory"):
            memory[name] = memory_phase(args, target, memory_items, warmup)
        log(f"    memory {name:>10}: {json.dumps({k: v for k, v in memory[name].items() if k != 'stow'})}")
    return memory


def table(results: dict[str, dict[str, RunResult]], memory: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the comparison; ``ratio`` is pacsbridge / Orthanc."""

    def value(phase: str, name: str, get: Callable[[Any], float]) -> float | None:
        r = results.get(phase, {}).get(name)
        return None if r is None else get(r)

    def row(metric: str, phase: str, get: Callable[[Any], float], target: str,
            check: Callable[[float | None, float | None, float | None], bool | None]) -> dict[str, Any]:
        pb, oc = value(phase, "pacsbridge", get), value(phase, "Orthanc", get)
        ratio = pb / oc if pb is not None and oc else None
        return {"metric": metric, "pacsbridge": pb, "Orthanc": oc, "ratio": ratio, "target": target,
                "met": check(pb, oc, ratio)}

    def at_least(factor: float) -> Callable[[float | None, float | None, float | None], bool | None]:
        return lambda _pb, _oc, ratio: None if ratio is None else ratio >= factor

    rows = [
        row("STOW ingest, instances/s", "stow", lambda r: r.instances_per_s, ">= 1.5x", at_least(1.5)),
        row("STOW ingest, MB/s", "stow", lambda r: r.mb_per_s, "-", lambda *_: None),
        row("QIDO study searches/s (c=8)", "qido", lambda r: r.rate, ">= 3x", at_least(3.0)),
        row("QIDO p50 latency, ms", "qido", lambda r: r.percentile_ms(50), "-", lambda *_: None),
        row("QIDO p95 latency, ms", "qido", lambda r: r.percentile_ms(95), "pb < 100 ms",
            lambda pb, _oc, _r: None if pb is None else pb < 100),
        row("WADO-RS whole study, MB/s", "wado_study", lambda r: r.mb_per_s, ">= 2x", at_least(2.0)),
        row("series metadata requests/s", "metadata", lambda r: r.rate, ">= 2x", at_least(2.0)),
        row("frames requests/s", "frames", lambda r: r.rate, ">= 2x", at_least(2.0)),
    ]
    pb_mem, oc_mem = memory.get("pacsbridge"), memory.get("Orthanc")
    growth_pb = pb_mem["rss_growth_mb"] if pb_mem else None
    growth_oc = oc_mem["rss_growth_mb"] if oc_mem else None
    stowed = (pb_mem or oc_mem or {}).get("stowed_mb", 0)
    rows.append({"metric": f"RSS growth during {stowed:.0f} MB STOW, MB", "pacsbridge": growth_pb,
                 "Orthanc": growth_oc, "ratio": growth_pb / growth_oc if growth_pb is not None and growth_oc else None,
                 "target": "pb < 150 MB", "met": None if growth_pb is None else growth_pb < 150})
    peak_pb = pb_mem["rss_peak_mb"] if pb_mem else None
    peak_oc = oc_mem["rss_peak_mb"] if oc_mem else None
    rows.append({"metric": "peak RSS during that STOW, MB", "pacsbridge": peak_pb, "Orthanc": peak_oc,
                 "ratio": peak_pb / peak_oc if peak_pb is not None and peak_oc else None, "target": "-",
                 "met": None})
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    def fmt(v: Any, digits: int = 1) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "NO"
        if isinstance(v, float):
            return f"{v:,.{digits}f}"
        return str(v)

    header = ["metric", "pacsbridge", "Orthanc", "ratio", "target", "met?"]
    lines = [[r["metric"], fmt(r["pacsbridge"]), fmt(r["Orthanc"]), fmt(r["ratio"], 2) + ("x" if r["ratio"] else ""),
              r["target"], fmt(r["met"])] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for line in lines:
        cells = [c.ljust(w) if i in (0, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fp:
        cpu = next((line.split(":", 1)[1].strip() for line in fp if line.startswith("model name")), cpu)
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as fp:
        mem_kb = int(next(line.split()[1] for line in fp if line.startswith("MemTotal")))
    orthanc = subprocess.run(["/usr/sbin/Orthanc", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "src"], capture_output=True, text=True).stdout.split("\n")
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version(), "orthanc": orthanc,
            "pacsbridge_commit": commit, "pacsbridge_src_changes": [d.strip() for d in dirty if d.strip()],
            "loadavg_at_start": os.getloadavg()}


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else sorted(v) if isinstance(v, set)
                else [str(x) for x in v] if isinstance(v, tuple) else v)
            for k, v in values.items()}


if __name__ == "__main__":
    raise SystemExit(main())
