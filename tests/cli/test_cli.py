"""The pacsbridge command as an operator runs it: import, check-config, serve."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid

from ..support.dicom import instance, write
from ..support.servers import free_port

PACSBRIDGE = [sys.executable, "-m", "pacsbridge.cli"]


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PACSBRIDGE, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def wait_for_health(proc: subprocess.Popen[str], base: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(base + "/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "server did not come up"
        time.sleep(0.2)


def new_client(*scopes: str, data_dir: Path | None = None, cwd: Path | None = None) -> dict[str, str]:
    """``pacsbridge clients add`` as an operator runs it: the credentials, printed once as JSON."""
    where = ["--data-dir", str(data_dir)] if data_dir else []
    result = run("clients", "add", "test client", *[a for s in scopes for a in ("--scope", s)], *where, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def bearer(base: str, client: dict[str, str], scope: str) -> dict[str, str]:
    """An Authorization header with a token from the built-in issuer (client_secret_basic)."""
    r = httpx.post(base + "/oauth/token", data={"grant_type": "client_credentials", "scope": scope},
                   auth=(client["client_id"], client["client_secret"]))
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def study_files(folder: Path, count: int = 3) -> tuple[str, list[Path]]:
    study, series = generate_uid(), generate_uid()
    return study, [write(instance(study, series, number=n), folder) for n in range(1, count + 1)]


def index_counts(data_dir: Path) -> int:
    import sqlite3

    with sqlite3.connect(data_dir / "index.sqlite") as conn:
        return int(conn.execute("select count(*) from instances").fetchone()[0])


def test_import_folder_zip_and_report_failures(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _, files = study_files(tmp_path / "in" / "nested")
    (tmp_path / "in" / "README.txt").write_text("not an image")
    (tmp_path / "in" / "DICOMDIR").write_bytes(b"skipped by name")
    zipped = tmp_path / "more.zip"
    _, zip_files = study_files(tmp_path / "zipsrc", 2)
    with zipfile.ZipFile(zipped, "w") as z:
        for f in zip_files:
            z.write(f, f"export/{f.name}")
    result = run("import", "--quiet", "--data-dir", str(data), str(tmp_path / "in"), str(zipped),
                 str(tmp_path / "missing"))
    assert result.returncode == 1, result.stderr  # failures make the exit code non-zero
    assert "5 stored" in result.stderr and "2 failed" in result.stderr and "1 skipped" in result.stderr
    assert "README.txt" in result.stderr and "not a DICOM Part 10 file" in result.stderr
    assert "no such file or folder" in result.stderr
    assert index_counts(data) == 5
    assert all(f.exists() for f in files), "import never moves or changes the source"


def test_a_corrupt_zip_member_fails_alone(tmp_path: Path) -> None:
    """Found in review: one member with a bad CRC raised BadZipFile out of the import, so the members
    after it were never tried and a spool file was left."""
    data = tmp_path / "data"
    _, files = study_files(tmp_path / "src", 3)
    zipped = tmp_path / "study.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_STORED) as z:
        for f in files:
            z.write(f, f.name)
    raw = bytearray(zipped.read_bytes())
    tail = files[1].read_bytes()[-64:]  # the end of its pixel data, which no other member holds
    assert raw.count(tail) == 1
    raw[raw.find(tail) + 10] ^= 0xFF  # one flipped byte in the second member's data: its CRC no longer matches
    zipped.write_bytes(bytes(raw))
    result = run("import", "--quiet", "--data-dir", str(data), str(zipped))
    assert result.returncode == 1, result.stderr
    assert "2 stored" in result.stderr and "1 failed" in result.stderr, result.stderr
    assert files[1].name in result.stderr and "CRC" in result.stderr, result.stderr
    assert index_counts(data) == 2
    assert not list((data / "spool").glob("*"))


def test_import_dicomdir(tmp_path: Path) -> None:
    if shutil.which("dcmmkdir") is None:
        pytest.fail("DCMTK dcmmkdir is needed (scripts/install-peers installs dcmtk)")
    media = tmp_path / "media"
    media.mkdir()
    _, files = study_files(tmp_path / "src", 2)
    for n, f in enumerate(files):
        shutil.copy(f, media / f"IMG{n:05d}")
    made = subprocess.run(["dcmmkdir", "--general-purpose", "+r", "-Pgp", "--invent", "IMG00000", "IMG00001"],
                          cwd=media, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    data = tmp_path / "data"
    result = run("import", "--quiet", "--data-dir", str(data), str(media / "DICOMDIR"))
    assert result.returncode == 0, result.stderr
    assert "2 stored" in result.stderr
    assert index_counts(data) == 2


def test_import_twice_replaces_instead_of_duplicating(tmp_path: Path) -> None:
    data = tmp_path / "data"
    study_files(tmp_path / "in")
    assert run("import", "--quiet", "--data-dir", str(data), str(tmp_path / "in")).returncode == 0
    again = run("import", "--quiet", "--data-dir", str(data), str(tmp_path / "in"))
    assert "3 stored (3 replaced)" in again.stderr
    assert index_counts(data) == 3


def test_check_config_masks_secrets_and_reads_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "pacsbridge.yaml"
    config.write_text("port: 9100\ndicomweb:\n  root: /wado\ndatabase_url: postgresql+psycopg://pb:s3cret@db/pb\n")
    result = run("check-config", "--config", str(config), env={"PACSBRIDGE_PORT": "9200"})
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["port"] == 9200  # the environment beats the file
    assert shown["dicomweb"]["root"] == "/wado"
    assert "s3cret" not in result.stdout and shown["database_url"] == "postgresql+psycopg://pb:***@db/pb"


def test_check_config_names_a_bad_setting(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("port: not-a-number\nno_such_setting: 1\n")
    result = run("check-config", "--config", str(config))
    assert result.returncode == 2
    assert "port" in result.stderr and "no_such_setting" in result.stderr


def test_serve_runs_the_embedded_default(tmp_path: Path) -> None:
    """`pacsbridge serve` with no data options uses ./pacsbridge-data (SQLite + files), closed to
    callers without a token; a client created with `pacsbridge clients add` gets one."""
    port = free_port()
    proc = subprocess.Popen([*PACSBRIDGE, "serve", "--port", str(port)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_health(proc, base)
        refused = httpx.get(base + "/dicomweb/studies")
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="pacsbridge"'
        client = new_client("dicomweb.read", cwd=tmp_path)
        assert client["token_endpoint"].endswith("/oauth/token") and client["client_secret"]
        assert httpx.get(base + "/dicomweb/studies", headers=bearer(base, client, "dicomweb.read")).status_code == 204
        assert (tmp_path / "pacsbridge-data" / "index.sqlite").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_logs_at_info_carry_no_patient_data(tmp_path: Path) -> None:
    """A QIDO search by name and a STOW of a named patient leave no name or ID in the log."""
    from ..support.http import stow_body

    port = free_port()
    proc = subprocess.Popen([*PACSBRIDGE, "serve", "--port", str(port), "--data-dir", str(tmp_path / "d")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_health(proc, base)
        auth = bearer(base, new_client("dicomweb.read", "dicomweb.write", data_dir=tmp_path / "d"),
                      "dicomweb.read dicomweb.write")
        body, content_type = stow_body([instance(PatientName="Geheim^Gertrud", PatientID="SECRET-4711")])
        assert httpx.post(base + "/dicomweb/studies", content=body,
                          headers={"Content-Type": content_type, **auth}).status_code == 200
        assert httpx.get(base + "/dicomweb/studies?PatientName=Geheim*&PatientID=SECRET-4711",
                         headers=auth).status_code == 200
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    assert "GET /dicomweb/studies 200" in output  # the access log is there ...
    assert "Geheim" not in output and "SECRET-4711" not in output  # ... without patient data


def test_serve_with_two_workers_shares_one_store(tmp_path: Path) -> None:
    """Instances stored through one worker process are found through any of them."""
    from ..support.http import stow_body

    port = free_port()
    proc = subprocess.Popen([*PACSBRIDGE, "serve", "--port", str(port), "--workers", "2", "--data-dir",
                             str(tmp_path / "d")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_health(proc, base)
        auth = bearer(base, new_client("dicomweb.read", "dicomweb.write", data_dir=tmp_path / "d"),
                      "dicomweb.read dicomweb.write")
        for _ in range(4):  # separate connections, so both workers take some (and verify the token)
            body, content_type = stow_body([instance()])
            with httpx.Client() as client:
                assert client.post(base + "/dicomweb/studies", content=body,
                                   headers={"Content-Type": content_type, **auth}).status_code == 200
        for _ in range(6):
            with httpx.Client() as client:
                assert len(client.get(base + "/dicomweb/studies", headers=auth).json()) == 4
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert output.count("Started server process") == 2, output


def test_users_commands_and_a_page_session_shared_by_two_workers(tmp_path: Path) -> None:
    """`pacsbridge users` as an operator runs it, against a running two-worker server: the user signs
    in once and every worker knows the session (it lives in the database); disabling ends it."""
    import re

    data = ["--data-dir", str(tmp_path / "d")]
    password = "a password for the test"
    added = subprocess.run([*PACSBRIDGE, "users", "add", "ada", "--scope", "admin", "--display-name", "Ada", *data],
                           input=password + "\n", capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout) == {"username": "ada", "scope": "admin"}
    again = subprocess.run([*PACSBRIDGE, "users", "add", "ada", "--scope", "admin", *data],
                           input=password + "\n", capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "exists" in again.stderr
    short = subprocess.run([*PACSBRIDGE, "users", "add", "bo", "--scope", "admin", *data],
                           input="short\n", capture_output=True, text=True, timeout=120)
    assert short.returncode == 1 and "12 characters" in short.stderr
    generated = run("users", "add", "kiosk", "--scope", "dicomweb.read", "--patient", "PAT-7", "--generate", *data)
    assert generated.returncode == 0 and len(json.loads(generated.stdout)["password"]) >= 12

    port = free_port()
    proc = subprocess.Popen([*PACSBRIDGE, "serve", "--port", str(port), "--workers", "2", *data],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_health(proc, base)
        with httpx.Client(base_url=base, follow_redirects=False) as browser:
            form = browser.get("/login")
            token = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert token, form.text
            signed_in = browser.post("/login", data={"username": "ada", "password": password,
                                                      "csrf": token.group(1), "next": "/ui/audit"})
            assert signed_in.status_code == 303 and signed_in.headers["Location"] == "/ui/audit"
            cookie = {"pb_session": browser.cookies["pb_session"]}
        # Fresh connections, so both workers answer some of them.
        for _ in range(8):
            page = httpx.get(base + "/ui/audit", cookies=cookie, headers={"Connection": "close"})
            assert page.status_code == 200 and "Ada" in page.text
        assert run("users", "disable", "ada", *data).returncode == 0
        assert httpx.get(base + "/ui/", cookies=cookie).status_code == 303  # the session ended with it
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    listed = {u["username"]: u for u in json.loads(run("users", "list", *data).stdout)}
    assert listed["ada"]["disabled"] is True and listed["kiosk"]["patients"] == ["PAT-7"]
    assert run("users", "remove", "kiosk", *data).returncode == 0
    assert run("users", "remove", "kiosk", *data).returncode == 1


def test_check_mappings_accepts_the_shipped_files_and_names_file_and_line_of_a_bad_one(tmp_path: Path) -> None:
    shipped = run("check-mappings", str(Path(__file__).resolve().parents[2] / "mappings"))
    assert shipped.returncode == 0, shipped.stderr
    assert "all valid" in shipped.stdout
    bad = tmp_path / "request-to-worklist"
    bad.mkdir()
    (bad / "broken.yaml").write_text("name: broken\nversion: 1\nsource: fhir\ntarget: dicom\nrules:\n"
                                     "  - target: PatientsName\n    from: subject.display\n")
    result = run("check-mappings", str(tmp_path))
    assert result.returncode == 1
    assert "broken.yaml:6" in result.stderr and "PatientsName" in result.stderr, result.stderr


def _accepted_sockets(server_port: int) -> list[str]:
    """Socket inodes of the established loopback connections accepted on server_port, server side
    (from /proc, Linux only)."""
    inodes = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{server_port:04X}" and fields[3] == "01":  # local end ours, ESTABLISHED
            inodes.append(fields[9])
    return inodes


def _holder(inode: str, pids: list[int]) -> int:
    """The process among pids that holds a socket."""
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no worker holds socket {inode}")


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_keep_alive_connections_opened_at_once_are_spread_over_the_workers(tmp_path: Path) -> None:
    """A client opening four keep-alive connections at once (a STOW uploader, a gateway) gets two per
    worker, not most of them on whichever worker woke first (4:0 and 3:1 before accept_balance)."""
    import asyncio

    port = free_port()
    proc = subprocess.Popen([*PACSBRIDGE, "serve", "--port", str(port), "--workers", "2", "--data-dir",
                             str(tmp_path / "d")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    async def four_at_once() -> list[int]:
        limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
        async with httpx.AsyncClient(limits=limits) as client:
            answers = await asyncio.gather(*(client.get(f"http://127.0.0.1:{port}/health") for _ in range(4)))
            assert [a.status_code for a in answers] == [200] * 4
            accepted = _accepted_sockets(port)
            assert len(accepted) == 4, accepted
            return [_holder(inode, workers) for inode in accepted]

    try:
        wait_for_health(proc, f"http://127.0.0.1:{port}")
        time.sleep(1.0)  # both workers listen (health answers as soon as one does)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        workers = [int(p) for p in children if "--multiprocessing-fork" in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(workers) == 2, workers
        for _round in range(5):
            owners = asyncio.run(four_at_once())
            assert sorted(owners.count(w) for w in workers) == [2, 2], owners
            time.sleep(0.3)  # the workers see the connections close
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="needs Linux /proc")
def test_serve_raises_its_open_files_limit_to_the_hard_limit_for_every_worker(tmp_path: Path) -> None:
    """Started with the soft limit of 1,024 files that many service managers give, `serve` and its
    workers run with the hard limit (each retrieval keeps a run of stored files open)."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 1024:
        pytest.skip("the hard limit leaves nothing to raise")

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    port = free_port()
    proc = subprocess.Popen([*PACSBRIDGE, "serve", "--port", str(port), "--workers", "2", "--data-dir",
                             str(tmp_path / "d")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=low_soft_limit)

    def soft_limit(pid: int) -> int:
        line = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if x.startswith("Max open files"))
        return int(line.split()[3])

    try:
        wait_for_health(proc, f"http://127.0.0.1:{port}")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        workers = [int(p) for p in children if "--multiprocessing-fork" in Path(f"/proc/{p}/cmdline").read_text()]
        assert workers
        assert [soft_limit(pid) for pid in [proc.pid, *workers]] == [hard] * (1 + len(workers))
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
