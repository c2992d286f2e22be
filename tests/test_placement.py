"""Placement: key hashing, replica lists, balance, promotion on failure and the routing table."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from kvcluster.core.placement import (
    NUM_SLOTS,
    RoutingTable,
    choose_target,
    initial_table,
    node_name,
    rank_load,
    replicas_for,
    slot_of,
    under_replicated,
    with_dead,
    with_replicas,
)
from kvcluster.core.wire import TableData

SHAPES = [(n, k) for n in range(1, 10) for k in range(1, n + 1)]


def table(nodes: int, rep: int, dead: list[int] | None = None) -> RoutingTable:
    data = initial_table({i: f"tcp://127.0.0.1:{5000 + i}" for i in range(1, nodes + 1)}, rep)
    if dead:
        for node in dead:
            data = with_dead(data, [node])
    return RoutingTable(data)


# --- slot_of ---


@pytest.mark.parametrize(
    ("key", "slot"),
    [("key1", 465), ("key2", 777), ("key3", 982), ("a", 559), ("", 692), ("héllo", 4043)],
)
def test_slot_of_known_values(key: str, slot: int) -> None:
    assert slot_of(key) == slot


def test_slot_of_with_fewer_slots() -> None:
    assert [slot_of(k, 16) for k in ("key1", "key2", "key3", "a")] == [1, 9, 6, 15]


def test_slot_of_does_not_depend_on_the_process_hash_seed() -> None:
    keys = [f"key{i}" for i in range(50)]
    code = f"from kvcluster.core.placement import slot_of; print([slot_of(k) for k in {keys!r}])"
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={"PYTHONHASHSEED": seed},
            check=True,
            timeout=60,
        ).stdout
        assert out.strip() == str([slot_of(k) for k in keys])


def test_slot_of_spreads_similar_keys() -> None:
    slots = [slot_of(f"key{i}") for i in range(40_000)]
    assert all(0 <= s < NUM_SLOTS for s in slots)
    counts = Counter(slots)
    mean = len(slots) / NUM_SLOTS
    assert len(counts) == NUM_SLOTS
    assert max(counts.values()) < 3 * mean


# --- replicas_for ---


@pytest.mark.parametrize(("nodes", "rep"), SHAPES)
def test_replicas_are_distinct_valid_and_deterministic(nodes: int, rep: int) -> None:
    for slot in range(NUM_SLOTS):
        replicas = replicas_for(slot, nodes, rep)
        assert len(replicas) == rep
        assert len(set(replicas)) == rep
        assert all(1 <= n <= nodes for n in replicas)
        assert replicas_for(slot, nodes, rep) == replicas


@pytest.mark.parametrize(("nodes", "rep"), SHAPES)
def test_every_rank_is_balanced(nodes: int, rep: int) -> None:
    for rank in range(rep):
        counts = Counter(replicas_for(slot, nodes, rep)[rank] for slot in range(NUM_SLOTS))
        per_node = [counts[n] for n in range(1, nodes + 1)]
        assert max(per_node) - min(per_node) <= 1, f"rank {rank}: {per_node}"


@pytest.mark.parametrize(("nodes", "rep"), [(0, 1), (3, 0), (3, 4), (1, 2)])
def test_impossible_shapes_are_refused(nodes: int, rep: int) -> None:
    with pytest.raises(ValueError):
        replicas_for(0, nodes, rep)


@pytest.mark.parametrize(("nodes", "rep"), [(n, k) for n, k in SHAPES if n >= 3 and k >= 2])
def test_dead_primary_slots_spread_over_the_others(nodes: int, rep: int) -> None:
    before = table(nodes, rep)
    for dead in range(1, nodes + 1):
        after = table(nodes, rep, [dead])
        lost = [s for s in range(NUM_SLOTS) if before.primary(s) == dead]
        heirs = Counter(after.primary(s) for s in lost)
        assert dead not in heirs
        assert None not in heirs
        assert len(heirs) >= nodes - 2, f"server{dead}'s slots went only to {list(heirs)}"
        # Promotion picks the first surviving backup.
        assert all(after.primary(s) == before.replicas(s)[1] for s in lost)


def test_node_name() -> None:
    assert node_name(1) == "server1"
    assert node_name(12) == "server12"


# --- RoutingTable and table versions ---


def test_initial_table() -> None:
    t = table(5, 3)
    assert t.version == 1
    assert t.slots == NUM_SLOTS
    assert t.endpoint(2) == "tcp://127.0.0.1:5002"
    for slot in range(NUM_SLOTS):
        assert t.epoch(slot) == 0
        assert t.live(slot) == t.replicas(slot) == replicas_for(slot, 5, 3)
        assert t.primary(slot) == t.replicas(slot)[0]
    assert sum(t.slots_of(n)[0] for n in range(1, 6)) == NUM_SLOTS
    assert sum(t.slots_of(n)[1] for n in range(1, 6)) == NUM_SLOTS * 2
    assert t.slot_of("key1") == slot_of("key1")


def test_with_dead_bumps_version_and_epochs() -> None:
    first = table(5, 3)
    data = with_dead(first.data, [2])
    t = RoutingTable(data)
    assert t.version == 2
    assert t.is_dead(2)
    assert not t.is_dead(1)
    for slot in range(NUM_SLOTS):
        before = first.replicas(slot)
        assert t.replicas(slot) == before
        assert t.live(slot) == tuple(n for n in before if n != 2)
        assert t.epoch(slot) == (1 if 2 in before else 0)
        assert t.primary(slot) == t.live(slot)[0]
    assert t.slots_of(2) == (0, 0)
    assert sum(t.slots_of(n)[0] for n in (1, 3, 4, 5)) == NUM_SLOTS


def test_with_dead_ignores_nodes_already_dead() -> None:
    data = with_dead(table(4, 2).data, [3])
    assert with_dead(data, [3]) is data
    assert with_dead(data, []) is data
    both = with_dead(data, [3, 1])
    assert (both.version, both.dead) == (3, [3, 1])


def test_several_deaths_in_one_version() -> None:
    data = with_dead(table(5, 3).data, [4, 1])
    assert (data.version, data.dead) == (2, [4, 1])


def test_with_dead_leaves_the_old_table_alone() -> None:
    old = table(3, 2).data
    copy = TableData(1, 2, NUM_SLOTS, dict(old.endpoints), [], [list(r) for r in old.replicas], list(old.epochs))
    with_dead(old, [1])
    assert old == copy


def test_every_replica_dead_means_no_primary() -> None:
    t = table(3, 2, [1, 2])
    for slot in range(NUM_SLOTS):
        placed = replicas_for(slot, 3, 2)
        survivors = tuple(n for n in placed if n == 3)
        assert t.live(slot) == survivors
        assert t.epoch(slot) == 2 - len(survivors)
        assert t.primary(slot) == (3 if survivors else None)
        assert t.replicas(slot) == placed, "a slot names every node it needed, dead or alive"
    orphans = sum(t.primary(slot) is None for slot in range(NUM_SLOTS))
    assert 0 < orphans < NUM_SLOTS
    assert t.slots_of(3) == (NUM_SLOTS - orphans, 0)


def test_epochs_only_grow_as_nodes_die() -> None:
    order = [3, 5, 1, 6]
    previous = table(7, 3)
    for count in range(1, len(order) + 1):
        current = table(7, 3, order[:count])
        assert current.version == previous.version + 1
        for slot in range(NUM_SLOTS):
            assert current.epoch(slot) >= previous.epoch(slot)
            if current.live(slot) != previous.live(slot):
                assert current.epoch(slot) > previous.epoch(slot)
        previous = current


# --- repairs: restoring replicas after a death ---


def test_with_replicas_appends_a_backup_and_bumps_the_epoch() -> None:
    data = with_dead(table(4, 2).data, [1])
    short = under_replicated(data)
    assert short == [s for s in range(NUM_SLOTS) if 1 in replicas_for(s, 4, 2)]
    slot = short[0]
    target = choose_target(data, slot, rank_load(data))
    assert target is not None
    assert target not in data.replicas[slot]
    repaired = with_replicas(data, [(slot, target)])
    t = RoutingTable(repaired)
    assert t.live(slot) == (*(n for n in data.replicas[slot] if n != 1), target)
    assert t.epoch(slot) == data.epochs[slot] + 1
    assert repaired.version == data.version + 1
    assert slot not in under_replicated(repaired)


@pytest.mark.parametrize(("nodes", "rep", "dead"), [(7, 3, [1]), (7, 3, [2, 5]), (5, 2, [3]), (9, 3, [1, 2, 3])])
def test_repairing_every_slot_keeps_nodes_within_one_slot_of_each_other(nodes: int, rep: int, dead: list[int]) -> None:
    repaired = table(nodes, rep, dead).data
    while short := under_replicated(repaired):  # a slot that lost two replicas gets one per round
        load = rank_load(repaired)
        added = []
        for slot in short:
            target = choose_target(repaired, slot, load)
            assert target is not None
            load[target][len([n for n in repaired.replicas[slot] if n not in repaired.dead])] += 1
            added.append((slot, target))
        repaired = with_replicas(repaired, added)
    totals = [sum(ranks) for ranks in rank_load(repaired).values()]
    # A slot that lost two replicas is refilled over two rounds, each blind to the other's choices.
    assert max(totals) - min(totals) <= (1 if len(dead) == 1 else 2), totals


def test_no_target_when_every_live_node_already_holds_the_slot() -> None:
    data = with_dead(table(3, 3).data, [1])
    slot = under_replicated(data)[0]
    assert choose_target(data, slot, rank_load(data)) is None
