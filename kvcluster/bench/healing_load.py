"""What the healing benchmarks (``recovery``, ``rebalance``) share: the fill, the client load, its figures, polling.

The cluster is filled by the loader processes of ``kvcluster load``
(``loaders.Loaders``) with ``key0`` .. ``key{N-1}`` holding ``bulk.bulk_value``,
so that ``bulk.bulk_verify`` can read every key back at the end. Client
processes (a ``workers.ClientPool``) then run a 50/50 get/put load on those
keys until told to stop (a put writes the key's own value again, so the final
read-back stays exact) and keep each completed operation's latency in the
time bucket its answer arrived in. Buckets are numbered on the monotonic
clock, which every process shares, so the parent can cut the run into
phases (before, during and after the healing) after the fact.
"""

from __future__ import annotations

import os
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvcluster.bench.bulk import bulk_value, bulk_verify
from kvcluster.bench.common import (
    CLIENT_DEADLINE,
    Advance,
    BenchmarkError,
    key_name,
    percentile,
)
from kvcluster.client_pool import ClientPool, Worker
from kvcluster.errors import KvclusterError

if TYPE_CHECKING:
    from rich.progress import Progress

    from kvcluster.core.protocol import StatusReport

BUCKET = 0.5  # seconds per point of the timeline
TRAFFIC_ROUND = 256  # operations in flight per client process: 16 messages of 16
TRAFFIC_BATCH = 16
# The client's own first try timeout: a round waits for its slowest operation, so after a kill the load stalls
# until its operations on the dead node are resent, and a long first try would show the client, not the cluster.
TRAFFIC_TRY_TIMEOUT = 0.3
LOAD_CHUNK = 50_000  # keys handed to the loader processes at a time
LOAD_BATCH = 256  # what ``kvcluster load`` sends by default
LOAD_WINDOW = 32
LOAD_CLIENTS = 2
LOAD_DEADLINE = 30.0  # seconds one share of a chunk may take
POLL = 0.1  # seconds between looks at the master's status


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def fill(master: str, keys: int, advance: Advance) -> float:
    """Store ``keys`` keys with 100-byte values through ``kvcluster load``'s loader processes; seconds it took."""
    from kvcluster.load_processes import Loaders, Stored  # noqa: PLC0415

    failed: list[str] = []

    def on_stored(outcome: Stored) -> None:
        failed.extend(reason for _, reason in outcome.failed)
        advance(outcome.stored + len(outcome.failed))

    started = time.monotonic()
    with Loaders(master, LOAD_CLIENTS, deadline=LOAD_DEADLINE, batch=LOAD_BATCH, window=LOAD_WINDOW) as loaders:
        for start in range(0, keys, LOAD_CHUNK):
            entries = {key_name(i): (bulk_value(i), i + 1) for i in range(start, min(keys, start + LOAD_CHUNK))}
            loaders.send(entries, on_stored)
            loaders.collect(on_stored, 0)
        loaders.finish(on_stored)
    if failed:
        raise BenchmarkError(f"{len(failed)} of {keys} puts of the fill were not stored (the first: {failed[0]})")
    return time.monotonic() - started


@dataclass(frozen=True)
class TrafficJob:
    """One load client: the keys to draw from, the event that stops it, the bucket width."""

    master: str
    keys: int
    seed: int
    stop: Any  # a multiprocessing Event of the pool's (spawn) context
    bucket: float


@dataclass
class TrafficLog:
    """One client's operations by bucket (monotonic time // bucket width): latencies in ms, and failures."""

    latencies: dict[int, array[float]] = field(default_factory=dict)
    failed: dict[int, int] = field(default_factory=dict)

    def merge(self, other: TrafficLog) -> None:
        for index, values in other.latencies.items():
            self.latencies.setdefault(index, array("f")).extend(values)
        for index, count in other.failed.items():
            self.failed[index] = self.failed.get(index, 0) + count


