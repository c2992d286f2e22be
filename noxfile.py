"""Developer sessions: tests, lint, typing, bench, sim and the long runs, all sharing one install step."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typing"]
nox.options.reuse_existing_virtualenvs = True


def install(session: nox.Session) -> None:
    """The one install step every session shares: the package with its test and dev tools."""
    session.install("-e", ".[dev]")


@nox.session
def tests(session: nox.Session) -> None:
    install(session)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    install(session)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    install(session)
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """The full benchmark report at full size (minutes; not part of CI)."""
    install(session)
    session.run("kvcluster", "bench", "report", *session.posargs)


@nox.session
def chaos(session: nox.Session) -> None:
    """Long chaos runs (kvcluster/chaos): ten seeds, five 30 s rounds each, checked for linearizability (not CI)."""
    install(session)
    session.run("python", "-m", "pytest", "-n", "0", "-m", "long", "tests/test_chaos.py", *session.posargs)


@nox.session
def sim(session: nox.Session) -> None:
    """5,000 simulated schedules from a random seed (printed): whole clusters under faults, checked (minutes)."""
    install(session)
    session.run("kvcluster", "sim", "--schedules", "5000", "--jobs", "2", *session.posargs)


@nox.session
def long(session: nox.Session) -> None:
    """Every test marked long: 100,000 simulated schedules, the chaos runs on real clusters, and the benchmark
    runs at the sizes the default suite leaves out (an hour or more)."""
    install(session)
    # One at a time: the long runs measure, and each loads the two cores on its own.
    session.run("python", "-m", "pytest", "-n", "0", "-m", "long", *session.posargs)
