"""The master core without I/O: membership changes and when it starts copies."""

from __future__ import annotations

from kvcluster.core.actions import Answer
from kvcluster.core.liveness import COPIES_AFTER_DEATH
from kvcluster.core.master import TICK, MasterCore
from kvcluster.core.protocol import CopySlot, Heartbeat, Hello, NodeExited, Timing


def copies_to(master: MasterCore, target: int) -> list[int]:
    return [copy.slot for copy in copy_requests(master) if copy.target == target]


def copy_requests(master: MasterCore) -> list[CopySlot]:
    return [a.message for a in master.take() if isinstance(a, Answer) and isinstance(a.message, CopySlot)]


def test_no_copy_goes_to_a_joined_node_before_it_holds_a_table() -> None:
    """The copies of an add-node were asked for in the tick that published the join, so a source's ``SLOT_COPY``
    could reach the new node before its first table; it refused them, and the moves waited out COPY_TIMEOUT
    (10 s) (``kvcluster sim --seed 121 --schedules 1``)."""
    master = MasterCore(3, 2, Timing(), 1, slots=16)
    for node in (1, 2, 3):
        master.on_message(0.0, f"n{node}", Hello(node, f"sim://server{node}", node))
    for node in (1, 2, 3):
        master.on_message(0.05, f"n{node}", Heartbeat(node, node, 0.05, 1, 0))
    master.on_message(0.1, "n4", Hello(4, "sim://server4", 4))
    master.tick(0.1)
    assert copies_to(master, 4) == []
    for node in (1, 2, 3):
        master.on_message(0.15, f"n{node}", Heartbeat(node, node, 0.15, 2, 0))
    master.on_message(0.15, "n4", Heartbeat(4, 4, 0.15, 2, 0))
    master.tick(0.15)
    assert copies_to(master, 4)


def test_copies_after_a_death_wait_until_the_promoted_primaries_had_time_to_serve() -> None:
    """Dozens of slot copies starting along with the promotions slowed their reconciles: at 1M keys, a crash left
    keys unavailable for about 150 ms instead of 50. The copies start ``COPIES_AFTER_DEATH`` after the death."""
    master = MasterCore(4, 2, Timing(), 1, slots=16)
    for node in (1, 2, 3, 4):
        master.on_message(0.0, f"n{node}", Hello(node, f"sim://server{node}", node))
    for node in (1, 2, 3, 4):
        master.on_message(0.05, f"n{node}", Heartbeat(node, node, 0.05, 1, 0))
    master.tick(0.05)
    master.take()
    master.on_message(0.1, "supervisor", NodeExited(4, 4))
    assert master.table is not None
    assert master.table.dead == [4]
    copies: list[CopySlot] = []
    now = 0.1
    while now < 0.1 + COPIES_AFTER_DEATH - 0.05:
        now += TICK
        for node in (1, 2, 3):
            master.on_message(now, f"n{node}", Heartbeat(node, node, now, master.table.version, 0))
        master.tick(now)
        copies += copy_requests(master)
    assert copies == []
    master.tick(0.1 + COPIES_AFTER_DEATH)
    assert copy_requests(master)
