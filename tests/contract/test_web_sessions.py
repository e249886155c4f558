"""Browser sessions and built-in users over the SQL records (SQLite and PostgreSQL), with a test clock:
sessions end at their absolute and idle limits, sign-in records are not sessions, credentials changes
end a user's sessions, and locks expire."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pacsbridge.backends.local import make_engine
from pacsbridge.backends.sql.migrations import migrate
from pacsbridge.backends.web_login import SqlWebLoginRecords
from pacsbridge.domain.access import Principal
from pacsbridge.domain.errors import Conflict
from pacsbridge.services.web_login import PasswordLogin, SessionBook, SessionPolicy, SignInRefused, key_hash

PASSWORD = "correct horse battery staple"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def records(db_url: str) -> AsyncIterator[SqlWebLoginRecords]:
    engine = make_engine(db_url)
    migrate(engine)
    yield SqlWebLoginRecords(engine)
    engine.dispose()


POLICY = SessionPolicy(lifetime_s=3600, idle_s=600, login_s=300, lock_after=3, lock_s=900)
ALICE = Principal(subject="alice", client_id="viewer", scopes=frozenset({"admin"}), patient_ids=frozenset({"P1"}))


@pytest.mark.anyio
async def test_a_session_keeps_its_principal_and_ends_when_idle(records: SqlWebLoginRecords) -> None:
    clock = Clock()
    book = SessionBook(records, POLICY, clock)
    key, opened = await book.open(ALICE, "Alice")
    assert opened.key_hash == key_hash(key) and key not in opened.key_hash
    clock.now += 599
    found = await book.find(key)
    assert found is not None
    assert (found.subject, found.client_id, found.scopes, found.patient_ids, found.name) == (
        "alice", "viewer", frozenset({"admin"}), frozenset({"P1"}), "Alice")
    assert found.seen_at == int(clock.now)  # used: the idle clock starts again
    clock.now += 599
    assert await book.find(key) is not None
    clock.now += 601
    assert await book.find(key) is None  # idle too long
    assert await records.session(key_hash(key)) is None  # and gone from the table


@pytest.mark.anyio
async def test_a_busy_session_still_ends_at_its_absolute_limit(records: SqlWebLoginRecords) -> None:
    clock = Clock()
    book = SessionBook(records, POLICY, clock)
    key, _ = await book.open(ALICE, None)
    for _ in range(11):
        clock.now += 300
        assert await book.find(key) is not None
    clock.now += 300  # 3,600 s after it opened
    assert await book.find(key) is None


@pytest.mark.anyio
async def test_a_sign_in_under_way_is_not_a_session_and_closing_ends_either(records: SqlWebLoginRecords) -> None:
    book = SessionBook(records, POLICY, Clock())
    login_key, _ = await book.begin_login({"state": "s", "nonce": "n", "verifier": "v", "next": "/ui/"})
    assert await book.find(login_key) is None
    pending = await book.find(login_key, kind="login")
    assert pending is not None and pending.data == {"state": "s", "nonce": "n", "verifier": "v", "next": "/ui/"}
    assert await book.find("not-a-key") is None and await book.find(None) is None
    await book.close(login_key)
    assert await book.find(login_key, kind="login") is None


@pytest.mark.anyio
async def test_sign_in_locks_after_failures_and_the_lock_expires(records: SqlWebLoginRecords) -> None:
    clock = Clock()
    passwords = PasswordLogin(records, POLICY, clock)
    await passwords.add("bob", PASSWORD, ["dicomweb.read"], display_name="Bob")
    principal, name = await passwords.sign_in("bob", PASSWORD)
    assert (principal.subject, principal.scopes, principal.patient_ids, name) == (
        "user:bob", frozenset({"dicomweb.read"}), None, "Bob")
    for _ in range(POLICY.lock_after):
        with pytest.raises(SignInRefused, match="wrong password"):
            await passwords.sign_in("bob", "guess guess guess")
    with pytest.raises(SignInRefused, match="locked"):
        await passwords.sign_in("bob", PASSWORD)
    # The lock is in the records, so the wall clock of the database decides; move past it.
    user = await records.user("bob")
    assert user is not None and user.locked_until > 0
    clock.now = user.locked_until + 1
    assert (await passwords.sign_in("bob", PASSWORD))[0].subject == "user:bob"
    with pytest.raises(SignInRefused, match="unknown user"):
        await passwords.sign_in("nobody", PASSWORD)
    with pytest.raises(Conflict):
        await passwords.add("bob", PASSWORD, ["admin"])
    with pytest.raises(ValueError, match="12 characters"):
        await passwords.add("carol", "short", ["admin"])


@pytest.mark.anyio
async def test_a_new_password_or_disabling_ends_the_users_sessions(records: SqlWebLoginRecords) -> None:
    passwords = PasswordLogin(records, POLICY)
    book = SessionBook(records, POLICY)
    await passwords.add("dora", PASSWORD, ["admin"])
    other_key, _ = await book.open(Principal(subject="user:eve"), None)
    key, _ = await book.open((await passwords.sign_in("dora", PASSWORD))[0], None)
    await passwords.set_password("dora", PASSWORD + " 2")
    assert await book.find(key) is None
    key, _ = await book.open((await passwords.sign_in("dora", PASSWORD + " 2"))[0], None)
    await passwords.set_disabled("dora", True)
    assert await book.find(key) is None
    with pytest.raises(SignInRefused, match="disabled"):
        await passwords.sign_in("dora", PASSWORD + " 2")
    assert await book.find(other_key) is not None  # someone else's session is untouched
