"""How pynetdicom runs for every DIMSE association, ours (the SCP) and the ones we open (upstreams).

Shared by ``adapters/dimse`` and ``backends/upstream``, which may not import each other.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from pynetdicom import _config


def quiet_identifiers() -> None:
    """Never format identifiers for pynetdicom's log. pynetdicom renders every C-FIND, C-GET and C-MOVE
    identifier line by line for its INFO log *before* the logger drops it: patient data in a log
    record nobody asked for, and 38 % of our CPU for a search over an upstream C-FIND (py-spy).
    pynetdicom keeps these switches module-wide; setting them again is harmless."""
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


def no_delay(event: Any) -> None:
    """TCP_NODELAY on an association's socket (a pynetdicom EVT_CONN_OPEN handler). pynetdicom leaves
    Nagle on, and Nagle with delayed ACKs holds each small DIMSE message about 40 ms (C-FIND answers,
    C-STORE responses; an upstream C-FIND took 54 ms instead of 21 ms)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
