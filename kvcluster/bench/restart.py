"""``kvcluster bench restart``: how long a cluster, and one node, take to come back from their data, and what it costs.

The cluster is bulk-loaded with ``--keys`` keys (``bulk.bulk_load``), then:

- **whole cluster**: every process is stopped the way ``kvcluster down`` stops
  them (the supervisor's SIGTERM; the data directory stays) and the same
  cluster is started again from the same storage root. Timed from the start:
  the master's table published, the first get of a loaded key answered
  ("serving"), and every slot at ``rep`` live replicas with no copy under way.
  The master's healing counter gives the keys copied, and every key is read
  back (``bulk.bulk_verify``).
- **one node**: server1 is killed with SIGKILL and started again after
  ``--absence`` seconds, as ``kvcluster restart server1`` does. It rejoins
  with no slots (catch-up by difference is not implemented), so rebalancing
  copies its share to it again: timed from the restart, its new process
  listed alive, its first slot as primary ("serving"), and every slot at
  ``rep`` replicas with no copy under way and the node back to its share of
  slots. The keys copied since the restart are compared with the keys it
  held before the kill, and every key is read back again.

Also measured: the data root's disk usage (``du``: allocated blocks) with the
cluster stopped, and the storage nodes' resident memory after the load, each
per key replica (keys x rep), and what the load added to that memory (the
nodes' memory before the load is the Python processes' own).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvcluster.bench.bulk import bulk_value, bulk_verify, load_shown
from kvcluster.bench.common import (
    BenchmarkError,
    cluster,
    key_name,
    load_average,
    poll_master,
    rss_bytes,
    slots_whole,
)

if TYPE_CHECKING:
    from rich.progress import Progress

    from kvcluster.core.protocol import StatusReport
    from kvcluster.state import ClusterState
    from kvcluster.supervisor import Supervisor

VICTIM = 1
POLL = 0.05  # seconds between gets while waiting for the first answer


@dataclass
class WholeRestart:
    """Every process stopped and the same cluster started again from its data; seconds from the start."""

    stop_s: float
    """How long stopping every process took (SIGTERM, each node syncing its log)."""
    table_s: float
    """Until the master published its table (the supervisor's start returned)."""
    serving_s: float
    """Until a get of a loaded key returned its value."""
    replicas_s: float
    """Until every slot had ``rep`` live replicas and no copy was under way."""
    slots_copied: int
    keys_copied: int
    recovered_event: bool
    """Whether the master recorded that the cluster started again from its nodes' data."""
    keys_lost: int
    keys_unreadable: int


@dataclass
class NodeRestart:
    """One node killed with SIGKILL and started again after an absence; seconds from the restart."""

    node: str
    absence_s: float
    declared_dead_s: float
    """From the kill to the master's table naming the node dead."""
    healed_before_restart: bool
    """Whether every slot was back at ``rep`` replicas on the other nodes before the restart."""
    keys_before: int
    """Keys the node held before the kill, as the master's status reported them."""
    joined_s: float
    """Until the master listed the new process alive."""
    serving_s: float
    """Until the node was the primary of a slot again."""
    replicas_s: float
    """Until every slot had ``rep`` replicas, no copy was under way and the node held its share of slots."""
    slots_copied: int
    keys_copied: int
    """Keys the master's healing counter counted as copied from the restart to the end (over its resets)."""
    counter_resets: int
    """Times that counter started again during the wait: a new round of repairs, some slot short of replicas."""
    declared_dead: list[str]
    """Nodes the master's table named dead at some point after the restart (none was killed)."""
    moves_cancelled: int
    """Copies the master dropped after the restart (a source or target died, or too slow)."""
    keys_at_join: int
    """Keys the node reported when the master first listed its new process: it rejoins with none."""
    keys_after: int
    """Keys the node held at the end: every one of them was copied to it after its restart."""
    copied_fraction: float | None
    """``keys_copied`` over ``keys_before``: 1 means its whole share was copied to it again."""
    keys_lost: int
    keys_unreadable: int


@dataclass
class RestartResult:
    nodes: int
    rep: int
    keys: int
    fsync: str
    empty_start_s: float
    """How long the first start took, with no data: what a start costs before any log is read."""
    load_s: float
    disk_bytes: int
    """``du`` of the data root with the cluster stopped after the load."""
    disk_bytes_per_key_replica: float
    rss_bytes: int
    """Resident memory of every storage node after the load."""
    rss_bytes_per_key_replica: float
    rss_bytes_empty: int
    """Resident memory of every storage node before the load: what the processes cost with no data."""
    rss_added_per_key_replica: float
    """What the load added to the nodes' resident memory, per key replica."""
    rss_bytes_after_restart: int
    """The same once the whole cluster had started again from its data."""
    whole: WholeRestart
    node: NodeRestart
    load_average: dict[str, list[float]]
    command: str


@dataclass(frozen=True)
class RestartShape:
    nodes: int
    rep: int
    keys: int
    absence: float
    fsync: str
    timeout: float

    @property
    def command(self) -> str:
        return (
            f"kvcluster bench restart --keys {self.keys} --nodes {self.nodes} --rep {self.rep} "
            f"--absence {self.absence:g} --fsync {self.fsync}"
        )


def du_bytes(root: Path) -> int:
    """What ``du`` reports for ``root``: the blocks allocated to every file under it, in bytes."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                total += (Path(directory) / name).stat().st_blocks * 512
            except FileNotFoundError:
                continue
    return total


def _first_get(master: str, keys: int, timeout: float) -> float:
    """Ask for a loaded key until it is answered with its value; the time it was."""
    from kvcluster.client import Connection  # noqa: PLC0415
    from kvcluster.errors import KvclusterError  # noqa: PLC0415

    index = keys // 2
    deadline = time.monotonic() + timeout
    with Connection(master, deadline=2.0, try_timeout=0.3) as client:
        while True:
            try:
                value, _ = client.get(key_name(index))
            except KvclusterError:
                value = None
            now = time.monotonic()
            if value == bulk_value(index):
                return now
            if now > deadline:
                raise BenchmarkError(f"no get of {key_name(index)} was answered within {timeout:g} s of the start")
            time.sleep(POLL)


def _status(master: str) -> StatusReport:
    from kvcluster.client import Connection  # noqa: PLC0415

    with Connection(master, deadline=5.0) as client:
        return client.status()


def _node_keys(report: StatusReport, node_id: int) -> int:
    return next((n.keys for n in report.nodes if n.node_id == node_id), 0)


def _restart_whole(
    supervisor: Supervisor, shape: RestartShape, progress: Progress, task: Any
) -> tuple[WholeRestart, ClusterState]:
    """Stop every process, start the same cluster from its data, time it, read every key back."""
    from kvcluster.core.wire import EventKind  # noqa: PLC0415

    progress.update(task, description="whole cluster: starting again from its data")
    started = time.monotonic()
    state = supervisor.start()
    table_at = time.monotonic()
    master = state.master_endpoint
    serving_at = _first_get(master, shape.keys, shape.timeout)
    progress.update(task, description=f"whole cluster: waiting for {shape.rep} replicas of every slot")
    last: list[StatusReport] = []

    def observe(report: StatusReport, _now: float) -> bool:
        last[:] = [report]
        return slots_whole(report)

    whole_at = poll_master(master, observe, shape.timeout, f"every slot at {shape.rep} replicas after the restart")
    report = last[0]
    progress.update(task, description="whole cluster: reading every key back")
    check = bulk_verify(master, shape.keys, lambda _: None)
    result = WholeRestart(
        stop_s=0.0,
        table_s=round(table_at - started, 3),
        serving_s=round(serving_at - started, 3),
        replicas_s=round(whole_at - started, 3),
        slots_copied=report.healed_slots,
        keys_copied=report.healed_keys,
        recovered_event=any(e.kind == EventKind.RECOVERED for e in report.events),
        keys_lost=check.lost,
        keys_unreadable=check.unreadable,
    )
    return result, state


class _NodeWatch:
    """Follows the master's status after the restart: the node alive, serving, and every slot whole again."""

    def __init__(self, node_id: int, pid: int, before: StatusReport) -> None:
        self.node_id = node_id
        self.pid = pid
        self.joined_at: float | None = None
        self.serving_at: float | None = None
        self.last: StatusReport | None = None
        self.keys_at_join = 0
        # The master's healing counters count the current round of repairs and start again with the next round.
        self.counted = (before.healed_slots, before.healed_keys)
        self.earlier = (-before.healed_slots, -before.healed_keys)  # copies counted before the restart, less resets
        self.resets = 0
        self.dead: set[int] = set()

    @property
    def copied(self) -> tuple[int, int]:
        """Slots and keys copied since the restart, as the healing counters counted them."""
        return self.earlier[0] + self.counted[0], self.earlier[1] + self.counted[1]

    def _count(self, report: StatusReport) -> None:
        slots, keys = report.healed_slots, report.healed_keys
        if slots < self.counted[0] or keys < self.counted[1]:
            self.resets += 1
            self.earlier = (self.earlier[0] + self.counted[0], self.earlier[1] + self.counted[1])
        self.counted = (slots, keys)

    def observe(self, report: StatusReport, now: float) -> bool:
        from kvcluster.core.placement import rank_load  # noqa: PLC0415

        self.last = report
        self._count(report)
        joined = any(n.node_id == self.node_id and n.alive and n.pid == self.pid for n in report.nodes)
        if self.joined_at is None and joined:
            self.joined_at = now
            self.keys_at_join = _node_keys(report, self.node_id)
        table = report.table
        if self.joined_at is None or table is None or self.node_id in table.dead:
            return False
        self.dead |= set(table.dead)
        if self.serving_at is None and any(
            next((n for n in nodes if n not in table.dead), None) == self.node_id for nodes in table.replicas
        ):
            self.serving_at = now
        totals = {n: sum(ranks) for n, ranks in rank_load(table).items()}
        share = sum(totals.values()) // len(totals) - 1
        return self.serving_at is not None and slots_whole(report) and totals.get(self.node_id, 0) >= share


def _restart_node(state: ClusterState, shape: RestartShape, progress: Progress, task: Any) -> NodeRestart:
    """Kill server1, wait out the absence, start it again, time its return, read every key back."""
    from kvcluster.core.placement import node_name  # noqa: PLC0415
    from kvcluster.core.wire import EventKind  # noqa: PLC0415
    from kvcluster.process_control import kill_node, start_node, stop_process  # noqa: PLC0415

    master = state.master_endpoint
    name = node_name(VICTIM)
    keys_before = _node_keys(_status(master), VICTIM)
    progress.update(task, description=f"one node: kill -9 {name}, {shape.absence:g} s away")
    killed = time.monotonic()
    kill_node(state, name)
    dead_at = poll_master(
        master,
        lambda report, _now: report.table is not None and VICTIM in report.table.dead,
        shape.timeout,
        f"{name} declared dead",
    )
    time.sleep(max(0.0, killed + shape.absence - time.monotonic()))
    before = _status(master)
    healed_before = slots_whole(before)
    progress.update(task, description=f"one node: {name} restarted, waiting for its share")
    restarted = time.monotonic()
    info = start_node(state, VICTIM)
    try:
        watch = _NodeWatch(VICTIM, info.pid, before)
        settled = poll_master(master, watch.observe, shape.timeout, f"{name} back with its share of slots")
        assert watch.last is not None
        assert watch.joined_at is not None
        assert watch.serving_at is not None
        after = watch.last
        copied_slots, copied_keys = watch.copied
        since = time.monotonic() - restarted
        cancelled = sum(e.slots for e in after.events if e.kind == EventKind.MOVES_CANCELLED and e.age_s < since)
        progress.update(task, description="one node: reading every key back")
        check = bulk_verify(master, shape.keys, lambda _: None)
    finally:
        # Started in a session of its own as ``kvcluster restart`` starts it, so not among the supervisor's children.
        stop_process(info)
    return NodeRestart(
        node=name,
        absence_s=shape.absence,
        declared_dead_s=round(dead_at - killed, 3),
        healed_before_restart=healed_before,
        keys_before=keys_before,
        joined_s=round(watch.joined_at - restarted, 3),
        serving_s=round(watch.serving_at - restarted, 3),
        replicas_s=round(settled - restarted, 3),
        slots_copied=copied_slots,
        keys_copied=copied_keys,
        counter_resets=watch.resets,
        declared_dead=[node_name(n) for n in sorted(watch.dead)],
        moves_cancelled=cancelled,
        keys_at_join=watch.keys_at_join,
        keys_after=_node_keys(after, VICTIM),
        copied_fraction=round(copied_keys / keys_before, 3) if keys_before else None,
        keys_lost=check.lost,
        keys_unreadable=check.unreadable,
    )


def run_restart(shape: RestartShape, progress: Progress) -> RestartResult:
    """Load, stop and start the whole cluster again, then kill and restart one node."""
    start_load = load_average()
    task = progress.add_task(f"restart: starting {shape.nodes} nodes", total=None)
    starting = time.monotonic()
    with cluster(shape.nodes, shape.rep, fsync=shape.fsync) as (supervisor, state):
        empty_start_s = time.monotonic() - starting
        rss_empty = rss_bytes([s.pid for s in state.servers])
        load_s = load_shown(state.master_endpoint, shape.keys, progress)
        rss = rss_bytes([s.pid for s in state.servers])
        progress.update(task, description="whole cluster: stopping every process")
        stopping = time.monotonic()
        supervisor.stop()
        stop_s = time.monotonic() - stopping
        disk = du_bytes(Path(supervisor.storage.root))
        whole, again = _restart_whole(supervisor, shape, progress, task)
        whole.stop_s = round(stop_s, 3)
        rss_after = rss_bytes([s.pid for s in again.servers])
        node = _restart_node(again, shape, progress, task)
        supervisor.reap()
    replicas = shape.keys * shape.rep
    return RestartResult(
        nodes=shape.nodes,
        rep=shape.rep,
        keys=shape.keys,
        fsync=shape.fsync,
        empty_start_s=round(empty_start_s, 3),
        load_s=round(load_s, 2),
        disk_bytes=disk,
        disk_bytes_per_key_replica=round(disk / replicas, 1),
        rss_bytes=rss,
        rss_bytes_per_key_replica=round(rss / replicas, 1),
        rss_bytes_empty=rss_empty,
        rss_added_per_key_replica=round((rss - rss_empty) / replicas, 1),
        rss_bytes_after_restart=rss_after,
        whole=whole,
        node=node,
        load_average={"start": start_load, "end": load_average()},
        command=shape.command,
    )
