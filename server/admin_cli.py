"""``turnout traffic|rollout|rollback``: the control plane from the command line (HTTP)."""

from __future__ import annotations

import argparse
from typing import Any


def add_admin_commands(sub: Any) -> None:
    """Registered once the admin API exists (routing issue)."""
    _ = (sub, argparse)
