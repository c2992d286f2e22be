"""Healing under load (``bench recovery`` and ``bench rebalance``): one benchmark, with two events.

The cluster is filled with ``--keys`` keys (``bulk``), client processes run a
50/50 get/put load on them (``workload``: a put writes the key's own value
again, so the final read-back stays exact), and after ``--duration`` seconds
comes the event:

- **recovery**: server1 is killed with SIGKILL. The master's status is polled
  until it has declared the node dead, no slot is short of replicas and no copy
  is under way.
- **rebalance**: ``--add`` nodes are added the way ``kvcluster add-node --count
  N`` adds them (``supervisor.add_nodes``). The status is polled until every
  node is within one slot of the others at every rank with no move under way,
  or until the table has stopped changing for ``SETTLE`` seconds (the master
  evens out totals and primaries, not backup ranks, so the strict criterion may
  never hold): both moments are reported.

The load runs ``--duration`` seconds more and every filled key is read back.
The clients keep each operation's latency in the time bucket its answer
arrived in, so the run is cut into phases (before, during and after the
healing) afterwards. The commands, tables, charts and the report's section
are in ``healing_views``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvcluster.bench.bulk import load_shown, verify_shown
from kvcluster.bench.common import (
    CLIENT_DEADLINE,
    BenchmarkError,
    cluster,
    dead_nodes,
    load_average,
    poll_master,
    slots_whole,
)
from kvcluster.bench.workload import Bucket, Phase, Tally, Workload, merged, phase, tally_worker, timeline
from kvcluster.client_pool import ClientPool
from kvcluster.errors import NodeNotRunning

if TYPE_CHECKING:
    from rich.progress import Progress

    from kvcluster.core.protocol import StatusReport
    from kvcluster.state import ClusterState

BUCKET = 0.5  # seconds per point of the timeline
TRAFFIC_ROUND = 256  # operations in flight per client process: 16 messages of 16
TRAFFIC_BATCH = 16
# The client's own first try timeout: a round waits for its slowest operation, so after a kill the load stalls
# until its operations on the dead node are resent, and a long first try would show the client, not the cluster.
TRAFFIC_TRY_TIMEOUT = 0.3
VICTIM = 1
SETTLE = 5.0  # seconds without a move or a change of the table after which the rebalancing counts as over


class Traffic:
    """The load clients of a run: started (and ready) on entry, released by ``release``, stopped by ``stop``."""

    def __init__(self, master: str, keys: int, clients: int) -> None:
        import multiprocessing  # noqa: PLC0415

        self.stop_event = multiprocessing.get_context("spawn").Event()
        jobs = [
            Workload(
                master,
                index=seed,
                seed=seed,
                keys=keys,
                bulk_puts=True,
                round_size=TRAFFIC_ROUND,
                batch=TRAFFIC_BATCH,
                window=TRAFFIC_ROUND // TRAFFIC_BATCH,
                stop=self.stop_event,
                try_timeout=TRAFFIC_TRY_TIMEOUT,
                bucket=BUCKET,
            )
            for seed in range(clients)
        ]
        self.pool = ClientPool(tally_worker, jobs)

    def __enter__(self) -> Traffic:
        self.pool.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.pool.__exit__(*exc)

    def stop(self) -> tuple[Tally, float]:
        """Stop the clients after their current round; their merged tally, and the time the stop was asked."""
        stopped = time.monotonic()
        self.stop_event.set()
        return merged(self.pool.collect(timeout=CLIENT_DEADLINE * 2)), stopped


@dataclass
class HealingRun:
    """What both healing benchmarks report; times are seconds from the release of the load clients."""

    nodes: int
    rep: int
    keys: int
    clients: int
    bucket_s: float
    fill_s: float
    event_t: float
    """The kill, or the add."""
    healed_t: float | None
    """The end of the healing window (every slot back at ``rep`` replicas, or balanced); None if it never came."""
    timeline: list[Bucket]
    phases: list[Phase]
    """Before the event, during the healing, after it (and, for a recovery, while copying)."""
    throughput_ratio: float | None
    """Throughput during the healing over throughput before the event."""
    keys_lost: int
    keys_unreadable: int
    load_average: dict[str, list[float]]
    """``start`` and ``end`` of the run: 1, 5 and 15 minute load averages of the machine."""
    command: str

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)


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
class HealingShape:
    """What a healing run is asked for: ``add`` nodes added (a rebalance), or with ``add`` 0 a kill (a recovery)."""

    nodes: int
    rep: int
    keys: int
    duration: float
    clients: int
    timeout: float
    add: int = 0

    @property
    def name(self) -> str:
        return "rebalance" if self.add else "recovery"

    @property
    def command(self) -> str:
        add = f" --add {self.add}" if self.add else ""
        return (
            f"kvcluster bench {self.name} --nodes {self.nodes} --rep {self.rep}{add} --keys {self.keys} "
            f"--duration {self.duration:g} --clients {self.clients}"
        )


def _spread(values: list[int]) -> int:
    return max(values) - min(values)


class _RecoveryWatch:
    """Follows the master's status after the kill: when the victim is declared dead, and when every slot is whole."""

    def __init__(self) -> None:
        self.dead_at: float | None = None
        self.last: StatusReport | None = None

    def observe(self, report: StatusReport, now: float) -> bool:
        if report.table is None:
            return False
        self.last = report
        if self.dead_at is None and VICTIM in report.table.dead:
            self.dead_at = now
        return self.dead_at is not None and slots_whole(report)


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
        from kvcluster.core.placement import node_name, rank_load  # noqa: PLC0415

        if report.table is None:
            return False
        if report.table.dead:
            # No node was killed: one starved of CPU was declared dead, and the cluster will never balance.
            dead = ", ".join(node_name(n) for n in report.table.dead)
            raise BenchmarkError(f"{dead} declared dead during the rebalance, though no node was killed")
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


