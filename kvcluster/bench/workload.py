"""The one load worker of the benchmarks: client processes that run rounds of gets and puts and record them.

A ``Workload`` is one client process's job (run by a ``client_pool.ClientPool``):
which operations it sends, round after round, how (operations per message,
messages in flight, timeouts), when it stops, and what it records. The
operations are one of three shapes:

- a **mix** of gets and puts on keys drawn at random from ``key0`` ..
  ``key{keys-1}`` (throughput, and the load of the healing benchmarks);
- a **range** of keys in order, each written once with its bulk value or read
  back and checked against it (``bulk``: how every benchmark fills a cluster);
- **owned** keys, one operation on each per round, so that each key is written
  by this process alone, one put at a time (failover, master failover).

It stops when its operations run out, when ``duration`` has passed, or when the
parent sets ``stop``. It records a ``Tally`` (latencies per time bucket,
failures by kind, values read back wrong) or (``history_worker``) every
operation as an ``OpRecord`` for the failover analyses. Buckets are numbered
on the monotonic clock, which every process shares, so the parent can cut a
tally into a timeline and phases after the fact (``timeline``, ``phase``).
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from kvcluster.bench.common import CLIENT_DEADLINE, CLIENT_TRY_TIMEOUT, key_name, percentile

if TYPE_CHECKING:
    import random

    from kvcluster.client import OpResult
    from kvcluster.client_pool import InlineWorker, Worker
    from kvcluster.core.wire import OpKind

    Op = tuple[OpKind, str, str | None]

VALUE_SIZE = 100
MIN_ROUND = 4096  # operations per ``execute`` call of a mix or range: the deadline bounds one call, not the run

# One operation as a client saw it: (key, is_put, start, end, completion, value, node_id).
OpRecord = tuple[str, bool, float, float, str, str | None, int]


L = TypeVar("L", "Tally", "History")


def bulk_value(index: int) -> str:
    """The 100-byte value ``key{index}`` holds after a bulk load (and after every put of the healing load)."""
    prefix = f"v{index}."
    return prefix + "x" * (VALUE_SIZE - len(prefix))


@dataclass(frozen=True)
class Workload:
    """One client process's operations, how it sends them, when it stops and what it records."""

    master: str
    index: int = 0
    seed: int = 0
    keys: int = 0
    """A mix: keys to draw from."""
    ops: int | None = None
    """A mix: operations in all (None: until ``duration`` or ``stop``)."""
    read_ratio: float = 0.5
    bulk_puts: bool = False
    """A mix: puts write the key's bulk value again (so a final read-back stays exact), not a unique value."""
    span: range | None = None
    """A range: these key indices in order."""
    verify: bool = False
    """A range: read each key back and check its bulk value, instead of writing it."""
    owned: tuple[str, ...] = ()
    """Owned keys: one operation on each per round."""
    round_size: int = 0
    """Operations per ``execute`` call of a mix or range; 0 for ``MIN_ROUND`` or enough for the window."""
    batch: int = 1
    window: int = 64
    duration: float | None = None
    stop: Any = None
    """A multiprocessing Event of the pool's context: the parent sets it to stop the client after its round."""
    pause: float = 0.0
    """Seconds between rounds (light probes)."""
    deadline: float = CLIENT_DEADLINE
    try_timeout: float = CLIENT_TRY_TIMEOUT
    bucket: float = 0.0
    """Seconds per bucket of a tally; 0 for one bucket."""

    def rounds(self, rng: random.Random) -> Iterator[tuple[list[Op], list[str | None] | None]]:
        """The operations, a round at a time, each with the values its gets must read (None: no check)."""
        if self.owned:
            return self._owned_rounds(rng)
        if self.span is not None:
            return self._range_rounds()
        return self._mix_rounds(rng)

    @property
    def _round(self) -> int:
        return self.round_size or max(MIN_ROUND, self.batch * self.window * 4)

    def _owned_rounds(self, rng: random.Random) -> Iterator[tuple[list[Op], None]]:
        from kvcluster.core.wire import OpKind  # noqa: PLC0415

        seq = 0
        while True:
            ops: list[Op] = []
            for key in self.owned:
                seq += 1
                ops.append((OpKind.PUT, key, f"c{self.index}-{seq}") if rng.random() < 0.5 else (OpKind.GET, key, None))
            yield ops, None

    def _range_rounds(self) -> Iterator[tuple[list[Op], list[str | None] | None]]:
        from kvcluster.core.wire import OpKind  # noqa: PLC0415

        assert self.span is not None
        for start in range(self.span.start, self.span.stop, self._round):
            indices = range(start, min(self.span.stop, start + self._round))
            if self.verify:
                yield [(OpKind.GET, key_name(i), None) for i in indices], [bulk_value(i) for i in indices]
            else:
                yield [(OpKind.PUT, key_name(i), bulk_value(i)) for i in indices], None

    def _mix_rounds(self, rng: random.Random) -> Iterator[tuple[list[Op], None]]:
        from kvcluster.core.wire import OpKind  # noqa: PLC0415

        seq, left = 0, self.ops
        while left is None or left > 0:
            size = self._round if left is None else min(self._round, left)
            ops: list[Op] = []
            for _ in range(size):
                i = rng.randrange(self.keys)
                seq += 1
                if rng.random() < self.read_ratio:
                    ops.append((OpKind.GET, key_name(i), None))
                else:
                    ops.append((OpKind.PUT, key_name(i), bulk_value(i) if self.bulk_puts else f"c{self.index}.{seq}"))
            left = None if left is None else left - size
            yield ops, None


