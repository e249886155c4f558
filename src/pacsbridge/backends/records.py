"""Our own security records in the SQL database: the built-in issuer's clients, keys and used
assertions (``SecurityRecords``). The tables come with the index's migrations (v4).

SQLAlchemy is synchronous; every call runs in a worker thread (DESIGN rule 6). SQLite writes take
the same writer lock as the index.
"""

from __future__ import annotations

import json
import time

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ..domain.clock import utc_stamp
from ..domain.errors import Conflict
from ..services.ports import ClientRecord, SigningKeyRecord
from .sql import schema
from .sql.engine import InThread


class SqlSecurityRecords:
    """``SecurityRecords`` over the index database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        db = InThread(engine)
        self._read, self._write = db.read, db.write

    # --- clients ----------------------------------------------------------------------------------

    async def client(self, client_id: str) -> ClientRecord | None:
        t = schema.oauth_clients
        row = await self._read(lambda c: c.execute(select(t).where(t.c.client_id == client_id)).first())
        return _client(row) if row else None

    async def clients(self) -> list[ClientRecord]:
        t = schema.oauth_clients
        rows = await self._read(lambda c: c.execute(select(t).order_by(t.c.created_at)).all())
        return [_client(r) for r in rows]

    async def add_client(self, client: ClientRecord) -> None:
        values = {
            "client_id": client.client_id, "name": client.name, "secret_hash": client.secret_hash,
            "jwks": json.dumps(client.jwks) if client.jwks else None, "scopes": " ".join(sorted(client.scopes)),
            "created_at": utc_stamp(), "disabled": int(client.disabled),
        }
        try:
            await self._write(lambda c: c.execute(insert(schema.oauth_clients).values(**values)))
        except IntegrityError as exc:
            raise Conflict(f"a client with client_id {client.client_id!r} exists") from exc

    # --- signing keys -----------------------------------------------------------------------------

    async def signing_keys(self) -> list[SigningKeyRecord]:
        t = schema.signing_keys
        rows = await self._read(lambda c: c.execute(select(t).order_by(t.c.created_at, t.c.kid)).all())
        return [SigningKeyRecord(kid=r.kid, algorithm=r.algorithm, private_jwk=json.loads(r.private_jwk),
                                 created_at=r.created_at, retired_at=r.retired_at) for r in rows]

    async def add_signing_key(self, key: SigningKeyRecord, retire_others_at: str | None) -> None:
        t = schema.signing_keys

        def work(conn: Connection) -> None:
            if retire_others_at is not None:
                conn.execute(update(t).where(t.c.retired_at.is_(None)).values(retired_at=retire_others_at))
            conn.execute(insert(t).values(kid=key.kid, algorithm=key.algorithm,
                                          private_jwk=json.dumps(key.private_jwk), created_at=key.created_at,
                                          retired_at=key.retired_at))

        await self._write(work)

    async def drop_signing_keys(self, retired_before: str) -> int:
        t = schema.signing_keys
        return await self._write(lambda c: c.execute(
            delete(t).where(t.c.retired_at.is_not(None), t.c.retired_at < retired_before)).rowcount)

    # --- client assertions ------------------------------------------------------------------------

    async def use_assertion(self, key: str, expires_at: int) -> bool:
        t = schema.used_assertions

        def work(conn: Connection) -> bool:
            conn.execute(delete(t).where(t.c.expires_at < int(time.time()) - 60))
            if conn.execute(select(t.c.jti).where(t.c.jti == key)).first() is not None:
                return False
            conn.execute(insert(t).values(jti=key, expires_at=expires_at))
            return True

        try:
            return await self._write(work)
        except IntegrityError:  # another instance recorded the same jti at the same moment
            return False


def _client(row: object) -> ClientRecord:
    r = row  # a Row with the oauth_clients columns
    return ClientRecord(
        client_id=r.client_id, name=r.name, scopes=frozenset((r.scopes or "").split()),  # type: ignore[attr-defined]
        secret_hash=r.secret_hash, jwks=json.loads(r.jwks) if r.jwks else None,  # type: ignore[attr-defined]
        disabled=bool(r.disabled),  # type: ignore[attr-defined]
    )
