"""``turnout serve`` flags are made from the Settings fields: one flag per field (or an explicit
exclusion), help and default shown once, booleans as --x / --no-x / --x false."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pydantic
import pytest

from turnout.drift.config import DriftConfig
from turnout.server.cli import serve_parser, settings_from_args
from turnout.server.flags import BoolFlag, flag_name, has_flag
from turnout.server.settings import SECTIONS, Settings

EXCLUDED = {"worker_id", "auth_tokens"}  # set by the supervisor; a secret kept off the command line


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    top = argparse.ArgumentParser(prog="turnout")
    serve = serve_parser(top.add_subparsers(dest="command"))
    return top, serve


def _settings(*args: str) -> Settings:
    top, _ = _parser()
    return settings_from_args(top.parse_args(["serve", *args]))


@pytest.fixture(autouse=True)
def _no_turnout_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("TURNOUT_"):
            monkeypatch.delenv(k)


def test_every_field_has_a_flag_and_a_description() -> None:
    _, serve = _parser()
    flags = {s: a for a in serve._actions for s in a.option_strings}
    excluded = {name for name, info in Settings.model_fields.items() if not has_flag(info)}
    assert excluded == EXCLUDED
    for name, info in Settings.model_fields.items():
        assert info.description, f"{name} has no description"
        if name in EXCLUDED:
            assert flag_name(name) not in flags
        else:
            assert flags[flag_name(name)].dest == name
    assert set(SECTIONS) <= set(Settings.model_fields)


def test_help_shows_each_default_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "10000")  # one line per flag
    _, serve = _parser()
    text = serve.format_help()
    assert "%(default)" not in text and "default: None" not in text
    entries: list[str] = []  # a flag's lines: its names, then its help (on the next line if long)
    for line in text.splitlines():
        if line.startswith("  --"):
            entries.append(line)
        elif line.startswith("    ") and entries:
            entries[-1] += " " + line.strip()
    lines = {entry.split()[0]: entry for entry in entries}
    for name, info in Settings.model_fields.items():
        if name in EXCLUDED:
            continue
        line = lines[flag_name(name)]
        assert info.description is not None and info.description in line.replace("%%", "%")
        count = line.count("(default: ")
        default = info.default
        if default is None or default == ():
            assert count == 0, line
        else:
            assert count == 1, line
            if isinstance(default, bool):
                shown = "true" if default else "false"
            else:
                shown = str(default) if default != "" else "''"
            assert f"(default: {shown})" in line
    assert "DRIFT" not in text  # booleans take no placeholder of their own name
    assert re.search(r"--drift \[true\|false\], --no-drift\s", text)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], True),
        (["--drift"], True),
        (["--no-drift"], False),
        (["--drift", "false"], False),
        (["--drift=false"], False),
        (["--drift", "true"], True),
        (["--drift", "0"], False),
        (["--no-drift", "--drift"], True),  # the last one wins
    ],
)
def test_boolean_forms(args: list[str], expected: bool) -> None:
    assert _settings(*args).drift is expected


def test_boolean_errors(capsys: pytest.CaptureFixture[str]) -> None:
    top, _ = _parser()
    for args in (["--drift", "maybe"], ["--no-drift=true"]):
        with pytest.raises(SystemExit):
            top.parse_args(["serve", *args])
    assert "expected true or false" in capsys.readouterr().err
    _, serve = _parser()
    assert all(
        isinstance(a, BoolFlag)
        for a in serve._actions
        if a.dest in Settings.model_fields and Settings.model_fields[a.dest].annotation is bool
    )


def test_types_choices_tuples_and_secrets(tmp_path: Path) -> None:
    s = _settings(
        str(tmp_path),
        "--http-port",
        "9000",
        "--busy-poll-us",
        "0",
        "--model-control-mode",
        "explicit",
        "--load-model",
        "a,b",
        "--load-model",
        "c",
        "--state-dir",
        str(tmp_path),
        "--admin-token",
        "t" * 16,
        "--max-queue-delay-us",
        "100",
        "--http-address",
        "127.0.0.1",
    )
    assert s.model_repository == str(tmp_path)
    assert (s.http_port, s.busy_poll_us, s.model_control_mode) == (9000, 0.0, "explicit")
    assert s.load_model == ("a", "b", "c")
    assert s.state_dir == tmp_path and s.max_queue_delay_us == 100 and s.host == "127.0.0.1"
    assert s.admin_token is not None and s.admin_token.get_secret_value() == "t" * 16
    top, _ = _parser()
    for bad in (["--http-port", "x"], ["--model-control-mode", "sometimes"], ["--worker-id", "1"]):
        with pytest.raises(SystemExit):
            top.parse_args(["serve", *bad])


def test_flags_win_over_the_environment_and_unset_flags_do_not_override_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TURNOUT_HTTP_PORT", "9100")
    monkeypatch.setenv("TURNOUT_DRIFT", "false")
    monkeypatch.setenv("TURNOUT_LOAD_MODEL", "x,y")
    s = _settings()
    assert (s.http_port, s.drift, s.load_model) == (9100, False, ("x", "y"))
    s = _settings("--http-port", "9200", "--drift")
    assert (s.http_port, s.drift) == (9200, True)
    monkeypatch.setenv("TURNOUT_WORKER_ID", "3")
    assert _settings().worker_id == 3
    assert Settings().grpc_port == 8001


def test_help_renders_through_main(capsys: pytest.CaptureFixture[str]) -> None:
    from turnout.server.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert re.search(r"--http-port INT\s+HTTP port", out)


def test_a_drift_window_too_small_for_a_test_is_a_settings_error() -> None:
    """A window below the detector's minimum is refused when settings are read (exit 2 with the
    reason), not when the drift monitor starts."""
    with pytest.raises(pydantic.ValidationError, match="drift_window_rows"):
        Settings(drift_window_rows=DriftConfig.min_window_rows - 1)
    assert Settings(drift_window_rows=DriftConfig.min_window_rows).drift_window_rows == 30
