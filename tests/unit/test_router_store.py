"""Durable control-plane store: atomic files, generations, optimistic commits, audit, leader lock."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from turnout.router.audit import AuditRecord
from turnout.router.files import lines_backwards
from turnout.router.policy import CanaryTarget, ShadowTarget, TrafficPolicy
from turnout.router.rollout import RolloutPlan, pause, start
from turnout.router.store import ControlPlaneStore, StoreConflict, StoreError

REPO_ROOT = Path(__file__).resolve().parents[2]

POLICY = TrafficPolicy(
    "iris",
    "2",
    canaries=(CanaryTarget("3", 0.1),),
    shadows=(ShadowTarget("4", 0.5),),
    previous_stable="1",
    generation=4,
)
ROLLOUT = pause(start(RolloutPlan(steps=(0.2, 1.0)), "iris", "2", "3", 100.0, "alice"), 105.0, "bob", "lunch")


def _files(state_dir: Path) -> set[str]:
    return {p.name for p in state_dir.iterdir()}


def test_empty_store(tmp_path: Path) -> None:
    store = ControlPlaneStore(tmp_path / "state")
    snapshot = store.load()
    assert (snapshot.generation, snapshot.policies, snapshot.rollouts) == (0, {}, {})
    assert store.generation() == 0 and not store.changed_since(0)
    assert store.read_audit() == []


def test_save_and_load_in_a_new_instance(tmp_path: Path) -> None:
    store = ControlPlaneStore(tmp_path)
    generation = store.save({"iris": POLICY}, {"iris": ROLLOUT})
    assert generation == 1
    snapshot = ControlPlaneStore(tmp_path).load()
    assert snapshot.generation == 1
    assert snapshot.policies == {"iris": POLICY}
    assert snapshot.rollouts == {"iris": ROLLOUT}
    # Files are plain JSON with the documented layout, and no temporary files are left.
    doc = json.loads((tmp_path / "policies.json").read_text())
    assert doc["format"] == 1 and doc["generation"] == 1 and doc["policies"]["iris"]["stable"] == "2"
    assert not [name for name in _files(tmp_path) if name.endswith(".tmp")]


def test_commit_merges_per_model_and_bumps_generation(tmp_path: Path) -> None:
    store = ControlPlaneStore(tmp_path)
    other = TrafficPolicy("mnist", "5")
    g1 = store.commit(policies={"iris": POLICY})
    g2 = store.commit(policies={"mnist": other}, rollouts={"iris": ROLLOUT})
    assert (g1, g2) == (1, 2)
    snapshot = ControlPlaneStore(tmp_path).load()
    assert snapshot.policies == {"iris": POLICY, "mnist": other}
    assert snapshot.rollouts == {"iris": ROLLOUT}
    g3 = store.commit(policies={"iris": None}, rollouts={"iris": None})
    snapshot = store.load()
    assert g3 == 3 and snapshot.generation == 3
    assert snapshot.policies == {"mnist": other} and snapshot.rollouts == {}


def test_audit_only_commit_keeps_generation(tmp_path: Path) -> None:
    store = ControlPlaneStore(tmp_path)
    store.commit(policies={"iris": POLICY})
    assert store.commit(audit=[AuditRecord(1.0, "x", "noop", "iris")]) == 1
    assert [r.action for r in store.read_audit()] == ["noop"]


def test_changed_since_sees_other_instances_commits(tmp_path: Path) -> None:
    reader, writer = ControlPlaneStore(tmp_path), ControlPlaneStore(tmp_path)
    seen = reader.generation()
    assert not reader.changed_since(seen)
    writer.commit(policies={"iris": POLICY})
    assert reader.changed_since(seen)
    seen = reader.generation()
    assert seen == 1 and not reader.changed_since(seen)
    writer.commit(rollouts={"iris": ROLLOUT})
    assert reader.generation() == 2


def test_changed_since_sees_another_process(tmp_path: Path) -> None:
    store = ControlPlaneStore(tmp_path)
    store.commit(policies={"iris": POLICY})
    seen = store.generation()
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from router.policy import TrafficPolicy\nfrom router.store import ControlPlaneStore\n"
        "print(ControlPlaneStore(Path(sys.argv[1])).commit(policies={'m': TrafficPolicy('m', '9')}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.stdout.strip() == "2"
    assert store.changed_since(seen)
    assert store.load().policies["m"] == TrafficPolicy("m", "9")


def test_generation_file_is_repaired_after_a_crash_mid_commit(tmp_path: Path) -> None:
    store = ControlPlaneStore(tmp_path)
    store.commit(policies={"iris": POLICY})
    store.commit(policies={"iris": POLICY})
    assert (tmp_path / "generation").read_text() == "2"
    (tmp_path / "generation").write_text("1")  # as if the process died before its last rename
    assert ControlPlaneStore(tmp_path).generation() == 2
    (tmp_path / "generation").unlink()
    assert store.generation() == 2  # falls back to the JSON files


def test_optimistic_commit_refuses_stale_writers(tmp_path: Path) -> None:
    a, b = ControlPlaneStore(tmp_path), ControlPlaneStore(tmp_path)
    assert a.commit(policies={"iris": POLICY}, expected_generation=0) == 1
    with pytest.raises(StoreConflict, match="generation 1, expected 0"):
        b.commit(policies={"iris": TrafficPolicy("iris", "7")}, expected_generation=0)
    assert b.load().policies["iris"] == POLICY
    assert b.commit(policies={"iris": TrafficPolicy("iris", "7")}, expected_generation=1) == 2


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ControlPlaneStore(tmp_path)
    store.commit(policies={"iris": POLICY})
    before = (tmp_path / "policies.json").read_bytes()

    def refuse(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk on fire"):
        store.commit(policies={"iris": TrafficPolicy("iris", "9")})
    monkeypatch.undo()
    assert (tmp_path / "policies.json").read_bytes() == before
    assert not [name for name in _files(tmp_path) if name.endswith(".tmp")]
    assert ControlPlaneStore(tmp_path).load().policies == {"iris": POLICY}


def test_corrupt_files_raise_store_error(tmp_path: Path) -> None:
    store = ControlPlaneStore(tmp_path)
    (tmp_path / "policies.json").write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        store.load()
    (tmp_path / "policies.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(StoreError, match="format-1"):
        store.load()
    doc = {
        "format": 1,
        "generation": 1,
        "policies": {"iris": {"stable": "1", "canary": {"version": "1", "weight": 1}}},
    }
    (tmp_path / "policies.json").write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="invalid entry"):
        store.load()


def test_audit_append_and_tail(tmp_path: Path) -> None:
    store = ControlPlaneStore(tmp_path)
    records = [
        AuditRecord(
            float(i),
            f"user{i}",
            "set_policy",
            "iris" if i % 3 else "mnist",
            {"i": i, "pad": "x" * 40},
            f"why {i}",
        )
        for i in range(3000)  # several 64 KiB blocks
    ]
    store.append_audit(records[0])
    for first in range(1, 3000, 600):
        store.commit(audit=records[first : first + 600])
    with (tmp_path / "audit.jsonl").open("a") as handle:
        handle.write('{"truncated": \n')
    last = ControlPlaneStore(tmp_path).read_audit(5)
    assert [r.detail["i"] for r in last] == [2995, 2996, 2997, 2998, 2999]
    assert last[-1] == AuditRecord(
        2999.0, "user2999", "set_policy", "iris", {"i": 2999, "pad": "x" * 40}, "why 2999"
    )
    only_mnist = store.read_audit(3, model="mnist")
    assert [r.detail["i"] for r in only_mnist] == [2991, 2994, 2997]
    assert len(store.read_audit(10_000)) == 3000
    assert store.read_audit(0) == []


def test_audit_detail_with_non_finite_numbers_is_valid_json(tmp_path: Path) -> None:
    store = ControlPlaneStore(tmp_path)
    store.append_audit(AuditRecord(1.0, "x", "a", "m", {"ratio": float("inf"), "items": (1, float("nan"))}))
    line = (tmp_path / "audit.jsonl").read_text().strip()
    assert json.loads(line)["detail"] == {"ratio": None, "items": [1, None]}


def test_leader_lock_is_exclusive_and_released_on_close(tmp_path: Path) -> None:
    a, b = ControlPlaneStore(tmp_path), ControlPlaneStore(tmp_path)
    assert a.try_lead() and a.is_leader
    assert a.try_lead()  # idempotent
    assert not b.try_lead() and not b.is_leader
    a.close()
    assert b.try_lead()
    assert not a.try_lead()
    b.close()


@pytest.mark.parametrize("block_size", [1, 3, 64 * 1024])
def test_lines_backwards_across_block_boundaries(block_size: int) -> None:
    data = b"first\n\nsecond line\n  \nthird"
    assert list(lines_backwards(io.BytesIO(data), block_size)) == [b"third", b"second line", b"first"]
    assert list(lines_backwards(io.BytesIO(b""), block_size)) == []
