"""Limits that come from the operating system rather than from settings."""

from __future__ import annotations

import ctypes
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


M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc's malloc.h)


def return_large_buffers(threshold: int = 128 * 1024) -> bool:
    """Have glibc serve allocations above ``threshold`` bytes with their own mappings and give
    them back to the system when freed. glibc's default raises that threshold each time such a
    buffer is freed, so after a burst of large requests their memory stays in the heap and the
    process's RSS never comes down. Fixing it keeps RSS tied to the requests in flight. Returns
    False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
