"""The idle-association keeper of DIMSE upstreams (backends/upstream/kept.py), with stand-in associations:
what it keeps, what it hands out, and that an idle upstream is left with nothing open."""

from __future__ import annotations

import threading
import time
from typing import Any

from pacsbridge.backends.upstream.kept import Held, Kept


class Stand:
    """Stands for a pynetdicom Association: only ``is_established`` is read."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_established = True


class Ended:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.done = threading.Event()

    def __call__(self, assoc: Any) -> None:
        assoc.is_established = False
        self.names.append(assoc.name)
        self.done.set()


def held(name: str) -> Held:
    return Held(Stand(name), watch=None)  # type: ignore[arg-type]


def test_the_most_recently_used_is_taken_and_marked_reused() -> None:
    ended = Ended()
    kept = Kept(keep=2, keep_s=60, end=ended)
    kept.give(held("a"))
    kept.give(held("b"))
    first = kept.take()
    assert first is not None and first.assoc.name == "b" and first.reused
    second = kept.take()
    assert second is not None and second.assoc.name == "a"
    assert kept.take() is None
    assert ended.names == []
    kept.close()


def test_beyond_keep_an_association_is_ended_at_once() -> None:
    ended = Ended()
    kept = Kept(keep=1, keep_s=60, end=ended)
    kept.give(held("a"))
    kept.give(held("b"))
    assert ended.names == ["b"] and len(kept) == 1
    kept.close()
    assert ended.names == ["b", "a"] and len(kept) == 0


def test_an_association_the_peer_closed_is_never_handed_out() -> None:
    ended = Ended()
    kept = Kept(keep=2, keep_s=60, end=ended)
    lost = held("lost")
    kept.give(held("good"))
    kept.give(lost)
    lost.assoc.is_established = False
    taken = kept.take()
    assert taken is not None and taken.assoc.name == "good"
    assert ended.names == ["lost"]  # ended all the same: pynetdicom's threads must finish
    kept.close()


def test_idle_associations_are_ended_when_they_expire() -> None:
    ended = Ended()
    kept = Kept(keep=2, keep_s=0.05, end=ended)
    kept.give(held("a"))
    assert ended.done.wait(2), "the timer never ended the idle association"
    assert ended.names == ["a"] and len(kept) == 0
    assert kept.take() is None


def test_an_expired_one_is_not_taken_even_before_the_timer() -> None:
    ended = Ended()
    kept = Kept(keep=2, keep_s=0.05, end=ended)
    old = held("old")
    kept.give(old)
    old.idle_since -= 1  # as if given back a second ago
    assert kept.take() is None
    assert "old" in ended.names
    kept.close()


def test_after_close_nothing_is_kept() -> None:
    ended = Ended()
    kept = Kept(keep=2, keep_s=60, end=ended)
    kept.close()
    kept.give(held("late"))
    assert ended.names == ["late"] and kept.take() is None


def test_message_ids_are_fresh_per_association() -> None:
    one, other = held("a"), held("b")
    assert [one.message_id() for _ in range(3)] == [1, 2, 3]
    assert other.message_id() == 1


def test_a_failing_end_does_not_keep_the_others_open() -> None:
    ended = Ended()

    def end(assoc: Any) -> None:
        if assoc.name == "bad":
            raise OSError("socket gone")
        ended(assoc)

    kept = Kept(keep=3, keep_s=60, end=end)
    for name in ("a", "bad", "c"):
        kept.give(held(name))
    started = time.monotonic()
    kept.close()
    assert sorted(ended.names) == ["a", "c"] and time.monotonic() - started < 1
