"""Signing a browser in to the HTML pages: built-in users' passwords and server-side sessions.

See: OWASP Session Management and Authentication cheat sheets; NIST SP 800-63B §5.1.1 (passwords).

Rules:
1. A session is a random 256-bit key in an HttpOnly cookie; the server keeps its SHA-256 with the
   principal it stands for, a CSRF token, an absolute end (``lifetime_s``) and an idle end (``idle_s``).
   A new key is made at every sign-in (no session fixation); signing out deletes the row.
2. A session's grants are fixed at sign-in (the built-in user's scopes, or those of the provider's
   access token); a change at the provider applies from the next sign-in.
3. A wrong password, an unknown user, a disabled and a locked user all get the same answer, after the
   same scrypt work. ``lock_after`` failures in a row lock the user for ``lock_s`` seconds.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import anyio.to_thread

from ..domain.access import Principal
from ..domain.errors import NotFound
from ..domain.scopes import split_scope_claim
from .issuer import hash_secret, verify_secret
from .ports import UserRecord, WebLoginRecords, WebSession

MIN_PASSWORD = 12
TOUCH_EVERY_S = 60  # seen_at is written at most this often per session


@dataclass(frozen=True)
class SessionPolicy:
    lifetime_s: int = 8 * 3600
    idle_s: int = 30 * 60
    login_s: int = 10 * 60  # an OIDC sign-in must come back from the provider within this
    lock_after: int = 5
    lock_s: int = 15 * 60


class SignInRefused(Exception):
    """A sign-in that did not succeed. ``reason`` is for the audit trail and the log, never for the
    browser, which is told only that the user name or password is wrong (or the provider refused)."""

    def __init__(self, reason: str, subject: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.subject = subject  # the known user it was for, for the audit trail


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def session_principal(session: WebSession) -> Principal:
    return Principal(subject=session.subject, client_id=session.client_id, scopes=session.scopes,
                     patient_ids=session.patient_ids)


class SessionBook:
    """Opens, finds and closes browser sessions."""

    def __init__(self, records: WebLoginRecords, policy: SessionPolicy,
                 clock: Callable[[], float] = time.time) -> None:
        self.records = records
        self.policy = policy
        self.clock = clock

    async def open(self, principal: Principal, name: str | None, data: dict[str, str] | None = None
                   ) -> tuple[str, WebSession]:
        """A new signed-in session for ``principal``; returns the cookie's key and the session."""
        return await self._put("session", principal.subject, self.policy.lifetime_s, principal=principal,
                               name=name, data=data)

    async def begin_login(self, data: dict[str, str]) -> tuple[str, WebSession]:
        """A short-lived record of an OIDC sign-in under way (state, nonce, PKCE verifier, next page)."""
        return await self._put("login", "signing-in", self.policy.login_s, data=data)

    async def _put(self, kind: str, subject: str, lifetime_s: int, principal: Principal | None = None,
                   name: str | None = None, data: dict[str, str] | None = None) -> tuple[str, WebSession]:
        key = secrets.token_urlsafe(32)
        now = int(self.clock())
        session = WebSession(
            key_hash=key_hash(key), kind=kind, subject=subject, csrf=secrets.token_urlsafe(24), created_at=now,
            expires_at=now + lifetime_s, seen_at=now, name=name, data=data,
            client_id=principal.client_id if principal else None,
            scopes=principal.scopes if principal else frozenset(),
            patient_ids=principal.patient_ids if principal else None,
        )
        await self.records.put_session(session)
        return key, session

    async def find(self, key: str | None, kind: str = "session") -> WebSession | None:
        """The live session (or sign-in under way) of this cookie key; None when absent, ended or idle."""
        if not key:
            return None
        digest = key_hash(key)
        session = await self.records.session(digest)
        if session is None or session.kind != kind:
            return None
        now = int(self.clock())
        idle = kind == "session" and now - session.seen_at > self.policy.idle_s
        if now >= session.expires_at or idle:
            await self.records.drop_session(digest)
            return None
        if kind == "session" and now - session.seen_at >= TOUCH_EVERY_S:
            await self.records.touch_session(digest, now)
            session = replace(session, seen_at=now)
        return session

    async def close(self, key: str | None) -> None:
        if key:
            await self.records.drop_session(key_hash(key))


