"""Built-in users and browser sessions in the SQL database (``WebLoginRecords``; tables of migration v5).

A session row is found by the SHA-256 of the cookie's key, never by the key itself, so a copy of the
database does not hand out live sessions.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import Engine, case, delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ..domain.clock import utc_stamp
from ..domain.errors import Conflict, NotFound
from ..services.ports import UserRecord, WebSession
from .sql import schema
from .sql.engine import InThread


class SqlWebLoginRecords:
    """``WebLoginRecords`` over the index database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        db = InThread(engine)
        self._read, self._write = db.read, db.write

    # --- users ------------------------------------------------------------------------------------

    async def user(self, username: str) -> UserRecord | None:
        t = schema.web_users
        row = await self._read(lambda c: c.execute(select(t).where(t.c.username == username)).first())
        return _user(row) if row else None

    async def users(self) -> list[UserRecord]:
        t = schema.web_users
        return [_user(r) for r in await self._read(lambda c: c.execute(select(t).order_by(t.c.username)).all())]

    async def put_user(self, user: UserRecord, *, create: bool) -> None:
        t = schema.web_users
        values = {
            "password_hash": user.password_hash, "scopes": " ".join(sorted(user.scopes)),
            "display_name": user.display_name, "patient_ids": _ids(user.patient_ids), "disabled": int(user.disabled),
            "failures": user.failures, "locked_until": user.locked_until,
        }
        if create:
            try:
                await self._write(lambda c: c.execute(
                    insert(t).values(username=user.username, created_at=utc_stamp(), **values)))
            except IntegrityError as exc:
                raise Conflict(f"a user named {user.username!r} exists") from exc
            return
        changed = await self._write(lambda c: c.execute(
            update(t).where(t.c.username == user.username).values(**values)).rowcount)
        if not changed:
            raise NotFound(f"no user named {user.username!r}")

    async def remove_user(self, username: str) -> bool:
        t = schema.web_users
        return bool(await self._write(lambda c: c.execute(delete(t).where(t.c.username == username)).rowcount))

    async def note_sign_in(self, username: str, succeeded: bool, lock_after: int, lock_until: int) -> None:
        t = schema.web_users
        mine = t.c.username == username
        if succeeded:
            await self._write(lambda c: c.execute(update(t).where(mine).values(failures=0, locked_until=0)))
            return
        reached = t.c.failures + 1 >= lock_after
        await self._write(lambda c: c.execute(update(t).where(mine).values(
            failures=case((reached, 0), else_=t.c.failures + 1),
            locked_until=case((reached, lock_until), else_=t.c.locked_until))))

    # --- sessions ---------------------------------------------------------------------------------

    async def session(self, key_hash: str) -> WebSession | None:
        t = schema.web_sessions
        row = await self._read(lambda c: c.execute(select(t).where(t.c.key_hash == key_hash)).first())
        return _session(row) if row else None

    async def put_session(self, session: WebSession) -> None:
        t = schema.web_sessions
        values = {
            "key_hash": session.key_hash, "kind": session.kind, "subject": session.subject,
            "client_id": session.client_id, "scopes": " ".join(sorted(session.scopes)),
            "patient_ids": _ids(session.patient_ids), "name": session.name, "csrf": session.csrf,
            "data": json.dumps(session.data) if session.data is not None else None,
            "created_at": session.created_at, "expires_at": session.expires_at, "seen_at": session.seen_at,
        }

        def work(conn: Connection) -> None:
            conn.execute(delete(t).where(t.c.expires_at < int(time.time())))
            conn.execute(insert(t).values(**values))

        await self._write(work)

    async def touch_session(self, key_hash: str, seen_at: int) -> None:
        t = schema.web_sessions
        await self._write(lambda c: c.execute(update(t).where(t.c.key_hash == key_hash).values(seen_at=seen_at)))

    async def drop_session(self, key_hash: str) -> None:
        t = schema.web_sessions
        await self._write(lambda c: c.execute(delete(t).where(t.c.key_hash == key_hash)))

    async def drop_sessions_of(self, subject: str) -> int:
        t = schema.web_sessions
        return int(await self._write(lambda c: c.execute(
            delete(t).where(t.c.subject == subject, t.c.kind == "session")).rowcount))


def _ids(values: frozenset[str] | None) -> str | None:
    return json.dumps(sorted(values)) if values is not None else None


def _id_set(text: str | None) -> frozenset[str] | None:
    return frozenset(json.loads(text)) if text is not None else None


def _user(r: Any) -> UserRecord:
    return UserRecord(
        username=r.username, password_hash=r.password_hash, scopes=frozenset((r.scopes or "").split()),
        display_name=r.display_name, patient_ids=_id_set(r.patient_ids), disabled=bool(r.disabled),
        failures=int(r.failures), locked_until=int(r.locked_until),
    )


def _session(r: Any) -> WebSession:
    return WebSession(
        key_hash=r.key_hash, kind=r.kind, subject=r.subject, csrf=r.csrf, created_at=int(r.created_at),
        expires_at=int(r.expires_at), seen_at=int(r.seen_at), client_id=r.client_id,
        scopes=frozenset((r.scopes or "").split()), patient_ids=_id_set(r.patient_ids), name=r.name,
        data=json.loads(r.data) if r.data else None,
    )
