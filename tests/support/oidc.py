"""Run a real OpenID provider (npm ``oidc-provider``, tests/peers/oidc) on loopback: tokens pacsbridge must validate.

Rules:
1. The provider is ``node tests/peers/oidc/provider.mjs CONFIG.json`` run from tests/peers/oidc. Its
   configuration and its PRIVATE signing JWKS (a fresh RSA 2048 key, RS256, made here with joserfc) live
   in one temporary folder, removed on stop. Its stdout and stderr go to ``provider.log`` there.
2. Started means the script printed ``READY <issuer>``; stopped means SIGTERM, then SIGKILL after a grace
   time. It listens on 127.0.0.1 only, plain HTTP, and keeps tokens in memory.
3. A client is a mapping ``{"client_id", "client_secret", "scopes": "a b c", "patient"?: str,
   "opaque"?: bool}``. Access tokens are RFC 9068 JWTs (``typ: at+jwt``, RS256) with ``iss`` = issuer,
   ``aud`` = the audience, ``client_id``, ``sub`` = client_id, ``scope`` and, for a client with
   ``patient``, a ``patient`` claim; an ``opaque`` client gets opaque tokens instead. A client may ask for
   any subset of its own scopes; any other registered scope is refused (invalid_scope).
4. Introspection (RFC 7662) works for opaque tokens only: oidc-provider keeps no JWT access tokens and
   answers 400 ``unsupported_token_type`` for a JWT.
5. ``rotate_keys()`` restarts the provider on the same port with a new key and without the old one: JWTs
   signed before no longer verify against its JWKS, and opaque tokens issued before are forgotten.
6. The public client ``viewer`` (authorization code + PKCE, no secret) signs in through oidc-provider's
   development login form, which accepts any login as the account ``test-user``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import RSAKey

from .servers import free_port

PEER_DIR = Path(__file__).resolve().parents[1] / "peers" / "oidc"
SCRIPT = PEER_DIR / "provider.mjs"
VIEWER_CLIENT_ID = "viewer"
TEST_ACCOUNT = "test-user"


def ensure_installed() -> None:
    """Skip the test when ``node`` is missing; run ``npm ci`` in tests/peers/oidc when not installed yet."""
    if shutil.which("node") is None:
        pytest.skip("node is not on PATH: the OpenID provider peer (npm oidc-provider) needs Node.js 20+")
    if (PEER_DIR / "node_modules" / "oidc-provider").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not on PATH: cannot install the OpenID provider peer (npm oidc-provider)")
    done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=PEER_DIR, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"npm ci in {PEER_DIR} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def new_private_jwks(kid: str | None = None) -> dict[str, Any]:
    """A JWKS with one fresh private RSA 2048 signing key (RS256)."""
    kid = kid or f"test-{secrets.token_hex(6)}"
    key = RSAKey.generate_key(2048, parameters={"kid": kid, "alg": "RS256", "use": "sig"}, private=True)
    return {"keys": [key.as_dict(private=True)]}


class OidcProvider:
    """One oidc-provider process on loopback; ``start()`` it (or use ``oidc_provider()``), ``stop()`` it."""

    def __init__(self, clients: Sequence[Mapping[str, Any]], *, audience: str = "pacsbridge",
                 token_ttl: int = 300, viewer_redirect_uris: Sequence[str] = (), port: int | None = None,
                 parent: Path | None = None) -> None:
        self.clients: dict[str, dict[str, Any]] = {}
        for client in clients:
            entry = dict(client)
            for required in ("client_id", "client_secret"):
                if not entry.get(required):
                    raise ValueError(f"client {client!r} has no {required}")
            entry.setdefault("scopes", "")
            if entry["client_id"] == VIEWER_CLIENT_ID:
                raise ValueError(f"client_id {VIEWER_CLIENT_ID!r} is the provider's own public client")
            self.clients[entry["client_id"]] = entry
        self.audience = audience
        self.token_ttl = int(token_ttl)
        self.viewer_redirect_uris = list(viewer_redirect_uris)
        self.port = port or free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.workdir = Path(tempfile.mkdtemp(prefix="pacsbridge-oidc-", dir=parent))
        self.log_path = self.workdir / "provider.log"
        self.kid = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._generation = 0
        self._discovery: dict[str, Any] | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> OidcProvider:
        """Write a new key and the configuration, start node, wait for ``READY``; returns self."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the OpenID provider is already running")
        self._generation += 1
        jwks = new_private_jwks()
        self.kid = jwks["keys"][0]["kid"]
        jwks_file = self.workdir / f"jwks-{self._generation}.json"
        jwks_file.write_text(json.dumps(jwks))
        jwks_file.chmod(0o600)
        config = {
            "port": self.port,
            "issuer": self.issuer,
            "audience": self.audience,
            "clients": list(self.clients.values()),
            "jwks_file": str(jwks_file),
            "token_ttl": self.token_ttl,
            "viewer_redirect_uris": self.viewer_redirect_uris,
        }
        config_file = self.workdir / "config.json"
        config_file.write_text(json.dumps(config, indent=2))
        self._discovery = None
        env = {**os.environ, "NODE_ENV": "development", "NO_COLOR": "1"}
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(["node", str(SCRIPT), str(config_file)], cwd=PEER_DIR, env=env,
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_ready(offset, timeout_s)
        except BaseException:
            tail = self.log_tail()
            self._stop_process()
            raise RuntimeError(f"the OpenID provider did not start; its log ends with:\n{tail}") from None
        return self

    def _wait_ready(self, offset: int, timeout_s: float) -> None:
        assert self.process is not None
        marker = f"READY {self.issuer}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                if marker in log.read().decode(errors="replace").splitlines():
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited with {self.process.returncode}")
            time.sleep(0.05)
        raise TimeoutError(f"no {marker!r} within {timeout_s} s")

    def _stop_process(self, grace_s: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def stop(self) -> None:
        """Stop node and remove the temporary folder (configuration, keys, log)."""
        self._stop_process()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def rotate_keys(self, timeout_s: float = 30.0) -> str:
        """Restart on the same port with a new signing key (the old one is gone); returns the new kid."""
        self._stop_process()
        self.start(timeout_s)
        return self.kid

    def __enter__(self) -> OidcProvider:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    # --- endpoints -------------------------------------------------------------------------------

    @property
    def discovery_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"

    @property
    def discovery(self) -> dict[str, Any]:
        """The provider's OpenID configuration (fetched once per start)."""
        if self._discovery is None:
            response = httpx.get(self.discovery_url, timeout=10)
            response.raise_for_status()
            self._discovery = response.json()
        return self._discovery

    @property
    def jwks_uri(self) -> str:
        return str(self.discovery["jwks_uri"])

    @property
    def token_endpoint(self) -> str:
        return str(self.discovery["token_endpoint"])

    @property
    def introspection_endpoint(self) -> str:
        return str(self.discovery["introspection_endpoint"])

    @property
    def authorization_endpoint(self) -> str:
        return str(self.discovery["authorization_endpoint"])

    def jwks(self) -> dict[str, Any]:
        """The provider's public JWKS, as served at ``jwks_uri``."""
        response = httpx.get(self.jwks_uri, timeout=10)
        response.raise_for_status()
        return dict(response.json())

    # --- tokens ----------------------------------------------------------------------------------

    def token_response(self, client_id: str, scope: str | None = None, *, auth: str = "basic",
                       **params: str) -> dict[str, Any]:
        """The JSON answer of a client_credentials request; ``scope=None`` asks for all the client's scopes.

        ``auth`` is ``"basic"`` (client_secret_basic) or ``"post"`` (client_secret_post); ``params`` are
        extra form fields (e.g. ``resource``). Raises RuntimeError with the answer when it is not 200.
        """
        client = self.clients[client_id]
        form: dict[str, str] = {"grant_type": "client_credentials", **params}
        wanted = client["scopes"] if scope is None else scope
        if wanted:
            form["scope"] = wanted
        basic: tuple[str, str] | None = None
        if auth == "basic":
            basic = (client_id, client["client_secret"])
        elif auth == "post":
            form.update(client_id=client_id, client_secret=client["client_secret"])
        else:
            raise ValueError(f"auth must be 'basic' or 'post', not {auth!r}")
        response = httpx.post(self.token_endpoint, data=form, auth=basic, timeout=10)
        if response.status_code != 200:
            raise RuntimeError(f"token request for {client_id} failed: {response.status_code} {response.text}")
        return dict(response.json())

    def token(self, client_id: str, scope: str | None = None) -> str:
        """An access token for ``client_id`` (client_credentials, client_secret_basic)."""
        return str(self.token_response(client_id, scope)["access_token"])

    def introspect(self, token: str, client_id: str) -> dict[str, Any]:
        """RFC 7662 introspection of ``token``, authenticated as ``client_id``; raises on a non-200 answer."""
        client = self.clients[client_id]
        response = httpx.post(self.introspection_endpoint, data={"token": token},
                              auth=(client_id, client["client_secret"]), timeout=10)
        if response.status_code != 200:
            raise RuntimeError(f"introspection failed: {response.status_code} {response.text}")
        return dict(response.json())


@contextlib.contextmanager
def oidc_provider(clients: Sequence[Mapping[str, Any]], audience: str = "pacsbridge", token_ttl: int = 300,
                  **options: Any) -> Iterator[OidcProvider]:
    """A started ``OidcProvider`` (installing the npm peer if needed), stopped on exit.

    ``options`` go to ``OidcProvider`` (``viewer_redirect_uris``, ``port``, ``parent``).
    """
    ensure_installed()
    provider = OidcProvider(clients, audience=audience, token_ttl=token_ttl, **options)
    try:
        provider.start()
        yield provider
    finally:
        provider.stop()
