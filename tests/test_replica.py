"""The replica state without I/O: tails, commit watermarks and reconciliation after a failover."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvcluster.core import replica
from kvcluster.core.replica import DEDUP_SPAN, NO_COMMIT, AppliedOps, Replica, make_version
from kvcluster.core.wire import Write

SLOTS = 4
OLD, NEW = 1, 2


def write(slot: int, epoch: int, counter: int, key: str, value: str) -> Write:
    return Write(slot, epoch, key, value, make_version(epoch, counter), 7, counter)


def stream(keys: list[int], slot: int = 0, epoch: int = 0) -> list[Write]:
    return [write(slot, epoch, n + 1, f"k{key}", f"v{n}") for n, key in enumerate(keys)]


def known(primary: int, epoch: int = 0) -> list[tuple[int, int]]:
    return [(epoch, primary)] * SLOTS


def test_replicated_writes_land_and_count_keys() -> None:
    replica = Replica(SLOTS)
    for w in stream([1, 2, 1]):
        replica.apply_replicated(OLD, w)
    assert dict(replica.items(0)) == {"k1": "v2", "k2": "v1"}
    assert replica.keys == 2
    assert replica.tail_length() == 3


def test_commit_trims_the_tail_up_to_the_watermark_only() -> None:
    replica = Replica(SLOTS)
    for w in stream([1, 2, 3]):
        replica.apply_replicated(OLD, w)
    replica.commit(OLD, 2, known(OLD))
    assert replica.tail_length() == 1
    replica.commit(OLD, NO_COMMIT, known(OLD))
    assert replica.tail_length() == 1


def test_a_late_watermark_from_a_replaced_primary_commits_nothing() -> None:
    replica = Replica(SLOTS)
    for w in stream([1, 2]):
        replica.apply_replicated(OLD, w)
    replica.commit(OLD, 2, known(NEW, epoch=1))
    assert replica.tail_length() == 2


def test_reconcile_undoes_writes_beyond_the_new_primarys_high() -> None:
    backup = Replica(SLOTS)
    writes = stream([1, 2, 1])
    for w in writes:
        backup.apply_replicated(OLD, w)
    backup.reconcile(NEW, 0, writes[0].version, [writes[0]])
    assert dict(backup.items(0)) == {"k1": "v0"}
    assert backup.keys == 1
    assert not backup.seen_op(7, 2)
    assert backup.seen_op(7, 1)


def test_reconcile_applies_what_the_backup_lacks() -> None:
    backup = Replica(SLOTS)
    writes = stream([1, 2, 3])
    backup.apply_replicated(OLD, writes[0])
    backup.reconcile(NEW, 0, writes[-1].version, writes)
    assert dict(backup.items(0)) == {"k1": "v0", "k2": "v1", "k3": "v2"}
    assert backup.keys == 3


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(st.integers(0, 5), min_size=1, max_size=30),
    received=st.lists(st.integers(0, 30), min_size=2, max_size=4),
    data=st.data(),
)
def test_after_reconcile_every_replica_equals_the_new_primary(
    keys: list[int], received: list[int], data: st.DataObject
) -> None:
    """Backups hold prefixes of one stream; whichever is promoted, all end equal and keep every committed write."""
    writes = stream(keys)
    prefixes = [min(n, len(writes)) for n in received]
    committed = data.draw(st.integers(0, min(prefixes)), label="committed")  # acked: held by every replica
    replicas = []
    for length in prefixes:
        replica = Replica(SLOTS)
        for w in writes[:length]:
            replica.apply_replicated(OLD, w)
        replica.commit(OLD, committed, known(OLD))
        replicas.append(replica)
    new_primary = data.draw(st.integers(0, len(replicas) - 1), label="promoted")
    primary = replicas[new_primary]
    tail = primary.take_tails([0])[0]
    for index, backup in enumerate(replicas):
        if index != new_primary:
            backup.reconcile(NEW, 0, primary.high[0], tail)
    expected = {}
    for w in writes[: prefixes[new_primary]]:
        expected[w.key] = w.value
    for replica in replicas:
        assert dict(replica.items(0)) == expected
        assert replica.keys == len(expected)
    for w in writes[:committed]:
        assert all(r.seen_op(w.client, w.op_id) for r in replicas)


def test_applied_ops_are_exact_within_a_clients_span() -> None:
    ops = AppliedOps()
    for op_id in (0, 5, 9, 64):
        ops.add(3, op_id)
    assert [op_id for op_id in range(70) if (3, op_id) in ops] == [0, 5, 9, 64]
    assert (4, 5) not in ops
    ops.discard(3, 5)
    assert (3, 5) not in ops
    assert (3, 9) in ops


def test_applied_ops_forget_the_oldest_ids_past_the_span() -> None:
    ops = AppliedOps()
    ops.add(1, 0)
    ops.add(1, DEDUP_SPAN + 100)
    assert (1, 0) not in ops
    assert (1, DEDUP_SPAN + 100) in ops
    assert len(ops.clients[1][1]) <= DEDUP_SPAN // 8


def test_applied_ops_forget_the_least_recent_client_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica, "DEDUP_CLIENTS", 2)
    ops = AppliedOps()
    ops.add(1, 0)
    ops.add(2, 0)
    ops.add(1, 1)
    ops.add(3, 0)
    assert (2, 0) not in ops
    assert (1, 0) in ops
    assert (3, 0) in ops


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 3), st.integers(-50, 3000)), max_size=60),
    st.lists(st.tuples(st.integers(1, 3), st.integers(-50, 3000)), max_size=60),
)
def test_merged_applied_ops_hold_both_sides_exactly(own: list[tuple[int, int]], other: list[tuple[int, int]]) -> None:
    mine, theirs = AppliedOps(), AppliedOps()
    for client, op_id in own:
        mine.add(client, op_id)
    for client, op_id in other:
        theirs.add(client, op_id)
    mine.merge(theirs.export([]))
    expected = {op for op in [*own, *other] if op in mine or op in theirs}
    assert expected == set(own) | set(other)
    assert {(c, i) for c in (1, 2, 3) for i in range(-60, 3010) if (c, i) in mine} == expected


def test_an_exported_window_leaves_out_the_excluded_ops() -> None:
    ops = AppliedOps()
    for op_id in (3, 4, 20):
        ops.add(5, op_id)
    copy = AppliedOps()
    copy.merge(ops.export([(5, 4), (6, 1)]))
    assert [op_id for op_id in range(30) if (5, op_id) in copy] == [3, 20]
    assert (5, 4) in ops


def test_a_merge_keeps_a_clients_latest_span() -> None:
    old, new = AppliedOps(), AppliedOps()
    old.add(1, 0)
    new.add(1, DEDUP_SPAN + 64)
    old.merge(new.export([]))
    assert (1, DEDUP_SPAN + 64) in old
    assert (1, 0) not in old
    assert len(old.clients[1][1]) <= DEDUP_SPAN // 8


def test_committed_ops_leave_out_the_tails_and_a_dropped_tail_forgets_its_ops() -> None:
    source = Replica(SLOTS)
    committed, uncommitted = stream([1, 2])
    source.apply_replicated(OLD, committed)
    source.commit(OLD, 1, known(OLD))
    source.apply_replicated(OLD, uncommitted)
    target = Replica(SLOTS)
    target.install_copy(1, 0, [], source.committed_ops())
    assert target.seen_op(committed.client, committed.op_id)
    assert not target.seen_op(uncommitted.client, uncommitted.op_id)
    source.drop_slot(0)
    assert source.seen_op(committed.client, committed.op_id)
    assert not source.seen_op(uncommitted.client, uncommitted.op_id)
