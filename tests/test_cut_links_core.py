"""Cut links in the sans-I/O cores, with explicit times: overdue acknowledgements, condemned nodes, lost leaders.

A primary that cannot reach a backup names it in its heartbeats; the master condemns one end of such a
link (the most implicated node) by no longer counting its heartbeats, and declares it dead only once the
lease it last granted it has run out. A group leader that hears no node declares none dead.
"""

from __future__ import annotations

from kvcluster.core.acks import AckClock, overdue_after
from kvcluster.core.actions import Answer, ToMaster, ToPeer
from kvcluster.core.complaints import most_implicated
from kvcluster.core.liveness import OUT_OF_TOUCH_FACTOR
from kvcluster.core.master import TICK, MasterCore
from kvcluster.core.node import NodeCore
from kvcluster.core.placement import initial_table, slot_of, with_dead
from kvcluster.core.protocol import (
    CopySlot,
    Fenced,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Replicate,
    ReplicateAck,
    Request,
    Table,
    Timing,
)
from kvcluster.core.replica import make_version
from kvcluster.core.waiters import Waiter
from kvcluster.core.wire import Op, OpKind, TableData, Write

TIMING = Timing()
NODES = 4


def test_the_ack_clock_names_the_peers_of_messages_waiting_past_the_bound() -> None:
    clock = AckClock()
    clock.stamp(1, 0.0)
    clock.stamp(2, 0.5)
    clock.stamp(3, 1.0)
    waiting: dict[int, tuple[int, list[Waiter]]] = {1: (7, []), 3: (9, [])}  # 2 was acknowledged
    assert clock.overdue(1.0, 0.8, waiting) == [7]
    assert clock.overdue(2.0, 0.8, waiting) == [7, 9]
    assert list(clock.sent) == [1, 3], "a settled message's stamp is forgotten"
    assert clock.overdue(2.0, 0.8, {}) == []
    assert clock.sent == {}


def test_a_node_names_in_its_heartbeat_a_backup_that_never_acknowledges_a_write() -> None:
    """A write waits for its backup past ``overdue_after``: the backup is named. A slot copy alone is not."""
    endpoints = {i: f"sim://server{i}" for i in range(1, 4)}
    table = initial_table(endpoints, 2, 16)
    slot = 0
    source, backup = table.replicas[slot]
    learner = next(n for n in endpoints if n not in table.replicas[slot])
    key = next(k for k in (f"k{i}" for i in range(1000)) if slot_of(k, table.slots) == slot)
    core = NodeCore(source, endpoints[source], 1, TIMING)
    core.on_master(0.0, Table(table))
    core.on_master(0.0, HeartbeatAck(0.0, 1, 1))
    core.take()

    def overdue_in_beat(now: float) -> list[int]:
        core.tick(now)
        (beat,) = [a.message for a in core.take() if isinstance(a, ToMaster) and isinstance(a.message, Heartbeat)]
        return beat.overdue

    core.on_master(0.1, CopySlot(slot, table.epochs[slot], learner))
    assert any(isinstance(a, ToPeer) for a in core.take()), "the copy was not sent"
    assert overdue_in_beat(0.2 + overdue_after(TIMING)) == [], "a slow slot copy was reported"
    sent_at = 0.3 + overdue_after(TIMING)
    core.on_master(sent_at, HeartbeatAck(sent_at, 1, 1))  # a fresh lease: the primary serves
    core.on_router(sent_at, "client", Request(9, 1, [Op(OpKind.PUT, key, "v", slot, table.epochs[slot], 1)]))
    core.flush(sent_at)
    assert {a.node_id for a in core.take() if isinstance(a, ToPeer)} >= {backup}, "the write was not replicated"
    assert overdue_in_beat(sent_at + overdue_after(TIMING) / 2) == []
    assert backup in overdue_in_beat(sent_at + overdue_after(TIMING) + 0.1)


def test_the_most_implicated_node_is_condemned_first() -> None:
    # A primary cut off from both its backups: the common end.
    assert most_implicated([(1, 2), (1, 3)])[0] == 1
    # A node every primary complains about: the accused.
    assert most_implicated([(1, 4), (2, 4), (3, 4)])[0] == 4
    # One link, one complaint: the accused backup, not the primary.
    assert most_implicated([(1, 2)])[0] == 2
    # One link, both complain: the lower id.
    assert most_implicated([(3, 2), (2, 3)])[0] == 2


