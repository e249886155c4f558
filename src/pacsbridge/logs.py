"""Logging set-up shared by the CLI process and uvicorn worker processes.

At INFO nothing carries patient data: the access log (adapters/http.AccessLog) omits query strings,
and use cases log UIDs, never demographics.
"""

from __future__ import annotations

import logging


def configure_logging(level: str) -> None:
    """Our loggers' format and level (uvicorn configures its own); a spawned worker calls it too,
    because it does not inherit the parent's logging."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