def _traffic_worker(job: TrafficJob, worker: Worker) -> TrafficLog:
    """Entry point of a load client: rounds of ``TRAFFIC_ROUND`` random gets and puts until the stop event."""
    import random  # noqa: PLC0415

    from kvcluster.client import Completion, Connection  # noqa: PLC0415
    from kvcluster.core.protocol import OpKind  # noqa: PLC0415

    rng = random.Random(job.seed)
    log = TrafficLog()
    with Connection(job.master, deadline=CLIENT_DEADLINE, try_timeout=TRAFFIC_TRY_TIMEOUT) as client:
        client.refresh_table()
        worker.wait_for_release()
        while not job.stop.is_set():
            ops: list[tuple[OpKind, str, str | None]] = []
            for _ in range(TRAFFIC_ROUND):
                i = rng.randrange(job.keys)
                ops.append(
                    (OpKind.PUT, key_name(i), bulk_value(i)) if rng.random() < 0.5 else (OpKind.GET, key_name(i), None)
                )
            start = time.monotonic()
            results = client.execute(ops, batch=TRAFFIC_BATCH, window=TRAFFIC_ROUND // TRAFFIC_BATCH)
            end = time.monotonic()
            for result in results:
                if result.completion == Completion.OK:
                    # Every op of a round is sent at once, so its own latency dates its answer.
                    index = int((start + result.latency) / job.bucket)
                    log.latencies.setdefault(index, array("f")).append(result.latency * 1000)
                else:
                    index = int(end / job.bucket)
                    log.failed[index] = log.failed.get(index, 0) + 1
    return log


class Traffic:
    """The load clients of a run: started (and ready) on entry, released by ``release``, stopped by ``stop``."""

    def __init__(self, master: str, keys: int, clients: int, bucket: float) -> None:
        import multiprocessing  # noqa: PLC0415

        self.bucket = bucket
        self.stop_event = multiprocessing.get_context("spawn").Event()
        jobs = [TrafficJob(master, keys, seed, self.stop_event, bucket) for seed in range(clients)]
        self.pool: ClientPool[TrafficJob, TrafficLog] = ClientPool(_traffic_worker, jobs)
        self.released = 0.0

    def __enter__(self) -> Traffic:
        self.pool.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.pool.__exit__(*exc)

    def release(self) -> float:
        self.released = self.pool.release()
        return self.released

    def stop(self) -> tuple[TrafficLog, float]:
        """Stop the clients after their current round; their merged log, and the time the stop was asked."""
        stopped = time.monotonic()
        self.stop_event.set()
        merged = TrafficLog()
        for log in self.pool.collect(timeout=CLIENT_DEADLINE * 2):
            merged.merge(log)
        return merged, stopped


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


def timeline(log: TrafficLog, bucket: float, released: float, stopped: float) -> list[Bucket]:
    """Throughput and p99 per bucket, from the first whole bucket after the release to the last before the stop."""
    points = []
    for index in _full_buckets(bucket, released, stopped):
        values = sorted(log.latencies.get(index, ()))
        points.append(
            Bucket(
                t=round(index * bucket - released, 3),
                ops_per_s=round(len(values) / bucket, 1),
                p99_ms=round(percentile(values, 0.99), 2) if values else None,
                failed=log.failed.get(index, 0),
            )
        )
    return points


def phase(log: TrafficLog, bucket: float, released: float, name: str, start: float, end: float) -> Phase:
    """The figures over [start, end] (monotonic seconds): whole buckets only, or every bucket it touches if none."""
    indices = _full_buckets(bucket, start, end)
    if not indices:
        indices = range(int(start // bucket), int(end // bucket) + 1)
    values = sorted(v for i in indices for v in log.latencies.get(i, ()))
    span = len(indices) * bucket
    return Phase(
        name=name,
        start_s=round(start - released, 3),
        end_s=round(end - released, 3),
        ops_per_s=round(len(values) / span, 1) if span else 0.0,
        p50_ms=round(percentile(values, 0.5), 2) if values else None,
        p99_ms=round(percentile(values, 0.99), 2) if values else None,
        failed=sum(log.failed.get(i, 0) for i in indices),
    )


def ratio(during: Phase, before: Phase) -> float | None:
    return round(during.ops_per_s / before.ops_per_s, 3) if before.ops_per_s else None


def poll_master(master: str, observe: Callable[[StatusReport, float], bool], timeout: float, what: str) -> float:
    """Hand the master's status to ``observe`` every ``POLL`` s until it returns True; the time it did.

    A status request that times out (a master busy planning) is simply asked
    again; ``BenchmarkError`` after ``timeout`` seconds.
    """
    from kvcluster.client import Connection  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    with Connection(master, deadline=5.0) as client:
        while True:
            try:
                report = client.status()
            except KvclusterError:
                report = None
            now = time.monotonic()
            if report is not None and observe(report, now):
                return now
            if now > deadline:
                raise BenchmarkError(f"{what} did not happen within {timeout:g} s")
            time.sleep(POLL)


@dataclass
class ReadBack:
    """Every filled key read back at the end."""

    keys_lost: int
    keys_unreadable: int


def read_back(master: str, keys: int, progress: Progress) -> ReadBack:
    task = progress.add_task(f"reading {keys:,} keys back", total=keys)
    check = bulk_verify(master, keys, lambda done: progress.advance(task, done))
    return ReadBack(check.lost, check.unreadable)


def fill_with_progress(master: str, keys: int, progress: Progress) -> float:
    task = progress.add_task(f"loading {keys:,} keys", total=keys)
    return fill(master, keys, lambda done: progress.advance(task, done))


def sleep_for(seconds: float) -> None:
    """Let the load run undisturbed for ``seconds`` (the phase before the event, or after the healing)."""
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        time.sleep(min(0.1, left))


@dataclass
class HealingRun:
    """What both healing benchmarks report; times are seconds from the release of the load clients."""

    nodes: int
    rep: int
    keys: int
    clients: int
    bucket_s: float
    fill_s: float
    event_t: float
    """The kill, or the add."""
    healed_t: float | None
    """The end of the healing window (every slot back at ``rep`` replicas, or balanced); None if it never came."""
    timeline: list[Bucket]
    phases: list[Phase]
    """Before the event, during the healing, after it."""
    throughput_ratio: float | None
    """Throughput during the healing over throughput before the event."""
    keys_lost: int
    keys_unreadable: int
    load_average: dict[str, list[float]]
    """``start`` and ``end`` of the run: 1, 5 and 15 minute load averages of the machine."""
    command: str

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)
