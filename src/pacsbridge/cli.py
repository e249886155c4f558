"""The ``pacsbridge`` command: serve, import, check-config, demo-data.

With no options ``serve`` runs the embedded default: data in ./pacsbridge-data, a SQLite index and
files, DICOMweb under /dicomweb on 127.0.0.1:8042.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from . import allocator
from .logs import configure_logging
from .settings import Settings, load_settings, masked


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {"data_dir": getattr(args, "data_dir", None)}
    for name in ("host", "port", "workers"):
        overrides[name] = getattr(args, name, None)
    return load_settings(args.config, **overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import build_app

    settings = _settings(args)
    configure_logging(settings.log_level)
    allocator.tune()
    if args.demo:
        _import_demo(settings)
    print(f"pacsbridge: DICOMweb at http://{settings.host}:{settings.port}{settings.dicomweb.root} "
          f"(data in {settings.data_dir.resolve()}, {settings.resolved_workers()} worker(s))", file=sys.stderr)
    # access_log=False: uvicorn would log query strings (patient names); adapters/http.AccessLog doesn't.
    options: dict[str, Any] = {"host": settings.host, "port": settings.port, "proxy_headers": True,
                               "log_level": settings.log_level.lower(), "access_log": False}
    workers = settings.resolved_workers()
    if workers == 1:
        uvicorn.run(build_app(settings), **options)
        return 0
    # Several processes: migrate once here, then each worker builds the app from the same settings.
    import os

    from .app import build_services
    from .settings import RESOLVED_ENV, to_worker_environment

    services = build_services(settings)
    import anyio

    anyio.run(services.archive.close)
    os.environ[RESOLVED_ENV] = to_worker_environment(settings)
    uvicorn.run("pacsbridge.app:app_from_environment", factory=True, workers=workers, **options)
    return 0


def _import_demo(settings: Settings) -> None:
    from .synthetic import write_demo

    demo_dir = settings.data_dir / "demo-source"
    if demo_dir.exists():
        return
    write_demo(demo_dir)
    _run_import(settings, [demo_dir], quiet=True)


def cmd_import(args: argparse.Namespace) -> int:
    settings = _settings(args)
    logging.basicConfig(level=logging.WARNING)
    summary = _run_import(settings, [Path(p) for p in args.paths], quiet=args.quiet)
    return 0 if not summary["failed"] else 1


def _run_import(settings: Settings, paths: list[Path], quiet: bool) -> dict[str, Any]:
    import anyio

    from .adapters.importer import import_paths
    from .app import build_services

    services = build_services(settings)

    async def run() -> dict[str, Any]:
        try:
            return await import_paths(services.ingest, paths, progress=not quiet)
        finally:
            await services.archive.close()

    summary: dict[str, Any] = anyio.run(run)
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    console.print(f"[bold]imported[/]: {summary['stored']} stored ({summary['replaced']} replaced), "
                  f"{len(summary['failed'])} failed, {summary['skipped']} skipped")
    for path, reason in summary["failed"][:50]:
        console.print(f"  [red]failed[/] {path}: {reason}")
    if len(summary["failed"]) > 50:
        console.print(f"  ... and {len(summary['failed']) - 50} more")
    return summary


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
    except Exception as exc:  # pydantic's ValidationError names every wrong field
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(masked(settings), indent=2, default=str))
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from .synthetic import write_demo

    paths = write_demo(Path(args.folder), studies=args.studies)
    print(f"wrote {len(paths)} files under {args.folder}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pacsbridge", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", type=Path, help="YAML or TOML settings file")
        sp.add_argument("--data-dir", type=Path, help="where files and the SQLite index live")

    serve = sub.add_parser("serve", help="run the server")
    common(serve)
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="HTTP worker processes (default: one per core, at most 4)")
    serve.add_argument("--demo", action="store_true", help="import a small synthetic data set on first start")
    serve.set_defaults(func=cmd_serve)

    imp = sub.add_parser("import", help="import folders, zip files or DICOMDIRs")
    common(imp)
    imp.add_argument("paths", nargs="+")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(func=cmd_import)

    check = sub.add_parser("check-config", help="print the resolved settings, secrets masked")
    common(check)
    check.add_argument("--host")
    check.add_argument("--port", type=int)
    check.set_defaults(func=cmd_check_config)

    demo = sub.add_parser("demo-data", help="write a synthetic demo data set to a folder")
    demo.add_argument("folder")
    demo.add_argument("--studies", type=int, default=4)
    demo.set_defaults(func=cmd_demo_data)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
