"""One socket setting for every DIMSE association, ours (the SCP) and the ones we open (upstreams).

Shared by ``adapters/dimse`` and ``backends/upstream``, which may not import each other.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any


def no_delay(event: Any) -> None:
    """TCP_NODELAY on an association's socket (a pynetdicom EVT_CONN_OPEN handler). pynetdicom leaves
    Nagle on, and Nagle with delayed ACKs holds each small DIMSE message about 40 ms (C-FIND answers,
    C-STORE responses; an upstream C-FIND took 54 ms instead of 21 ms)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
