"""Starting a cluster again from its nodes' data: which replica leads each slot, and which are dropped."""

from __future__ import annotations

from kvcluster.core.placement import initial_table
from kvcluster.core.protocol import Hello
from kvcluster.core.restart import RECOVERY_WAIT, Recovery, recovered_table
from kvcluster.core.wire import Holdings, TableData

SLOTS = 4
OLD = initial_table({1: "tcp://a:1", 2: "tcp://b:2", 3: "tcp://c:3"}, 2, SLOTS)


def hello(node_id: int, highs: list[int], digests: list[int], table: TableData = OLD) -> Hello:
    return Hello(node_id, f"tcp://new:{node_id}", 100 + node_id, Holdings(table, highs, digests))


def test_the_newest_replica_leads_and_only_identical_ones_stay() -> None:
    slot = 0
    first, second = OLD.replicas[slot]
    highs = {first: [5] * SLOTS, second: [5] * SLOTS}
    highs[second][slot] = 9  # the backup holds a write the primary never applied
    hellos = {n: hello(n, highs.get(n, [5] * SLOTS), [1] * SLOTS) for n in (1, 2, 3)}
    table, dropped = recovered_table(OLD, hellos)
    assert table.replicas[slot] == [second]  # newest leads; the older one is dropped, to be copied again
    assert dropped == 1
    assert all(table.replicas[s] == OLD.replicas[s] for s in range(1, SLOTS))
    assert table.epochs == [e + 1 for e in OLD.epochs]
    assert table.version == OLD.version + 1
    assert table.endpoints[1] == "tcp://new:1"


def test_same_version_but_other_contents_is_dropped() -> None:
    slot = 1
    first, second = OLD.replicas[slot]
    digests = {first: [1] * SLOTS, second: [1] * SLOTS}
    digests[second][slot] = 2
    hellos = {n: hello(n, [5] * SLOTS, digests.get(n, [1] * SLOTS)) for n in (1, 2, 3)}
    table, _ = recovered_table(OLD, hellos)
    assert table.replicas[slot] == [first]


def test_a_node_that_never_came_back_is_dead_and_its_only_slots_stay_unavailable() -> None:
    hellos = {n: hello(n, [5] * SLOTS, [1] * SLOTS) for n in (1, 2)}
    table, _ = recovered_table(OLD, hellos)
    assert table.dead == [3]
    for slot, nodes in enumerate(OLD.replicas):
        live = [n for n in nodes if n != 3]
        assert table.replicas[slot] == (live or nodes)


def test_recovery_waits_for_every_live_node_or_the_deadline() -> None:
    recovery = Recovery()
    recovery.hear(10.0, hello(1, [0] * SLOTS, [0] * SLOTS))
    recovery.hear(10.1, hello(2, [0] * SLOTS, [0] * SLOTS))
    assert recovery.ready(11.0) is None
    assert recovery.ready(10.0 + RECOVERY_WAIT) == OLD
    recovery.hear(11.0, hello(3, [0] * SLOTS, [0] * SLOTS))
    assert recovery.ready(11.0) == OLD


def test_a_node_that_exited_before_its_hello_is_not_waited_for() -> None:
    recovery = Recovery()
    recovery.hear(10.0, hello(1, [0] * SLOTS, [0] * SLOTS))
    recovery.hear(10.1, hello(2, [0] * SLOTS, [0] * SLOTS))
    assert recovery.ready(10.2) is None
    recovery.gone.add(3)  # it refused its damaged data and exited
    assert recovery.ready(10.2) == OLD
