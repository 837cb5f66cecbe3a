"""A repository sync's decision for one version before hashing, as a pure function: plain
fingerprints, health flags and a fake ``now``."""

from __future__ import annotations

from turnout.model_store.reconcile import Step, version_step
from turnout.model_store.repository import Fingerprint


def fp(changed_s: float, size: int = 10) -> Fingerprint:
    ns = int(changed_s * 1e9)
    return (("model.onnx", size, ns, ns, 1),)


NOW = 1000.0


def test_an_unchanged_healthy_version_is_kept() -> None:
    assert version_step(fp(1.0), (fp(1.0), True), None, None, NOW) is Step.KEEP
    assert version_step(fp(1.0), (fp(1.0), True), fp(1.0), 5.0, NOW) is Step.KEEP


def test_files_that_failed_before_are_not_retried_unless_the_version_died() -> None:
    assert version_step(fp(1.0), None, fp(1.0), None, NOW) is Step.KNOWN_FAILURE
    assert version_step(fp(2.0), (fp(1.0), True), fp(2.0), None, NOW) is Step.KNOWN_FAILURE
    # a dead process-served version is retried: its files may be fine
    assert version_step(fp(1.0), (fp(1.0), False), fp(1.0), None, NOW) is Step.HASH
    assert version_step(fp(3.0), None, fp(2.0), None, NOW) is Step.HASH  # other files now


def test_changed_files_wait_for_the_settle_time() -> None:
    recent = fp(NOW - 1.0)
    assert version_step(recent, None, None, 2.0, NOW) is Step.PENDING
    assert version_step(recent, None, None, 1.0, NOW) is Step.HASH
    assert version_step(recent, (fp(1.0), True), None, 2.0, NOW) is Step.PENDING
    assert version_step(recent, None, None, None, NOW) is Step.HASH  # not settling: at once


def test_a_changed_version_is_hashed() -> None:
    assert version_step(fp(2.0), (fp(1.0), True), None, 0.5, NOW) is Step.HASH
    assert version_step(fp(1.0, size=11), (fp(1.0), True), None, None, NOW) is Step.HASH
