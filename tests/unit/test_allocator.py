"""The allocator tuning `pacsbridge serve` applies (allocator.py)."""

from __future__ import annotations

import platform

import pytest

from pacsbridge import allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_the_settings() -> None:
    assert allocator.tune() is True
