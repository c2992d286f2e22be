"""The master's event log: what ``MasterCore`` records, with the times it was handed, and what a status carries.

No processes and no clock: the test drives the core with messages and
ticks at chosen times, as the runtime and the simulator do.
"""

from __future__ import annotations

import pytest

from kvcluster.core.actions import Answer
from kvcluster.core.events import EVENTS_KEPT, EventLog
from kvcluster.core.master import MasterCore
from kvcluster.core.protocol import CopyDone, CopySlot, Drain, Heartbeat, Hello, StatusReport, StatusRequest, Timing
from kvcluster.core.wire import ClusterEvent, EventKind

TIMING = Timing()
SLOTS = 12


def route(node_id: int) -> tuple[bytes]:
    return (f"node-{node_id}".encode(),)


SOURCES: dict[object, int] = {route(n): n for n in range(1, 10)}


class Driven:
    """A ``MasterCore`` and the time it was last handed."""

    def __init__(self, nodes: int, rep: int) -> None:
        self.core = MasterCore(nodes, rep, TIMING, pid=1, slots=SLOTS)
        self.now = 100.0
        self.copies: list[tuple[int, CopySlot]] = []
        for node_id in range(1, nodes + 1):
            self.hello(node_id)

    def hello(self, node_id: int) -> None:
        self.core.on_message(self.now, route(node_id), Hello(node_id, f"tcp://127.0.0.1:{5000 + node_id}", node_id))
        self.core.take()

    def beat(self, *node_ids: int) -> None:
        for node_id in node_ids:
            version = self.core.table.version if self.core.table else 0
            self.core.on_message(self.now, route(node_id), Heartbeat(node_id, node_id, self.now, version, 0))

    def advance(self, seconds: float, *beating: int) -> None:
        """Let ``seconds`` pass in ticks, with heartbeats from ``beating`` every tick."""
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + 0.05, 6)
            self.beat(*beating)
            self.core.tick(self.now)
            self._collect()

    def _collect(self) -> None:
        """Take what the master sent, as its driver does; keep the copies it asked for."""
        self.copies += [
            (SOURCES[action.route], action.message)
            for action in self.core.take()
            if isinstance(action, Answer) and isinstance(action.message, CopySlot)
        ]

    def finish_copies(self) -> int:
        """Answer every ``CopySlot`` the master sent with a ``CopyDone``; return how many."""
        copies, self.copies = self.copies, []
        for source, copy in copies:
            self.core.on_message(self.now, route(source), CopyDone(source, copy.slot, copy.epoch, copy.target, 3))
        return len(copies)

    def status(self) -> StatusReport:
        self.core.on_message(self.now, ("client",), StatusRequest())
        [answer] = self.core.take()
        assert isinstance(answer, Answer)
        assert isinstance(answer.message, StatusReport)
        return answer.message

    def kinds(self) -> list[tuple[EventKind, int]]:
        return [(e.kind, e.node_id) for e in self.status().events]


def test_a_new_cluster_has_no_events() -> None:
    assert Driven(3, 2).status().events == []


def test_a_death_is_recorded_with_its_time_and_the_promotions_it_caused() -> None:
    c = Driven(3, 2)
    c.advance(0.2, 1, 2, 3)
    died_at = c.now
    c.advance(2.0, 1, 2)
    report = c.status()
    dead = [e for e in report.events if e.kind == EventKind.DEAD]
    assert [e.node_id for e in dead] == [3]
    # Declared after dead_after of silence: the age says when, measured on the master's own clock.
    assert c.now - dead[0].age_s == pytest.approx(died_at + TIMING.dead_after, abs=0.11)
    promoted = {e.node_id: e.slots for e in report.events if e.kind == EventKind.PROMOTED}
    assert report.table is not None
    assert sum(promoted.values()) == sum(1 for nodes in report.table.replicas if nodes[0] == 3)
    assert set(promoted) <= {1, 2}
    assert report.events == sorted(report.events, key=lambda e: -e.age_s), "oldest first"


def test_healing_records_moves_started_and_finished() -> None:
    c = Driven(4, 2)
    c.advance(0.2, 1, 2, 3, 4)
    c.advance(1.5, 1, 2, 3)
    copies = c.finish_copies()
    c.advance(1.0, 1, 2, 3)
    events = c.status().events
    started = sum(e.slots for e in events if e.kind == EventKind.MOVES_STARTED)
    finished = sum(e.slots for e in events if e.kind == EventKind.MOVES_FINISHED)
    # Once the slots are whole again, rebalancing may start copies of its own.
    assert started >= copies > 0
    assert finished == copies
    assert (EventKind.DEAD, 4) in c.kinds()


