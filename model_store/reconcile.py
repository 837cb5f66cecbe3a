"""What a repository sync does with one selected version before hashing its files, decided as
a pure function of what the registry knows (the registry then hashes, loads or keeps)."""

from __future__ import annotations

from enum import Enum

from turnout.model_store.repository import Fingerprint, is_settled

__all__ = ["Step", "version_step"]


class Step(Enum):
    KEEP = "keep"  # the serving version's files are unchanged and it is healthy
    KNOWN_FAILURE = "known_failure"  # these very files failed to load before: not retried
    PENDING = "pending"  # the files changed less than the settle time ago: wait
    HASH = "hash"  # hash the files: the same content is kept, new content is loaded


def version_step(
    fp: Fingerprint,
    old: tuple[Fingerprint, bool] | None,
    failed_fp: Fingerprint | None,
    settle_secs: float | None,
    now: float,
) -> Step:
    """``fp``: the version's files now; ``old``: the fingerprint and health of the version
    serving, if any; ``failed_fp``: the files of its last failed load, if any; ``settle_secs``:
    how long files must stay unchanged (None: load at once)."""
    if old is not None and old[0] == fp and old[1]:
        return Step.KEEP
    # (a dead process-served version is always retried: its files may be fine)
    if failed_fp == fp and (old is None or old[1]):
        return Step.KNOWN_FAILURE
    if settle_secs is not None and not is_settled(fp, settle_secs, now):
        return Step.PENDING
    return Step.HASH
