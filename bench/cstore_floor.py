"""Where C-STORE ingest time goes: storescu into a bare pynetdicom SCP, into pacsbridge and into Orthanc,
and pacsbridge's ingest alone without DIMSE; same files, one run.

Usage: .venv/bin/python bench/cstore_floor.py [--files N] [--rounds R]

- ``bare``: a pynetdicom SCP in this process whose C-STORE handler only encodes the received dataset
  (what any pynetdicom-based SCP must do at least): the ceiling for a Python SCP on this machine.
- ``bare + fdatasync``: the same SCP writing each instance to a new file and fdatasync'ing it before it
  answers, as Orthanc does by default (``SyncStorageArea``): the ceiling for a pynetdicom SCP that
  keeps what it acknowledges, with no parsing and no index.
- ``pacsbridge``: ``pacsbridge serve`` (embedded archive, fsync on), its SCP open to storescu.
- ``Orthanc``: Debian Orthanc with its defaults (its storage area fsync'd).
- ``ingest only``: pacsbridge's IngestService over a LocalArchive in this process, the files handed to
  it one by one as C-STORE would (spool, fsync, parse, index, rename, folder fsync): no DIMSE at all.
Each SCP gets fresh copies of the same studies (``R`` rounds of ``N`` files, the order of SCPs alternating);
storescu (DCMTK, one association, TCP_NODELAY=1) sends them; instances/s is files over storescu's
wall time, CPU is the server's (for ``bare`` and ``ingest only``: this process's) per instance.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt  # noqa: E402
from tests.support.orthanc import orthanc  # noqa: E402
from tests.support.servers import free_port  # noqa: E402

from bench.proxy_vs_orthanc import PB_AET, STORESCU, STORESCU_AET, ingest_sets  # noqa: E402
from bench.servers import cpu_seconds, pacsbridge  # noqa: E402
from pacsbridge.backends.local import LocalArchive  # noqa: E402
from pacsbridge.dimse_tuning import no_delay, quiet_identifiers  # noqa: E402
from pacsbridge.domain.model import Origin  # noqa: E402
from pacsbridge.services.ingest import IngestOptions, IngestService  # noqa: E402


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def send(port: int, called: str, folder: Path, cpu: Callable[[], float]) -> tuple[float, float, int]:
    """storescu ``folder`` into ``called`` at ``port``: (seconds, server CPU seconds, files)."""
    files = sum(1 for p in folder.rglob("*") if p.is_file())
    c0, t0 = cpu(), time.monotonic()
    subprocess.run([str(STORESCU), "+sd", "+r", "-aet", STORESCU_AET, "-aec", called, "-to", "30", "-ta", "30",
                    "-td", "120", "127.0.0.1", str(port), str(folder)],
                   check=True, capture_output=True, timeout=900, env={**os.environ, "TCP_NODELAY": "1"})
    return time.monotonic() - t0, cpu() - c0, files


def bare(folder: Path, workdir: Path, keep: bool = False) -> tuple[float, float, int]:
    quiet_identifiers()
    ae = AE(ae_title="BARE")
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    kept = Path(tempfile.mkdtemp(prefix="bare-", dir=workdir))
    names = itertools.count()

    def store(event: object) -> int:
        data = event.encoded_dataset(include_meta=True)  # type: ignore[attr-defined]
        if keep:
            fd = os.open(kept / f"{next(names)}.dcm", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, data)
                os.fdatasync(fd)
            finally:
                os.close(fd)
        return 0x0000

    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, store), (evt.EVT_CONN_OPEN, no_delay)])
    try:
        return send(port, "BARE", folder, own_cpu)
    finally:
        server.shutdown()


def via_pacsbridge(folder: Path, workdir: Path) -> tuple[float, float, int]:
    port = free_port()
    config = {"archive": "local", "dimse": {"port": port, "peers": [
        {"ae_title": STORESCU_AET, "host": "127.0.0.1", "scopes": ["dicomweb.write"]}]}}
    with pacsbridge(workdir, {}, config) as pb:
        time.sleep(3)  # both workers done starting: their imports are not ingest
        return send(port, PB_AET, folder, lambda: cpu_seconds(pb.pid))


def via_orthanc(folder: Path, workdir: Path) -> tuple[float, float, int]:
    with orthanc(aet="ORTHANC", modalities={"storescu": (STORESCU_AET, "127.0.0.1", 1)}, parent=workdir) as pacs:
        return send(pacs.dicom_port, pacs.aet, folder, lambda: cpu_seconds(pacs.pid))


def ingest_only(folder: Path, workdir: Path) -> tuple[float, float, int]:
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    contents = [p.read_bytes() for p in paths]
    data = Path(tempfile.mkdtemp(prefix="ingest-", dir=workdir))
    archive = LocalArchive.open(f"sqlite:///{data}/index.db", data, fsync=True)
    ingest = IngestService(archive, archive.blobs, IngestOptions())
    origin = Origin("c-store", "127.0.0.1", "bench")

    async def run() -> None:
        for content in contents:
            staged, fp = ingest.new_spool_file()
            with fp:
                fp.write(content)
                ingest.seal(fp)
            result = await ingest.store_file(staged, origin)
            if not result.ok:
                raise RuntimeError(f"ingest only: {result.reason}")

    c0, t0 = own_cpu(), time.monotonic()
    try:
        asyncio.run(run())
    finally:
        asyncio.run(archive.close())
    return time.monotonic() - t0, own_cpu() - c0, len(contents)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=300, help="files per round and target, a multiple of 100")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path("/tmp"))
    args = p.parse_args(argv)
    targets = {"bare pynetdicom": bare, "bare + fdatasync": functools.partial(bare, keep=True),
               "pacsbridge": via_pacsbridge, "Orthanc": via_orthanc,
               "ingest only": ingest_only}
    totals: dict[str, list[float]] = {name: [0.0, 0.0, 0] for name in targets}
    with tempfile.TemporaryDirectory(prefix="cstore-floor-", dir=args.workdir) as tmp:
        for round_number in range(args.rounds):
            order = list(targets) if round_number % 2 == 0 else list(reversed(targets))
            for i, name in enumerate(order):
                # fresh copies of the same kind of studies for every target and round
                folder = ingest_sets(Path(tmp) / f"r{round_number}-{i}", args.files * 2, 256,
                                     seed=91 + round_number * 10 + i)[0].folder
                seconds, cpu, files = targets[name](folder, Path(tmp))
                totals[name][0] += seconds
                totals[name][1] += cpu
                totals[name][2] += files
                print(f"round {round_number + 1} {name:16s} {files / seconds:7.1f} instances/s, "
                      f"{cpu / files * 1000:5.2f} ms CPU per instance", flush=True)
    print("\n| target | instances/s | ms CPU per instance |\n|---|---|---|")
    for name, (seconds, cpu, files) in totals.items():
        print(f"| {name} | {files / seconds:.1f} | {cpu / files * 1000:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
