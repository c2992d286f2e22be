"""What every benchmark shares: a throwaway cluster, the preload, chunked execution, and small figures.

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
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kvcluster.errors import KvclusterError, UsageError
from kvcluster.master_group import DEFAULT_MASTERS

if TYPE_CHECKING:
    from kvcluster.client import Completion, Connection, OpResult
    from kvcluster.core.protocol import OpKind
    from kvcluster.state import ClusterState
    from kvcluster.supervisor import Supervisor

PRELOAD_BATCH = 64  # ops per message when filling a cluster before measuring
PRELOAD_WINDOW = 16
CLIENT_DEADLINE = 30.0  # seconds one ``execute`` call may take under full load
CLIENT_TRY_TIMEOUT = 2.0  # a loaded node answers late, not never: resending early only adds load


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


def execute_chunked(
    client: Connection,
    ops: Sequence[tuple[OpKind, str, str | None]],
    batch: int,
    window: int,
    on_chunk: Callable[[list[OpResult]], None] | None = None,
) -> list[OpResult]:
    """``Connection.execute`` in chunks, so the client's deadline bounds one chunk rather than the whole run.

    A chunk holds several windows' worth of messages, so the drain at its end
    (in-flight count falling to zero) costs well under a percent of the run.
    """
    chunk = max(4096, batch * window * 4)
    results: list[OpResult] = []
    for start in range(0, len(ops), chunk):
        part = client.execute(ops[start : start + chunk], batch=batch, window=window)
        results.extend(part)
        if on_chunk is not None:
            on_chunk(part)
    return results


Advance = Callable[[int], None]  # told how many more operations are done, for a progress bar


def preload(master: str, keys: int, advance: Advance) -> None:
    """Write every key once (batched), so gets in the measured phase find their key."""
    from kvcluster.client import Completion, Connection  # noqa: PLC0415
    from kvcluster.core.protocol import OpKind  # noqa: PLC0415

    ops: list[tuple[OpKind, str, str | None]] = [(OpKind.PUT, key_name(i), f"init{i}") for i in range(keys)]
    with Connection(master, deadline=CLIENT_DEADLINE, try_timeout=CLIENT_TRY_TIMEOUT) as client:
        results = execute_chunked(client, ops, PRELOAD_BATCH, PRELOAD_WINDOW, lambda part: advance(len(part)))
    failures = count_failures(r.completion for r in results if r.completion != Completion.OK)
    if failures:
        kinds = ", ".join(f"{count} {name}" for name, count in sorted(failures.items()))
        dead = ", ".join(dead_nodes(master)) or "none"
        raise BenchmarkError(
            f"{sum(failures.values())} of {keys} preload puts did not complete ({kinds}); "
            f"nodes the master declared dead: {dead}"
        )


def count_failures(completions: Iterable[Completion]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for completion in completions:
        counts[completion.value] = counts.get(completion.value, 0) + 1
    return counts


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
FilledKeys = Annotated[int, typer.Option("--keys", min=1, help="Keys with 100-byte values to load first.")]
LoadClients = Annotated[int, typer.Option("--clients", min=1, help="Load client processes.")]
