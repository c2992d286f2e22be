"""Shared fixtures: real kvcluster clusters driven through the CLI, polling, and a raw socket to send them frames.

A cluster is started with ``python -m kvcluster up -d`` in its own state
directory under pytest's tmp path and is always torn down: ``kvcluster down``
first, then SIGKILL for any recorded process that survived it, so a failing
test never leaves processes behind (``run_bench`` does the same for a
benchmark's processes). Tests that use the ``cluster`` or
``module_cluster`` fixture are marked ``cluster`` automatically.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
import zmq

COMMAND_TIMEOUT = 60.0  # seconds any single CLI command may take before the test fails
# put/get deadline: generous, so a failover on a busy machine is waited out rather than reported as a timeout
OPERATION_TIMEOUT = "20"
PUT_LINE = re.compile(r"OK, (server\d+)")
GET_LINE = re.compile(r"(\S+), (\S*), (server\d+)")

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, message: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy and return that; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            pytest.fail(f"timed out after {timeout:g} s waiting for: {what}")
        time.sleep(interval)


def run_cli(
    *args: str, home: Path | None = None, check: bool = True, timeout: float = COMMAND_TIMEOUT, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m kvcluster ARGS [--home HOME]`` (in ``cwd``) and capture its output as text."""
    argv = [sys.executable, "-m", "kvcluster", *args]
    if home is not None:
        argv += ["--home", str(home)]
    env = {k: v for k, v in os.environ.items() if k != "KVCLUSTER_HOME"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False, cwd=cwd)
    if check:
        assert proc.returncode == 0, (
            f"{' '.join(argv[2:])} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


def same_process_alive(pid: int, create_time: float) -> bool:
    """True while this very process (not a reuse of its PID) runs and is not a zombie."""
    try:
        proc = psutil.Process(pid)
        return bool(abs(proc.create_time() - create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def recorded_processes(home: Path) -> dict[str, tuple[int, float]]:
    """Every process ``cluster.json`` records, as name -> (pid, create time); empty without a state file."""
    try:
        raw = json.loads((home / "cluster.json").read_text())
    except (OSError, ValueError):
        return {}
    infos = [raw["supervisor"], *raw["masters"], *raw["servers"]]
    return {info["name"]: (info["pid"], info["create_time"]) for info in infos}


def kill_survivors(processes: dict[str, tuple[int, float]]) -> None:
    """SIGKILL whichever of ``processes`` still runs."""
    for pid, create_time in processes.values():
        if same_process_alive(pid, create_time):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Cluster:
    """A running cluster in ``home``, driven through the CLI."""

    home: Path
    nodes: int
    rep: int
    started: dict[str, tuple[int, float]] = field(default_factory=dict)

    def run(self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        proc = run_cli(*args, home=self.home, check=False, timeout=timeout)
        if check and proc.returncode != 0:
            master_log = "\n".join(self.log("master1").splitlines()[-15:])
            pytest.fail(
                f"kvcluster {' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}\n"
                f"last lines of {self.home}/logs/master1.log:\n{master_log}"
            )
        return proc

    def put(self, key: str, value: str) -> str:
        """Store through ``kvcluster put``; return the server from the exact ``OK, serverN`` line."""
        out = self.run("put", key, value, "--timeout", OPERATION_TIMEOUT).stdout
        assert out.endswith("\n"), f"unexpected put output: {out!r}"
        match = PUT_LINE.fullmatch(out.removesuffix("\n"))
        assert match is not None, f"unexpected put output: {out!r}"
        return match.group(1)

    def get(self, key: str) -> tuple[str, str]:
        """Read through ``kvcluster get``; return (value, server) from the exact ``KEY, VALUE, serverN`` line."""
        out = self.run("get", key, "--timeout", OPERATION_TIMEOUT).stdout
        assert out.endswith("\n"), f"unexpected get output: {out!r}"
        match = GET_LINE.fullmatch(out.removesuffix("\n"))
        assert match is not None, f"unexpected get output: {out!r}"
        assert match.group(1) == key, f"get {key} answered for {match.group(1)}"
        return match.group(2), match.group(3)

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.run("status", "--json").stdout)
        return doc

    def kill(self, name: str) -> None:
        self.run("kill", name)

    def pids(self) -> dict[str, int]:
        """Name -> pid of every process recorded in ``cluster.json`` (supervisor, masters, servers)."""
        return {name: pid for name, (pid, _) in recorded_processes(self.home).items()}

    def master_address(self) -> str:
        """Every master's HOST:PORT, comma-separated, as ``--master`` takes them."""
        endpoints: str = self.status()["master"]["endpoint"]
        return ",".join(e.removeprefix("tcp://") for e in endpoints.split(","))

    def node(self, name: str) -> dict[str, Any]:
        """The ``status --json`` entry of one node."""
        nodes: list[dict[str, Any]] = self.status()["nodes"]
        return next(n for n in nodes if n["name"] == name)

    def declared_dead(self, *names: str) -> bool:
        """Whether the master's table lists every one of ``names`` as dead."""
        dead = set(self.status()["dead"])
        return all(name in dead for name in names)

    def master_logs(self) -> str:
        """What every master wrote: any of them may be the one leading."""
        return "".join(self.log(path.stem) for path in sorted((self.home / "logs").glob("master*.log")))

    def log(self, name: str) -> str:
        path = self.home / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def teardown(self) -> None:
        """Stop the cluster, and kill anything it leaves running."""
        recorded = {**self.started, **recorded_processes(self.home)}
        if (self.home / "cluster.json").exists():
            run_cli("down", home=self.home, check=False)
        kill_survivors(recorded)


class ClusterLauncher:
    """Starts clusters in fresh state directories under ``base`` and tears every one of them down."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.clusters: list[Cluster] = []

    def __call__(self, nodes: int = 3, rep: int = 2, masters: int = 3, *extra: str) -> Cluster:
        """Start a cluster; ``extra`` options go to ``up`` as they are (``--fsync always``, ``--data-dir DIR``)."""
        home = self.base / f"home{len(self.clusters)}"
        cluster = Cluster(home, nodes, rep)
        self.clusters.append(cluster)
        run_cli("up", "-d", "--nodes", str(nodes), "--rep", str(rep), "--masters", str(masters), *extra, home=home)
        cluster.started = recorded_processes(home)
        assert len(cluster.started) == nodes + masters + 1, f"cluster.json records {sorted(cluster.started)}"
        return cluster

    def close(self) -> None:
        for cluster in self.clusters:
            cluster.teardown()


CLUSTER_FIXTURES = frozenset({"cluster", "module_cluster"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that starts a cluster through a fixture is a ``cluster`` test, so ``-m "not cluster"`` skips it."""
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterLauncher]:
    """``cluster(nodes=..., rep=...)`` starts a cluster that lives for one test."""
    launcher = ClusterLauncher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterLauncher]:
    """``module_cluster(nodes=..., rep=...)`` starts a cluster shared by the tests of one module."""
    launcher = ClusterLauncher(tmp_path_factory.mktemp("cluster"))
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture
def dealer() -> Iterator[zmq.Socket[bytes]]:
    """A DEALER socket of its own ZeroMQ context, for sending frames straight to a master or node."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        yield sock
    finally:
        ctx.destroy(linger=0)


def run_bench(
    cwd: Path, *args: str, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``kvcluster bench ARGS`` in ``cwd``, ``env`` added to ours; it must succeed and leave nothing running.

    Every process a benchmark starts (cluster and clients) inherits its working
    directory, so whatever still runs there afterwards, even after a failure or
    a timeout, is a leftover: it is killed, and then the test fails.
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "kvcluster", "bench", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **(env or {})},
        )
    finally:
        leftovers = kill_leftovers(cwd)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert not leftovers, f"processes left running: {leftovers}"
    return proc


def kill_leftovers(cwd: Path) -> list[dict[str, Any]]:
    """SIGKILL every process running in ``cwd``; what they were."""
    leftovers = [p for p in psutil.process_iter(["pid", "cwd", "cmdline"]) if p.info["cwd"] == str(cwd)]
    for proc in leftovers:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return [p.info for p in leftovers]
