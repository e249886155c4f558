"""The ``pacsbridge`` command: serve, import, check-config, demo-data, clients, keys, users.

With no options ``serve`` runs the embedded default: data in ./pacsbridge-data, a SQLite index and
files, DICOMweb under /dicomweb on 127.0.0.1:8042.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from . import allocator, open_files
from .logs import configure_logging
from .settings import Settings, load_settings, masked


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {"data_dir": getattr(args, "data_dir", None)}
    for name in ("host", "port", "workers"):
        overrides[name] = getattr(args, name, None)
    dimse = {key: value for key, value in (("port", getattr(args, "dicom_port", None)),
                                           ("ae_title", getattr(args, "ae_title", None))) if value is not None}
    if dimse:
        overrides["dimse"] = dimse
    return load_settings(args.config, **overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import build_app

    settings = _settings(args)
    configure_logging(settings.log_level)
    allocator.tune()
    open_files.raise_limit()
    if args.demo:
        _import_demo(settings)
    dimse = settings.dimse
    listening = (f", DIMSE {dimse.ae_title} at {dimse.host or settings.host}:{dimse.port}" if dimse.enabled else "")
    print(f"pacsbridge: DICOMweb at http://{settings.host}:{settings.port}{settings.dicomweb.root}{listening} "
          f"(data in {settings.data_dir.resolve()}, {settings.resolved_workers()} worker(s))", file=sys.stderr)
    # access_log=False: uvicorn would log query strings (patient names); adapters/http.AccessLog doesn't.
    # zero_copy: uvicorn's httptools protocol that also sends stored files with sendfile.
    options: dict[str, Any] = {"host": settings.host, "port": settings.port, "proxy_headers": True,
                               "log_level": settings.log_level.lower(), "access_log": False,
                               "http": "pacsbridge.zero_copy:ZeroCopyHttpProtocol"}
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

    anyio.run(services.close)
    os.environ[RESOLVED_ENV] = to_worker_environment(settings)
    # Workers share one listening socket; accept_balance spreads the connections over them.
    uvicorn.run("pacsbridge.app:app_from_environment", factory=True, workers=workers,
                loop="pacsbridge.accept_balance:new_event_loop", **options)
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
            await services.close()

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


def cmd_check_mappings(args: argparse.Namespace) -> int:
    """Validate every mapping file as pacsbridge would load it; errors name file, line and field."""
    from .app import mappings_dir
    from .mapping import check_mappings

    try:
        root = args.folder or mappings_dir(_settings(args))
    except Exception as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2
    if not root.is_dir():
        print(f"{root}: no such folder", file=sys.stderr)
        return 2
    errors = check_mappings(root)
    for error in errors:
        print(error, file=sys.stderr)
    files = sorted(root.rglob("*.yaml"))
    print(f"{len(files)} mapping file(s) in {root}: {'all valid' if not errors else f'{len(errors)} error(s)'}")
    return 1 if errors else 0


def _with_services(settings: Settings, work: Any) -> Any:
    """Run ``work(services)`` (a coroutine function) against the configured store, then close it."""
    import anyio

    from .app import build_services

    services = build_services(settings)

    async def run() -> Any:
        try:
            return await work(services)
        finally:
            await services.close()

    return anyio.run(run)


def cmd_clients_add(args: argparse.Namespace) -> int:
    """Create a client of the built-in issuer; its secret is printed once and kept only as a hash."""
    import secrets as token_source

    from .domain.errors import Conflict
    from .services.issuer import hash_secret, new_client_secret
    from .services.ports import ClientRecord

    settings = _settings(args)
    jwks = json.loads(Path(args.jwks).read_text()) if args.jwks else None
    secret = None if jwks else new_client_secret()
    client_id = args.client_id or f"{_slug(args.name)}-{token_source.token_hex(4)}"
    record = ClientRecord(client_id=client_id, name=args.name, scopes=frozenset(args.scope),
                          secret_hash=hash_secret(secret) if secret else None, jwks=jwks)

    async def add(services: Any) -> None:
        await services.records.add_client(record)

    try:
        _with_services(settings, add)
    except Conflict as exc:
        print(exc.message, file=sys.stderr)
        return 1
    issuer = settings.resolved_issuer()
    shown: dict[str, Any] = {"client_id": client_id, "name": args.name, "scope": " ".join(sorted(args.scope)),
                             "token_endpoint": issuer + "/oauth/token", "issuer": issuer}
    if secret:
        shown["client_secret"] = secret
    print(json.dumps(shown, indent=2))
    if secret:
        print("The client_secret is shown only now; pacsbridge keeps a hash of it.", file=sys.stderr)
    return 0


def cmd_clients_list(args: argparse.Namespace) -> int:
    async def listed(services: Any) -> list[Any]:
        return list(await services.records.clients())

    rows = _with_services(_settings(args), listed)
    print(json.dumps([{"client_id": c.client_id, "name": c.name, "scope": " ".join(sorted(c.scopes)),
                       "auth": "private_key_jwt" if c.jwks else "client_secret", "disabled": c.disabled}
                      for c in rows], indent=2))
    return 0


def cmd_clients_hash_secret(_args: argparse.Namespace) -> int:
    """A hash for ``auth.clients[].secret_hash`` in a settings file, from a secret read on stdin."""
    from .services.issuer import hash_secret

    secret = sys.stdin.readline().rstrip("\n")
    if not secret:
        print("give the secret on standard input", file=sys.stderr)
        return 2
    print(hash_secret(secret))
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """A new signing key; the old one stays published until the tokens it signed have expired."""
    async def rotate(services: Any) -> Any:
        await services.keys.ensure()
        return await services.keys.rotate()

    key = _with_services(_settings(args), rotate)
    print(json.dumps({"kid": key.kid, "algorithm": key.algorithm, "created_at": key.created_at}))
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    async def listed(services: Any) -> list[Any]:
        return list(await services.records.signing_keys())

    keys = _with_services(_settings(args), listed)
    print(json.dumps([{"kid": k.kid, "algorithm": k.algorithm, "created_at": k.created_at,
                       "retired_at": k.retired_at} for k in keys], indent=2))
    return 0


def _read_password(args: argparse.Namespace) -> str | None:
    """The new password: generated (``--generate``), typed twice at a terminal, or one line of stdin."""
    import getpass
    import secrets as token_source

    if getattr(args, "generate", False):
        return token_source.token_urlsafe(18)
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Again: "):
            print("the passwords differ", file=sys.stderr)
            return None
        return first
    return sys.stdin.readline().rstrip("\n")


def _user_command(args: argparse.Namespace, work: Any) -> int:
    """Run ``work(passwords)`` against the configured store; user errors become exit status 1."""
    from .domain.errors import Conflict, NotFound

    async def run(services: Any) -> Any:
        return await work(services.passwords)

    try:
        _with_services(_settings(args), run)
    except (Conflict, NotFound, ValueError) as exc:
        print(getattr(exc, "message", str(exc)), file=sys.stderr)
        return 1
    return 0


def cmd_users_add(args: argparse.Namespace) -> int:
    """A built-in user of the HTML pages (sites without an identity provider)."""
    password = _read_password(args)
    if password is None:
        return 1
    patients = frozenset(args.patient) if args.patient else None
    status = _user_command(args, lambda passwords: passwords.add(
        args.username, password, args.scope, display_name=args.display_name, patient_ids=patients))
    if status == 0:
        shown = {"username": args.username, "scope": " ".join(sorted(args.scope))}
        if args.generate:
            shown["password"] = password
        print(json.dumps(shown, indent=2))
        if args.generate:
            print("The password is shown only now; pacsbridge keeps a hash of it.", file=sys.stderr)
    return status


def cmd_users_passwd(args: argparse.Namespace) -> int:
    password = _read_password(args)
    if password is None:
        return 1
    status = _user_command(args, lambda passwords: passwords.set_password(args.username, password))
    if status == 0 and args.generate:
        print(json.dumps({"username": args.username, "password": password}, indent=2))
    return status


def cmd_users_disable(args: argparse.Namespace) -> int:
    return _user_command(args, lambda passwords: passwords.set_disabled(args.username, args.disabled))


def cmd_users_remove(args: argparse.Namespace) -> int:
    async def remove(passwords: Any) -> None:
        from .domain.errors import NotFound

        if not await passwords.remove(args.username):
            raise NotFound(f"no user named {args.username!r}")

    return _user_command(args, remove)


def cmd_users_list(args: argparse.Namespace) -> int:
    async def listed(services: Any) -> list[Any]:
        return list(await services.passwords.records.users())

    rows = _with_services(_settings(args), listed)
    print(json.dumps([{"username": u.username, "display_name": u.display_name, "scope": " ".join(sorted(u.scopes)),
                       "patients": sorted(u.patient_ids) if u.patient_ids is not None else None,
                       "disabled": u.disabled, "locked": u.locked_until > time.time()} for u in rows], indent=2))
    return 0


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "client"


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
    serve.add_argument("--dicom-port", type=int, help="the DIMSE SCP's port (default 11112)")
    serve.add_argument("--ae-title", help="the DIMSE SCP's AE title (default PACSBRIDGE)")
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

    mappings = sub.add_parser("check-mappings", help="validate the mapping files (errors name file, line, field)")
    common(mappings)
    mappings.add_argument("folder", nargs="?", type=Path, help="default: orders.mappings_dir, else ./mappings")
    mappings.set_defaults(func=cmd_check_mappings)

    clients = sub.add_parser("clients", help="clients of the built-in token issuer").add_subparsers(
        dest="clients_command", required=True)
    add = clients.add_parser("add", help="create a client and print its credentials once, as JSON")
    common(add)
    add.add_argument("name", help="what the client is, e.g. 'OHIF viewer' or 'EMR backend'")
    add.add_argument("--scope", action="append", required=True,
                     help="a scope it may get (repeat): dicomweb.read, dicomweb.write, system/ImagingStudy.rs, ...")
    add.add_argument("--client-id", help="default: from the name plus a random suffix")
    add.add_argument("--jwks", help="a JSON file with the client's public keys (private_key_jwt; no secret then)")
    add.set_defaults(func=cmd_clients_add)
    listing = clients.add_parser("list", help="the clients, without secrets")
    common(listing)
    listing.set_defaults(func=cmd_clients_list)
    hashing = clients.add_parser("hash-secret", help="hash a secret read on stdin, for auth.clients in settings")
    hashing.set_defaults(func=cmd_clients_hash_secret)

    keys = sub.add_parser("keys", help="signing keys of the built-in token issuer").add_subparsers(
        dest="keys_command", required=True)
    rotate = keys.add_parser("rotate", help="start signing with a new key (the old one stays published a while)")
    common(rotate)
    rotate.set_defaults(func=cmd_keys_rotate)
    keys_list = keys.add_parser("list", help="the signing keys and when they were retired")
    common(keys_list)
    keys_list.set_defaults(func=cmd_keys_list)

    users = sub.add_parser("users", help="built-in users of the HTML pages (no identity provider)").add_subparsers(
        dest="users_command", required=True)
    user_add = users.add_parser("add", help="create a user; the password is read from the terminal or stdin")
    common(user_add)
    user_add.add_argument("username")
    user_add.add_argument("--scope", action="append", required=True, help="a scope of the user's sessions (repeat)")
    user_add.add_argument("--display-name")
    user_add.add_argument("--patient", action="append", help="bind the user to this PatientID (repeat)")
    user_add.add_argument("--generate", action="store_true", help="make a password and print it once")
    user_add.set_defaults(func=cmd_users_add)
    passwd = users.add_parser("passwd", help="set a user's password (and lift a lock)")
    common(passwd)
    passwd.add_argument("username")
    passwd.add_argument("--generate", action="store_true", help="make a password and print it once")
    passwd.set_defaults(func=cmd_users_passwd)
    for verb, disabled, text in (("disable", True, "refuse the user's sign-ins, end their sessions"),
                                 ("enable", False, "allow them again")):
        toggle = users.add_parser(verb, help=text)
        common(toggle)
        toggle.add_argument("username")
        toggle.set_defaults(func=cmd_users_disable, disabled=disabled)
    user_remove = users.add_parser("remove", help="delete a user")
    common(user_remove)
    user_remove.add_argument("username")
    user_remove.set_defaults(func=cmd_users_remove)
    user_list = users.add_parser("list", help="the users, without password hashes")
    common(user_list)
    user_list.set_defaults(func=cmd_users_list)

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
