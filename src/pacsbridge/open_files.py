"""Raise this process's limit of open files to what the system allows it.

A gateway holds many descriptors at once: every HTTP and DIMSE connection, the index, spool files
being received, and the stored files of each retrieval being sent (a run of OPEN_RUN per request).
Many service managers start programs with a soft limit of 1,024 and a much higher hard limit; the
soft limit is the process's own to raise (as nginx's ``worker_rlimit_nofile`` and Go's runtime do),
so that "Too many open files" comes only at the limit the administrator set. Worker processes inherit it.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)


def raise_limit() -> int:
    """Set the soft limit of open files to the hard limit; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # a hard limit above what the kernel allows (nr_open)
        log.warning("open files limit stays at %d (could not raise it to %d: %s)", soft, hard, exc)
        return soft
    return hard
