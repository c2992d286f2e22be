"""What the CLI's ``down``, ``kill``, ``restart`` and ``add-node`` do to the processes recorded in ``cluster.json``.

The supervisor (``supervisor.py``) starts a cluster and watches it; these
functions act on a running one from another process, by the PIDs (with their
creation times, so a reused PID is never signalled) that the supervisor
recorded: stop everything, kill one node or master, start one again in its
host, add nodes and wait until the master has them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kvcluster.core.placement import node_name
from kvcluster.datadir import Shape, record_shape
from kvcluster.errors import NodeNotRunning, NodeStillRunning, StartupFailed, UnknownNode
from kvcluster.local_file import cluster_args, state_curve
from kvcluster.master_group import group_args, master_name
from kvcluster.netns import NetHosts
from kvcluster.netns import remove as remove_hosts
from kvcluster.state import ClusterState, ProcessInfo
from kvcluster.supervisor import LOG_DIR, STOP_GRACE, clear_state, create_time, node_args, timing_args


def stop_recorded(state: ClusterState, grace: float = STOP_GRACE) -> int:
    """Stop a cluster from outside: ask its supervisor, then signal what remains. Returns how many were stopped."""
    alive = [p for p in state.processes() if p.alive()]
    if state.supervisor in alive:
        os.kill(state.supervisor.pid, signal.SIGTERM)
        _wait_gone([state.supervisor], grace * 2)
    leftovers = [p for p in alive if p.alive()]
    for info in leftovers:
        os.kill(info.pid, signal.SIGTERM)
    _wait_gone(leftovers, grace)
    for info in leftovers:
        if info.alive():
            os.kill(info.pid, signal.SIGKILL)
    _wait_gone(leftovers, grace)
    remove_hosts(Path(state.home))  # the namespaces of a cluster on separate hosts, if its supervisor left any
    clear_state(Path(state.home))
    return len(alive)


def _wait_gone(infos: list[ProcessInfo], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(p.alive() for p in infos) and time.monotonic() < deadline:
        time.sleep(0.05)


def stop_process(info: ProcessInfo, grace: float = STOP_GRACE) -> None:
    """SIGTERM one process of the cluster and wait for it to go (SIGKILL after the grace period)."""
    if info.alive():
        os.kill(info.pid, signal.SIGTERM)
        _wait_gone([info], grace)
    if info.alive():
        os.kill(info.pid, signal.SIGKILL)
        _wait_gone([info], grace)


def kill_node(state: ClusterState, name: str) -> ProcessInfo:
    """SIGKILL one storage node, as ``kill -9`` would."""
    return _sigkill(state.server(name))


def pause_node(state: ClusterState, name: str) -> ProcessInfo:
    """SIGSTOP one storage node: alive but silent, as a hung process is; SIGKILL still ends it."""
    return _signal(state.server(name), signal.SIGSTOP)


def _sigkill(info: ProcessInfo) -> ProcessInfo:
    return _signal(info, signal.SIGKILL)


def _signal(info: ProcessInfo, signum: signal.Signals) -> ProcessInfo:
    if not info.alive():
        raise NodeNotRunning(f"{info.name} (pid {info.pid}) is not running")
    os.kill(info.pid, signum)
    return info


def start_node(state: ClusterState, node_id: int) -> ProcessInfo:
    """Start a storage node process under ``node_id`` in a running cluster: a restart, or a node added.

    The process is started in a session of its own, so it outlives this
    command like the rest of the cluster; ``down`` stops it by its recorded PID.
    """
    name = node_name(node_id)
    if node_id <= len(state.servers):
        old = state.servers[node_id - 1]
        if old.alive():
            raise NodeStillRunning(f"{name} (pid {old.pid}) is running; kill it first to restart it")
    elif node_id != len(state.servers) + 1:
        raise UnknownNode(f"cannot add {name}: the next node is {node_name(len(state.servers) + 1)}")
    storage = state.node_storage()
    keys = cluster_args(Path(state.home), state.curve)
    hosts = NetHosts.load(Path(state.home))
    if hosts is not None and name not in hosts.numbers:
        hosts.add(name)  # a node added to a cluster on separate hosts gets a host of its own
        hosts.save(Path(state.home))
    args = node_args(node_id, state.master_endpoint, state.timing, storage, keys, hosts)
    info = _start_detached_child(Path(state.home), name, args, hosts)
    if node_id <= len(state.servers):
        state.servers[node_id - 1] = info
    else:
        state.servers.append(info)
        state.nodes = len(state.servers)
        record_shape(Path(storage.root), Shape(state.nodes, state.rep))
    state.save()
    return info


def _start_detached_child(home: Path, name: str, args: list[str], hosts: NetHosts | None = None) -> ProcessInfo:
    """Start ``kvcluster ARGS`` (on its own host, with ``hosts``) in a session of its own, so it outlives this
    command like the rest of the cluster."""
    logs = home / LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "kvcluster", *args]
    with (logs / f"{name}.log").open("ab") as log_file:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            hosts.wrap(name, argv) if hosts is not None else argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    return ProcessInfo(name, proc.pid, create_time(proc.pid))


def kill_master(state: ClusterState, name: str, leader: int) -> ProcessInfo:
    """SIGKILL one master: ``master`` names the leader (id ``leader``, 0 when none is known), ``masterN`` a member."""
    if name == "master":
        if not leader:
            raise NodeNotRunning("no master is leading right now (see kvcluster status)")
        name = master_name(leader)
    return _sigkill(state.master(name))


def start_master(state: ClusterState, name: str) -> ProcessInfo:
    """Start a stopped member of the master group again, under its id, Raft address and journal."""
    old = state.master(name)
    if old.alive():
        raise NodeStillRunning(f"{name} (pid {old.pid}) is running; kill it first to restart it")
    member_id = state.masters.index(old) + 1
    host, _, port = old.endpoint.removeprefix("tcp://").rpartition(":")
    timing = state.timing
    shape = ["--nodes", str(state.nodes), "--rep", str(state.rep), "--bind", f"{host}:{port}"]
    group = group_args(Path(state.home), state.raft_addresses, member_id)
    keys = cluster_args(Path(state.home), state.curve)
    args = ["_master", *keys, *shape, *timing_args(timing), *group]
    info = _start_detached_child(Path(state.home), name, args, NetHosts.load(Path(state.home)))
    info.endpoint = old.endpoint
    state.masters[member_id - 1] = info
    state.save()
    return info


JOIN_TIMEOUT = 20.0  # seconds: the master first waits out the old incarnation's lease (dead_after)


def add_nodes(state: ClusterState, count: int) -> list[ProcessInfo]:
    """Start ``count`` new storage nodes after the last one and wait until the master has taken every one in."""
    first = len(state.servers) + 1
    infos = [start_node(state, node_id) for node_id in range(first, first + count)]
    wait_joined(state, list(range(first, first + count)))
    return infos


def wait_joined(state: ClusterState, node_ids: list[int]) -> None:
    """Wait until the master lists the new process of every one of ``node_ids`` alive; record their endpoints."""
    from kvcluster.client import Connection  # noqa: PLC0415

    pids = {n: state.servers[n - 1].pid for n in node_ids}
    deadline = time.monotonic() + JOIN_TIMEOUT
    with Connection(state.master_endpoint, deadline=2.0, curve=state_curve(state)) as client:
        while True:
            report = client.status()
            joined = {n.node_id: n for n in report.nodes if n.alive and pids.get(n.node_id) == n.pid}
            if len(joined) == len(node_ids):
                break
            if time.monotonic() > deadline:
                names = ", ".join(f"server{n}" for n in node_ids)
                raise StartupFailed(f"{names} did not join within {JOIN_TIMEOUT:g} s; see {state.home}/logs")
            time.sleep(0.05)
    for node_id, view in joined.items():
        state.servers[node_id - 1].endpoint = view.endpoint
    state.save()
