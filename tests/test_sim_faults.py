"""The simulator's fault plans keep to their rules, and membership changes take effect as the CLI's do."""

from __future__ import annotations

import random

import pytest

from kvcluster.check.faults import CHAOS_KINDS, MEMBERSHIP, FaultKind
from kvcluster.core.placement import RoutingTable
from kvcluster.sim import SimConfig, report, run_schedule
from kvcluster.sim.faults import CLIENTS, MASTER, RESTART_AFTER, SAFE_SILENCE, Fault, plan_faults, survivable
from kvcluster.sim.trace import Trace
from kvcluster.sim.world import World

SHAPES = [(3, 2), (3, 3), (4, 2), (5, 2), (5, 3), (7, 3)]


@pytest.mark.parametrize(("nodes", "rep"), SHAPES)
def test_plans_restart_only_killed_nodes_and_never_drain_below_rep(nodes: int, rep: int) -> None:
    kinds: set[FaultKind] = set()
    for seed in range(400):
        faults = plan_faults(random.Random(seed), nodes, rep, 4.0, 6)
        kinds.update(f.kind for f in faults)
        assert survivable(faults, nodes, rep)
        for fault in faults:
            mine = [f for f in faults if fault.node in f.ends() and f is not fault]
            if fault.kind == FaultKind.RESTART:
                (kill,) = [f for f in mine if f.kind in (FaultKind.KILL, FaultKind.DOUBLE_KILL)]
                assert RESTART_AFTER[0] <= fault.at - kill.at - kill.duration <= RESTART_AFTER[1]
                assert all(f.at < kill.at for f in mine if f is not kill)
            if fault.kind == FaultKind.REMOVE_NODE:
                gone = {n for f in faults if f.at <= fault.at for n in f.victims()}
                assert nodes - len(gone) >= rep
    if rep < nodes:
        assert kinds >= set(MEMBERSHIP)


def test_a_remove_that_would_leave_fewer_than_rep_nodes_is_not_survivable() -> None:
    assert survivable([Fault(FaultKind.REMOVE_NODE, 1.0, 1)], 3, 2)
    assert not survivable([Fault(FaultKind.REMOVE_NODE, 1.0, 1)], 3, 3)
    assert not survivable([Fault(FaultKind.KILL, 0.5, 2), Fault(FaultKind.REMOVE_NODE, 1.0, 1)], 3, 2)


LONG = SimConfig(nodes=4, rep=2, duration=6.0)


def run_with(faults: list[Fault], seed: int = 3) -> World:
    world = World(seed, LONG, faults)
    result = world.run()
    assert result.finished
    assert result.error is None
    return world


def test_a_restarted_node_joins_again_and_receives_slots() -> None:
    world = run_with([Fault(FaultKind.KILL, 0.5, 2), Fault(FaultKind.RESTART, 1.6, 2)])
    table = world.master.core.table
    assert table is not None
    assert 2 not in table.dead
    assert world.nodes[2].core.pid != 102  # a new incarnation
    assert sum(RoutingTable(table).slots_of(2)) > 0


def test_an_added_node_takes_the_next_id_and_receives_slots() -> None:
    world = run_with([Fault(FaultKind.ADD_NODE, 0.5, 5)])
    table = world.master.core.table
    assert table is not None
    assert sorted(table.endpoints) == [1, 2, 3, 4, 5]
    assert sum(RoutingTable(table).slots_of(5)) > 0


def test_a_removed_node_is_drained_then_stopped() -> None:
    world = run_with([Fault(FaultKind.REMOVE_NODE, 0.5, 3)])
    table = world.master.core.table
    assert table is not None
    assert table.dead == [3]
    assert all(3 not in nodes for nodes in table.replicas)
    assert not world.nodes[3].alive


@pytest.mark.parametrize("seed", range(20))
def test_schedules_with_every_membership_change_keep_every_guarantee(seed: int) -> None:
    faults = [
        Fault(FaultKind.KILL, 0.4, 1),
        Fault(FaultKind.ADD_NODE, 0.9, 5),
        Fault(FaultKind.RESTART, 1.5, 1),
        Fault(FaultKind.REMOVE_NODE, 3.6, 4),
    ]
    outcome = run_schedule(seed, LONG, faults=faults)
    assert outcome.ok, report(outcome, LONG)


def test_plans_draw_every_kind_a_chaos_run_injects() -> None:
    kinds = {f.kind for seed in range(400) for f in plan_faults(random.Random(seed), 5, 3, 4.0, 6)}
    assert kinds >= CHAOS_KINDS


def test_only_a_link_towards_the_master_may_silence_a_node() -> None:
    towards = Fault(FaultKind.ONEWAY, 1.0, 2, 1.0, other=MASTER)
    assert towards.may_kill()
    assert towards.victims() == {2}
    assert not Fault(FaultKind.ONEWAY, 1.0, MASTER, 1.0, other=2).may_kill()
    assert not Fault(FaultKind.LATE, 1.0, CLIENTS, 2.0, other=2).may_kill()
    assert Fault(FaultKind.DOUBLE_KILL, 1.0, 1, 0.1, other=3).victims() == {1, 3}
    assert not Fault(FaultKind.STALL, 1.0, 1, SAFE_SILENCE).may_kill()


NEW_FAULTS = [
    [Fault(FaultKind.DOUBLE_KILL, 0.6, 1, 0.1, other=2), Fault(FaultKind.RESTART, 2.0, 2)],
    [Fault(FaultKind.STALL, 0.5, 3, 0.3), Fault(FaultKind.LEADER_PAUSE, 1.5, MASTER, 0.6)],
    [Fault(FaultKind.ONEWAY, 0.5, 2, 1.2, other=MASTER), Fault(FaultKind.ONEWAY, 2.5, 3, 1.0, other=4)],
    [Fault(FaultKind.ONEWAY, 0.5, MASTER, 1.5, other=1), Fault(FaultKind.FLAKY, 2.3, 4, 1.5, extra=0.3)],
    [Fault(FaultKind.LATE, 0.5, MASTER, 2.0, other=3), Fault(FaultKind.LEADER_CRASH, 1.0, MASTER, 0.6)],
    [Fault(FaultKind.LATE, 0.5, CLIENTS, 2.0, other=1), Fault(FaultKind.LATE, 3.0, 2, 1.5, other=4)],
]


@pytest.mark.parametrize("faults", NEW_FAULTS, ids=lambda faults: "+".join(f.kind for f in faults))
@pytest.mark.parametrize("seed", range(2))
def test_schedules_with_one_way_cuts_flaky_links_and_late_delivery_keep_every_guarantee(
    faults: list[Fault], seed: int
) -> None:
    outcome = run_schedule(seed, LONG, faults=faults)
    assert outcome.ok, report(outcome, LONG)
    assert outcome.result.history


def test_a_node_whose_messages_to_the_master_are_held_is_declared_dead() -> None:
    outcome = run_schedule(1, LONG, faults=[Fault(FaultKind.ONEWAY, 0.5, 2, 1.5, other=MASTER)])
    assert outcome.ok, report(outcome, LONG)
    assert outcome.result.declared_dead == [2]


def test_network_faults_replay_exactly() -> None:
    faults = [*NEW_FAULTS[3], Fault(FaultKind.LATE, 3.3, CLIENTS, 1.0, other=2)]
    digests = {run_schedule(4, LONG, faults=faults, trace=Trace(digest=True)).result.trace.digest() for _ in range(2)}
    assert len(digests) == 1
