"""The ``kvcluster`` commands: options, help and output, as a Typer app.

Every command resolves its state directory (``--home``, ``KVCLUSTER_HOME``,
or the per-user default) and does its work through ``supervisor`` (processes)
or ``client`` (requests). Failures propagate as ``KvclusterError`` subclasses;
``cli.main`` turns them into one line on stderr and an exit code. Heavy
libraries (rich, psutil, plotext) are imported inside the commands that need
them.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Annotated

import typer
from typer._click.exceptions import ClickException  # Typer re-exports only some of its click's exceptions

from kvcluster import hosts_commands, up_down
from kvcluster.cli_options import Cluster, Home, Json, Master, Timeout, Verbose
from kvcluster.data_commands import (
    delete_and_print,
    get_and_print,
    home_dir,
    put_and_print,
    run_client_form,
    say,
    scan_and_print,
    target_for,
)
from kvcluster.errors import (
    NodeNotRunning,
    OperationTimedOut,
    UsageError,
)
from kvcluster.help_style import click_style
from kvcluster.net_commands import net_app
from kvcluster.up_down import MAX_NODES

if TYPE_CHECKING:
    from kvcluster.client import Connection
    from kvcluster.state import ClusterState

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="A replicated, sharded key-value store that runs as a whole cluster of processes on one machine.",
)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: throughput, balance, failover, chaos, and the report.")
app.add_typer(bench_app, name="bench")


@app.command()
def put(
    key: str,
    value: str,
    home: Home = None,
    master: Master = None,
    verbose: Verbose = False,
    timeout: Timeout = 5.0,
    cluster: Cluster = None,
) -> None:
    """Store VALUE under KEY; prints 'OK, serverN'."""
    put_and_print(target_for(home, master, verbose, timeout, cluster), key, value)


@app.command()
def get(
    key: str,
    home: Home = None,
    master: Master = None,
    verbose: Verbose = False,
    timeout: Timeout = 5.0,
    cluster: Cluster = None,
) -> None:
    """Read KEY; prints 'KEY, VALUE, serverN'."""
    get_and_print(target_for(home, master, verbose, timeout, cluster), key)


@app.command()
def delete(
    key: str,
    home: Home = None,
    master: Master = None,
    verbose: Verbose = False,
    timeout: Timeout = 5.0,
    cluster: Cluster = None,
) -> None:
    """Delete KEY; prints 'OK, serverN', or fails like get when KEY has no value."""
    delete_and_print(target_for(home, master, verbose, timeout, cluster), key)


@app.command()
def scan(
    prefix: Annotated[str, typer.Argument(help="Only keys that start with PREFIX.")] = "",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Print at most this many keys.")] = None,
    home: Home = None,
    master: Master = None,
    verbose: Verbose = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Give up on a page after this many seconds.")
    ] = 5.0,
    cluster: Cluster = None,
) -> None:
    """Print every key (that starts with PREFIX), in order, one per line."""
    scan_and_print(target_for(home, master, verbose, timeout, cluster), prefix, limit)


@app.command("client")
def client_command(
    put_key: Annotated[str | None, typer.Option("--put", help="Key to store.")] = None,
    val: Annotated[str | None, typer.Option("--val", help="Value to store with --put.")] = None,
    get_key: Annotated[str | None, typer.Option("--get", help="Key to read.")] = None,
    home: Home = None,
    master: Master = None,
    verbose: Verbose = False,
    timeout: Timeout = 5.0,
    cluster: Cluster = None,
) -> None:
    """The GTStore-style client form: --put K --val V, or --get K; prints what put and get print."""
    run_client_form(put_key, val, get_key, target_for(home, master, verbose, timeout, cluster))


@app.command()
def load(
    file: Annotated[str, typer.Argument(metavar="FILE", help="Lines of 'KEY VALUE'; - reads standard input.")],
    home: Home = None,
    master: Master = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Puts per message.")] = 256,
    window: Annotated[int, typer.Option("--window", min=1, help="Messages in flight.")] = 32,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Give up on a chunk of puts after this many seconds.")
    ] = 5.0,
    clients: Annotated[
        int, typer.Option("--clients", min=1, help="Client processes storing in parallel (a key's puts stay in one).")
    ] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON for scripts.")] = False,
    cluster: Cluster = None,
) -> None:
    """Store every KEY VALUE line of FILE in batches; bad lines are reported with their numbers, the rest stored."""
    from kvcluster import load_file as bulk  # noqa: PLC0415

    target = target_for(home, master, False, timeout, cluster)
    bulk.run(target, file, batch=batch, window=window, clients=clients, as_json=as_json)


up_down.register(app)  # here, so that --help lists up and down after the data commands, as before


@app.command()
def kill(
    node: Annotated[str, typer.Argument(help="What to kill: serverN, masterN, or master (the leader).")],
    home: Home = None,
) -> None:
    """Kill one storage node or master with SIGKILL, as kill -9 would."""
    from kvcluster.process_control import kill_master, kill_node  # noqa: PLC0415
    from kvcluster.state import ClusterState  # noqa: PLC0415

    state = ClusterState.load(home_dir(home))
    if node.startswith("master"):
        leader = _leader_id(state) if node == "master" else 0
        info = kill_master(state, node, leader)
    else:
        info = kill_node(state, node)
    say(f"killed {info.name} (pid {info.pid}) with SIGKILL")


def _leader_id(state: ClusterState) -> int:
    from kvcluster.status_view import masters_document  # noqa: PLC0415

    masters, _ = masters_document(state, timeout=2.0)
    return next((i for i, m in enumerate(masters, start=1) if m["role"] == "leader"), 0)


@app.command()
def restart(
    node: Annotated[str, typer.Argument(help="A dead node (serverN) or a stopped master (masterN) to start again.")],
    home: Home = None,
) -> None:
    """Start a dead node again (from its data: it gets back by difference the slots it still holds), or a stopped
    master."""
    from kvcluster.process_control import start_master, start_node, wait_joined  # noqa: PLC0415
    from kvcluster.state import ClusterState  # noqa: PLC0415

    state = ClusterState.load(home_dir(home))
    if node.startswith("master"):
        info = start_master(state, node)
        say(f"restarted {info.name} (pid {info.pid}); it rejoins the master group from its journal")
        return
    node_id = int(state.server(node).name.removeprefix("server"))
    info = start_node(state, node_id)
    wait_joined(state, [node_id])
    say(
        f"restarted {info.name} (pid {info.pid}); it gets back the slots it still holds, with only the writes it missed"
    )


@app.command("add-node")
def add_node(
    count: Annotated[
        int, typer.Option("--count", min=1, help=f"How many nodes to add (at most {MAX_NODES} in all).")
    ] = 1,
    home: Home = None,
) -> None:
    """Add storage nodes to a running cluster; the master rebalances slots onto them online."""
    from kvcluster.process_control import add_nodes  # noqa: PLC0415
    from kvcluster.state import ClusterState  # noqa: PLC0415

    state = ClusterState.load(home_dir(home))
    if len(state.servers) + count > MAX_NODES:
        raise UsageError(
            f"adding {count} nodes to {len(state.servers)} would make {len(state.servers) + count}; "
            f"a cluster has at most {MAX_NODES} nodes"
        )
    infos = add_nodes(state, count)
    names = ", ".join(f"{i.name} (pid {i.pid})" for i in infos)
    say(f"added {names}; the master is moving slots onto them (see kvcluster status)")


@app.command("remove-node")
def remove_node(
    node: Annotated[str, typer.Argument(help="Node to remove, e.g. server3.")],
    timeout: Annotated[float, typer.Option("--timeout", min=1.0, help="Seconds to wait for the drain.")] = 600.0,
    home: Home = None,
) -> None:
    """Move every slot off a node (never below rep replicas), then stop it."""
    from kvcluster.client import Connection  # noqa: PLC0415
    from kvcluster.process_control import stop_process  # noqa: PLC0415
    from kvcluster.state import ClusterState  # noqa: PLC0415

    state = ClusterState.load(home_dir(home))
    info = state.server(node)
    if not info.alive():
        raise NodeNotRunning(f"{node} (pid {info.pid}) is not running")
    node_id = int(node.removeprefix("server"))
    live = sum(server.alive() for server in state.servers)
    if live - 1 < state.rep:
        raise UsageError(f"removing {node} would leave {live - 1} live nodes for {state.rep} replicas")
    from kvcluster.local_file import state_curve  # noqa: PLC0415

    with Connection(state.master_endpoint, deadline=5.0, curve=state_curve(state)) as client:
        deadline = time.monotonic() + timeout
        while (left := _slots_held(client, node_id)) > 0:
            if time.monotonic() > deadline:
                raise OperationTimedOut(f"{node} still holds {left} slots after {timeout:g} s; it keeps running")
            time.sleep(0.2)
    stop_process(info)
    say(f"removed {node} (pid {info.pid}): its slots are on the other nodes")


def _slots_held(client: Connection, node_id: int) -> int:
    """Ask for the drain again (a master that took over meanwhile may not have heard it) and count what is left."""
    from kvcluster.core.placement import RoutingTable  # noqa: PLC0415

    report = client.drain(node_id)
    if report.table is None:
        return 1
    moving = sum(node_id in (source, target) for _, source, target in report.moving)
    return sum(RoutingTable(report.table).slots_of(node_id)) + moving


@app.command()
def status(home: Home = None, as_json: Json = False, cluster: Cluster = None) -> None:
    """Show the master and every node: PID, endpoint, liveness, slots and keys."""
    if cluster is not None and home is None:
        from kvcluster.remote_status import print_remote_status  # noqa: PLC0415

        print_remote_status(cluster, as_json=as_json)
        return
    from kvcluster.state import ClusterState  # noqa: PLC0415
    from kvcluster.status_view import print_status  # noqa: PLC0415

    print_status(ClusterState.load(home_dir(home)), as_json=as_json)


@app.command()
def top(
    home: Home = None,
    master: Master = None,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts and exit.")] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.05, help="Seconds a frame waits for the nodes' and masters' answers.")
    ] = 0.4,
) -> None:
    """A live view of every node, twice a second: ops/s, latency, keys, slots, replication backlog, fsync, CPU, RSS."""
    from kvcluster import top as top_view  # noqa: PLC0415

    top_view.run(top_view.Source(home_dir(home), master), once=once, as_json=as_json, timeout=timeout)


@app.command("sim")
def sim_command(
    seed: Annotated[
        int | None, typer.Option("--seed", min=0, help="First seed (default: a random one, printed).")
    ] = None,
    schedules: Annotated[int, typer.Option("--schedules", min=1, help="Seeds SEED, SEED+1, ... to run.")] = 100,
    nodes: Annotated[int | None, typer.Option("--nodes", "-n", help="Storage nodes (default: drawn per seed).")] = None,
    rep: Annotated[
        int | None, typer.Option("--rep", "-k", help="Replicas of each key (default: drawn per seed).")
    ] = None,
    duration: Annotated[float, typer.Option("--duration", help="Simulated seconds of workload and faults each.")] = 3.0,
    clients: Annotated[int, typer.Option("--clients", help="Simulated clients.")] = 3,
    keys: Annotated[int, typer.Option("--keys", help="Keys the clients share (fewer keys, more contention).")] = 6,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Processes to spread the schedules over.")] = 1,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Print every event of every schedule.")] = False,
) -> None:
    """Simulate whole clusters under faults, deterministically per seed; check linearizability and lost writes."""
    import secrets  # noqa: PLC0415

    from kvcluster.errors import SimulationFailed  # noqa: PLC0415
    from kvcluster.sim import SimConfig, run_schedules  # noqa: PLC0415
    from kvcluster.sim.runner import explain, replay_command  # noqa: PLC0415

    config = SimConfig(nodes=nodes, rep=rep, clients=clients, duration=duration, keys=keys)
    problem = config.problem()
    if problem is not None:
        raise UsageError(problem)
    if seed is None:
        seed = secrets.randbelow(1 << 31)
        sys.stdout.write(f"seed {seed}\n")

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    summary = run_schedules(seed, schedules, config, out, verbose=verbose, jobs=jobs)
    if summary.failed and not verbose:
        first = min(summary.failed)
        out(f"\nthe first failure in full (seed {first}):")
        out(explain(first, config))
    out(summary.line())
    if summary.failed:
        first = min(summary.failed)
        raise SimulationFailed(
            f"{len(summary.failed)} of {summary.schedules} schedules failed; replay one with: "
            f"{replay_command(first, config)}"
        )


def run(argv: list[str]) -> int:
    """Run a command; Typer's usage errors come back as ``UsageError``, so they too are reported in one line."""
    cli = typer.main.get_command(app)
    click_style(cli)
    try:
        code = cli.main(args=argv, prog_name="kvcluster", standalone_mode=False)
    except ClickException as exc:
        if not exc.format_message():
            return exc.exit_code  # no arguments at all: the help was printed, there is nothing to add
        known = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback} | {"bench"}
        command = "kvcluster " + (f"{argv[0]} " if argv and argv[0] in known else "")
        raise UsageError(f"{exc.format_message()} (see: {command}--help)") from None
    except typer.Abort:
        raise KeyboardInterrupt from None
    return code if isinstance(code, int) else 0


hosts_commands.register(app)
app.add_typer(net_app, name="net")


def register_benchmarks() -> None:
    """Add the ``bench`` commands; only ``kvcluster bench ...`` pays for importing them."""
    from kvcluster import bench  # noqa: PLC0415

    bench.register(bench_app)
