"""``kvcluster up`` and ``down``: starting a local cluster (on loopback or on hosts of its own) and stopping it.

``up`` checks its options, the stored shape of the data it starts from and,
with ``--netns``, that namespaces can be made, then runs a ``Supervisor`` in
the foreground (a live status view until Ctrl-C) or a detached one (``-d``)
and returns once the first table exists. ``down`` stops every process of the
cluster and keeps its data unless ``--purge``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kvcluster.cli_options import Home
from kvcluster.core.protocol import Timing
from kvcluster.data_commands import home_dir, say
from kvcluster.errors import ClusterNotRunning, StartupFailed, UsageError
from kvcluster.master_group import DEFAULT_MASTERS, check_master_count
from kvcluster.runtime.wal import FsyncPolicy

if TYPE_CHECKING:
    from kvcluster.datadir import Storage
    from kvcluster.state import ClusterState
    from kvcluster.supervisor import Supervisor

_commands: list[tuple[tuple[Any, ...], dict[str, Any], Callable[..., None]]] = []


def _command(*args: Any, **kwargs: Any) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Remember a command for ``register``: this module has no app of its own."""

    def remember(function: Callable[..., None]) -> Callable[..., None]:
        _commands.append((args, kwargs, function))
        return function

    return remember


def register(app: typer.Typer) -> None:
    for args, kwargs, function in _commands:
        app.command(*args, **kwargs)(function)


def _timing(heartbeat_ms: int, lease_ms: int, dead_after_ms: int) -> Timing:
    try:
        return Timing(heartbeat_ms / 1000, lease_ms / 1000, dead_after_ms / 1000)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


MAX_NODES = 64  # storage nodes per cluster: every one is a process on this machine


def _check_shape(nodes: int, rep: int) -> None:
    if not 1 <= nodes <= MAX_NODES:
        raise UsageError(f"--nodes must be in 1..{MAX_NODES}, got {nodes}")
    if rep < 1:
        raise UsageError(f"--rep must be at least 1, got {rep}")
    if rep > nodes:
        raise UsageError(f"--rep {rep} needs at least {rep} nodes, got --nodes {nodes}")


@_command()
def up(
    nodes: Annotated[int, typer.Option("--nodes", "-n", help="Number of storage nodes.")] = 7,
    rep: Annotated[int, typer.Option("--rep", "-k", help="Replicas of every key (1..nodes).")] = 3,
    masters: Annotated[
        int, typer.Option("--masters", help="Masters in the group, replicated with Raft: 1, 3 or 5.")
    ] = DEFAULT_MASTERS,
    detach: Annotated[
        bool, typer.Option("-d", "--detach", help="Start in the background and return once ready.")
    ] = False,
    host: Annotated[str, typer.Option("--host", help="Address the master binds to.")] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            "--port",
            min=0,
            max=65535,
            help="Port of master1; masterN binds PORT+N-1, so 3 masters bind PORT, PORT+1 and PORT+2 (0: free ones).",
        ),
    ] = 0,
    heartbeat_ms: Annotated[int, typer.Option("--heartbeat-ms", help="Heartbeat interval.")] = 100,
    lease_ms: Annotated[
        int, typer.Option("--lease-ms", help="How long a primary may serve without the master's word.")
    ] = 500,
    dead_after_ms: Annotated[
        int, typer.Option("--dead-after-ms", help="Silence after which a node is declared dead.")
    ] = 700,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Where the nodes keep their data (default: HOME/data); kept across down/up."),
    ] = None,
    fsync: Annotated[
        FsyncPolicy, typer.Option("--fsync", help="When the nodes sync their logs to disk, as Redis's appendfsync.")
    ] = FsyncPolicy.EVERYSEC,
    snapshot_after: Annotated[int, typer.Option("--snapshot-after", min=1, hidden=True)] = 64 << 20,
    curve: Annotated[
        bool,
        typer.Option(
            "--curve/--insecure", help="CurveZMQ on every socket (keys in HOME/cluster.toml); off on loopback."
        ),
    ] = False,
    netns: Annotated[
        bool, typer.Option("--netns", help="Each process on a host of its own (a network namespace; root only).")
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            help="Serve the nodes' counters (those of kvcluster top) in Prometheus text format on 127.0.0.1:PORT.",
        ),
    ] = None,
    home: Home = None,
) -> None:
    """Start a group of MASTERS masters and NODES storage nodes with REP replicas each.

    On a data directory that holds a cluster's data, the same cluster starts again with every key it held.
    """
    from kvcluster.datadir import Shape, Storage, check_shape_matches, default_root  # noqa: PLC0415
    from kvcluster.status_view import print_status  # noqa: PLC0415
    from kvcluster.supervisor import Supervisor, check_can_start, stop_flag  # noqa: PLC0415

    _check_shape(nodes, rep)
    check_master_count(masters)
    if port + masters - 1 > 65535:
        raise UsageError(
            f"--port {port} leaves no room for {masters} masters: the last would bind {port + masters - 1}"
        )
    timing = _timing(heartbeat_ms, lease_ms, dead_after_ms)
    state_home = home_dir(home)
    check_can_start(state_home)
    root = (data_dir or default_root(state_home)).absolute()
    check_shape_matches(root, Shape(nodes, rep))
    if netns:
        from kvcluster.netns import check_can_build  # noqa: PLC0415

        check_can_build()
    storage = Storage(str(root), fsync.value, snapshot_after)
    bind = f"{host}:{port}"
    if metrics_port is not None:
        _check_port_free(metrics_port)
    if detach:
        flags = [*(["--curve"] if curve else []), *(["--netns"] if netns else [])]
        state = _start_detached(state_home, nodes, rep, masters, bind, timing, storage, flags)
        if metrics_port is not None:
            _start_metrics(state_home, metrics_port)
        print_status(state, as_json=False)
        say(f"cluster running in the background; stop it with: kvcluster down{_home_flag(home)}")
        return
    from kvcluster.netns import NetHosts  # noqa: PLC0415

    hosts = NetHosts() if netns else None
    supervisor = Supervisor(state_home, nodes, rep, masters, bind, timing, storage, curve, hosts, rejoin=True)
    stop = stop_flag()
    exporter = None
    try:
        state = supervisor.start()
        if metrics_port is not None:
            exporter = _start_metrics(state_home, metrics_port)
        _watch(supervisor, state, stop)
    finally:
        if exporter is not None:
            exporter.terminate()
        supervisor.stop()
    say("cluster stopped")


