"""The master's healing and rebalancing plans, without I/O: they converge on balanced nodes."""

from __future__ import annotations

import pytest

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
from kvcluster.core.protocol import TableData


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


@pytest.mark.parametrize(
    ("nodes", "rep", "dead", "joined"),
    [(3, 2, [2], [2, 4]), (7, 3, [1], [1, 8, 9]), (5, 3, [], [6]), (4, 1, [], [5])],
)
def test_rebalancing_converges_on_nodes_within_one_slot_and_two_primaries(
    nodes: int, rep: int, dead: list[int], joined: list[int]
) -> None:
    data = initial_table({n: f"tcp://127.0.0.1:{5000 + n}" for n in range(1, nodes + 1)}, rep)
    data = healed(with_dead(data, dead)) if dead else data
    for node in joined:
        data = with_member(data, node, f"tcp://127.0.0.1:{6000 + node}")
    repairs = Repairs()
    for _ in range(1000):
        switches = plan_rebalance(data, repairs, 0.0)
        moves = list(repairs.moves.values())
        repairs.moves.clear()
        assert len(moves) <= COPIES_PER_NODE * len(data.endpoints)
        if not moves and not switches:
            break
        data = with_moves(data, [(m.slot, m.replaces, m.target) for m in moves], switches)  # type: ignore[misc]
    else:
        pytest.fail("rebalancing did not converge")
    load = rank_load(data)
    totals = [sum(ranks) for ranks in load.values()]
    primaries = [ranks[0] for ranks in load.values()]
    assert max(totals) - min(totals) <= 1, totals
    assert max(primaries) - min(primaries) <= 2, primaries  # switches go only to a backup of the same slot
    assert under_replicated(data) == []
    assert all(len(set(r)) == len(r) == rep for r in data.replicas)