@dataclass
class _Timing:
    """The moments of a run on the monotonic clock, and what the load clients saw."""

    released: float
    event: float
    healed: float
    stopped: float
    log: Tally


def _kill(state: ClusterState, shape: HealingShape) -> tuple[_RecoveryWatch, float, float]:
    """SIGKILL the victim, wait until every slot has ``rep`` replicas again; the watch, the kill done, the healing."""
    from kvcluster.core.placement import node_name  # noqa: PLC0415
    from kvcluster.process_control import kill_node  # noqa: PLC0415

    try:
        kill_node(state, node_name(VICTIM))
    except NodeNotRunning:
        dead = ", ".join(dead_nodes(state.master_endpoint)) or "none"
        raise BenchmarkError(
            f"{node_name(VICTIM)} had exited before the kill (nodes the master declared dead: {dead}); "
            "a node too starved of CPU to send heartbeats is declared dead and stops"
        ) from None
    killed = time.monotonic()
    watch = _RecoveryWatch()
    restored = poll_master(
        state.master_endpoint, watch.observe, shape.timeout, f"every slot back at {shape.rep} replicas"
    )
    return watch, killed, restored


def _add(state: ClusterState, shape: HealingShape, added_at: float) -> tuple[_BalanceWatch, float, float]:
    """Add the nodes and wait until the slots are spread over them; the watch, the join and the balance times."""
    from kvcluster.process_control import add_nodes  # noqa: PLC0415

    add_nodes(state, shape.add)
    joined_at = time.monotonic()
    watch = _BalanceWatch(shape.nodes + shape.add, added_at)
    poll_master(state.master_endpoint, watch.observe, shape.timeout, "a balanced cluster")
    return watch, joined_at, watch.ranks_at if watch.ranks_at is not None else watch.changed_at