def test_copies_whose_target_dies_are_cancelled() -> None:
    c = Driven(4, 2)
    c.advance(0.2, 1, 2, 3, 4)
    c.advance(1.5, 1, 2, 3)
    c.copies.clear()  # the copies are asked for, and never answered
    c.advance(1.5, 1, 2)
    events = c.status().events
    assert sum(e.slots for e in events if e.kind == EventKind.MOVES_CANCELLED) > 0
    assert [n for k, n in c.kinds() if k == EventKind.DEAD] == [4, 3]


def test_a_restart_and_a_new_node_are_told_apart() -> None:
    c = Driven(3, 2)
    c.advance(0.2, 1, 2, 3)
    c.advance(1.5, 1, 2)
    c.core.on_message(c.now, ("node-3-again",), Hello(3, "tcp://127.0.0.1:6003", 33))
    c.hello(4)
    kinds = c.kinds()
    assert kinds.index((EventKind.DEAD, 3)) < kinds.index((EventKind.RESTARTED, 3)) < kinds.index((EventKind.JOINED, 4))


def test_a_drain_is_recorded_when_it_starts_and_when_the_node_holds_nothing() -> None:
    c = Driven(4, 2)
    c.advance(0.2, 1, 2, 3, 4)
    c.core.on_message(c.now, ("client",), Drain(4))
    c.core.take()  # the drain is answered with a status
    assert (EventKind.DRAIN_STARTED, 4) in c.kinds()
    for _ in range(40):
        c.advance(0.6, 1, 2, 3, 4)
        c.finish_copies()
        if (EventKind.DRAIN_FINISHED, 4) in c.kinds():
            break
    kinds = c.kinds()
    assert kinds.count((EventKind.DRAIN_FINISHED, 4)) == 1
    assert kinds.index((EventKind.DRAIN_STARTED, 4)) < kinds.index((EventKind.DRAIN_FINISHED, 4))
    assert c.core.table is not None
    assert not any(4 in nodes for nodes in c.core.table.replicas)


def test_a_refused_drain_records_nothing() -> None:
    c = Driven(2, 2)
    c.advance(0.2, 1, 2)
    c.core.on_message(c.now, ("client",), Drain(2))
    c.core.take()  # the drain is answered with a status
    assert c.status().events == []


def test_moves_and_promotions_between_other_events_add_up_in_one_entry_per_kind_and_node() -> None:
    log = EventLog()
    log.record(1.0, EventKind.DEAD, node_id=3)
    log.record(1.0, EventKind.PROMOTED, node_id=1, slots=7)
    for t in range(2, 50):
        log.moves(float(t), EventKind.MOVES_STARTED, 10)
        log.moves(float(t), EventKind.MOVES_FINISHED, 9)
        log.record(float(t), EventKind.PROMOTED, node_id=2, slots=1)
    log.moves(50.0, EventKind.MOVES_CANCELLED, 0)
    log.record(60.0, EventKind.JOINED, node_id=4)
    log.moves(61.0, EventKind.MOVES_STARTED, 5)
    assert log.report(now=70.0) == [
        ClusterEvent(69.0, EventKind.DEAD, 3, 0),
        ClusterEvent(69.0, EventKind.PROMOTED, 1, 7),
        ClusterEvent(68.0, EventKind.MOVES_STARTED, 0, 480),
        ClusterEvent(68.0, EventKind.MOVES_FINISHED, 0, 432),
        ClusterEvent(68.0, EventKind.PROMOTED, 2, 48),
        ClusterEvent(10.0, EventKind.JOINED, 4, 0),
        ClusterEvent(9.0, EventKind.MOVES_STARTED, 0, 5),
    ]


def test_the_log_keeps_only_the_latest_events() -> None:
    log = EventLog()
    for i in range(EVENTS_KEPT + 5):
        log.record(float(i), EventKind.DEAD, node_id=i + 1)
    report = log.report(now=100.0)
    assert len(report) == EVENTS_KEPT
    assert report[0] == ClusterEvent(100.0 - 5, EventKind.DEAD, 6, 0)
    assert report[-1].node_id == EVENTS_KEPT + 5