def _check_port_free(port: int) -> None:
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise UsageError(f"--metrics-port {port}: cannot bind 127.0.0.1:{port} ({exc.strerror})") from None


def _start_metrics(home: Path, port: int) -> subprocess.Popen[bytes]:
    """Start the Prometheus exporter (``_metrics``); it stops by itself once the cluster's supervisor is gone."""
    import socket  # noqa: PLC0415

    from kvcluster.supervisor import LOG_DIR  # noqa: PLC0415

    args = [sys.executable, "-m", "kvcluster", "_metrics", "--home", str(home), "--port", str(port)]
    with (home / LOG_DIR / "metrics.log").open("ab") as log_file:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                say(f"metrics in Prometheus text format at http://127.0.0.1:{port}/metrics")
                return proc
        time.sleep(0.05)
    say(f"warning: the metrics exporter did not start; see {home / LOG_DIR / 'metrics.log'}")
    return proc


@_command("_metrics", hidden=True)
def metrics_command(
    home: Annotated[Path, typer.Option("--home")],
    port: Annotated[int, typer.Option("--port")],
) -> None:
    """Serve the nodes' counters in Prometheus text format until the cluster stops (started by up)."""
    from kvcluster.metrics import serve  # noqa: PLC0415

    serve(home, port)


def _home_flag(home: Path | None) -> str:
    return f" --home {home}" if home is not None else ""


def _watch(supervisor: Supervisor, state: ClusterState, stop: list[bool]) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.live import Live  # noqa: PLC0415

    from kvcluster.status_view import LIVE_EVENTS, status_document, status_view  # noqa: PLC0415

    console = Console()
    console.print(
        f"[bold]kvcluster[/] up: {state.nodes} nodes, {state.rep} replicas, "
        f"{len(state.masters)} masters at {state.master_endpoint}"
    )
    console.print("Ctrl-C stops the cluster. In another terminal: kvcluster put KEY VALUE, get KEY, kill serverN")
    with Live(status_view(status_document(state), LIVE_EVENTS), console=console, auto_refresh=False) as live:
        next_refresh = 0.0
        while not stop[0]:
            supervisor.reap()
            if time.monotonic() >= next_refresh:
                live.update(status_view(status_document(state, timeout=0.5), LIVE_EVENTS), refresh=True)
                next_refresh = time.monotonic() + 1.0
            time.sleep(0.1)


def _start_detached(
    home: Path, nodes: int, rep: int, masters: int, bind: str, timing: Timing, storage: Storage, flags: list[str]
) -> ClusterState:
    import json  # noqa: PLC0415
    from dataclasses import asdict  # noqa: PLC0415

    from kvcluster.state import ClusterState  # noqa: PLC0415
    from kvcluster.supervisor import LOG_DIR, START_TIMEOUT, last_log_line, timing_args  # noqa: PLC0415

    logs = home / LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    shape = ["--home", str(home), "--nodes", str(nodes), "--rep", str(rep), "--masters", str(masters), "--bind", bind]
    args = [sys.executable, "-m", "kvcluster", "_supervise", *shape, *timing_args(timing)]
    args += ["--storage", json.dumps(asdict(storage)), *flags]
    with (logs / "supervisor.log").open("ab") as log_file:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True
        )
    deadline = time.monotonic() + START_TIMEOUT + 5
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartupFailed(
                f"the cluster did not start: {last_log_line(logs / 'supervisor.log').removeprefix('error: ')}"
            )
        try:
            state = ClusterState.load(home)
        except ClusterNotRunning:
            state = None
        if state is not None and state.supervisor.pid == proc.pid:
            return state
        time.sleep(0.05)
    proc.terminate()  # the supervisor stops whatever it already started
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    raise StartupFailed(f"the cluster did not become ready in time; see {logs}")


@_command()
def down(
    purge: Annotated[bool, typer.Option("--purge", help="Delete the nodes' data too.")] = False,
    home: Home = None,
) -> None:
    """Stop every process of the cluster; its data stays for the next up, unless --purge."""
    from kvcluster.datadir import default_root  # noqa: PLC0415
    from kvcluster.datadir import purge as purge_data  # noqa: PLC0415
    from kvcluster.process_control import stop_recorded  # noqa: PLC0415
    from kvcluster.state import ClusterState  # noqa: PLC0415

    state_home = home_dir(home)
    try:
        state = ClusterState.load(state_home)
    except ClusterNotRunning:
        if not purge:
            raise
        root = default_root(state_home)  # a cluster already down: its data is what is left to delete
    else:
        stopped = stop_recorded(state)
        say(f"stopped {stopped} processes; cluster in {state.home} is down")
        root = Path(state.node_storage().root) if state.storage else default_root(state_home)
    if purge:
        say(f"deleted its data in {root}" if purge_data(root) else f"no data in {root}")
    elif root.exists():
        say(f"its data stays in {root}: kvcluster up starts it again, down --purge deletes it")