class Master:
    """A single master with ``NODES`` registered nodes and its first table, driven by hand."""

    def __init__(self, replicated: bool = False) -> None:
        self.core = MasterCore(NODES, 3, TIMING, 900, 8, replicated=replicated)
        if replicated:
            self.core.lead(0.0, term=1, state=None, grace=0.0)
        for n in range(1, NODES + 1):
            self.core.on_message(0.0, f"r{n}", Hello(n, f"tcp://n{n}", 100 + n))
        if replicated:
            (proposal,) = [a for a in self.core.take() if not isinstance(a, Answer)]
            self.core.on_committed(proposal.state)  # type: ignore[union-attr]
        self.core.take()
        self.now = 0.0

    @property
    def table(self) -> TableData:
        assert self.core.committed is not None
        return self.core.committed

    def run_until(self, until: float, overdue: dict[int, list[int]], silent: frozenset[int] = frozenset()) -> None:
        """Every node not ``silent`` heartbeats every ``heartbeat``, naming ``overdue[node]``; the master ticks."""
        next_beat = self.now
        while self.now < until:
            self.now = round(self.now + TICK, 6)
            if self.now >= next_beat:
                next_beat = self.now + TIMING.heartbeat
                for n in range(1, NODES + 1):
                    if n not in silent:
                        beat = Heartbeat(n, 100 + n, self.now, self.table.version, 0, None, overdue.get(n, []))
                        self.core.on_message(self.now, f"r{n}", beat)
            self.core.tick(self.now)
            if self.core.replicated:
                for action in self.core.take():
                    if not isinstance(action, Answer):
                        self.core.on_committed(action.state)
            self.core.take()

    def acked(self, node_id: int, at: float) -> bool:
        """Whether the master acknowledges a heartbeat of ``node_id`` sent at ``at`` (a lease grant)."""
        self.core.on_message(at, f"r{node_id}", Heartbeat(node_id, 100 + node_id, at, self.table.version, 0))
        return any(isinstance(a, Answer) and isinstance(a.message, HeartbeatAck) for a in self.core.take())


def test_a_primary_cut_off_from_its_backups_is_condemned_then_declared_dead_after_its_lease() -> None:
    master = Master()
    primary = master.table.replicas[0][0]
    backups = master.table.replicas[0][1:]
    master.run_until(1.0, {})
    assert master.table.dead == []
    while master.core.complaints.condemned is None:
        master.run_until(master.now + TICK, {primary: backups})
    assert master.core.complaints.condemned == primary
    condemned_at = master.now
    assert master.table.dead == [], "declared dead while its lease may still run"
    assert not master.acked(primary, master.now), "a condemned node's lease was renewed"
    master.run_until(condemned_at + TIMING.dead_after + 2 * TICK, {primary: backups})
    assert master.table.dead == [primary]
    assert master.core.complaints.condemned is None


def test_complaints_against_a_silent_node_are_left_to_failure_detection() -> None:
    master = Master()
    primary = master.table.replicas[0][0]
    backup = master.table.replicas[0][1]
    master.run_until(0.3, {}, silent=frozenset({backup}))
    master.run_until(1.0, {primary: [backup]}, silent=frozenset({backup}))
    assert master.core.complaints.condemned is None, "a node that is merely silent was condemned"
    assert master.table.dead == [backup]


def test_a_group_leader_that_hears_no_node_declares_none_dead_and_says_it_is_out_of_touch() -> None:
    waiting = MasterCore(NODES, 3, TIMING, 900, 8, replicated=True)
    waiting.lead(0.0, term=1, state=None, grace=0.0)
    assert not waiting.out_of_touch(5.0), "a leader waiting for the first hellos is out of touch"
    master = Master(replicated=True)
    master.run_until(0.5, {})
    assert not master.core.out_of_touch(master.now)
    everyone = frozenset(range(1, NODES + 1))
    master.run_until(0.5 + TIMING.dead_after + 2 * TICK, {}, silent=everyone)
    assert not master.core.out_of_touch(master.now), "a silence all nodes may share in a stall is not a cut"
    master.run_until(0.5 + OUT_OF_TOUCH_FACTOR * TIMING.dead_after + 2 * TICK, {}, silent=everyone)
    assert master.core.out_of_touch(master.now)
    master.run_until(10.0, {}, silent=everyone)
    assert master.table.dead == [], "a leader that hears nobody declared the nodes dead"


def test_late_messages_from_before_a_failover_are_refused() -> None:
    """What a cut held back arrives after the world moved on: a ``REPLICATE`` of the old epoch from the old
    primary, a lease grant and a fence from an older master term. The node refuses all three."""
    endpoints = {i: f"sim://server{i}" for i in range(1, 4)}
    table = initial_table(endpoints, 3, 4)
    slot = 0
    old_primary, backup, _ = table.replicas[slot]
    core = NodeCore(backup, endpoints[backup], 1, TIMING)
    core.on_master(0.0, Table(table))
    core.on_master(0.0, HeartbeatAck(0.0, 1, 2))
    core.on_master(1.0, Table(with_dead(table, [old_primary])))  # the old primary's backups are promoted
    core.take()
    late = Write(slot, table.epochs[slot], "k", "stale", make_version(table.epochs[slot], 1), 7, 1)
    core.on_router(1.1, "old-primary", Replicate(5, old_primary, 0, [late]))
    (ack,) = [a.message for a in core.take() if isinstance(a, Answer)]
    assert isinstance(ack, ReplicateAck)
    assert ack.rejected_slots == [slot]
    assert core.replica.data[slot].get("k") is None, "a write of an old epoch was applied"
    lease = core.lease_until
    core.on_master(1.2, HeartbeatAck(1.2, 1, 1))  # a grant from a deposed leader of term 1
    assert core.lease_until == lease
    core.on_master(1.3, Fenced(backup, 1))
    assert not core.stopped, "a fence from an older term was obeyed"
