"""``kvcluster bench failover`` and ``failover-sweep``: SIGKILL a node, measure unavailability and lost writes.

One client process per key group (keys the victim is the primary of, keys it
backs up, other keys) runs rounds of one operation per key (``workload``'s
owned keys, every operation kept); the victim is
killed after a while; every key is read back at the end, and the master is
asked which nodes it declared dead. With ``--keys N`` the cluster is first
filled with N keys (``bulk``) and the kill comes right after that load ends;
the key-group clients are started before the load, so they are running the
moment it ends. With ``--idle`` only the victim's primary and backup groups
run, as light probes (a pause between rounds), so the kill lands on an
otherwise idle cluster. ``--runs R`` repeats the whole run on fresh clusters,
killing a different node each time. ``failover-sweep`` runs this over several
data sizes, idle and under load (``run_sweep``). The figures are computed in
``failover_analysis`` and shown by ``failover_views``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kvcluster.bench.bulk import BULK_BATCH, BulkCheck, load_shown, release_timeout, verify_shown
from kvcluster.bench.common import (
    CLIENT_DEADLINE,
    BenchmarkError,
    JsonOut,
    Memory,
    Nodes,
    Plot,
    check_shape,
    cluster,
    dead_nodes,
    int_list,
    rss_bytes,
)
from kvcluster.bench.failover_analysis import (
    KILL_AFTER_LOAD,
    PROBE_PAUSE,
    Failover,
    FailoverSeries,
    lost_writes,
    median_max,
    summarise,
    timeline,
    unavailability,
    write_unavailability,
)
from kvcluster.bench.failover_views import MODES, chart_sweep, plot_failover, plot_sweep, runs_table, sweep_table
from kvcluster.bench.output import require_png, run_benchmark, to_json
from kvcluster.bench.workload import OpRecord, Workload, history_worker
from kvcluster.client_pool import ClientPool
from kvcluster.errors import NodeNotRunning, UsageError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

FAILOVER_KILL_AFTER = 2.0  # seconds of steady load before the kill
SWEEP_KEYS = "10000,100000,1000000,2000000"
FAILOVER_KEYS_PER_GROUP = 40
FAILOVER_DEADLINE = 10.0
FAILOVER_TRY_TIMEOUT = 0.3  # the client's default: a key's unavailability includes the first try at the dead node
PROBE_KEYS_PER_GROUP = 10  # an idle run probes this many keys the victim is the primary of, and as many it backs up


@dataclass(frozen=True)
class FailoverShape:
    """What a failover run is asked for."""

    nodes: int
    rep: int
    duration: float
    keys: int = 0
    """Keys bulk-loaded (100-byte values) before the measured phase."""
    idle: bool = False
    kill_after: float | None = None
    """Seconds from the start of the measured phase to the kill; None for the default."""
    pause: bool = False
    """SIGSTOP instead of SIGKILL: a hung process, which only missed heartbeats reveal; it stays stopped."""

    @property
    def kill_delay(self) -> float:
        if self.kill_after is not None:
            return self.kill_after
        return KILL_AFTER_LOAD if self.keys else min(FAILOVER_KILL_AFTER, self.duration / 3)


def _failover_keys(nodes: int, rep: int, victim: int, *, idle: bool = False) -> dict[str, list[str]]:
    """Keys grouped by the victim's role in their slot: its primary, one of its backups, or neither.

    An idle run probes a few keys of the first two groups only.
    """
    from kvcluster.core.placement import replicas_for, slot_of  # noqa: PLC0415

    per_group = PROBE_KEYS_PER_GROUP if idle else FAILOVER_KEYS_PER_GROUP

    groups: dict[str, list[str]] = {"primary": [], "backup": [], "unrelated": []}
    index = 0
    # Bounded: a group the shape cannot fill (no unrelated slot when rep == nodes) stays empty.
    while index < per_group * nodes * 20 and min(len(g) for g in groups.values()) < per_group:
        key = f"fo{index}"
        index += 1
        replicas = replicas_for(slot_of(key), nodes, rep)
        group = "primary" if replicas[0] == victim else "backup" if victim in replicas else "unrelated"
        if len(groups[group]) < per_group:
            groups[group].append(key)
    return {name: keys for name, keys in groups.items() if keys and not (idle and name == "unrelated")}


def run_failovers(shape: FailoverShape, runs: int, progress: Progress) -> list[Failover]:
    """``runs`` failover runs, each on a fresh cluster, killing server1, server2... in turn."""
    return [run_failover(shape, progress, victim=run % shape.nodes + 1) for run in range(runs)]


def run_failover(shape: FailoverShape, progress: Progress, victim: int = 1) -> Failover:
    """Load, then steady load (or probes) from one client per key group; SIGKILL the victim; check every write."""
    from kvcluster.core.placement import node_name  # noqa: PLC0415
    from kvcluster.process_control import kill_node, pause_node  # noqa: PLC0415

    name = node_name(victim)
    groups = _failover_keys(shape.nodes, shape.rep, victim, idle=shape.idle)
    kill_after, duration = shape.kill_delay, shape.duration
    what = "probes" if shape.idle else "load"
    task = progress.add_task(f"failover {name}: starting {shape.nodes} nodes", total=duration)
    with cluster(shape.nodes, shape.rep) as (supervisor, state):
        master = state.master_endpoint
        all_keys = [k for keys in groups.values() for k in keys]
        initial = {key: f"init-{key}" for key in all_keys}
        put_all(master, initial)
        jobs = owned_clients(master, list(groups.values()), duration, PROBE_PAUSE if shape.idle else 0.0)
        # Started before the load, so they are running the moment it ends.
        with ClientPool(history_worker, jobs, release_timeout=release_timeout(shape.keys)) as pool:
            empty = rss_bytes([s.pid for s in state.servers])
            try:
                load_s = load_shown(master, shape.keys, progress) if shape.keys else 0.0
            except BenchmarkError as exc:
                # Healthy nodes lost during the load: a finding, not a reason to drop the other runs.
                return _failed_load(name, shape, f"the load failed: {exc}", dead_nodes(master))
            filled = rss_bytes([s.pid for s in state.servers])
            memory = Memory.after_fill(shape.keys, shape.rep, empty, filled) if shape.keys else None
            released = pool.release()
            progress.update(task, description=f"failover {name}: {what}, killing it at {kill_after:g} s")
            _sleep_with_progress(progress, task, released, released + kill_after)
            kill_t = time.monotonic()
            error = None
            try:
                (pause_node if shape.pause else kill_node)(state, name)
            except NodeNotRunning:
                error = f"{name} had already exited when it was to be killed"
            _sleep_with_progress(progress, task, released, released + duration)
            progress.update(task, description=f"failover {name}: finishing the last round")
            histories = pool.collect()
            if shape.pause and error is None:
                kill_node(state, name)  # a stopped process would sit out the grace period of the teardown
        supervisor.reap()
        progress.update(task, description=f"failover {name}: reading every key back", completed=duration)
        final = get_all(master, all_keys)
        check = verify_shown(master, shape.keys, progress) if shape.keys else BulkCheck(0, 0, 0)
        dead = dead_nodes(master)
    by_group = {group: history.records for group, history in zip(groups, histories, strict=True)}
    result = _failover_result(name, victim, shape, released, kill_t, by_group, initial, final)
    result.load_s = round(load_s, 2)
    result.memory = memory
    result.false_dead = [n for n in dead if n != name]
    result.loaded_keys_lost, result.loaded_keys_unreadable = check.lost, check.unreadable
    result.lost_acked_writes += check.lost
    result.unverified_keys += check.unreadable
    result.acked_writes += shape.keys
    result.error = error
    return result


def owned_clients(master: str, groups: Sequence[list[str]], duration: float, pause: float = 0.0) -> list[Workload]:
    """One client per key group, running rounds on its own keys (all in flight at once) for ``duration`` s."""
    return [
        Workload(
            master,
            index=i,
            seed=i,
            owned=tuple(keys),
            window=len(keys),
            duration=duration,
            pause=pause,
            deadline=FAILOVER_DEADLINE,
            try_timeout=FAILOVER_TRY_TIMEOUT,
        )
        for i, keys in enumerate(groups)
    ]


def _failed_load(name: str, shape: FailoverShape, error: str, dead: list[str]) -> Failover:
    """A run that ended before the kill: no figure but the nodes the master declared dead, all of them healthy."""
    return Failover(
        name,
        shape.nodes,
        shape.rep,
        shape.duration,
        keys_loaded=shape.keys,
        idle=shape.idle,
        false_dead=dead,
        error=error,
    )


def _sleep_with_progress(progress: Progress, task: TaskID, start: float, until: float) -> None:
    while (now := time.monotonic()) < until:
        progress.update(task, completed=now - start)
        time.sleep(min(0.1, until - now))
    progress.update(task, completed=until - start)


def put_all(master: str, values: dict[str, str]) -> None:
    """Give each owned key its initial value before the clients start."""
    from kvcluster.client import Completion, Connection  # noqa: PLC0415
    from kvcluster.core.wire import OpKind  # noqa: PLC0415

    ops: list[tuple[OpKind, str, str | None]] = [(OpKind.PUT, k, v) for k, v in values.items()]
    with Connection(master, deadline=CLIENT_DEADLINE) as client:
        results = client.execute(ops, batch=BULK_BATCH)
    if any(r.completion != Completion.OK for r in results):
        raise BenchmarkError("the failover key set could not be written before the kill")


def get_all(master: str, keys: list[str]) -> dict[str, str | None]:
    """The value of every key after the load (None if gone), or no entry where the final read timed out."""
    from kvcluster.client import Completion, Connection  # noqa: PLC0415
    from kvcluster.core.wire import OpKind  # noqa: PLC0415

    ops: list[tuple[OpKind, str, str | None]] = [(OpKind.GET, k, None) for k in keys]
    with Connection(master, deadline=FAILOVER_DEADLINE) as client:
        results = client.execute(ops, window=len(ops))
    final: dict[str, str | None] = {}
    for key, result in zip(keys, results, strict=True):
        if result.completion == Completion.OK:
            final[key] = result.value
        elif result.completion in (Completion.NOT_FOUND, Completion.NO_REPLICA):
            final[key] = None  # not there, or no live replica holds it: either way its writes are gone
    return final


def _failover_result(
    killed: str,
    victim: int,
    shape: FailoverShape,
    released: float,
    kill_t: float,
    by_group: dict[str, list[OpRecord]],
    initial: dict[str, str],
    final: dict[str, str | None],
) -> Failover:
    every = [r for records in by_group.values() for r in records]
    lost, unverified, acked = lost_writes(every, initial, final)
    windows, unrecovered = unavailability(by_group.get("primary", []), victim, kill_t)
    stalls, unwritten = write_unavailability(by_group.get("backup", []), kill_t)
    return Failover(
        killed=killed,
        nodes=shape.nodes,
        rep=shape.rep,
        duration_s=shape.duration,
        kill_t=round(kill_t - released, 3),
        keys={group: len({r[0] for r in records}) for group, records in by_group.items()},
        unavailable_ms=median_max([*windows, *[None] * unrecovered]),
        unrecovered_keys=unrecovered,
        backup_write_unavailable_ms=median_max([*stalls, *[None] * unwritten]),
        acked_writes=acked,
        lost_acked_writes=lost,
        unverified_keys=unverified,
        failed_ops=sum(r[4] not in ("ok", "not_found") for r in every),
        timeline=timeline(by_group, released, shape.duration),
        keys_loaded=shape.keys,
        idle=shape.idle,
    )


def failover_json(runs: Sequence[Failover]) -> Any:
    """One run as it always was; several as their figures over all kills, with every run's under ``runs``."""
    return to_json(runs[0]) if len(runs) == 1 else to_json(summarise(runs))