@dataclass
class Tally:
    """What a client's operations came to: latencies (ms) per bucket of their answer time, and what failed."""

    bucket: float = 0.0
    latencies: dict[int, array[float]] = field(default_factory=dict)
    failed: dict[int, int] = field(default_factory=dict)
    """Operations that did not complete (a miss completes), per bucket."""
    failures: dict[str, int] = field(default_factory=dict)
    """The same by completion (timed_out, no_replica...)."""
    not_found: int = 0
    wrong: int = 0
    """Gets that read another value than the one expected."""
    started: float = 0.0
    ended: float = 0.0
    cpu_s: float = 0.0
    """This process, every thread (ZeroMQ's I/O thread too), while it ran its operations."""

    def index(self, t: float) -> int:
        return int(t / self.bucket) if self.bucket else 0

    @property
    def completed(self) -> int:
        return sum(len(values) for values in self.latencies.values())

    def ordered(self) -> list[float]:
        return sorted(v for values in self.latencies.values() for v in values)

    def fail(self, name: str, count: int, at: float) -> None:
        self.failures[name] = self.failures.get(name, 0) + count
        self.failed[self.index(at)] = self.failed.get(self.index(at), 0) + count

    def record(self, _ops: Sequence[Op], results: Sequence[OpResult], start: float, end: float, expected: Any) -> None:
        from kvcluster.client import Completion  # noqa: PLC0415

        for i, result in enumerate(results):
            if result.completion is Completion.NOT_FOUND:
                self.not_found += 1
            elif result.completion is not Completion.OK:
                self.fail(result.completion.value, 1, end)
                continue
            elif expected is not None and result.value != expected[i]:
                self.wrong += 1
            # Every op of a round is sent at once, so its own latency dates its answer.
            self.latencies.setdefault(self.index(start + result.latency), array("f")).append(result.latency * 1000)

    def merge(self, other: Tally) -> None:
        for index, values in other.latencies.items():
            self.latencies.setdefault(index, array("f")).extend(values)
        for index, count in other.failed.items():
            self.failed[index] = self.failed.get(index, 0) + count
        for name, count in other.failures.items():
            self.failures[name] = self.failures.get(name, 0) + count
        self.not_found += other.not_found
        self.wrong += other.wrong
        self.cpu_s += other.cpu_s
        self.started = min(self.started, other.started) if self.started else other.started
        self.ended = max(self.ended, other.ended)


def merged(tallies: Sequence[Tally]) -> Tally:
    total = Tally(tallies[0].bucket if tallies else 0.0)
    for tally in tallies:
        total.merge(tally)
    return total


@dataclass
class Bucket:
    """One point of the timeline: seconds from the release to the bucket's start, and what completed in it."""

    t: float
    ops_per_s: float
    p99_ms: float | None
    failed: int


@dataclass
class Phase:
    """The load over one part of a run (seconds from the release): throughput, latency, failures."""

    name: str
    start_s: float
    end_s: float
    ops_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    failed: int