def run_healing_event(shape: HealingShape, progress: Progress) -> Recovery | Rebalance:
    """Fill, load, kill server1 or add nodes, wait until the cluster has healed, load on, read every key back."""
    from kvcluster.process_control import stop_process  # noqa: PLC0415

    start_load = load_average()
    event = f"add {shape.add} nodes" if shape.add else "kill -9 server1"
    task = progress.add_task(f"{shape.name}: starting {shape.nodes} nodes", total=None)
    with cluster(shape.nodes, shape.rep) as (supervisor, state):
        master = state.master_endpoint
        try:
            fill_s = load_shown(master, shape.keys, progress)
            progress.update(task, description=f"{shape.name}: starting the load clients")
            with Traffic(master, shape.keys, shape.clients) as traffic:
                released = traffic.pool.release()
                progress.update(task, description=f"{shape.name}: load, then {event}")
                _sleep(shape.duration)
                at = time.monotonic()
                progress.update(task, description=f"{shape.name}: {event}, waiting for the healing")
                watch, event_done, healed = _add(state, shape, at) if shape.add else _kill(state, shape)
                progress.update(task, description=f"{shape.name}: load after the healing")
                _sleep(shape.duration)
                log, stopped = traffic.stop()
            check = verify_shown(master, shape.keys, progress)
        finally:
            for info in state.servers[shape.nodes :]:  # started by add_nodes, outside the supervisor
                stop_process(info)
        supervisor.reap()
    timing = _Timing(released, at, healed, stopped, log)
    phases = [phase(log, released, "before", released, at), phase(log, released, "during", at, healed)]
    if isinstance(watch, _RecoveryWatch):
        assert watch.dead_at is not None
        phases.append(phase(log, released, "copying", watch.dead_at, healed))
    phases.append(phase(log, released, "after", healed, stopped))
    common = HealingRun(
        nodes=shape.nodes,
        rep=shape.rep,
        keys=shape.keys,
        clients=shape.clients,
        bucket_s=BUCKET,
        fill_s=round(fill_s, 2),
        event_t=round(at - released, 3),
        healed_t=round(healed - released, 3),
        timeline=timeline(log, released, stopped),
        phases=phases,
        throughput_ratio=round(phases[1].ops_per_s / phases[0].ops_per_s, 3) if phases[0].ops_per_s else None,
        keys_lost=check.lost,
        keys_unreadable=check.unreadable,
        load_average={"start": start_load, "end": load_average()},
        command=shape.command,
    )
    if isinstance(watch, _BalanceWatch):
        return _rebalance(common, watch, timing, event_done, [info.name for info in state.servers[shape.nodes :]])
    return _recovery(common, watch, timing)


def _recovery(common: HealingRun, watch: _RecoveryWatch, timing: _Timing) -> Recovery:
    from kvcluster.core.placement import node_name, rank_load  # noqa: PLC0415

    assert watch.dead_at is not None
    assert watch.last is not None
    assert watch.last.table is not None
    return Recovery(
        **vars(common),
        killed=node_name(VICTIM),
        declared_dead_s=round(watch.dead_at - timing.event, 3),
        restore_s=round(timing.healed - timing.event, 3),
        slots_copied=watch.last.healed_slots,
        keys_copied=watch.last.healed_keys,
        slots_per_node={node_name(n): sum(ranks) for n, ranks in sorted(rank_load(watch.last.table).items())},
    )


def _rebalance(common: HealingRun, watch: _BalanceWatch, timing: _Timing, joined: float, added: list[str]) -> Rebalance:
    from kvcluster.core.placement import node_name  # noqa: PLC0415

    ranks = [list(r) for r in zip(*watch.load.values(), strict=True)]

    def since_add(moment: float | None) -> float | None:
        return None if moment is None else round(moment - timing.event, 3)

    return Rebalance(
        **vars(common),
        added=added,
        joined_s=round(joined - timing.event, 3),
        totals_within_one_s=since_add(watch.totals_at),
        ranks_within_one_s=since_add(watch.ranks_at),
        settled_s=round(timing.healed - timing.event, 3),
        rank_spread=[_spread(r) for r in ranks],
        total_spread=_spread([sum(r) for r in watch.load.values()]),
        slots_per_node={node_name(n): r for n, r in sorted(watch.load.items())},
    )


def _sleep(seconds: float) -> None:
    """Let the load run undisturbed for ``seconds`` (the phase before the event, or after the healing)."""
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        time.sleep(min(0.1, left))


def check_keys(result: HealingRun) -> None:
    """Fail the command (after its output) when a filled key did not read back."""
    if result.keys_lost or result.keys_unreadable:
        raise BenchmarkError(
            f"{result.keys_lost} keys lost and {result.keys_unreadable} unreadable of {result.keys} after the healing"
        )
