"""``kvcluster bench recovery``: SIGKILL a node of a loaded cluster and time until every slot has rep replicas again.

The cluster is filled with ``--keys`` keys, client processes run a 50/50 load
for ``--duration`` seconds, then server1 is killed with SIGKILL. The master's
status is polled until it has declared the node dead, no slot is short of
replicas and no copy is under way; the load runs ``--duration`` seconds more,
and every filled key is read back. The load and the figures are shared with
``rebalance`` (``healing_load``), and so are the tables and charts
(``healing_views``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from kvcluster.bench.common import (
    BenchmarkError,
    FilledKeys,
    JsonOut,
    LoadClients,
    Nodes,
    Plot,
    check_shape,
    cluster,
    dead_nodes,
)
from kvcluster.bench.healing_load import (
    BUCKET,
    HealingRun,
    Traffic,
    fill_with_progress,
    load_average,
    phase,
    poll_master,
    ratio,
    read_back,
    sleep_for,
    timeline,
)
from kvcluster.bench.healing_views import chart_healing, check_keys, healing_table, plot_healing, versus
from kvcluster.bench.output import run_benchmark, to_json
from kvcluster.errors import NodeNotRunning, UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import RenderableType
    from rich.progress import Progress

    from kvcluster.core.protocol import StatusReport

VICTIM = 1


@dataclass
class Recovery(HealingRun):
    """A node killed under load: how long until every slot had ``rep`` replicas again, and what the clients saw."""

    killed: str
    declared_dead_s: float
    """From the kill to the master's table naming the node dead."""
    restore_s: float
    """From the kill to every slot at ``rep`` live replicas with no copy under way."""
    slots_copied: int
    keys_copied: int
    slots_per_node: dict[str, int]
    """Slots each live node holds at the end, at every rank."""


@dataclass(frozen=True)
class RecoveryShape:
    nodes: int
    rep: int
    keys: int
    duration: float
    clients: int
    timeout: float

    @property
    def command(self) -> str:
        return (
            f"kvcluster bench recovery --nodes {self.nodes} --rep {self.rep} --keys {self.keys} "
            f"--duration {self.duration:g} --clients {self.clients}"
        )


class _RecoveryWatch:
    """Follows the master's status after the kill: when the victim is declared dead, and when every slot is whole."""

    def __init__(self, victim: int) -> None:
        self.victim = victim
        self.dead_at: float | None = None
        self.last: StatusReport | None = None

    def observe(self, report: StatusReport, now: float) -> bool:
        from kvcluster.core.placement import under_replicated  # noqa: PLC0415

        if report.table is None:
            return False
        self.last = report
        if self.dead_at is None and self.victim in report.table.dead:
            self.dead_at = now
        return self.dead_at is not None and not under_replicated(report.table) and not report.moving


