"""``kvcluster bench rebalance``: add nodes to a loaded cluster and time until the master has balanced it.

The cluster (5 nodes, rep 3 by default) is filled with ``--keys`` keys and
client processes run a 50/50 load; after ``--duration`` seconds ``--add``
nodes are added the way ``kvcluster add-node --count N`` adds them
(``supervisor.add_nodes``). The master's status is polled until every node
is within one slot of the others at every rank with no move under way, or
until the table has stopped changing for ``SETTLE`` seconds (the master
evens out totals and primaries, not backup ranks, so the strict criterion may
never hold): both moments are reported. The load runs ``--duration``
seconds more, and every filled key is read back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from kvcluster.bench.common import FilledKeys, JsonOut, LoadClients, Plot, check_shape, cluster
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

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import RenderableType
    from rich.progress import Progress

    from kvcluster.core.protocol import StatusReport

SETTLE = 5.0  # seconds without a move or a change of the table after which the rebalancing counts as over


def _spread(values: list[int]) -> int:
    return max(values) - min(values)


@dataclass
class Rebalance(HealingRun):
    """Nodes added under load: how long until the slots were spread over them, and what the clients saw."""

    added: list[str]
    joined_s: float
    """From the add to the master listing every new node alive."""
    totals_within_one_s: float | None
    """From the add to the first moment every node held within one slot of the others in total, no move under way."""
    ranks_within_one_s: float | None
    """From the add to every node within one slot of the others at every rank, no move under way (None: never)."""
    settled_s: float
    """From the add to the last change of the table before it stayed still for ``SETTLE`` s (or to the above)."""
    rank_spread: list[int]
    """Most minus fewest slots per node at each rank (primary first), at the end."""
    total_spread: int
    slots_per_node: dict[str, list[int]]
    """Slots each node holds at each rank at the end."""


@dataclass(frozen=True)
class RebalanceShape:
    nodes: int
    rep: int
    add: int
    keys: int
    duration: float
    clients: int
    timeout: float

    @property
    def command(self) -> str:
        return (
            f"kvcluster bench rebalance --nodes {self.nodes} --rep {self.rep} --add {self.add} --keys {self.keys} "
            f"--duration {self.duration:g} --clients {self.clients}"
        )


class _BalanceWatch:
    """Follows the master's status after the add: rank loads, moves, and when they stop changing."""

    def __init__(self, nodes: int, added_at: float) -> None:
        self.nodes = nodes
        self.changed_at = added_at
        self.signature: object = None
        self.totals_at: float | None = None
        self.ranks_at: float | None = None
        self.load: dict[int, list[int]] = {}

    def observe(self, report: StatusReport, now: float) -> bool:
        from kvcluster.core.placement import rank_load  # noqa: PLC0415

        if report.table is None:
            return False
        load = rank_load(report.table)
        if len(load) < self.nodes:
            return False
        signature = (sorted((n, tuple(r)) for n, r in load.items()), sorted(tuple(m) for m in report.moving))
        if signature != self.signature:
            self.signature, self.changed_at = signature, now
        self.load = load
        if report.moving:
            return False
        if self.totals_at is None and _spread([sum(r) for r in load.values()]) <= 1:
            self.totals_at = now
        if all(_spread(list(rank)) <= 1 for rank in zip(*load.values(), strict=True)):
            self.ranks_at = now
            return True
        return now - self.changed_at >= SETTLE


