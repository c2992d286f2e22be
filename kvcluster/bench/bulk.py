"""A large data set for failover and chaos runs: many keys written fast, then every one of them read back.

Keys are ``key0`` .. ``key{N-1}`` (``common.key_name``) with 100-byte values
that are a function of the index (``bulk_value``), so reading them back needs
no copy of what was written. The keys are split into contiguous ranges, one
per client process (a ``workers.ClientPool``); each process sends batches of
64 operations with 16 messages in flight. Time is measured from the release
of the processes to the last one's end, so starting them is not counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvcluster.bench.common import (
    CLIENT_DEADLINE,
    CLIENT_TRY_TIMEOUT,
    PRELOAD_BATCH,
    PRELOAD_WINDOW,
    Advance,
    BenchmarkError,
    dead_nodes,
    key_name,
)
from kvcluster.client_pool import ClientPool, Worker

if TYPE_CHECKING:
    from kvcluster.core.protocol import OpKind

VALUE_SIZE = 100
BULK_CLIENTS = 4  # client processes: four load a 7-node cluster on 2 cores about twice as fast as one
BULK_CHUNK = 8192  # operations per ``execute`` call (the client's deadline bounds one call)
MIN_KEYS_PER_S = 2000  # the slowest load rate a release timeout allows for


def bulk_value(index: int) -> str:
    """The 100-byte value ``key{index}`` holds after a bulk load."""
    prefix = f"v{index}."
    return prefix + "x" * (VALUE_SIZE - len(prefix))


def release_timeout(keys: int) -> float:
    """How long client processes started before a bulk load of ``keys`` keys may wait for their release."""
    from kvcluster.client_pool import START_TIMEOUT  # noqa: PLC0415

    return START_TIMEOUT + keys / MIN_KEYS_PER_S


@dataclass(frozen=True)
class BulkJob:
    """One client process's range of keys, to write or to read back (pickled to a spawned process)."""

    master: str
    index: int
    start: int
    stop: int
    verify: bool


@dataclass
class BulkOutcome:
    """How the operations on one range (or on every range) ended: ``ok`` puts, or gets that read the right value."""

    ok: int = 0
    wrong: int = 0  # gets that read another value
    failures: dict[str, int] = field(default_factory=dict)  # completion name -> count (not_found, timed_out...)

    def add(self, other: BulkOutcome) -> None:
        self.ok += other.ok
        self.wrong += other.wrong
        for name, count in other.failures.items():
            self.failures[name] = self.failures.get(name, 0) + count

    @property
    def lost(self) -> int:
        """Keys read back with another value, or that the cluster says it does not have or has no live replica for."""
        return self.wrong + self.failures.get("not_found", 0) + self.failures.get("no_replica", 0)

    @property
    def unreadable(self) -> int:
        """Keys whose read did not complete, so whether they are still there is unknown."""
        return self.failures.get("timed_out", 0) + self.failures.get("invalid", 0)


@dataclass(frozen=True)
class BulkCheck:
    """Every bulk-loaded key read back: how many are lost, and how many could not be read."""

    keys: int
    lost: int
    unreadable: int


def _bulk_worker(job: BulkJob, worker: Worker) -> BulkOutcome:
    """Entry point of a bulk client process: write (or read back) its range in chunks, reporting progress."""
    from kvcluster.client import Completion, Connection  # noqa: PLC0415
    from kvcluster.core.protocol import OpKind  # noqa: PLC0415

    outcome = BulkOutcome()
    with Connection(job.master, deadline=CLIENT_DEADLINE, try_timeout=CLIENT_TRY_TIMEOUT) as client:
        client.refresh_table()
        worker.wait_for_release()
        for start in range(job.start, job.stop, BULK_CHUNK):
            indices = range(start, min(job.stop, start + BULK_CHUNK))
            ops: list[tuple[OpKind, str, str | None]] = [
                (OpKind.GET, key_name(i), None) if job.verify else (OpKind.PUT, key_name(i), bulk_value(i))
                for i in indices
            ]
            results = client.execute(ops, batch=PRELOAD_BATCH, window=PRELOAD_WINDOW)
            for i, result in zip(indices, results, strict=True):
                if result.completion == Completion.OK and (not job.verify or result.value == bulk_value(i)):
                    outcome.ok += 1
                elif result.completion == Completion.OK:
                    outcome.wrong += 1
                else:
                    name = result.completion.value
                    outcome.failures[name] = outcome.failures.get(name, 0) + 1
            worker.progress(len(ops))
            if all(r.completion == Completion.TIMED_OUT for r in results):
                # Nothing answers: waiting out the deadline for every chunk left would take hours.
                rest = job.stop - indices.stop
                outcome.failures["timed_out"] = outcome.failures.get("timed_out", 0) + rest
                worker.progress(rest)
                break
    return outcome


def _run_bulk(master: str, keys: int, advance: Advance, *, verify: bool, clients: int) -> tuple[BulkOutcome, float]:
    """Run the ranges of ``keys`` keys on ``clients`` processes; the merged outcome and the seconds it took."""
    clients = max(1, min(clients, keys))
    bounds = [keys * i // clients for i in range(clients + 1)]
    jobs = [BulkJob(master, i, bounds[i], bounds[i + 1], verify) for i in range(clients)]
    with ClientPool(_bulk_worker, jobs) as pool:
        started = pool.release()
        outcomes = pool.collect(advance)
        took = time.monotonic() - started
    total = BulkOutcome()
    for outcome in outcomes:
        total.add(outcome)
    return total, took


def bulk_load(master: str, keys: int, advance: Advance, clients: int = BULK_CLIENTS) -> float:
    """Write ``keys`` keys with 100-byte values; return the seconds it took. Any put that fails fails the load."""
    outcome, took = _run_bulk(master, keys, advance, verify=False, clients=clients)
    if outcome.failures:
        kinds = ", ".join(f"{count} {name}" for name, count in sorted(outcome.failures.items()))
        dead = ", ".join(dead_nodes(master)) or "none"
        raise BenchmarkError(
            f"{sum(outcome.failures.values())} of {keys} bulk-load puts did not complete ({kinds}); "
            f"nodes the master declared dead: {dead}"
        )
    return took


def bulk_verify(master: str, keys: int, advance: Advance, clients: int = BULK_CLIENTS) -> BulkCheck:
    """Read back every bulk-loaded key and count those lost (wrong value, missing, no live replica) or unreadable."""
    outcome, _ = _run_bulk(master, keys, advance, verify=True, clients=clients)
    return BulkCheck(keys, outcome.lost, outcome.unreadable)
