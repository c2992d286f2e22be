"""``--help`` of every command reads like click's: a flag shows no value, an option click's name for its value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer._click import Command

from kvcluster import commands
from kvcluster.errors import UsageError

commands.register_benchmarks()


def command_paths(command: Command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The arguments that name ``command`` and every command under it."""
    subcommands = getattr(command, "commands", {})
    return [path, *(p for name, sub in subcommands.items() for p in command_paths(sub, (*path, name)))]


PATHS = command_paths(typer.main.get_command(commands.app))


def test_the_walk_reaches_the_benchmarks() -> None:
    assert {("bench", "balance"), ("bench", "chaos"), ("sim",), ("up",), ()} <= set(PATHS)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "kvcluster")
def test_help_shows_no_python_types(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert commands.run([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: kvcluster" in out
    assert "--help" in out
    assert "<bool>" not in out
    assert not re.search(r"<(int|float|str|path)( range)?>", out), out
    help_line = next(line for line in out.splitlines() if "--help" in line)
    assert re.search(r"--help\s+Show this message", help_line), help_line


def test_option_values_have_click_names(capsys: pytest.CaptureFixture[str]) -> None:
    commands.run(["up", "--help"])
    out = capsys.readouterr().out
    assert re.search(r"--nodes\s+-n\s+INTEGER\s", out), out
    assert re.search(r"--port\s+INTEGER RANGE\s", out), out
    assert re.search(r"--home\s+PATH\s", out), out
    assert re.search(r"--detach\s+-d\s+Start in the", out), out


def test_arguments_have_click_names(capsys: pytest.CaptureFixture[str]) -> None:
    commands.run(["put", "--help"])
    out = capsys.readouterr().out
    assert re.search(r"KEY\s+TEXT\s+\[required\]", out), out
    assert re.search(r"VALUE\s+TEXT\s+\[required\]", out), out


def test_client_is_described_as_what_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    commands.run(["--help"])
    commands.run(["client", "--help"])
    out = capsys.readouterr().out
    assert "assignment" not in out.lower()
    assert out.count("GTStore-style client form") == 2
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "assignment" not in readme.lower()


def test_port_help_says_every_master_binds_the_next_port(capsys: pytest.CaptureFixture[str]) -> None:
    commands.run(["up", "--help"])
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "3 masters bind PORT, PORT+1 and PORT+2" in out


def test_port_too_high_for_the_group() -> None:
    with pytest.raises(UsageError, match="--port 65534 leaves no room for 3 masters"):
        commands.run(["up", "--port", "65534", "--masters", "3", "--home", "/nonexistent/kvcluster"])