class PasswordLogin:
    """Built-in users: the HTML pages' sign-in at sites without an identity provider."""

    def __init__(self, records: WebLoginRecords, policy: SessionPolicy, clock: Callable[[], float] = time.time
                 ) -> None:
        self.records = records
        self.policy = policy
        self.clock = clock
        self._decoy: str | None = None

    async def sign_in(self, username: str, password: str) -> tuple[Principal, str | None]:
        """The user's principal and display name; SignInRefused otherwise (after the same work)."""
        user = await self.records.user(username) if username else None
        stored = user.password_hash if user else await self._decoy_hash()
        matches = await anyio.to_thread.run_sync(verify_secret, password, stored)
        if user is None:
            raise SignInRefused("unknown user")
        subject = user_subject(user.username)
        now = int(self.clock())
        if user.disabled:
            raise SignInRefused("user disabled", subject)
        if user.locked_until > now:
            raise SignInRefused("user locked after repeated failures", subject)
        await self.records.note_sign_in(username, matches, self.policy.lock_after, now + self.policy.lock_s)
        if not matches:
            raise SignInRefused("wrong password", subject)
        principal = Principal(subject=user_subject(user.username), scopes=user.scopes, patient_ids=user.patient_ids)
        return principal, user.display_name or user.username

    async def _decoy_hash(self) -> str:
        if self._decoy is None:
            self._decoy = await anyio.to_thread.run_sync(hash_secret, secrets.token_urlsafe(16))
        return self._decoy

    # --- administration (pacsbridge users ...) ----------------------------------------------------

    async def add(self, username: str, password: str, scopes: list[str], display_name: str | None = None,
                  patient_ids: frozenset[str] | None = None) -> UserRecord:
        check_password(password)
        user = UserRecord(username=check_username(username), password_hash=await _hashed(password),
                          scopes=split_scope_claim(" ".join(scopes)), display_name=display_name,
                          patient_ids=patient_ids)
        await self.records.put_user(user, create=True)
        return user

    async def set_password(self, username: str, password: str) -> None:
        """A new password; the user's open sessions end (as after any change of credentials)."""
        check_password(password)
        user = await self._existing(username)
        await self.records.put_user(replace(user, password_hash=await _hashed(password), failures=0,
                                            locked_until=0), create=False)
        await self.records.drop_sessions_of(user_subject(username))

    async def set_disabled(self, username: str, disabled: bool) -> None:
        user = await self._existing(username)
        await self.records.put_user(replace(user, disabled=disabled, failures=0, locked_until=0), create=False)
        if disabled:
            await self.records.drop_sessions_of(user_subject(username))

    async def remove(self, username: str) -> bool:
        removed = await self.records.remove_user(username)
        await self.records.drop_sessions_of(user_subject(username))
        return removed

    async def _existing(self, username: str) -> UserRecord:
        user = await self.records.user(username)
        if user is None:
            raise NotFound(f"no user named {username!r}")
        return user


def user_subject(username: str) -> str:
    """The subject of a built-in user's sessions and audit events."""
    return f"user:{username}"


def check_password(password: str) -> None:
    """NIST SP 800-63B: a length floor, no composition rules."""
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"a password needs at least {MIN_PASSWORD} characters")


def check_username(username: str) -> str:
    name = username.strip()
    if not name or len(name) > 128 or any(c.isspace() or not c.isprintable() for c in name):
        raise ValueError("a user name is 1 to 128 printable characters without spaces")
    return name


async def _hashed(password: str) -> str:
    return await anyio.to_thread.run_sync(hash_secret, password)