def run_recovery(shape: RecoveryShape, progress: Progress) -> Recovery:
    """Fill, load, kill server1, wait until the slots are whole again, load on, read every key back."""
    from kvcluster.core.placement import node_name, rank_load  # noqa: PLC0415
    from kvcluster.supervisor import kill_node  # noqa: PLC0415

    start_load = load_average()
    name = node_name(VICTIM)
    task = progress.add_task(f"recovery: starting {shape.nodes} nodes", total=None)
    with cluster(shape.nodes, shape.rep) as (supervisor, state):
        master = state.master_endpoint
        fill_s = fill_with_progress(master, shape.keys, progress)
        progress.update(task, description="recovery: starting the load clients")
        with Traffic(master, shape.keys, shape.clients, BUCKET) as traffic:
            released = traffic.release()
            progress.update(task, description=f"recovery: load, then kill -9 {name}")
            sleep_for(shape.duration)
            killed = time.monotonic()
            try:
                kill_node(state, name)
            except NodeNotRunning:
                dead = ", ".join(dead_nodes(master)) or "none"
                raise BenchmarkError(
                    f"{name} had exited before the kill (nodes the master declared dead: {dead}); "
                    "a node too starved of CPU to send heartbeats is declared dead and stops"
                ) from None
            progress.update(task, description=f"recovery: waiting for {shape.rep} replicas of every slot")
            watch = _RecoveryWatch(VICTIM)
            restored = poll_master(master, watch.observe, shape.timeout, f"every slot back at {shape.rep} replicas")
            progress.update(task, description="recovery: load after the healing")
            sleep_for(shape.duration)
            log, stopped = traffic.stop()
        supervisor.reap()
        back = read_back(master, shape.keys, progress)
    assert watch.dead_at is not None
    assert watch.last is not None
    assert watch.last.table is not None
    phases = [
        phase(log, BUCKET, released, "before", released, killed),
        phase(log, BUCKET, released, "during", killed, restored),
        phase(log, BUCKET, released, "copying", watch.dead_at, restored),
        phase(log, BUCKET, released, "after", restored, stopped),
    ]
    return Recovery(
        nodes=shape.nodes,
        rep=shape.rep,
        keys=shape.keys,
        clients=shape.clients,
        bucket_s=BUCKET,
        fill_s=round(fill_s, 2),
        event_t=round(killed - released, 3),
        healed_t=round(restored - released, 3),
        timeline=timeline(log, BUCKET, released, stopped),
        phases=phases,
        throughput_ratio=ratio(phases[1], phases[0]),
        keys_lost=back.keys_lost,
        keys_unreadable=back.keys_unreadable,
        load_average={"start": start_load, "end": load_average()},
        command=shape.command,
        killed=name,
        declared_dead_s=round(watch.dead_at - killed, 3),
        restore_s=round(restored - killed, 3),
        slots_copied=watch.last.healed_slots,
        keys_copied=watch.last.healed_keys,
        slots_per_node={node_name(n): sum(ranks) for n, ranks in sorted(rank_load(watch.last.table).items())},
    )


def recovery_table(result: Recovery) -> RenderableType:
    copying = result.phase("copying")
    before = result.phase("before")
    specific = [
        ("killed (SIGKILL)", f"{result.killed} at {result.event_t:.1f} s"),
        ("declared dead after", f"{result.declared_dead_s:.2f} s"),
        (f"time to restore {result.rep} replicas of every slot", f"{result.restore_s:.2f} s"),
        ("slots / keys copied", f"{result.slots_copied:,} / {result.keys_copied:,}"),
        (
            "throughput while copying / before",
            versus(copying, before),
        ),
        ("slots per live node at the end", " ".join(str(v) for v in result.slots_per_node.values())),
    ]
    title = f"Recovery: {result.keys:,} keys, {result.nodes} nodes, rep {result.rep}"
    return healing_table(result, title, specific)


def chart_recovery(result: Recovery, path: Path) -> None:
    chart_healing(
        result,
        path,
        title=f"kill -9 {result.killed}: {result.keys:,} keys, {result.nodes} nodes, rep {result.rep}",
        event=f"kill {result.killed}",
        window=f"restoring {result.rep} replicas ({result.restore_s:.1f} s)",
    )


def _plot_recovery(result: Recovery) -> None:
    plot_healing(result, f"kill {result.killed}")


def recovery_command(
    nodes: Nodes = 7,
    rep: Annotated[int, typer.Option("--rep", min=2, help="Replicas per key (at least 2).")] = 3,
    keys: FilledKeys = 100_000,
    duration: Annotated[
        float,
        typer.Option("--duration", min=1.0, help="Seconds of load before the kill, and again after the healing."),
    ] = 5.0,
    clients: LoadClients = 2,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, help="Give up when the slots are not whole this long after the kill.")
    ] = 600.0,
    plot: Plot = False,
    json_out: JsonOut = None,
) -> None:
    """SIGKILL a node under load: time until every slot has rep replicas again, throughput and p99 meanwhile."""
    check_shape(nodes, [rep])
    if nodes - 1 < rep:
        raise UsageError(f"after a kill {nodes - 1} nodes cannot hold {rep} replicas; use more --nodes or less --rep")
    shape = RecoveryShape(nodes, rep, keys, duration, clients, timeout)
    result = run_benchmark(
        lambda progress: run_recovery(shape, progress),
        recovery_table,
        _plot_recovery,
        to_json,
        plot=plot,
        json_out=json_out,
    )
    check_keys(result)
