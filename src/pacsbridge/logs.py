"""Logging set-up shared by the CLI process and uvicorn worker processes.

At INFO nothing carries patient data: the access log (adapters/http.AccessLog) omits query strings,
and use cases log UIDs, never demographics. pynetdicom logs whole identifiers (names, birth dates) at
INFO and DEBUG, so its logger is held at WARNING whatever our level.
"""

from __future__ import annotations

import logging


def configure_logging(level: str) -> None:
    """Our loggers' format and level (uvicorn configures its own); a spawned worker calls it too,
    because it does not inherit the parent's logging."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