def check_kill_after(kill_after: float | None, duration: float) -> None:
    if kill_after is not None and kill_after >= duration:
        raise UsageError(f"--kill-after ({kill_after:g} s) must be shorter than --duration ({duration:g} s)")


def failover_command(
    nodes: Nodes = 7,
    rep: Annotated[
        int, typer.Option("--rep", min=2, help="Replicas per key (at least 2, or the killed node's keys are gone).")
    ] = 3,
    duration: Annotated[
        float,
        typer.Option(
            "--duration",
            min=1.5,
            help="Seconds of the measured phase; the kill comes after a third of it (at most 2 s), "
            f"or {KILL_AFTER_LOAD:g} s after the end of the load with --keys.",
        ),
    ] = 6.0,
    keys: Annotated[
        int,
        typer.Option(
            "--keys",
            min=0,
            help="Keys with 100-byte values to load first (batched, from several client processes); "
            "the kill comes right after the load.",
        ),
    ] = 0,
    idle: Annotated[
        bool, typer.Option("--idle", help="No client load at the kill: only light probes of the victim's keys.")
    ] = False,
    runs: Annotated[
        int,
        typer.Option(
            "--runs",
            min=1,
            help="Kills, each on a fresh cluster (load included), of server1, server2... in turn; "
            "figures over all of them.",
        ),
    ] = 1,
    kill_after: Annotated[
        float | None,
        typer.Option("--kill-after", min=0.0, help="Seconds from the start of the measured phase to the kill."),
    ] = None,
    pause: Annotated[
        bool,
        typer.Option(
            "--pause", help="SIGSTOP the node instead: a hang, found by missed heartbeats rather than by its exit."
        ),
    ] = False,
    plot: Plot = False,
    json_out: JsonOut = None,
) -> None:
    """SIGKILL a node: how long its keys are unavailable, whether any acknowledged write or healthy node is lost."""
    if nodes < 2:
        raise UsageError("failover needs at least 2 nodes")
    check_shape(nodes, [rep])
    check_kill_after(kill_after, duration)
    shape = FailoverShape(nodes, rep, duration, keys, idle, kill_after, pause)
    results = run_benchmark(
        lambda progress: run_failovers(shape, runs, progress),
        runs_table,
        plot_failover,
        failover_json,
        plot=plot,
        json_out=json_out,
    )
    check_outcome(results)


