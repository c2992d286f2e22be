"""The commands of a cluster on many hosts: ``init`` writes the cluster file, ``master`` and ``node`` run one process.

Registered on the Typer app by ``commands.py``; the work is done in
``hosts.py`` (processes) and ``clusterfile.py`` (the file).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from kvcluster.data_commands import say
from kvcluster.errors import StartupFailed, UsageError
from kvcluster.runtime.wal import FsyncPolicy

DETACH_CHECK = 2.0  # seconds a detached process is watched: a bad address or file stops it well within this

ClusterPath = Annotated[Path, typer.Argument(metavar="FILE", help="The cluster file (kvcluster init writes it).")]
Detach = Annotated[bool, typer.Option("-d", "--detach", help="Run in the background, logging to --log; print the pid.")]
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Where this process keeps its data.")]
LogFile = Annotated[
    Path | None, typer.Option("--log", help="Log file with -d (default: in the data directory's parent).")
]


def init(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Where to write the cluster file (not overwritten).")],
    masters: Annotated[str, typer.Option("--masters", help="HOST:PORT of each master (1, 3 or 5), comma-separated.")],
    rep: Annotated[int, typer.Option("--rep", "-k", help="Replicas of every key.")],
    nodes: Annotated[
        int | None, typer.Option("--nodes", "-n", help="Nodes that form the first table (default: REP).")
    ] = None,
    fsync: Annotated[FsyncPolicy, typer.Option("--fsync", help="When nodes sync their logs.")] = FsyncPolicy.EVERYSEC,
    raft_ports: Annotated[
        str | None,
        typer.Option("--raft-ports", help="Each master's Raft port, comma-separated (default: its PORT + 1000)."),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No CurveZMQ: plain TCP between masters, nodes and clients.")
    ] = False,
) -> None:
    """Write a new cluster file (mode 0600) with fresh keys: copy it to every host and client."""
    from kvcluster import clusterfile  # noqa: PLC0415

    addresses = [a.strip() for a in masters.split(",") if a.strip()]
    ports = None
    if raft_ports is not None:
        try:
            ports = [int(p) for p in raft_ports.split(",")]
        except ValueError:
            raise UsageError(f"--raft-ports {raft_ports!r}: expected PORT,PORT,...") from None
    count = nodes if nodes is not None else rep
    if rep < 1 or count < rep:
        raise UsageError(f"--rep {rep} needs 1 <= rep <= nodes, got --nodes {count}")
    cluster = clusterfile.create(addresses, rep, count, raft_ports=ports, fsync=fsync.value, curve=not insecure)
    clusterfile.write_new(file, cluster)
    curve = "CurveZMQ on" if cluster.curve else "no CurveZMQ"
    say(f"wrote {file}: {len(addresses)} masters, {count} nodes, {rep} replicas, {curve}; it holds secret keys")


def master(
    file: ClusterPath,
    member_id: Annotated[int, typer.Option("--id", help="Which master of the file this is (1-based).")],
    data_dir: DataDir = None,
    detach: Detach = False,
    log_file: LogFile = None,
) -> None:
    """Run master ID of the cluster file in the foreground (Ctrl-C stops it); its journal goes in --data-dir."""
    from kvcluster import clusterfile, hosts  # noqa: PLC0415
    from kvcluster.master_group import master_name  # noqa: PLC0415

    clusterfile.load(file).master(member_id)  # a bad file or id fails here, before any detaching
    if detach:
        _detach(log_file or hosts.DATA_ROOT / f"{master_name(member_id)}.log")
        return
    hosts.run_master(file, member_id, data_dir)


def node(
    file: ClusterPath,
    listen: Annotated[str, typer.Option("--listen", help="HOST[:PORT] to bind (no port or 0: a free one).")],
    advertise: Annotated[
        str | None, typer.Option("--advertise", help="HOST[:PORT] others connect to (default: --listen).")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Rejoin as serverN (a new incarnation); default: the next id.")
    ] = None,
    data_dir: DataDir = None,
    detach: Detach = False,
    log_file: LogFile = None,
) -> None:
    """Run one storage node of the cluster file in the foreground (Ctrl-C stops it)."""
    from kvcluster import clusterfile, hosts  # noqa: PLC0415

    clusterfile.load(file)
    if name is not None:
        hosts.name_to_id(name)
    if detach:
        label = name or f"node-{listen.replace(':', '-')}"
        _detach(log_file or hosts.DATA_ROOT / f"{label}.log")
        return
    hosts.run_node(file, hosts.NodeOptions(listen, advertise, name, data_dir))


def _detach(log_file: Path) -> None:
    """Run this same command again without -d, in a session of its own, logging to ``log_file``."""
    from kvcluster.supervisor import last_log_line  # noqa: PLC0415

    argv = [a for a in sys.argv[1:] if a not in ("-d", "--detach")]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "kvcluster", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    deadline = time.monotonic() + DETACH_CHECK
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartupFailed(f"it exited at once: {last_log_line(log_file).removeprefix('error: ')}")
        time.sleep(0.05)
    say(f"running in the background (pid {proc.pid}), logging to {log_file}; stop it with: kill {proc.pid}")


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(master)
    app.command()(node)
