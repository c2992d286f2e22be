"""A node's counters for ``kvcluster top``: the per-second ring, the latency histogram, and the STATS answer."""

from __future__ import annotations

from bisect import bisect_right

import pytest

from kvcluster.core.actions import Answer
from kvcluster.core.node import NodeCore
from kvcluster.core.placement import RoutingTable, initial_table
from kvcluster.core.protocol import HeartbeatAck, NodeStats, Reply, Request, StatsRequest, Table, Timing, decode, encode
from kvcluster.core.stats import BOUNDS, BUCKETS, OpStats, percentile
from kvcluster.core.wire import DiskReport, Op, OpKind


def record(stats: OpStats, seconds: float, times: int = 1) -> None:
    """What the node's driver does per reply."""
    for _ in range(times):
        stats.hist[bisect_right(BOUNDS, seconds)] += 1


def test_percentiles_are_within_one_bucket_step() -> None:
    stats = OpStats(0.0)
    for ms in range(1, 101):  # 1 .. 100 ms, once each
        record(stats, ms / 1000)
    window = stats.window(0.5)
    assert window.replies == 100
    assert window.percentile(0.5) == pytest.approx(0.050, rel=0.2)
    assert window.percentile(0.99) == pytest.approx(0.099, rel=0.2)
    assert percentile([0] * (len(BOUNDS) + 1), 0.99) == 0.0


def test_extreme_latencies_land_in_the_end_buckets() -> None:
    stats = OpStats(0.0)
    record(stats, 0.0)
    record(stats, 1e6)
    assert stats.hist[0] == 1
    assert stats.hist[len(BOUNDS)] == 1
    assert stats.window(0.1).percentile(1.0) >= BOUNDS[-1]


def test_rates_cover_the_ring_and_old_seconds_fall_out_into_the_totals() -> None:
    stats = OpStats(0.0)
    for second in range(10):
        now = float(second)
        stats.rotate(now)
        stats.ops[OpKind.GET] += 100
        stats.ops[OpKind.PUT] += 10
        record(stats, 0.001, 110)
    window = stats.window(9.5)
    assert window.seconds == pytest.approx(BUCKETS - 0.5)
    assert window.ops[OpKind.GET] == 100 * BUCKETS
    assert window.rate(OpKind.GET) == pytest.approx(100 * BUCKETS / (BUCKETS - 0.5))
    assert window.replies == 110 * BUCKETS
    ops, hist = stats.totals(9.5)
    assert (ops[OpKind.GET], ops[OpKind.PUT], ops[OpKind.DELETE]) == (1000, 100, 0)
    assert sum(hist) == 1100


def test_a_stalled_node_reports_its_idle_seconds_as_empty() -> None:
    stats = OpStats(0.0)
    stats.ops[OpKind.PUT] += 7
    stats.rotate(60.0)  # nothing for a minute: every bucket is stale
    assert stats.window(60.1).ops[OpKind.PUT] == 0
    assert stats.totals(60.1)[0][OpKind.PUT] == 7
    stats.rotate(60.5)  # not yet a second later: still the same bucket
    stats.ops[OpKind.PUT] += 1
    assert stats.window(60.6).ops[OpKind.PUT] == 1


def test_a_node_counts_what_it_serves_and_answers_stats() -> None:
    table = RoutingTable(initial_table({1: "tcp://127.0.0.1:9001"}, 1, 8))
    core = NodeCore(1, "tcp://127.0.0.1:9001", 100, Timing())
    core.start(0.0)
    core.on_master(0.0, Table(table.data))
    core.on_master(0.0, HeartbeatAck(0.0, 1, 1))
    core.take()
    core.disk = DiskReport("always", 0.5, 2.5, "")
    core.sample_process = lambda: (12.5, 1 << 20)
    ops = [Op(OpKind.PUT, f"k{i}", "v", table.slot_of(f"k{i}"), 0, i) for i in range(3)]
    ops.append(Op(OpKind.DELETE, "k0", None, table.slot_of("k0"), 0, 3))
    ops += [Op(OpKind.GET, "k1", None, table.slot_of("k1"), 0, 4), Op(OpKind.GET, "k1", None, 99, 0, 5)]
    core.on_router(0.1, [b"client"], Request(5, 1, ops))
    core.flush(0.1)
    (answer,) = core.take()
    assert isinstance(answer, Answer)
    assert isinstance(answer.message, Reply)
    assert answer.arrived == 0.1  # the driver counts the latency from here when it sends the reply
    core.on_router(0.3, [b"top"], StatsRequest(42))
    (answer,) = core.take()
    assert isinstance(answer, Answer)
    assert not answer.durable
    assert not answer.arrived  # a STATS answer is not a client op: it is not in the latencies
    stats = decode(encode(answer.message))
    assert isinstance(stats, NodeStats)
    assert (stats.request_id, stats.node_id, stats.pid) == (42, 1, 100)
    # the get of a bad slot was refused, so not counted; the write of a key the request also deleted was
    assert (stats.gets, stats.puts, stats.deletes) == (1, 3, 1)
    assert (stats.total_gets, stats.total_puts, stats.total_deletes) == (1, 3, 1)
    assert stats.keys == 2
    assert (stats.primary_slots, stats.backup_slots) == (8, 0)
    assert stats.window_s == pytest.approx(0.3)
    assert (stats.fsync_policy, stats.fsync_p99_ms) == ("always", 2.5)
    assert (stats.cpu_percent, stats.rss_bytes) == (12.5, 1 << 20)
    assert (stats.pending_writes, stats.oldest_pending_ms) == (0, 0.0)


def test_writes_waiting_for_a_backup_show_as_pending_with_their_age() -> None:
    endpoints = {1: "tcp://127.0.0.1:9001", 2: "tcp://127.0.0.1:9002"}
    table = RoutingTable(initial_table(endpoints, 2, 8))
    core = NodeCore(1, endpoints[1], 100, Timing())
    core.start(0.0)
    core.on_master(0.0, Table(table.data))
    core.on_master(0.0, HeartbeatAck(0.0, 1, 1))
    core.take()
    slot = next(s for s in range(table.slots) if table.primary(s) == 1)
    key = next(k for k in (f"k{i}" for i in range(1000)) if table.slot_of(k) == slot)
    core.on_router(0.1, [b"client"], Request(5, 1, [Op(OpKind.PUT, key, "v", slot, 0, 1)]))
    core.flush(0.1)
    core.take()  # the replication to node 2, never acknowledged here
    core.on_router(0.35, [b"top"], StatsRequest(1))
    (answer,) = core.take()
    assert isinstance(answer.message, NodeStats)
    assert answer.message.pending_writes == 1
    assert answer.message.oldest_pending_ms == pytest.approx(250.0)
