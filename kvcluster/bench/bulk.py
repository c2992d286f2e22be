"""How every benchmark fills a cluster, and reads the data back: many keys written fast, then checked one by one.

Keys are ``key0`` .. ``key{N-1}`` (``common.key_name``) with 100-byte values
that are a function of the index (``workload.bulk_value``), so reading them
back needs no copy of what was written. The keys are split into contiguous
ranges, one per client process (a ``workload.Workload`` range, in a
``ClientPool``; a small fill runs in this process); each sends batches of 64
operations with 16 messages in flight. Time is measured from the release of
the processes to the last one's end, so starting them is not counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvcluster.bench.common import Advance, BenchmarkError, dead_nodes
from kvcluster.bench.workload import Tally, Workload, bulk_value, merged, tally_worker
from kvcluster.client_pool import START_TIMEOUT, ClientPool, InlineWorker

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = [
    "BULK_BATCH",
    "BULK_CLIENTS",
    "BULK_WINDOW",
    "BulkCheck",
    "bulk_load",
    "bulk_value",
    "bulk_verify",
    "load_shown",
    "verify_shown",
]

BULK_BATCH = 64  # operations per message
BULK_WINDOW = 16  # messages in flight per client process
BULK_CLIENTS = 4  # client processes: four load a 7-node cluster on 2 cores about twice as fast as one
MIN_KEYS_PER_S = 2000  # the slowest load rate a release timeout allows for
KEYS_PER_CLIENT = 10_000  # fewer keys per process than this, and starting it costs more than it saves: run here


def release_timeout(keys: int) -> float:
    """How long client processes started before a bulk load of ``keys`` keys may wait for their release."""
    return START_TIMEOUT + keys / MIN_KEYS_PER_S


@dataclass(frozen=True)
class BulkCheck:
    """Every bulk-loaded key read back: how many are lost, and how many could not be read."""

    keys: int
    lost: int
    unreadable: int


def _run_bulk(master: str, keys: int, advance: Advance, *, verify: bool, clients: int) -> tuple[Tally, float]:
    """Run the ranges of ``keys`` keys on ``clients`` processes; the merged tally and the seconds it took."""
    clients = max(1, min(clients, keys // KEYS_PER_CLIENT))
    bounds = [keys * i // clients for i in range(clients + 1)]
    jobs = [
        Workload(
            master, index=i, span=range(bounds[i], bounds[i + 1]), verify=verify, batch=BULK_BATCH, window=BULK_WINDOW
        )
        for i in range(clients)
    ]
    if len(jobs) == 1:
        started = time.monotonic()
        return tally_worker(jobs[0], InlineWorker(advance)), time.monotonic() - started
    with ClientPool(tally_worker, jobs) as pool:
        started = pool.release()
        tallies = pool.collect(advance)
        took = time.monotonic() - started
    return merged(tallies), took


def bulk_load(master: str, keys: int, advance: Advance, clients: int = BULK_CLIENTS) -> float:
    """Write ``keys`` keys with 100-byte values; return the seconds it took. Any put that fails fails the load."""
    tally, took = _run_bulk(master, keys, advance, verify=False, clients=clients)
    if tally.failures:
        kinds = ", ".join(f"{count} {name}" for name, count in sorted(tally.failures.items()))
        dead = ", ".join(dead_nodes(master)) or "none"
        raise BenchmarkError(
            f"{sum(tally.failures.values())} of {keys} bulk-load puts did not complete ({kinds}); "
            f"nodes the master declared dead: {dead}"
        )
    return took


def bulk_verify(master: str, keys: int, advance: Advance, clients: int = BULK_CLIENTS) -> BulkCheck:
    """Read back every bulk-loaded key and count those lost (wrong value, missing, no live replica) or unreadable."""
    tally, _ = _run_bulk(master, keys, advance, verify=True, clients=clients)
    lost = tally.wrong + tally.not_found + tally.failures.get("no_replica", 0)
    return BulkCheck(keys, lost, tally.failures.get("timed_out", 0) + tally.failures.get("invalid", 0))


def load_shown(master: str, keys: int, progress: Progress) -> float:
    """``bulk_load`` under a progress bar of its own."""
    task = progress.add_task(f"loading {keys:,} keys", total=keys)
    return bulk_load(master, keys, lambda done: progress.advance(task, done))


def verify_shown(master: str, keys: int, progress: Progress) -> BulkCheck:
    """``bulk_verify`` under a progress bar of its own."""
    task = progress.add_task(f"reading {keys:,} keys back", total=keys)
    return bulk_verify(master, keys, lambda done: progress.advance(task, done))
