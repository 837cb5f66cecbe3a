"""grpc's experiments are set before grpc is first imported, and an explicit variable wins."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from turnout.server.cli import apply_grpc_experiments, serve_parser, settings_from_args
from turnout.server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_setting_reaches_grpc() -> None:
    env: dict[str, str] = {}
    apply_grpc_experiments(Settings(grpc_experiments="-event_engine_listener"), env)
    assert env == {"GRPC_EXPERIMENTS": "-event_engine_listener"}


def test_an_explicit_environment_variable_wins() -> None:
    env = {"GRPC_EXPERIMENTS": "tcp_rcv_lowat"}
    apply_grpc_experiments(Settings(grpc_experiments="-event_engine_listener"), env)
    assert env == {"GRPC_EXPERIMENTS": "tcp_rcv_lowat"}


def test_by_default_grpc_keeps_its_own_experiments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURNOUT_GRPC_EXPERIMENTS", raising=False)
    env: dict[str, str] = {}
    apply_grpc_experiments(Settings(), env)
    assert env == {}


def test_flag_reaches_the_settings() -> None:
    parser = argparse.ArgumentParser()
    serve_parser(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(["serve", "--grpc-experiments=-event_engine_listener"])
    assert settings_from_args(ns).grpc_experiments == "-event_engine_listener"


def test_grpc_is_not_imported_before_the_server_starts() -> None:
    # main() parses flags and builds settings with these modules only; grpc must still be
    # unimported then, or the variable would be read too late.
    code = (
        "import sys\n"
        "from server import cli, admin_cli, settings\n"
        "from server.observe import logs\n"
        "print('grpc' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
