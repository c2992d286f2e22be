"""A slot copy at its source and its target, with the cores alone: what is reported to the master, and when."""

from __future__ import annotations

from kvcluster.core.actions import Answer, ToMaster, ToPeer
from kvcluster.core.node import NodeCore
from kvcluster.core.placement import initial_table, with_replicas
from kvcluster.core.protocol import CopyDone, CopySlot, HeartbeatAck, Table, Timing


def reports(core: NodeCore) -> list[CopyDone]:
    return [a.message for a in core.take() if isinstance(a, ToMaster) and isinstance(a.message, CopyDone)]


def test_a_finished_copy_is_reported_again_until_the_master_publishes_it() -> None:
    """With a full queue the master drops a node's messages; a lost ``COPY_DONE`` left the move waiting out
    ``COPY_TIMEOUT`` (10 s) (``kvcluster sim --seed 153 --schedules 1``, a master queue of 10)."""
    endpoints = {i: f"sim://server{i}" for i in range(1, 4)}
    table = initial_table(endpoints, 2, 16)
    slot = 0
    p = table.replicas[slot][0]
    t = next(n for n in endpoints if n not in table.replicas[slot])
    source, target = NodeCore(p, endpoints[p], 1, Timing()), NodeCore(t, endpoints[t], 2, Timing())
    for core in (source, target):
        core.on_master(0.0, Table(table))
        core.on_master(0.0, HeartbeatAck(0.0, 1, 1))
        core.take()
    source.on_master(0.1, CopySlot(slot, table.epochs[slot], t))
    for action in source.take():
        if isinstance(action, ToPeer):
            target.on_router(0.1, "peer", action.message)
    for action in target.take():
        if isinstance(action, Answer):
            source.on_peer(0.1, action.message)
    source.flush(0.1)
    assert [d.target for d in reports(source)] == [t]
    source.tick(0.5)
    assert reports(source) == []  # not yet: the first report may still be on its way
    source.tick(1.2)
    assert [(d.slot, d.target) for d in reports(source)] == [(slot, t)]
    source.on_master(1.3, Table(with_replicas(table, [(slot, t)])))
    source.tick(2.5)
    assert reports(source) == []
