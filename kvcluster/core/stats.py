"""What a storage node counts about its own work, for ``kvcluster top``: ops and request latency per second.

The hot path only ever increments a list item: ``ops[kind] += 1`` per served
op, and ``hist[bisect_right(BOUNDS, seconds)] += 1`` per reply. Both lists
belong to the current one-second bucket of a ring of ``BUCKETS``; once a
second (``rotate``, from the node's timer) the oldest bucket is folded into
the totals, zeroed in place and becomes the current one, so counting
allocates nothing. A report covers the whole ring: between ``BUCKETS - 1``
and ``BUCKETS`` seconds, its length given, so rates need no second sample.

Latency lands in fixed buckets ``2 ** (1/4)`` apart (19 %) from 10 us to
about 20 s; a percentile is interpolated inside its bucket, so it is good
to within that step.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kvcluster.core.placement import RoutingTable
from kvcluster.core.protocol import NodeStats
from kvcluster.core.replica import Replica
from kvcluster.core.waiters import PendingRequest
from kvcluster.core.wire import DiskReport, OpKind

BUCKETS = 5  # one-second buckets in the ring, the current one included: the window is 4 to 5 s
STEP = 2**0.25
BOUNDS: tuple[float, ...] = tuple(1e-5 * STEP**i for i in range(84))  # upper bounds in seconds, 10 us .. ~20 s
KINDS = 4  # ops are counted at their OpKind value: 1 get, 2 put, 3 delete (0 unused)


@dataclass(frozen=True, slots=True)
class Window:
    """The ring summed: ops per kind and the latency histogram over ``seconds``."""

    seconds: float
    ops: list[int]
    hist: list[int]

    def rate(self, kind: int) -> float:
        return self.ops[kind] / self.seconds if self.seconds > 0 else 0.0

    @property
    def replies(self) -> int:
        return sum(self.hist)

    def percentile(self, fraction: float) -> float:
        """The latency in seconds below which ``fraction`` of the window's replies fell; 0 with none."""
        return percentile(self.hist, fraction)


def percentile(hist: list[int], fraction: float) -> float:
    """Interpolate the ``fraction`` quantile (0..1) of a histogram over ``BOUNDS``; 0.0 when it is empty."""
    total = sum(hist)
    if not total:
        return 0.0
    rank = fraction * total
    seen = 0
    for index, count in enumerate(hist):
        if count and seen + count >= rank:
            low = BOUNDS[index - 1] if index > 0 else 0.0
            high = BOUNDS[index] if index < len(BOUNDS) else BOUNDS[-1] * STEP
            return low + (high - low) * max(0.0, rank - seen) / count
        seen += count
    return BOUNDS[-1] * STEP  # not reached: the loop ends on the last non-empty bucket


class OpStats:
    """Counters of one node; ``ops`` and ``hist`` are the current second's, to increment in place."""

    def __init__(self, now: float) -> None:
        self.ring = [([0] * KINDS, [0] * (len(BOUNDS) + 1)) for _ in range(BUCKETS)]
        self.current = 0
        self.ops, self.hist = self.ring[0]
        self.started = now
        self.bucket_started = now  # when the current bucket began
        self.next_rotate = now + 1.0
        self.total_ops = [0] * KINDS  # of buckets that left the ring: add ``window().ops`` for a running total
        self.total_hist = [0] * (len(BOUNDS) + 1)

    def record(self, seconds: float) -> None:
        """One reply left ``seconds`` after its request arrived."""
        self.hist[bisect_right(BOUNDS, seconds)] += 1

    def rotate(self, now: float) -> None:
        """Start a new second, if one is due: the oldest bucket is folded into the totals and reused."""
        if now < self.next_rotate:
            return
        # A stalled node may have missed several seconds: each is an empty bucket, at most a whole ring of them.
        missed = min(BUCKETS, int(now - self.next_rotate) + 1)
        for _ in range(missed):
            self.current = (self.current + 1) % BUCKETS
            ops, hist = self.ring[self.current]
            for index, count in enumerate(ops):
                self.total_ops[index] += count
                ops[index] = 0
            for index, count in enumerate(hist):
                if count:
                    self.total_hist[index] += count
                    hist[index] = 0
        self.ops, self.hist = self.ring[self.current]
        self.bucket_started = now
        self.next_rotate = now + 1.0

    def window(self, now: float) -> Window:
        """The whole ring summed, and how many seconds it covers (less than a ring's right after the start)."""
        ops = [sum(bucket[0][k] for bucket in self.ring) for k in range(KINDS)]
        hist = [sum(column) for column in zip(*(bucket[1] for bucket in self.ring), strict=True)]
        seconds = min(now - self.started, (BUCKETS - 1) + (now - self.bucket_started))
        return Window(max(seconds, 1e-3), ops, hist)

    def totals(self, now: float) -> tuple[list[int], list[int]]:
        """Ops per kind and the latency histogram since the start."""
        window = self.window(now)
        return (
            [a + b for a, b in zip(self.total_ops, window.ops, strict=True)],
            [a + b for a, b in zip(self.total_hist, window.hist, strict=True)],
        )


class Counted(Protocol):
    """What ``node_stats`` reads of a node (``NodeCore``)."""

    now: float
    node_id: int
    pid: int
    stats: OpStats
    table: RoutingTable | None
    replica: Replica
    pending: list[PendingRequest]
    inflight: set[tuple[int, int]]
    disk: DiskReport | None
    sample_process: Callable[[], tuple[float, int]] | None


def node_stats(core: Counted, request_id: int) -> NodeStats:
    """The answer to a ``StatsRequest``: the node's counters, its holdings and its backlog, at ``core.now``."""
    now = core.now
    window = core.stats.window(now)
    totals, _ = core.stats.totals(now)
    primary, backup = core.table.slots_of(core.node_id) if core.table is not None else (0, 0)
    oldest = min((p.arrived for p in core.pending if p.writes), default=now)
    cpu, rss = core.sample_process() if core.sample_process is not None else (0.0, 0)
    disk = core.disk
    return NodeStats(
        request_id=request_id,
        node_id=core.node_id,
        pid=core.pid,
        uptime_s=now - core.stats.started,
        window_s=window.seconds,
        gets=window.ops[OpKind.GET],
        puts=window.ops[OpKind.PUT],
        deletes=window.ops[OpKind.DELETE],
        replies=window.replies,
        p50_ms=window.percentile(0.5) * 1000,
        p99_ms=window.percentile(0.99) * 1000,
        total_gets=totals[OpKind.GET],
        total_puts=totals[OpKind.PUT],
        total_deletes=totals[OpKind.DELETE],
        keys=core.replica.keys,
        primary_slots=primary,
        backup_slots=backup,
        table_version=core.table.version if core.table is not None else 0,
        pending_writes=len(core.inflight),
        oldest_pending_ms=max(0.0, now - oldest) * 1000,
        fsync_policy=disk.policy if disk is not None else "",
        fsync_p99_ms=disk.p99_sync_ms if disk is not None else -1.0,
        cpu_percent=cpu,
        rss_bytes=rss,
    )
