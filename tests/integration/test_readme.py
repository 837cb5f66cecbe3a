"""Every shell and Python block of the README runs, as written, against a test server.

Blocks run in a process of their own, with ``localhost:8000``/``localhost:8001`` replaced by the
test server's ports and ``.venv/bin/`` by this interpreter's directory (also put first on PATH, for
``turnout``; ``TURNOUT_URL`` points the admin command line at the test server). Read-only blocks
run against the session's ``demo_server``; blocks that change state (the admin API, loads and
unloads) against a server of this module, so the shared one is not disturbed.

A shell block runs under ``bash -e``, each command followed by a marker, so that each command's
output can be checked: ``curl`` gets ``--fail-with-body`` unless it writes the status itself
(``-w``), so an HTTP error fails the block. A comment ``# => TEXT`` after a command, on its line
or on the lines right after it (consecutive ones joined), is an expected output: the command's
output must contain it, ``...`` standing for anything.

A block preceded by ``<!-- doctest: skip (reason) -->`` is not run. Only the blocks that start
something for good (the server, the test suite, Docker, benchmarks) may carry that marker.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.server_proc import ROOT, ServerProc, start_server

README_PATH = ROOT / "README.md"
README = README_PATH.read_text()
BIN = Path(sys.executable).parent
RUNNABLE = {"bash", "sh", "python"}
MAX_SKIPPED = 4
SKIP_MARK = re.compile(r"^<!--\s*doctest:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->$")
# blocks that change the server's state run against a server of their own
STATEFUL = re.compile(r"/admin/|/repository/models/|\bturnout (traffic|rollout|rollback)\b")
# what only a skipped block may do: start something that does not end by itself
LONG_RUNNING = re.compile(
    r"\bmake (serve|test)\b|\bdocker\b|\bturnout serve\b(?! --help)|\bbenchmarks\.|\bkubectl (apply|port-forward)\b"
)
EXPECT = re.compile(r"(?:^|\s)#\s*=>\s?(?P<text>.*)$")


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    body: str
    section: str
    skip: str | None  # the reason, when marked

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")
        return f"{slug}-L{self.line}-{self.lang}"


@dataclass
class Command:
    text: str
    expected: list[str] = field(default_factory=list)


def blocks(text: str) -> list[Block]:
    found: list[Block] = []
    lines = text.splitlines()
    section = "top"
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:]
        if line.startswith("```"):
            lang = line[3:].strip()
            start = i
            i += 1
            body: list[str] = []
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"README.md:{start + 1}: unclosed code block"
            before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            mark = SKIP_MARK.match(before.strip())
            found.append(Block(start + 1, lang, "\n".join(body) + "\n", section, mark and mark["reason"]))
        i += 1
    return found


def _complete(text: str) -> bool:
    if text.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:  # an open quote: the command goes on
        return False
    return True


def shell_commands(body: str) -> list[Command]:
    """The block's commands (a command may span lines), each with its expected outputs."""
    commands: list[Command] = []
    pending: list[str] = []
    for line in body.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            expect = EXPECT.match(stripped)
            if expect and commands:
                commands[-1].expected.append(expect["text"])
            continue
        pending.append(line)
        text = "\n".join(pending)
        if _complete(text):
            command = Command(text)
            expect = EXPECT.search(line)
            if expect:
                command.expected.append(expect["text"])
            commands.append(command)
            pending = []
    assert not pending, f"unfinished command: {pending}"
    return commands


def expectation(parts: list[str]) -> re.Pattern[str]:
    return re.compile(".*?".join(re.escape(p) for p in "".join(parts).split("...")), re.S)


def localize(text: str, server: ServerProc) -> str:
    text = text.replace("localhost:8000", server.http_url).replace("localhost:8001", server.grpc_url)
    return re.sub(r"(?<![\w/])\.venv/bin/", f"{BIN}/", text)


def block_env(server: ServerProc) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["TURNOUT_URL"] = server.base
    return env


ALL_BLOCKS = blocks(README)
RUN = [b for b in ALL_BLOCKS if b.lang in RUNNABLE and b.skip is None]


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    server = start_server(tmp_path_factory.mktemp("readme-admin"))
    yield server
    assert server.stop() == 0, server.log()