def _full_buckets(bucket: float, start: float, end: float) -> range:
    """Indices of the buckets that lie wholly in [start, end] (monotonic seconds)."""
    first = int(-(-start // bucket))  # ceil
    return range(first, max(first, int(end // bucket)))


def timeline(log: Tally, released: float, stopped: float) -> list[Bucket]:
    """Throughput and p99 per bucket, from the first whole bucket after the release to the last before the stop."""
    points = []
    for index in _full_buckets(log.bucket, released, stopped):
        values = sorted(log.latencies.get(index, ()))
        points.append(
            Bucket(
                t=round(index * log.bucket - released, 3),
                ops_per_s=round(len(values) / log.bucket, 1),
                p99_ms=round(percentile(values, 0.99), 2) if values else None,
                failed=log.failed.get(index, 0),
            )
        )
    return points


def phase(log: Tally, released: float, name: str, start: float, end: float) -> Phase:
    """The figures over [start, end] (monotonic seconds): whole buckets only, or every bucket it touches if none."""
    indices = _full_buckets(log.bucket, start, end)
    if not indices:
        indices = range(int(start // log.bucket), int(end // log.bucket) + 1)
    values = sorted(v for i in indices for v in log.latencies.get(i, ()))
    span = len(indices) * log.bucket
    return Phase(
        name=name,
        start_s=round(start - released, 3),
        end_s=round(end - released, 3),
        ops_per_s=round(len(values) / span, 1) if span else 0.0,
        p50_ms=round(percentile(values, 0.5), 2) if values else None,
        p99_ms=round(percentile(values, 0.99), 2) if values else None,
        failed=sum(log.failed.get(i, 0) for i in indices),
    )


@dataclass
class History:
    """Every operation of a client, in the order of its rounds."""

    records: list[OpRecord] = field(default_factory=list)

    def record(self, ops: Sequence[Op], results: Sequence[OpResult], start: float, end: float, _expected: Any) -> None:
        from kvcluster.client import Completion  # noqa: PLC0415
        from kvcluster.core.wire import OpKind  # noqa: PLC0415

        for (kind, key, value), result in zip(ops, results, strict=True):
            done = result.completion in (Completion.OK, Completion.NOT_FOUND)
            put = kind == OpKind.PUT
            self.records.append(
                (
                    key,
                    put,
                    start,
                    start + result.latency if done else end,
                    result.completion.value,
                    value if put else result.value,
                    result.node_id,
                )
            )


def tally_worker(job: Workload, worker: Worker | InlineWorker) -> Tally:
    """Entry point of a client process that tallies its operations."""
    return _run(job, worker, Tally(job.bucket))


def history_worker(job: Workload, worker: Worker | InlineWorker) -> History:
    """Entry point of a client process that keeps every operation."""
    return _run(job, worker, History())


def _run(job: Workload, worker: Worker | InlineWorker, log: L) -> L:
    """Get ready, wait for the release, run the rounds into ``log`` until the job stops, and return it."""
    import random  # noqa: PLC0415

    from kvcluster.client import Completion, Connection  # noqa: PLC0415

    rng = random.Random(job.seed)
    with Connection(job.master, deadline=job.deadline, try_timeout=job.try_timeout) as client:
        client.refresh_table()
        worker.wait_for_release()
        started, cpu_started = time.monotonic(), time.process_time()
        stop_at = started + job.duration if job.duration is not None else None
        sent = 0
        for ops, expected in job.rounds(rng):
            start = time.monotonic()
            if (stop_at is not None and start >= stop_at) or (job.stop is not None and job.stop.is_set()):
                break
            results = client.execute(ops, batch=job.batch, window=job.window)
            end = time.monotonic()
            log.record(ops, results, start, end, expected)
            sent += len(ops)
            worker.progress(len(ops))
            if job.span is not None and all(r.completion is Completion.TIMED_OUT for r in results):
                # Nothing answers: waiting out the deadline for every round left would take hours.
                rest = len(job.span) - sent
                if isinstance(log, Tally):
                    log.fail(Completion.TIMED_OUT.value, rest, end)
                worker.progress(rest)
                break
            if job.pause:
                time.sleep(job.pause)
        if isinstance(log, Tally):
            log.started, log.ended, log.cpu_s = started, time.monotonic(), time.process_time() - cpu_started
    return log
