"""Version policies: which of the versions found in a model directory are served."""

from __future__ import annotations

from collections.abc import Iterable

from turnout.protos.model_config_pb2 import ModelVersionPolicy


def select_versions(policy: ModelVersionPolicy, available: Iterable[int]) -> list[int]:
    """The versions to serve, ascending. Default (no policy set): the latest one."""
    found = sorted(set(available))
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return found
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in found if v in wanted]
    n = policy.latest.num_versions if choice == "latest" else 1
    n = max(n, 1)
    return found[-n:]


def describe(policy: ModelVersionPolicy) -> str:
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return "all"
    if choice == "specific":
        return "specific " + ",".join(str(v) for v in policy.specific.versions)
    n = policy.latest.num_versions if choice == "latest" else 1
    return f"latest {max(n, 1)}"
