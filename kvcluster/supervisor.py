"""Starting, watching and stopping a cluster's processes.

The supervisor is the parent of the masters and of every storage node: it
spawns them with ``sys.executable -m kvcluster`` so they run in the same
environment, records their PIDs in ``cluster.json`` in the state directory (``state.py``),
reaps them when they die (so a ``kill -9``-ed node never lingers as a zombie)
and stops them all with SIGTERM, then SIGKILL after a grace period. In
``kvcluster up`` the CLI process itself supervises; ``kvcluster up -d`` starts
a detached supervisor process instead.

Every PID is recorded with its process creation time, so a PID the kernel has
since reused for an unrelated process is never signalled.

A node the master fenced exits with ``FENCED_EXIT``, and the supervisor of
``kvcluster up`` starts it again as a new incarnation (``rejoin``). A node
exits so only once the master has reached it again (the fence is the
master's answer to its heartbeat), after it was declared dead and its slots
moved on: on separate hosts it was a cut that healed, on loopback a pause or
a hang that ended. Either way the old incarnation is gone before the new one
says hello, so two processes never serve under one id; the new one reads its
data back and joins as a restarted node. A node fenced again soon after its
start waits ``REJOIN_SPACING`` before the next, so a cluster that keeps
judging it dead is not sent a node in a loop.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from kvcluster.core.placement import node_name
from kvcluster.core.protocol import StatusReport, Timing
from kvcluster.datadir import Shape, Storage, check_shape_matches, default_root, record_shape
from kvcluster.errors import (
    ClusterAlreadyRunning,
    ClusterNotRunning,
    StartupFailed,
)
from kvcluster.exitwatch import ExitWatch, announce_exit
from kvcluster.local_file import CLUSTER_FILE, cluster_args, draft_keys, state_curve, write_cluster_file
from kvcluster.master_group import group_args, master_name, prepare_group
from kvcluster.netns import NetHosts
from kvcluster.netns import remove as remove_hosts
from kvcluster.runtime.exits import FENCED_EXIT
from kvcluster.state import STATE_FILE, TABLE_CACHE, ClusterState, ProcessInfo

log = logging.getLogger(__name__)

LOG_DIR = "logs"
START_TIMEOUT = 60.0  # a cluster starting again from a million keys reads them back first
GROUP_START_TRIES = 3  # starts of the master group on fresh Raft ports, if one was taken meanwhile
STOP_GRACE = 10.0  # a node stopping cleanly first snapshots its log: at a million keys that takes seconds
REJOIN_SPACING = 5.0  # seconds between two starts of one fenced node


def clear_state(home: Path) -> None:
    for name in (STATE_FILE, TABLE_CACHE, CLUSTER_FILE):
        (home / name).unlink(missing_ok=True)


def check_can_start(home: Path) -> None:
    """Refuse to start over a running cluster; forget the state of one that is gone."""
    try:
        state = ClusterState.load(home)
    except ClusterNotRunning:
        clear_state(home)
        return
    if state.running():
        raise ClusterAlreadyRunning(f"a cluster is already running in {home} (stop it with: kvcluster down)")
    remove_hosts(home)
    clear_state(home)


def node_args(
    node_id: int,
    master_endpoint: str,
    timing: Timing,
    storage: Storage,
    keys: list[str] | None = None,
    hosts: NetHosts | None = None,
) -> list[str]:
    """The command line of storage node ``node_id``; ``keys`` (``--cluster FILE``) turns CurveZMQ on, ``hosts``
    binds it to its own host's address."""
    return [
        "_node",
        *(keys or []),
        *(["--host", hosts.ip(node_name(node_id))] if hosts is not None else []),
        "--id",
        str(node_id),
        "--master",
        master_endpoint,
        *timing_args(timing),
        *storage.node_args(node_id),
    ]


def timing_args(timing: Timing) -> list[str]:
    """The command-line options that hand ``timing`` to a master, node or supervisor process."""
    return ["--heartbeat", str(timing.heartbeat), "--lease", str(timing.lease), "--dead-after", str(timing.dead_after)]


def create_time(pid: int) -> float:
    import psutil  # noqa: PLC0415

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        return 0.0  # it already exited (a node that refused its damaged data): never taken for alive


