"""Deletes and scans without I/O: the replica's store, key index and undo, a node's scan page, the lost-write check."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from kvcluster.check.history import Operation, Outcome
from kvcluster.check.history import OpKind as HistoryKind
from kvcluster.check.verdict import lost_writes
from kvcluster.core.actions import Answer
from kvcluster.core.node import NodeCore
from kvcluster.core.placement import RoutingTable, initial_table
from kvcluster.core.protocol import HeartbeatAck, Reply, Request, Scan, ScanPage, Table, Timing
from kvcluster.core.replica import Replica, make_version
from kvcluster.core.scanning import scan_page
from kvcluster.core.wire import Op, OpKind, Status, Write

SLOTS = 4
OLD, NEW = 1, 2


def write(counter: int, key: str, value: str | None, slot: int = 0) -> Write:
    return Write(slot, 0, key, value, make_version(0, counter), 7, counter)


def consistent(replica: Replica) -> bool:
    """The key count agrees with the store, and each slot's keys are distinct and in order."""
    slot_keys = [list(store.keys_from("", inclusive=True)) for store in replica.data]
    return replica.keys == sum(map(len, slot_keys)) and all(keys == sorted(set(keys)) for keys in slot_keys)


def test_a_delete_removes_the_key_and_returns_what_it_held() -> None:
    replica = Replica(SLOTS)
    replica.apply(write(1, "a", "1"))
    replica.apply(write(2, "b", "2"))
    assert replica.apply(write(3, "a", None)) == b"a\x001"  # the stored pair: key, NUL, value
    assert dict(replica.items(0)) == {"b": "2"}
    assert replica.keys == 1
    assert list(replica.data[0].keys_from("", inclusive=True)) == ["b"]
    assert replica.seen_op(7, 3)


def test_a_delete_of_an_absent_key_changes_nothing_but_is_remembered() -> None:
    replica = Replica(SLOTS)
    replica.apply(write(1, "a", "1"))
    assert replica.apply(write(2, "zz", None)) is None
    assert dict(replica.items(0)) == {"a": "1"}
    assert replica.keys == 1
    assert replica.seen_op(7, 2)
    assert consistent(replica)


def test_reconcile_undoes_a_delete_beyond_the_new_primarys_high() -> None:
    backup = Replica(SLOTS)
    writes = [write(1, "a", "1"), write(2, "b", "2"), write(3, "a", None), write(4, "b", None)]
    for w in writes:
        backup.apply_replicated(OLD, w)
    assert dict(backup.items(0)) == {}
    backup.reconcile(NEW, 0, writes[1].version, [])  # the new primary holds only the two puts
    assert dict(backup.items(0)) == {"a": "1", "b": "2"}
    assert backup.keys == 2
    assert not backup.seen_op(7, 3)
    assert consistent(backup)


def test_reconcile_applies_a_delete_the_backup_lacks() -> None:
    backup = Replica(SLOTS)
    backup.apply_replicated(OLD, write(1, "a", "1"))
    backup.reconcile(NEW, 0, make_version(0, 2), [write(2, "a", None)])
    assert dict(backup.items(0)) == {}
    assert backup.keys == 0
    assert backup.seen_op(7, 2)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(st.tuples(st.sampled_from("abcd"), st.none() | st.sampled_from(["x", "y"])), max_size=30),
    data=st.data(),
)
def test_undoing_any_suffix_of_puts_and_deletes_restores_the_prefix(
    ops: list[tuple[str, str | None]], data: st.DataObject
) -> None:
    """A backup that applied a stream and undoes its tail beyond ``high`` holds exactly the prefix up to ``high``."""
    writes = [write(n + 1, key, value) for n, (key, value) in enumerate(ops)]
    kept = data.draw(st.integers(0, len(writes)), label="kept")
    backup = Replica(SLOTS)
    for w in writes:
        backup.apply_replicated(OLD, w)
    backup.reconcile(NEW, 0, make_version(0, kept), [])
    expected: dict[str, str] = {}
    for w in writes[:kept]:
        if w.value is None:
            expected.pop(w.key, None)
        else:
            expected[w.key] = w.value
    assert dict(backup.items(0)) == expected
    assert consistent(backup)


def test_a_copied_slot_is_indexed_and_a_dropped_one_forgotten() -> None:
    replica = Replica(SLOTS)
    replica.install_copy(1, 5, [("b", "1"), ("a", "2")], [])
    assert list(replica.data[1].keys_from("", inclusive=True)) == ["a", "b"]
    assert replica.keys == 2
    replica.drop_slot(1)
    assert list(replica.data[1].keys_from("", inclusive=True)) == []
    assert replica.keys == 0


def filled(keys: list[str]) -> Replica:
    replica = Replica(SLOTS)
    for n, key in enumerate(keys, start=1):
        replica.apply(write(n, key, "v", slot=n % SLOTS))
    return replica


