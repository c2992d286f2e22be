"""The master's healing and rebalancing plans, without I/O: they converge on balanced nodes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvcluster.core.healing import COPIES_PER_NODE, Repairs, plan_rebalance
from kvcluster.core.placement import (
    choose_target,
    initial_table,
    rank_load,
    under_replicated,
    with_dead,
    with_member,
    with_moves,
    with_replicas,
)
from kvcluster.core.wire import TableData


def healed(data: TableData) -> TableData:
    """Copy every short slot as the master would, one round of copies at a time."""
    while short := under_replicated(data):
        load = rank_load(data)
        added = []
        for slot in short:
            target = choose_target(data, slot, load)
            assert target is not None
            load[target][len([n for n in data.replicas[slot] if n not in data.dead])] += 1
            added.append((slot, target))
        data = with_replicas(data, added)
    return data


def rebalanced(data: TableData, draining: frozenset[int] = frozenset()) -> tuple[TableData, int]:
    """Run the planner as the master does, each round's copies and switches applied at once; return the table and
    how many copies it took."""
    repairs = Repairs()
    copies = 0
    for _ in range(1000):
        switches = plan_rebalance(data, repairs, 0.0, draining)
        moves = list(repairs.moves.values())
        repairs.moves.clear()
        assert len(moves) <= COPIES_PER_NODE * len(data.endpoints)
        if not moves and not switches:
            return data, copies
        copies += len(moves)
        data = with_moves(data, [(m.slot, m.replaces, m.target) for m in moves], switches)  # type: ignore[misc]
    pytest.fail("rebalancing did not converge")


def assert_balanced(data: TableData, rep: int) -> None:
    load = rank_load(data)
    totals = [sum(ranks) for ranks in load.values()]
    primaries = [ranks[0] for ranks in load.values()]
    backups = [sum(ranks[1:]) for ranks in load.values()]
    assert max(totals) - min(totals) <= 1, totals
    assert max(primaries) - min(primaries) <= 1, primaries
    assert max(backups) - min(backups) <= 1, backups
    assert under_replicated(data) == []
    live = [[n for n in r if n not in data.dead] for r in data.replicas]
    assert all(len(set(r)) == len(r) == rep for r in live)


def endpoints(nodes: int) -> dict[int, str]:
    return {n: f"tcp://127.0.0.1:{5000 + n}" for n in range(1, nodes + 1)}


@pytest.mark.parametrize(
    ("nodes", "rep", "dead", "joined"),
    [(3, 2, [2], [2, 4]), (7, 3, [1], [1, 8, 9]), (5, 3, [], [6]), (4, 1, [], [5])],
)
def test_rebalancing_converges_on_nodes_within_one_primary_and_one_backup(
    nodes: int, rep: int, dead: list[int], joined: list[int]
) -> None:
    data = initial_table(endpoints(nodes), rep)
    data = healed(with_dead(data, dead)) if dead else data
    for node in joined:
        data = with_member(data, node, f"tcp://127.0.0.1:{6000 + node}")
    data, _ = rebalanced(data)
    assert_balanced(data, rep)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_shape_of_deaths_and_joins_ends_within_one_at_every_role(data: st.DataObject) -> None:
    nodes = data.draw(st.integers(2, 9), label="nodes")
    rep = data.draw(st.integers(1, min(nodes, 4)), label="rep")
    slots = data.draw(st.sampled_from([16, 37, 64, 256]), label="slots")
    table = initial_table(endpoints(nodes), rep, slots)
    live = list(range(1, nodes + 1))
    for _ in range(data.draw(st.integers(0, 4), label="events")):
        if rep > 1 and len(live) > rep and data.draw(st.booleans(), label="death"):
            victim = data.draw(st.sampled_from(live), label="dies")
            live.remove(victim)
            table = healed(with_dead(table, [victim]))
        else:
            gone = sorted(set(table.dead))
            node = data.draw(st.sampled_from([*gone, len(table.endpoints) + 1]), label="joins")
            live.append(node)
            table = with_member(table, node, f"tcp://127.0.0.1:{6000 + node}")
        table, _ = rebalanced(table)
        assert_balanced(table, rep)


def test_a_join_moves_only_the_copies_its_share_needs() -> None:
    """Adding a fifth node to four: it should receive a fifth of the replicas, and primaries follow by switches."""
    table = initial_table(endpoints(4), 2, 64)
    table, copies = rebalanced(with_member(table, 5, "tcp://127.0.0.1:6005"))
    assert_balanced(table, 2)
    assert copies <= (64 * 2) // 5 + 2


def test_primaries_move_by_copies_when_no_chain_of_switches_reaches_a_node_short_of_them() -> None:
    """Nodes 1-2 and 3-5 share no slot: server5 leads one slot too many, server2 one too few, and no switch
    can hand a primary from one group to the other. Two copies swap server5's primaryship of a slot for
    server2's backup place in another, so totals stay as they are."""
    replicas = [[1, 2]] * 3 + [[2, 1]] * 2 + [[3, 4]] * 2 + [[4, 3], [5, 3], [5, 3], [5, 4], [4, 5]]
    table = TableData(version=1, rep=2, slots=12, endpoints=endpoints(5), dead=[], replicas=replicas, epochs=[0] * 12)
    load = rank_load(table)
    assert [ranks[0] for ranks in load.values()] == [3, 2, 2, 2, 3]
    table, copies = rebalanced(table)
    assert_balanced(table, 2)
    assert copies == 2