def check_outcome(results: Sequence[Failover]) -> None:
    """Fail the command (after its output) when an acknowledged write was lost or a run could not be completed."""
    problems = [f"{r.killed}: {r.error}" for r in results if r.error]
    lost = sum(r.lost_acked_writes for r in results)
    if lost:
        problems.insert(0, f"{lost} acknowledged writes were lost")
    if problems:
        raise BenchmarkError("; ".join(problems))


def run_sweep(
    sizes: Sequence[int], *, nodes: int, rep: int, runs: int, duration: float, progress: Progress
) -> list[FailoverSeries]:
    """For every size, ``runs`` kills idle then ``runs`` under load, each right after loading that many keys."""
    return [
        summarise(run_failovers(FailoverShape(nodes, rep, duration, keys, idle), runs, progress))
        for keys in sizes
        for idle in MODES
    ]


def sweep_json(points: Sequence[FailoverSeries]) -> dict[str, Any]:
    return {"points": to_json(list(points))}


def sweep_command(
    keys: Annotated[
        str, typer.Option("--keys", help="Keys to load before the kill, comma-separated: one point each.")
    ] = SWEEP_KEYS,
    nodes: Nodes = 7,
    rep: Annotated[int, typer.Option("--rep", min=2, help="Replicas per key.")] = 3,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Kills per size and mode, each on a fresh cluster.")] = 3,
    duration: Annotated[
        float, typer.Option("--duration", min=1.5, help="Seconds of each measured phase (the kill is at its start).")
    ] = 6.0,
    plot: Plot = False,
    json_out: JsonOut = None,
    png: Annotated[Path | None, typer.Option("--png", help="Also draw the chart as PNG to this file.")] = None,
) -> None:
    """Unavailability after kill -9 against keys loaded right before it, idle and under load."""
    if nodes < 2:
        raise UsageError("failover needs at least 2 nodes")
    check_shape(nodes, [rep])
    sizes = int_list(keys, "--keys")
    if png is not None:
        require_png()
    points = run_benchmark(
        lambda progress: run_sweep(sizes, nodes=nodes, rep=rep, runs=runs, duration=duration, progress=progress),
        sweep_table,
        plot_sweep,
        sweep_json,
        plot=plot,
        json_out=json_out,
    )
    if png is not None:
        chart_sweep(points, png)
    check_outcome([run for point in points for run in point.runs])