def test_a_scan_page_merges_its_slots_in_order_after_the_cursor() -> None:
    keys = [f"k{n:02d}" for n in range(20)]
    replica = filled(keys)
    assert scan_page(replica, Scan(1, "", "", 5, [0, 1, 2, 3])) == keys[:5]
    assert scan_page(replica, Scan(1, "", "k04", 5, [0, 1, 2, 3])) == keys[5:10]
    assert scan_page(replica, Scan(1, "", "k17", 5, [0, 1, 2, 3])) == keys[18:]
    assert scan_page(replica, Scan(1, "", "", 100, [1])) == [k for n, k in enumerate(keys, 1) if n % SLOTS == 1]


def test_a_scan_page_keeps_to_its_prefix() -> None:
    replica = filled(["a", "ab", "abc", "abd", "ac", "b", "ab\U0010ffff", "ab\U0010ffffz"])
    slots = list(range(SLOTS))
    assert scan_page(replica, Scan(1, "ab", "", 100, slots)) == ["ab", "abc", "abd", "ab\U0010ffff", "ab\U0010ffffz"]
    assert scan_page(replica, Scan(1, "ab", "abc", 2, slots)) == ["abd", "ab\U0010ffff"]
    assert scan_page(replica, Scan(1, "ab", "b", 100, slots)) == []
    assert scan_page(replica, Scan(1, "zz", "", 100, slots)) == []


def test_a_node_serves_a_scan_only_of_its_own_slots_with_a_fresh_lease() -> None:
    nodes = 3
    table = RoutingTable(initial_table({n: f"tcp://127.0.0.1:{9000 + n}" for n in range(1, nodes + 1)}, 2, 8))
    core = NodeCore(1, "tcp://127.0.0.1:9001", 100, Timing())
    core.on_master(0.0, Table(table.data))
    core.take()
    own = [s for s in range(table.slots) if table.primary(s) == 1]
    other = [s for s in range(table.slots) if table.primary(s) != 1]

    def answer(slots: list[int], now: float) -> ScanPage:
        core.on_router(now, [b"client"], Scan(1, "", "", 10, slots))
        (action,) = core.take()
        assert isinstance(action, Answer)
        assert isinstance(action.message, ScanPage)
        return action.message

    assert answer(own, 0.0).status == Status.RETRY  # no lease yet
    core.on_master(0.0, HeartbeatAck(0.0, 1, 1))
    assert answer(own, 0.2) == ScanPage(1, 1, Status.OK, [])
    assert answer([*own, other[0]], 0.2).status == Status.NOT_PRIMARY
    assert answer([table.slots], 0.2).status == Status.INVALID
    assert answer(own, 1.0).status == Status.RETRY  # the lease ran out


def test_a_delete_answers_whether_the_key_existed_and_a_resend_is_not_applied_again() -> None:
    table = RoutingTable(initial_table({1: "tcp://127.0.0.1:9001"}, 1, 8))
    core = NodeCore(1, "tcp://127.0.0.1:9001", 100, Timing())
    core.on_master(0.0, Table(table.data))
    core.on_master(0.0, HeartbeatAck(0.0, 1, 1))
    core.take()
    slot = table.slot_of("k")

    def send(request_id: int, kind: OpKind, value: str | None, op_id: int) -> Status:
        core.on_router(0.1, [b"client"], Request(5, request_id, [Op(kind, "k", value, slot, 0, op_id)]))
        core.flush(0.1)
        (action,) = core.take()
        assert isinstance(action, Answer)
        assert isinstance(action.message, Reply)
        return Status(action.message.results[0].status)

    assert send(1, OpKind.PUT, "v", 1) == Status.OK
    assert send(2, OpKind.DELETE, None, 2) == Status.OK
    assert dict(core.replica.items(slot)) == {}
    assert send(3, OpKind.DELETE, None, 3) == Status.NOT_FOUND
    assert send(4, OpKind.PUT, "w", 4) == Status.OK
    assert send(5, OpKind.DELETE, None, 2) == Status.OK  # a resend of the first delete: answered, not applied
    assert dict(core.replica.items(slot)) == {"k": "w"}
    assert send(6, OpKind.DELETE, "v", 6) == Status.INVALID
    assert core.replica.keys == 1


def test_the_lost_write_check_counts_deletes_as_writes() -> None:

    def op(kind: HistoryKind, value: str | None, invoke: float, complete: float, outcome: Outcome) -> Operation:
        return Operation(1, kind, "k", value, invoke, complete, outcome)

    put = op(HistoryKind.PUT, "a", 0, 1, Outcome.OK)
    delete = op(HistoryKind.DELETE, None, 2, 3, Outcome.OK)
    put_again = op(HistoryKind.PUT, "b", 4, 5, Outcome.OK)
    absent = op(HistoryKind.GET, None, 6, 7, Outcome.NOT_FOUND)
    read_a = op(HistoryKind.GET, "a", 6, 7, Outcome.OK)

    def lost(history: list[Operation], final: Operation) -> list[str]:
        return lost_writes(history, [final], [])

    assert lost([put, delete], absent) == []
    assert lost([put, delete], read_a) != []  # the delete was acknowledged after the put
    assert lost([put, delete, put_again], absent) != []  # so was the put after the delete
    assert lost([put, dataclasses.replace(delete, outcome=Outcome.UNKNOWN), put_again], absent) == []
    assert lost([put], absent) != []