class Supervisor:
    """Owns the child processes of one cluster for as long as it runs."""

    def __init__(
        self,
        home: Path,
        nodes: int,
        rep: int,
        masters: int,
        bind: str,
        timing: Timing,
        storage: Storage | None = None,
        curve: bool = False,
        hosts: NetHosts | None = None,
        *,
        rejoin: bool = False,
    ) -> None:
        self.home = home
        self.curve = curve
        self.hosts = hosts  # every process on a host (network namespace) of its own, or all on loopback
        # Start fenced nodes again; always on separate hosts, where a fence is what a healed cut leaves.
        self.rejoin = rejoin or hosts is not None
        self.rejoined: dict[int, float] = {}  # node id -> when it was last started again
        self.server_procs: dict[int, subprocess.Popen[bytes]] = {}
        self.storage = storage or Storage(str(default_root(home)))
        self.nodes = nodes
        self.rep = rep
        self.masters = masters
        self.bind = bind
        self.timing = timing
        self.children: list[subprocess.Popen[bytes]] = []
        self.state: ClusterState | None = None
        self.exits: ExitWatch | None = None

    def _spawn(self, name: str, args: list[str], stdout: int | None = None) -> subprocess.Popen[bytes]:
        logs = self.home / LOG_DIR
        logs.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "kvcluster", *args]
        with (logs / f"{name}.log").open("ab") as log_file:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                self.hosts.wrap(name, argv) if self.hosts is not None else argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout if stdout is not None else log_file,
                stderr=log_file,
            )
        self.children.append(proc)
        return proc

    def start(self) -> ClusterState:
        """Spawn the master and the nodes, wait until the master has published a table, record the state."""
        check_can_start(self.home)
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> ClusterState:
        deadline = time.monotonic() + START_TIMEOUT
        root = Path(self.storage.root)
        restarting = check_shape_matches(root, Shape(self.nodes, self.rep))
        if restarting:
            log.info("starting again from the data in %s", root)
        record_shape(root, Shape(self.nodes, self.rep))
        names = [master_name(i) for i in range(1, self.masters + 1)]
        if self.hosts is not None:
            self.hosts.build([*names, *(node_name(i) for i in range(1, self.nodes + 1))])
            self.hosts.save(self.home)
        # With CurveZMQ the processes need their keys before anyone knows the masters' ports: a draft file holds them.
        keys = draft_keys(self.home, self.masters, self.rep, self.nodes) if self.curve else None
        self.keys = cluster_args(self.home, self.curve)
        raft, masters, endpoint = self._start_masters(names, deadline)
        servers = [
            self._spawn(node_name(i), node_args(i, endpoint, self.timing, self.storage, self.keys, self.hosts))
            for i in range(1, self.nodes + 1)
        ]
        # Starting again, a node whose data is damaged refuses to start; the others start without it.
        self.server_procs = dict(enumerate(servers, start=1))
        report = self._wait_for_table(endpoint, deadline, servers if restarting else [])
        endpoints = {r.node_id: r.endpoint for r in report.nodes}
        me = os.getpid()
        self.state = ClusterState(
            home=str(self.home),
            nodes=self.nodes,
            rep=self.rep,
            master_endpoint=endpoint,
            supervisor=ProcessInfo("supervisor", me, create_time(me)),
            masters=[
                ProcessInfo(name, m.pid, create_time(m.pid), e)
                for (name, m), e in zip(masters, endpoint.split(","), strict=True)
            ],
            raft_addresses=raft,
            servers=[
                ProcessInfo(node_name(i), p.pid, create_time(p.pid), endpoints.get(i, ""))
                for i, p in enumerate(servers, start=1)
            ],
            timing=self.timing,
            started_at=time.time(),
            storage=asdict(self.storage),
            curve=self.curve,
        )
        write_cluster_file(self.state, self.storage.fsync, keys)
        self.state.save()
        servers_now = lambda: ClusterState.load(self.home).servers  # noqa: E731 - read afresh on every change
        self.exits = ExitWatch(ClusterState.path(self.home), servers_now, endpoint, state_curve(self.state))
        self.exits.start()
        return self.state

    def _spawn_master(self, member_id: int, raft: list[str]) -> tuple[str, subprocess.Popen[bytes]]:
        name = master_name(member_id)
        host, _, port = self.bind.rpartition(":")
        bind = f"{host}:{int(port) + member_id - 1 if int(port) else 0}"
        if self.hosts is not None:
            bind = self.hosts.master_bind(name)
        shape = ["--nodes", str(self.nodes), "--rep", str(self.rep), "--bind", bind]
        args = ["_master", *self.keys, *shape, *timing_args(self.timing), *group_args(self.home, raft, member_id)]
        return name, self._spawn(name, args, stdout=subprocess.PIPE)

    def _start_masters(
        self, names: list[str], deadline: float
    ) -> tuple[list[str], list[tuple[str, subprocess.Popen[bytes]]], str]:
        """Start the master group; its Raft addresses, its processes, and every master's endpoint.

        A Raft port is chosen free and bound later by its member, so another process may take it in
        between; the member then fails with pysyncobj's BindError, and the group starts again on other ports.
        """
        attempt = 1
        while True:
            raft = prepare_group(self.home, self.masters, self.hosts.raft_addresses(names) if self.hosts else None)
            masters = [self._spawn_master(member_id, raft) for member_id in range(1, self.masters + 1)]
            try:
                return raft, masters, ",".join(self._read_ready_line(proc, name, deadline) for name, proc in masters)
            except StartupFailed as exc:
                if "BindError" not in str(exc) or attempt == GROUP_START_TRIES:
                    raise
                log.warning("a master could not bind its Raft port; starting the group again on other ports")
                for _, proc in masters:
                    proc.kill()
                    proc.wait()
                    self.children.remove(proc)
                attempt += 1

    def _read_ready_line(self, master: subprocess.Popen[bytes], name: str, deadline: float) -> str:
        assert master.stdout is not None
        ready, _, _ = select.select([master.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = master.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("READY "):
            log_path = self.home / LOG_DIR / f"{name}.log"
            raise StartupFailed(f"{name} did not start (see {log_path}): {last_log_line(log_path)}")
        return line.removeprefix("READY ")

    def _wait_for_table(self, endpoint: str, deadline: float, may_exit: list[subprocess.Popen[bytes]]) -> StatusReport:
        from kvcluster.client import Connection  # noqa: PLC0415

        curve = state_curve(self.home) if self.curve else None
        announced: dict[int, float] = {}  # node id -> when its exit was last told: the group may still be electing
        with Connection(endpoint, deadline=1.0, curve=curve) as client:
            while True:
                for proc in self.children:
                    if proc.poll() is not None and proc not in may_exit:
                        logs = self.home / LOG_DIR
                        raise StartupFailed(f"a cluster process exited during start-up ({proc.returncode}); see {logs}")
                for node_id, proc in self.server_procs.items():
                    if proc.returncode is not None and time.monotonic() - announced.get(node_id, 0.0) > 0.5:
                        # The masters need not wait for a node that refused its data: its peers hold its slots.
                        announce_exit(endpoint, curve, node_id, proc.pid)
                        announced[node_id] = time.monotonic()
                try:
                    report = client.status()
                    if report.table is not None:
                        return report
                except Exception:  # noqa: BLE001, S110 - not up yet: keep polling until the deadline
                    pass
                if time.monotonic() > deadline:
                    raise StartupFailed(
                        f"the cluster did not become ready within {START_TIMEOUT:g} s; see {self.home / LOG_DIR}"
                    )
                time.sleep(0.05)

    def reap(self) -> None:
        """Collect exit statuses of children that died, so none stays a zombie.

        With ``rejoin``, a node the master fenced is started again, as a new incarnation that keeps its
        data: a partition or a pause must not cost a node (see the module doc).
        """
        for proc in self.children:
            proc.poll()
        if not self.rejoin or self.state is None:
            return
        now = time.monotonic()
        for node_id, proc in list(self.server_procs.items()):
            if proc.returncode == FENCED_EXIT and now >= self.rejoined.get(node_id, -REJOIN_SPACING) + REJOIN_SPACING:
                self.rejoined[node_id] = now
                self._rejoin(self.state, node_id)

    def _rejoin(self, state: ClusterState, node_id: int) -> None:
        name = node_name(node_id)
        log.info("%s was fenced; starting it again as a new incarnation", name)
        args = node_args(node_id, state.master_endpoint, self.timing, self.storage, self.keys, self.hosts)
        proc = self.server_procs[node_id] = self._spawn(name, args)
        state.servers[node_id - 1] = ProcessInfo(name, proc.pid, create_time(proc.pid))
        state.save()

    def stop(self) -> None:
        """SIGTERM every child, SIGKILL what is left after the grace period, reap all, clear the state."""
        if self.exits is not None:
            self.exits.stop()
            self.exits = None
        for proc in self.children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for proc in self.children:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.children.clear()
        if self.hosts is not None:
            remove_hosts(self.home)
        if self.state is not None:
            clear_state(self.home)
            self.state = None


def stop_flag() -> list[bool]:
    """A flag that SIGTERM and SIGINT raise, so a supervisor stops its cluster instead of dying mid-way."""
    stop = [False]

    def handler(_signum: int, _frame: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def supervise(
    home: Path,
    nodes: int,
    rep: int,
    masters: int,
    bind: str,
    timing: Timing,
    storage: Storage,
    curve: bool = False,
    netns: bool = False,
) -> None:
    """Run a detached supervisor: start the cluster, reap its processes until told to stop, stop it."""
    hosts = NetHosts() if netns else None
    supervisor = Supervisor(home, nodes, rep, masters, bind, timing, storage, curve, hosts, rejoin=True)
    stop = stop_flag()
    try:
        supervisor.start()
        while not stop[0]:
            supervisor.reap()
            time.sleep(0.1)
    finally:
        supervisor.stop()


def last_log_line(path: Path) -> str:
    """The last line a process wrote to its log, for an error message that says why it stopped."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "no log"