def run_rebalance(shape: RebalanceShape, progress: Progress) -> Rebalance:
    """Fill, load, add nodes, wait until the master has spread the slots over them, load on, read every key back."""
    from kvcluster.core.placement import node_name  # noqa: PLC0415
    from kvcluster.supervisor import add_nodes, stop_process  # noqa: PLC0415

    start_load = load_average()
    task = progress.add_task(f"rebalance: starting {shape.nodes} nodes", total=None)
    with cluster(shape.nodes, shape.rep) as (supervisor, state):
        master = state.master_endpoint
        try:
            fill_s = fill_with_progress(master, shape.keys, progress)
            progress.update(task, description="rebalance: starting the load clients")
            with Traffic(master, shape.keys, shape.clients, BUCKET) as traffic:
                released = traffic.release()
                progress.update(task, description=f"rebalance: load, then add {shape.add} nodes")
                sleep_for(shape.duration)
                added_at = time.monotonic()
                added = add_nodes(state, shape.add)
                joined_at = time.monotonic()
                progress.update(task, description="rebalance: waiting for the slots to spread")
                watch = _BalanceWatch(shape.nodes + shape.add, added_at)
                poll_master(master, watch.observe, shape.timeout, "a balanced cluster")
                balanced = watch.ranks_at if watch.ranks_at is not None else watch.changed_at
                progress.update(task, description="rebalance: load after the moves")
                sleep_for(shape.duration)
                log, stopped = traffic.stop()
            back = read_back(master, shape.keys, progress)
        finally:
            for info in state.servers[shape.nodes :]:  # started by add_nodes, outside the supervisor
                stop_process(info)
        supervisor.reap()
    phases = [
        phase(log, BUCKET, released, "before", released, added_at),
        phase(log, BUCKET, released, "during", added_at, balanced),
        phase(log, BUCKET, released, "after", balanced, stopped),
    ]
    ranks = [list(r) for r in zip(*watch.load.values(), strict=True)]
    return Rebalance(
        nodes=shape.nodes,
        rep=shape.rep,
        keys=shape.keys,
        clients=shape.clients,
        bucket_s=BUCKET,
        fill_s=round(fill_s, 2),
        event_t=round(added_at - released, 3),
        healed_t=round(balanced - released, 3),
        timeline=timeline(log, BUCKET, released, stopped),
        phases=phases,
        throughput_ratio=ratio(phases[1], phases[0]),
        keys_lost=back.keys_lost,
        keys_unreadable=back.keys_unreadable,
        load_average={"start": start_load, "end": load_average()},
        command=shape.command,
        added=[info.name for info in added],
        joined_s=round(joined_at - added_at, 3),
        totals_within_one_s=None if watch.totals_at is None else round(watch.totals_at - added_at, 3),
        ranks_within_one_s=None if watch.ranks_at is None else round(watch.ranks_at - added_at, 3),
        settled_s=round(balanced - added_at, 3),
        rank_spread=[_spread(r) for r in ranks],
        total_spread=_spread([sum(r) for r in watch.load.values()]),
        slots_per_node={node_name(n): r for n, r in sorted(watch.load.items())},
    )


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def rebalance_table(result: Rebalance) -> RenderableType:
    before, during = result.phase("before"), result.phase("during")
    specific = [
        ("added", f"{', '.join(result.added)} at {result.event_t:.1f} s"),
        ("joined after", f"{result.joined_s:.2f} s"),
        ("totals within one slot after", _seconds(result.totals_within_one_s)),
        ("every rank within one slot after", _seconds(result.ranks_within_one_s)),
        ("moves over (table still) after", f"{result.settled_s:.2f} s"),
        ("spread at each rank / in total at the end", f"{result.rank_spread} / {result.total_spread}"),
        (
            "throughput while moving / before",
            versus(during, before),
        ),
    ]
    title = f"Rebalance: {result.keys:,} keys, {result.nodes} + {len(result.added)} nodes, rep {result.rep}"
    return healing_table(result, title, specific)


def chart_rebalance(result: Rebalance, path: Path) -> None:
    chart_healing(
        result,
        path,
        title=f"add {', '.join(result.added)} to {result.nodes} nodes: {result.keys:,} keys, rep {result.rep}",
        event=f"add {', '.join(result.added)}",
        window=f"moving slots ({result.settled_s:.1f} s)",
    )


def _plot_rebalance(result: Rebalance) -> None:
    plot_healing(result, f"add {', '.join(result.added)}")


def rebalance_command(
    nodes: Annotated[int, typer.Option("--nodes", min=1, help="Storage nodes before the add.")] = 5,
    rep: Annotated[int, typer.Option("--rep", min=1, help="Replicas per key.")] = 3,
    add: Annotated[int, typer.Option("--add", min=1, max=64, help="Nodes to add, as add-node --count does.")] = 2,
    keys: FilledKeys = 100_000,
    duration: Annotated[
        float,
        typer.Option("--duration", min=1.0, help="Seconds of load before the add, and again after the moves."),
    ] = 5.0,
    clients: LoadClients = 2,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, help="Give up when the moves are not over this long after the add.")
    ] = 600.0,
    plot: Plot = False,
    json_out: JsonOut = None,
) -> None:
    """Add nodes under load: time until the slots are spread over them, throughput and p99 meanwhile."""
    check_shape(nodes, [rep])
    shape = RebalanceShape(nodes, rep, add, keys, duration, clients, timeout)
    result = run_benchmark(
        lambda progress: run_rebalance(shape, progress),
        rebalance_table,
        _plot_rebalance,
        to_json,
        plot=plot,
        json_out=json_out,
    )
    check_keys(result)