def _run_shell(block: Block, server: ServerProc) -> None:
    commands = shell_commands(localize(block.body, server))
    assert commands, block.id
    script = [
        "set -e",
        # an HTTP error fails the command, unless it writes the status itself
        'curl() { case " $* " in *" -w "*) command curl "$@" ;; *) command curl --fail-with-body "$@" ;; esac; }',
    ]
    for n, command in enumerate(commands):
        script += [command.text, f"printf '\\n@@doctest {n}@@\\n'"]
    out = subprocess.run(
        ["bash", "-e", "-c", "\n".join(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=block_env(server),
    )
    pieces = re.split(r"\n@@doctest \d+@@\n", out.stdout)
    ran = len(pieces) - 1
    if out.returncode != 0:
        failed = commands[min(ran, len(commands) - 1)].text
        pytest.fail(
            f"README.md:{block.line}: `{failed}` exited with {out.returncode}\n"
            f"stdout: {pieces[-1][-2000:]}\nstderr: {out.stderr[-2000:]}"
        )
    assert ran == len(commands), out.stdout
    for command, output in zip(commands, pieces, strict=False):
        if command.expected:
            want = expectation(command.expected)
            assert want.search(output), (
                f"README.md:{block.line}: `{command.text}` printed\n{output[:2000]}\n"
                f"which does not contain {''.join(command.expected)!r}"
            )


def _run_python(block: Block, server: ServerProc) -> str:
    # a process of its own: tritonclient's protobuf stubs declare the names ours do
    out = subprocess.run(
        [sys.executable, "-c", localize(block.body, server)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=block_env(server),
    )
    assert out.returncode == 0, f"README.md:{block.line}:\n{out.stderr}"
    return out.stdout


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_readme_block_runs(block: Block, request: pytest.FixtureRequest) -> None:
    stateful = bool(STATEFUL.search(block.body))
    server: ServerProc = request.getfixturevalue("admin_server" if stateful else "demo_server")
    if block.lang == "python":
        assert not stateful, "Python blocks run against the shared demo server"
        stdout = _run_python(block, server)
        if "tritonclient" in block.body:
            lines = stdout.splitlines()
            assert len(lines) == 4, stdout
            assert lines[0].startswith("[0]") and lines[1].startswith("[0]")  # gRPC and HTTP: one label
            assert "'name': 'mlp'" in lines[2] and "'name': 'mlp'" in lines[3]
    else:
        _run_shell(block, server)


def test_only_blocks_that_start_things_for_good_are_skipped() -> None:
    code = [b for b in ALL_BLOCKS if b.lang in RUNNABLE]
    skipped = [b for b in code if b.skip is not None]
    assert len(skipped) <= MAX_SKIPPED, [b.id for b in skipped]
    for b in skipped:
        assert LONG_RUNNING.search(b.body), f"{b.id} is skipped ({b.skip}) but starts nothing for good"
    for b in RUN:
        assert not LONG_RUNNING.search(b.body), f"{b.id} starts something for good: mark it skipped"
    # the blocks that are not code: the architecture diagram, at most a JSON example
    others = [b for b in ALL_BLOCKS if b.lang not in RUNNABLE]
    assert all(b.lang in ("", "json") for b in others), [b.id for b in others]
    for b in others:
        if b.lang == "json":
            json.loads(b.body)
    assert len(RUN) >= 8, [b.id for b in RUN]
    assert any(b.lang == "python" for b in RUN) and any(STATEFUL.search(b.body) for b in RUN)


def test_the_commands_are_split_and_their_expectations_read() -> None:
    commands = shell_commands(
        "curl -s x -w '%{http_code}\\n'   # => 200\n"
        "# a comment\n"
        "curl -s -X POST x -d '{\n"
        '  "a": 1}\'\n'
        '# => {"a":\n'
        "# => 1...}\n"
        "turnout traffic set m \\\n  --stable 1\n"
    )
    assert [c.text.split()[0] for c in commands] == ["curl", "curl", "turnout"]
    assert commands[0].expected == ["200"]
    assert commands[1].expected == ['{"a":', "1...}"]
    assert expectation(commands[1].expected).search('{"a":1, "b": 2}')
    assert not commands[2].expected


def test_the_readme_stays_short_and_its_links_resolve() -> None:
    assert len(README.splitlines()) < 300
    for doc in [README_PATH, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks/results/NOTES.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)}: broken link {target}"


def test_the_perf_analyzer_note_names_the_debian_package() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any("b64" in r for r in extras["dev"])  # not a Python package
    assert "apt-get install libb64-0d" in README
