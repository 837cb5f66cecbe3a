"""Limits that come from the operating system rather than from settings."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("turnout")

# descriptors kept for everything that is not a client connection: model files, pipes to child
# processes, the state directory, logs
RESERVED_FDS = 512


def connection_cap(requested: int, protocols: int) -> int:
    """Raise the open-files limit to its hard maximum and return how many connections each of
    ``protocols`` listeners may hold so that, all full, descriptors remain: a server at its
    connection cap refuses new connections instead of failing to open files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    fits = max((soft - RESERVED_FDS) // max(protocols, 1), 1)
    if fits < requested:
        log.warning(
            "--max-connections %d lowered to %d per protocol: the open-files limit is %d",
            requested,
            fits,
            soft,
        )
        return fits
    return requested
