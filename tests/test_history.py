"""Bringing a returning replica up to date with only what it missed: digests and backlogs, without a cluster."""

from __future__ import annotations

from kvcluster.core.history import BACKLOG
from kvcluster.core.replica import Replica, make_version
from kvcluster.core.wire import Write


def put(replica: Replica, key: str, value: str | None, counter: int, slot: int = 0) -> None:
    replica.apply(Write(slot, 1, key, value, make_version(1, counter), 1, counter))


def test_equal_contents_have_equal_digests_in_any_order() -> None:
    one, two = Replica(1), Replica(1)
    put(one, "a", "1", 1)
    put(one, "b", "2", 2)
    put(two, "b", "2", 1)
    put(two, "a", "0", 2)
    put(two, "a", "1", 3)
    assert one.digest(0) == two.digest(0)
    put(two, "b", None, 4)
    assert one.digest(0) != two.digest(0)


def test_a_replica_that_left_at_a_version_gets_exactly_the_writes_since() -> None:
    source, returning = Replica(1), Replica(1)
    for counter in range(1, 11):
        for replica in (source, returning):
            put(replica, f"k{counter % 4}", f"v{counter}", counter)
    base, digest = returning.high[0], returning.digest(0)
    put(source, "k1", "late", 11)
    put(source, "k9", "new", 12)
    put(source, "k2", None, 13)
    writes = source.history.since(0, base, digest)
    assert writes == [("k1", "late"), ("k9", "new"), ("k2", None)]
    returning.catch_up(0, source.high[0], writes, [])
    assert dict(returning.items(0)) == dict(source.items(0))
    assert returning.digest(0) == source.digest(0)
    assert returning.keys == source.keys


def test_a_replica_holding_a_write_the_source_never_had_gets_nothing_partial() -> None:
    source, returning = Replica(1), Replica(1)
    for replica in (source, returning):
        put(replica, "a", "1", 1)
    put(returning, "b", "undone-elsewhere", 2)  # applied here, never committed: the source does not have it
    put(source, "c", "3", 3)
    assert source.history.since(0, returning.high[0], returning.digest(0)) is None


def test_a_replica_away_longer_than_the_backlog_gets_a_full_copy() -> None:
    source, returning = Replica(1), Replica(1)
    for replica in (source, returning):
        put(replica, "a", "1", 1)
    for counter in range(2, BACKLOG + 3):
        put(source, f"k{counter}", "x", counter)
    assert source.history.since(0, returning.high[0], returning.digest(0)) is None


def test_digests_survive_a_restart_from_the_log_and_the_backlog_starts_there() -> None:
    from kvcluster.core.placement import initial_table  # noqa: PLC0415
    from kvcluster.core.records import TableSeen  # noqa: PLC0415
    from kvcluster.core.replica import Rebuild  # noqa: PLC0415

    replica = Replica(1)
    replica.journal = [TableSeen(initial_table({1: "tcp://a:1"}, 1, 1))]
    for counter in range(1, 6):
        put(replica, f"k{counter}", "v", counter)
    rebuild = Rebuild()
    for record in replica.journal:
        assert rebuild.feed(record)
    rebuilt = rebuild.result()
    assert rebuilt is not None
    restored = rebuilt[0]
    assert restored.digest(0) == replica.digest(0)
    assert restored.keys == 5
    assert list(restored.data[0].keys_from("", inclusive=True)) == [f"k{c}" for c in range(1, 6)]
    assert restored.history.since(0, restored.high[0], restored.digest(0)) == []
    assert restored.history.since(0, make_version(1, 2), 0) is None  # what it wrote before the restart is not kept
