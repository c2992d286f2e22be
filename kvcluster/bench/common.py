"""What every benchmark shares: a throwaway cluster, polling its master, and small figures (CPU, memory, load).

Every benchmark starts its own cluster (``cluster``: a ``Supervisor`` in a
temporary state directory) and always stops it, whatever happens. Clocks are
``time.monotonic``, which is one clock for every process on Linux, so
timestamps taken in different processes can be compared. Also here: the
errors, option types and parsing that the ``bench`` commands share.

Only ``typer`` is imported at module level: the client, the supervisor and the
protocol are imported inside the functions that need them.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NamedTuple

import typer

from kvcluster.errors import KvclusterError, UsageError
from kvcluster.master_group import DEFAULT_MASTERS

if TYPE_CHECKING:
    from kvcluster.core.protocol import StatusReport
    from kvcluster.state import ClusterState
    from kvcluster.supervisor import Supervisor

CLIENT_DEADLINE = 30.0  # seconds one ``execute`` call may take under full load
CLIENT_TRY_TIMEOUT = 2.0  # a loaded node answers late, not never: resending early only adds load
POLL = 0.1  # seconds between looks at the master's status


class BenchmarkError(KvclusterError):
    """A benchmark could not run to the end (a client process failed, counts never settled...)."""


@contextmanager
def cluster(
    nodes: int, rep: int, masters: int = DEFAULT_MASTERS, fsync: str = "everysec"
) -> Iterator[tuple[Supervisor, ClusterState]]:
    """A fresh cluster in its own temporary state directory, stopped and reaped on the way out.

    The nodes keep their data under ``<home>/data`` with the ``fsync`` policy;
    ``supervisor.stop()`` then ``supervisor.start()`` starts the same cluster
    again from that data, and the way out stops whichever processes run.
    """
    import tempfile  # noqa: PLC0415

    from kvcluster.core.protocol import Timing  # noqa: PLC0415
    from kvcluster.datadir import Storage, default_root  # noqa: PLC0415
    from kvcluster.supervisor import Supervisor  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="kvcluster-bench-") as home:
        storage = Storage(str(default_root(Path(home))), fsync)
        supervisor = Supervisor(Path(home), nodes, rep, masters, "127.0.0.1:0", Timing(), storage=storage)
        try:
            state = supervisor.start()
            yield supervisor, state
        finally:
            # A Ctrl-C or SIGTERM arriving now waits until every process is stopped and reaped.
            stop_signals = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
            try:
                supervisor.stop()
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)


def check_shape(nodes: int, reps: Sequence[int]) -> None:
    if nodes < 1:
        raise UsageError(f"--nodes must be at least 1, got {nodes}")
    for rep in reps:
        if not 1 <= rep <= nodes:
            raise UsageError(f"replica count {rep} is out of range 1..{nodes} for {nodes} nodes")


def fsync_list(text: str) -> list[str]:
    """``--fsync always,everysec,no``: the policies in the order given, each once."""
    from kvcluster.datadir import FSYNC_POLICIES  # noqa: PLC0415

    policies = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [p for p in policies if p not in FSYNC_POLICIES]
    if not policies or unknown:
        raise UsageError(f"--fsync takes a comma-separated list of {', '.join(FSYNC_POLICIES)}; got {text!r}")
    return policies


def int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{option} takes comma-separated integers, e.g. 1,3,5; got {text!r}") from None
    if not values or min(values) < 1:
        raise UsageError(f"{option} takes comma-separated integers >= 1, got {text!r}")
    return values


Advance = Callable[[int], None]  # told how many more operations are done, for a progress bar


def key_name(index: int) -> str:
    return f"key{index}"


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0 for an empty one)."""
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


def dead_nodes(master: str) -> list[str]:
    from kvcluster.client import Connection  # noqa: PLC0415
    from kvcluster.core.placement import node_name  # noqa: PLC0415

    with Connection(master, deadline=5.0) as client:
        table = client.status().table
    return [node_name(n) for n in table.dead] if table is not None else []


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


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


def slots_whole(report: StatusReport) -> bool:
    """Every slot at its replica count, and no copy under way."""
    from kvcluster.core.placement import under_replicated  # noqa: PLC0415

    return report.table is not None and not under_replicated(report.table) and not report.moving


@dataclass(frozen=True)
class Memory:
    """The storage nodes' resident memory after a fill, over keys x replicas: in all, and what the fill added."""

    keys: int
    rep: int
    rss_bytes: int
    per_key_replica: float
    added_per_key_replica: float
    """Without what the nodes took before the fill (the Python processes themselves)."""

    @classmethod
    def after_fill(cls, keys: int, rep: int, empty: int, filled: int) -> Memory:
        replicas = keys * rep
        return cls(keys, rep, filled, round(filled / replicas, 1), round((filled - empty) / replicas, 1))


def rss_bytes(pids: Sequence[int]) -> int:
    """Resident memory of the given processes, together (one gone no longer counts)."""
    import psutil  # noqa: PLC0415

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
    return total


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds so far of the given processes (all their threads)."""
    import psutil  # noqa: PLC0415

    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue  # a node killed or gone: its CPU no longer counts
        total += times.user + times.system
    return total


JsonOut = Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON to this file.")]
Plot = Annotated[bool, typer.Option("--plot", help="Draw a chart in the terminal.")]
Nodes = Annotated[int, typer.Option("--nodes", min=1, help="Storage nodes in the cluster.")]


class Mode(NamedTuple):
    """How a client sends: operations per message, and messages in flight."""

    batch: int
    window: int

    @property
    def label(self) -> str:
        return f"unbatched, window {self.window}" if self.batch == 1 else f"batch {self.batch}, window {self.window}"


@dataclass
class ThroughputRun:
    """One measured load phase: one replica count, one mode (batch size and window)."""

    rep: int
    batch: int
    ops: int
    completed: int
    failed: int
    ops_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    wall_s: float
    nodes: int
    clients: int
    window: int
    failures: dict[str, int] = field(default_factory=dict)
    # CPU spent per completed op during the measured phase: by the client processes, by master and nodes.
    client_cpu_us_per_op: float = 0.0
    cluster_cpu_us_per_op: float = 0.0
    # Nodes the master had declared dead by the end of the run: none was killed, so any is a false detection.
    dead_nodes: list[str] = field(default_factory=list)
    keys: int = 0  # keys preloaded, and drawn from
    fsync: str = "everysec"  # when the nodes synced their write-ahead logs to disk
    memory: Memory | None = None  # the storage nodes' resident memory right after the preload

    @property
    def mode(self) -> Mode:
        return Mode(self.batch, self.window)
