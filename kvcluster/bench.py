"""Benchmarks: throughput, load balance and failover, with terminal and PNG charts.

Every benchmark starts its own cluster (a ``Supervisor`` in a temporary state
directory) and always stops it, whatever happens. Load comes from separate
client processes (a ``workers.ClientPool``), released together by a barrier
so the measured wall time covers the concurrent phase only. Clocks are
``time.monotonic``, which is one clock for every process on Linux, so
timestamps taken in different processes can be compared.

Only ``typer`` is imported here at module level: rich, plotext, matplotlib and
the client are imported inside the functions that need them, so ``kvcluster
put`` and ``get`` never pay for them.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import signal
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, TypeVar

import typer

from kvcluster.errors import KvclusterError, UsageError
from kvcluster.workers import ClientPool, Worker, interrupt_on_sigterm

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.progress import Progress, TaskID
    from rich.table import Table

    from kvcluster.client import Client, Completion, OpResult
    from kvcluster.protocol import OpKind
    from kvcluster.supervisor import ClusterState, Supervisor

PRELOAD_BATCH = 64  # ops per message when filling a cluster before measuring
PRELOAD_WINDOW = 16
CLIENT_DEADLINE = 30.0  # seconds one ``execute`` call may take under full load
CLIENT_TRY_TIMEOUT = 2.0  # a loaded node answers late, not never: resending early only adds load
SETTLE_TIMEOUT = 15.0  # nodes report key counts every heartbeat; this bounds the wait for them
FAILOVER_KILL_AFTER = 2.0  # seconds of steady load before the kill
FAILOVER_KEYS_PER_GROUP = 40
FAILOVER_DEADLINE = 10.0
TIMELINE_BIN = 0.1  # seconds per bar of the failover timeline


class BenchmarkError(KvclusterError):
    """A benchmark could not run to the end (a client process failed, counts never settled...)."""


# --- results (the JSON shapes scripts depend on) ---


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

    @property
    def mode(self) -> Mode:
        return Mode(self.batch, self.window)


@dataclass
class Balance:
    """Keys per node after ``keys`` puts, with the spread next to the ideal random one."""

    keys: int
    nodes: int
    rep: int
    counts: dict[str, int]
    max_over_mean: float
    min_over_mean: float
    stddev: float
    ideal_stddev: float


@dataclass
class Failover:
    """What a SIGKILLed primary cost: unavailability, throughput over time, lost writes."""

    killed: str
    nodes: int
    rep: int
    duration_s: float
    kill_t: float
    keys: dict[str, int]
    unavailable_ms: dict[str, float | None]
    unrecovered_keys: int
    backup_write_unavailable_ms: dict[str, float | None]
    acked_writes: int
    lost_acked_writes: int
    unverified_keys: int
    failed_ops: int
    timeline: list[dict[str, float]]


# --- clusters ---


@contextmanager
def _cluster(nodes: int, rep: int) -> Iterator[tuple[Supervisor, ClusterState]]:
    """A fresh cluster in its own temporary state directory, stopped and reaped on the way out."""
    import tempfile  # noqa: PLC0415

    from kvcluster.protocol import Timing  # noqa: PLC0415
    from kvcluster.supervisor import Supervisor  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="kvcluster-bench-") as home:
        supervisor = Supervisor(Path(home), nodes, rep, "127.0.0.1:0", Timing())
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


def _check_shape(nodes: int, reps: Sequence[int]) -> None:
    if nodes < 1:
        raise UsageError(f"--nodes must be at least 1, got {nodes}")
    for rep in reps:
        if not 1 <= rep <= nodes:
            raise UsageError(f"replica count {rep} is out of range 1..{nodes} for {nodes} nodes")


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{option} takes comma-separated integers, e.g. 1,3,5; got {text!r}") from None
    if not values or min(values) < 1:
        raise UsageError(f"{option} takes comma-separated integers >= 1, got {text!r}")
    return values


def _execute_chunked(
    client: Client,
    ops: Sequence[tuple[OpKind, str, str | None]],
    batch: int,
    window: int,
    on_chunk: Callable[[list[OpResult]], None] | None = None,
) -> list[OpResult]:
    """``Client.execute`` in chunks, so the client's deadline bounds one chunk rather than the whole run.

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
    from kvcluster.client import Client, Completion  # noqa: PLC0415
    from kvcluster.protocol import OpKind  # noqa: PLC0415

    ops: list[tuple[OpKind, str, str | None]] = [(OpKind.PUT, _key(i), f"init{i}") for i in range(keys)]
    with Client(master, deadline=CLIENT_DEADLINE, try_timeout=CLIENT_TRY_TIMEOUT) as client:
        results = _execute_chunked(client, ops, PRELOAD_BATCH, PRELOAD_WINDOW, lambda part: advance(len(part)))
    failures = _count_failures(r.completion for r in results if r.completion != Completion.OK)
    if failures:
        kinds = ", ".join(f"{count} {name}" for name, count in sorted(failures.items()))
        dead = ", ".join(_dead_nodes(master)) or "none"
        raise BenchmarkError(
            f"{sum(failures.values())} of {keys} preload puts did not complete ({kinds}); "
            f"nodes the master declared dead: {dead}"
        )


def _count_failures(completions: Iterable[Completion]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for completion in completions:
        counts[completion.value] = counts.get(completion.value, 0) + 1
    return counts


def _key(index: int) -> str:
    return f"key{index}"


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0 for an empty one)."""
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


# --- client processes ---


@dataclass(frozen=True)
class LoadJob:
    """One throughput client's share of the operations (pickled to a spawned process)."""

    master: str
    index: int
    ops: int
    keys: int
    read_ratio: float
    batch: int
    window: int
    seed: int


@dataclass(frozen=True)
class LoadOutcome:
    """What one throughput client measured; latencies are ``array('d')`` bytes in seconds."""

    index: int
    started: float
    ended: float
    completed: int
    failures: dict[str, int]
    latencies: bytes
    cpu_s: float  # this process, every thread (ZeroMQ's I/O thread too), during the measured phase


def _load_ops(job: LoadJob) -> list[tuple[OpKind, str, str | None]]:
    import random  # noqa: PLC0415

    from kvcluster.protocol import OpKind  # noqa: PLC0415

    rng = random.Random(job.seed)
    ops: list[tuple[OpKind, str, str | None]] = []
    for seq in range(job.ops):
        key = _key(rng.randrange(job.keys))
        if rng.random() < job.read_ratio:
            ops.append((OpKind.GET, key, None))
        else:
            ops.append((OpKind.PUT, key, f"c{job.index}.{seq}"))
    return ops


def _load_worker(job: LoadJob, worker: Worker) -> LoadOutcome:
    """Entry point of a throughput client process: wait for the release, run the share, report."""
    from array import array  # noqa: PLC0415

    from kvcluster.client import Client, Completion  # noqa: PLC0415

    ops = _load_ops(job)
    latencies = array("d")
    failures: dict[str, int] = {}
    completed = 0
    with Client(job.master, deadline=CLIENT_DEADLINE, try_timeout=CLIENT_TRY_TIMEOUT) as client:
        client.refresh_table()

        def tally(part: list[OpResult]) -> None:
            nonlocal completed
            for result in part:
                if result.completion in (Completion.OK, Completion.NOT_FOUND):
                    completed += 1
                    latencies.append(result.latency)
                else:
                    failures[result.completion.value] = failures.get(result.completion.value, 0) + 1
            worker.progress(len(part))

        worker.wait_for_release()
        started, cpu_started = time.monotonic(), time.process_time()
        _execute_chunked(client, ops, job.batch, job.window, tally)
        ended, cpu = time.monotonic(), time.process_time() - cpu_started
    return LoadOutcome(job.index, started, ended, completed, failures, latencies.tobytes(), cpu)


@dataclass(frozen=True)
class FailoverJob:
    """One failover client: it owns ``keys`` and cycles over them until ``duration`` has passed."""

    master: str
    index: int
    group: str
    keys: list[str]
    duration: float
    seed: int


# One operation as a failover client saw it: (key, is_put, start, end, completion, value, node_id).
OpRecord = tuple[str, bool, float, float, str, str | None, int]


def _failover_worker(job: FailoverJob, worker: Worker) -> list[OpRecord]:
    """Entry point of a failover client process.

    Each round issues one operation per owned key, all in flight at once, and
    the next round starts when this one has finished: a key is therefore
    written by this process alone, one put at a time, so the last acknowledged
    value of every key is well defined.
    """
    import random  # noqa: PLC0415

    from kvcluster.client import Client, Completion  # noqa: PLC0415
    from kvcluster.protocol import OpKind  # noqa: PLC0415

    rng = random.Random(job.seed)
    records: list[OpRecord] = []
    seq = 0
    with Client(job.master, deadline=FAILOVER_DEADLINE) as client:
        client.refresh_table()
        worker.wait_for_release()
        stop_at = time.monotonic() + job.duration
        while time.monotonic() < stop_at:
            ops: list[tuple[OpKind, str, str | None]] = []
            for key in job.keys:
                seq += 1
                put = rng.random() < 0.5
                ops.append((OpKind.PUT, key, f"c{job.index}-{seq}") if put else (OpKind.GET, key, None))
            round_start = time.monotonic()
            results = client.execute(ops, window=len(ops))
            round_end = time.monotonic()
            for (kind, key, value), result in zip(ops, results, strict=True):
                done = result.completion in (Completion.OK, Completion.NOT_FOUND)
                # Every op of a round is sent at once, so its own latency dates its answer.
                end = round_start + result.latency if done else round_end
                put = kind == OpKind.PUT
                records.append(
                    (
                        key,
                        put,
                        round_start,
                        end,
                        result.completion.value,
                        value if put else result.value,
                        result.node_id,
                    )
                )
    return records


# --- throughput ---


def run_throughput(
    *,
    ops: int,
    nodes: int,
    reps: Sequence[int],
    read_ratio: float,
    keys: int,
    clients: int,
    modes: Sequence[Mode],
    progress: Progress,
) -> list[ThroughputRun]:
    """For every replica count a fresh cluster: preload, then one measured phase per mode."""
    runs: list[ThroughputRun] = []
    for rep in reps:
        task = progress.add_task(f"rep {rep}: starting {nodes} nodes", total=keys + ops * len(modes))
        advance = functools.partial(progress.advance, task)
        with _cluster(nodes, rep) as (_, state):
            progress.update(task, description=f"rep {rep}: preload")
            preload(state.master_endpoint, keys, advance)
            for mode in modes:
                progress.update(task, description=f"rep {rep}: {mode.label}")
                runs.append(
                    measure_load(
                        state.master_endpoint,
                        rep=rep,
                        ops=ops,
                        keys=keys,
                        read_ratio=read_ratio,
                        clients=clients,
                        window=mode.window,
                        batch=mode.batch,
                        nodes=nodes,
                        advance=advance,
                        cluster_pids=[state.master.pid, *(s.pid for s in state.servers)],
                    )
                )
        progress.update(task, description=f"rep {rep}: done")
    return runs


def measure_load(
    master: str,
    *,
    rep: int,
    ops: int,
    keys: int,
    read_ratio: float,
    clients: int,
    window: int,
    batch: int,
    nodes: int,
    advance: Advance,
    cluster_pids: Sequence[int] = (),
) -> ThroughputRun:
    """Run ``ops`` operations from ``clients`` processes against a running, preloaded cluster and measure them.

    ``cluster_pids`` (master and nodes) are only watched, to split the CPU spent between clients and cluster.
    """
    from array import array  # noqa: PLC0415

    shares = [ops // clients + (1 if i < ops % clients else 0) for i in range(clients)]
    jobs = [
        LoadJob(master, i, share, keys, read_ratio, batch, window, seed=rep * 1000 + batch * 10 + i)
        for i, share in enumerate(shares)
        if share
    ]
    with ClientPool(_load_worker, jobs) as pool:
        cluster_cpu = -_cpu_seconds(cluster_pids)
        pool.release()
        outcomes = pool.collect(advance)
        cluster_cpu += _cpu_seconds(cluster_pids)
    latencies = array("d")
    failures: dict[str, int] = {}
    for outcome in outcomes:
        latencies.frombytes(outcome.latencies)
        for name, count in outcome.failures.items():
            failures[name] = failures.get(name, 0) + count
    ordered = sorted(latencies)
    wall = max(o.ended for o in outcomes) - min(o.started for o in outcomes)
    completed = sum(o.completed for o in outcomes)
    return ThroughputRun(
        rep=rep,
        batch=batch,
        ops=ops,
        completed=completed,
        failed=sum(failures.values()),
        ops_per_s=round(completed / wall, 1) if wall > 0 else 0.0,
        p50_ms=round(_percentile(ordered, 0.50) * 1000, 3),
        p95_ms=round(_percentile(ordered, 0.95) * 1000, 3),
        p99_ms=round(_percentile(ordered, 0.99) * 1000, 3),
        wall_s=round(wall, 3),
        nodes=nodes,
        clients=len(jobs),
        window=window,
        failures=failures,
        client_cpu_us_per_op=round(sum(o.cpu_s for o in outcomes) / max(1, completed) * 1e6, 1),
        cluster_cpu_us_per_op=round(cluster_cpu / max(1, completed) * 1e6, 1),
        dead_nodes=_dead_nodes(master),
    )


def _dead_nodes(master: str) -> list[str]:
    from kvcluster.client import Client  # noqa: PLC0415
    from kvcluster.placement import node_name  # noqa: PLC0415

    with Client(master, deadline=5.0) as client:
        table = client.status().table
    return [node_name(n) for n in table.dead] if table is not None else []


def _cpu_seconds(pids: Sequence[int]) -> float:
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


def _throughput_table(runs: Sequence[ThroughputRun]) -> RenderableType:
    """Replica counts down, batch sizes across, so both modes sit side by side."""
    from rich.table import Table  # noqa: PLC0415

    modes = _modes(runs)
    table = Table(
        title=f"Throughput ({runs[0].ops} ops per run, {runs[0].nodes} nodes, {runs[0].clients} client processes)"
    )
    table.add_column("replicas", justify="right")
    for mode in modes:
        header = mode.label.replace(", ", "\n")
        table.add_column(f"{header}\nops/s", justify="right")
        table.add_column(f"{header}\np50/p95/p99 ms", justify="right")
    table.add_column("failed\nops", justify="right")
    for rep in sorted({r.rep for r in runs}):
        row = [str(rep)]
        failed = 0
        for mode in modes:
            run = _run_of(runs, rep, mode)
            if run is None:
                row += ["-", "-"]
                continue
            row += [f"{run.ops_per_s:,.0f}", f"{run.p50_ms:.1f}/{run.p95_ms:.1f}/{run.p99_ms:.1f}"]
            failed += run.failed
        row.append(str(failed) if not failed else f"[bold red]{failed}[/]")
        table.add_row(*row)
    return table


def _throughput_summary(runs: Sequence[ThroughputRun]) -> RenderableType:
    """The throughput table, followed by a line for each run where operations failed or nodes were declared dead."""
    from rich.console import Group  # noqa: PLC0415

    problems: list[str] = []
    for run in runs:
        where = f"rep {run.rep}, {run.mode.label}"
        if run.failed:
            kinds = ", ".join(f"{count} {name}" for name, count in sorted(run.failures.items()))
            problems.append(f"[bold red]{where}: {run.failed} ops did not complete ({kinds})[/]")
        if run.dead_nodes:
            problems.append(f"[bold red]{where}: the master declared {', '.join(run.dead_nodes)} dead under load[/]")
    return Group(_throughput_table(runs), *problems)


def _plot_throughput(runs: Sequence[ThroughputRun]) -> None:
    modes = _modes(runs)
    reps = sorted({r.rep for r in runs})
    labels = [f"rep {rep}" for rep in reps]
    series = [[_ops_per_s(runs, rep, mode) for rep in reps] for mode in modes]
    with _terminal_chart("Throughput (ops/s) against replicas") as plt:
        if len(series) == 1:
            plt.bar(labels, series[0])
        else:
            plt.multiple_bar(labels, series, labels=[mode.label for mode in modes])


class Mode(NamedTuple):
    """How a client sends: operations per message, and messages in flight."""

    batch: int
    window: int

    @property
    def label(self) -> str:
        return f"unbatched, window {self.window}" if self.batch == 1 else f"batch {self.batch}, window {self.window}"


def _modes_of(batches: Sequence[int], windows: Sequence[int]) -> list[Mode]:
    """Pair ``--batch`` with ``--window`` values: one window applies to every batch size."""
    if len(windows) == 1:
        windows = list(windows) * len(batches)
    if len(windows) != len(batches):
        raise UsageError(f"--window takes one value or one per --batch value ({len(batches)}), got {len(windows)}")
    return list(dict.fromkeys(Mode(b, w) for b, w in zip(batches, windows, strict=True)))


def _modes(runs: Sequence[ThroughputRun]) -> list[Mode]:
    return sorted({r.mode for r in runs})


def _run_of(runs: Sequence[ThroughputRun], rep: int, mode: Mode) -> ThroughputRun | None:
    return next((r for r in runs if r.rep == rep and r.mode == mode), None)


def _ops_per_s(runs: Sequence[ThroughputRun], rep: int, mode: Mode) -> float:
    run = _run_of(runs, rep, mode)
    return run.ops_per_s if run is not None else 0.0


# --- balance ---


def run_balance(*, keys: int, nodes: int, rep: int, progress: Progress) -> Balance:
    """Put ``keys`` keys through the client, then read each node's own key count from the master."""
    task = progress.add_task(f"balance: starting {nodes} nodes", total=keys)
    with _cluster(nodes, rep) as (_, state):
        progress.update(task, description=f"balance: {keys} puts")
        preload(state.master_endpoint, keys, functools.partial(progress.advance, task))
        progress.update(task, description="balance: waiting for node counts")
        counts = _settled_counts(state.master_endpoint, keys * rep)
    return _balance_stats(keys, nodes, rep, counts)


def _settled_counts(master: str, expected: int) -> dict[str, int]:
    """Poll the master until the key counts the nodes report (each heartbeat) add up to ``expected``."""
    from kvcluster.client import Client  # noqa: PLC0415
    from kvcluster.placement import node_name  # noqa: PLC0415

    deadline = time.monotonic() + SETTLE_TIMEOUT
    with Client(master, deadline=5.0) as client:
        while True:
            report = client.status()
            counts = {node_name(n.node_id): n.keys for n in sorted(report.nodes, key=lambda n: n.node_id)}
            total = sum(counts.values())
            if total == expected:
                return counts
            if time.monotonic() > deadline:
                raise BenchmarkError(
                    f"node key counts add up to {total}, expected {expected}, after {SETTLE_TIMEOUT:g} s"
                )
            time.sleep(0.05)


def _balance_stats(keys: int, nodes: int, rep: int, counts: dict[str, int]) -> Balance:
    values = list(counts.values())
    mean = sum(values) / len(values)
    # Each key lands on a given node with probability rep/nodes, independently: a binomial count.
    p = rep / nodes
    return Balance(
        keys=keys,
        nodes=nodes,
        rep=rep,
        counts=counts,
        max_over_mean=round(max(values) / mean, 4),
        min_over_mean=round(min(values) / mean, 4),
        stddev=round(statistics.pstdev(values), 2),
        ideal_stddev=round(math.sqrt(keys * p * (1 - p)), 2),
    )


def _balance_table(result: Balance) -> RenderableType:
    from rich.console import Group  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    mean = sum(result.counts.values()) / len(result.counts)
    table = Table(title="Keys per node")
    table.add_column("node")
    table.add_column("keys", justify="right")
    table.add_column("vs mean", justify="right")
    for name, count in result.counts.items():
        table.add_row(name, f"{count:,}", f"{(count / mean - 1) * 100:+.2f}%")
    summary = (
        f"{result.keys:,} keys on {result.nodes} nodes, rep {result.rep}: "
        f"max/mean {result.max_over_mean:.4f}, min/mean {result.min_over_mean:.4f}, "
        f"stddev {result.stddev:.1f} keys (ideal random placement: {result.ideal_stddev:.1f})"
    )
    return Group(table, summary)


def _plot_balance(result: Balance) -> None:
    with _terminal_chart(f"Keys per node ({result.keys} keys, rep {result.rep})") as plt:
        plt.bar(list(result.counts), list(result.counts.values()))


# --- failover ---


def _failover_keys(nodes: int, rep: int, victim: int) -> dict[str, list[str]]:
    """Keys grouped by the victim's role in their slot: its primary, one of its backups, or neither."""
    from kvcluster.placement import replicas_for, slot_of  # noqa: PLC0415

    groups: dict[str, list[str]] = {"primary": [], "backup": [], "unrelated": []}
    index = 0
    # Bounded: a group the shape cannot fill (no unrelated slot when rep == nodes) stays empty.
    while (
        index < FAILOVER_KEYS_PER_GROUP * nodes * 20 and min(len(g) for g in groups.values()) < FAILOVER_KEYS_PER_GROUP
    ):
        key = f"fo{index}"
        index += 1
        replicas = replicas_for(slot_of(key), nodes, rep)
        group = "primary" if replicas[0] == victim else "backup" if victim in replicas else "unrelated"
        if len(groups[group]) < FAILOVER_KEYS_PER_GROUP:
            groups[group].append(key)
    return {name: keys for name, keys in groups.items() if keys}


def run_failover(*, nodes: int, rep: int, duration: float, progress: Progress) -> Failover:
    """Steady load from one client per key group; SIGKILL the victim after a while; check every acked write."""
    from kvcluster.placement import node_name  # noqa: PLC0415
    from kvcluster.supervisor import kill_node  # noqa: PLC0415

    victim = 1
    groups = _failover_keys(nodes, rep, victim)
    kill_after = min(FAILOVER_KILL_AFTER, duration / 3)
    task = progress.add_task(f"failover: starting {nodes} nodes", total=duration)
    with _cluster(nodes, rep) as (supervisor, state):
        all_keys = [k for keys in groups.values() for k in keys]
        preload = {key: f"init-{key}" for key in all_keys}
        _put_all(state.master_endpoint, preload)
        jobs = [
            FailoverJob(state.master_endpoint, i, name, keys, duration, seed=i)
            for i, (name, keys) in enumerate(groups.items())
        ]
        with ClientPool(_failover_worker, jobs) as pool:
            released = pool.release()
            progress.update(task, description=f"failover: load, killing {node_name(victim)} at {kill_after:g} s")
            _sleep_with_progress(progress, task, released, released + kill_after)
            kill_t = time.monotonic()
            kill_node(state, node_name(victim))
            _sleep_with_progress(progress, task, released, released + duration)
            progress.update(task, description="failover: finishing the last round")
            records = pool.collect()
        supervisor.reap()
        progress.update(task, description="failover: reading every key back", completed=duration)
        final = _get_all(state.master_endpoint, all_keys)
    by_group = {job.group: job_records for job, job_records in zip(jobs, records, strict=True)}
    return _failover_result(node_name(victim), victim, nodes, rep, duration, released, kill_t, by_group, preload, final)


def _sleep_with_progress(progress: Progress, task: TaskID, start: float, until: float) -> None:
    while (now := time.monotonic()) < until:
        progress.update(task, completed=now - start)
        time.sleep(min(0.1, until - now))
    progress.update(task, completed=until - start)


def _put_all(master: str, values: dict[str, str]) -> None:
    from kvcluster.client import Client, Completion  # noqa: PLC0415
    from kvcluster.protocol import OpKind  # noqa: PLC0415

    ops: list[tuple[OpKind, str, str | None]] = [(OpKind.PUT, k, v) for k, v in values.items()]
    with Client(master, deadline=CLIENT_DEADLINE) as client:
        results = client.execute(ops, batch=PRELOAD_BATCH)
    if any(r.completion != Completion.OK for r in results):
        raise BenchmarkError("the failover key set could not be written before the kill")


def _get_all(master: str, keys: list[str]) -> dict[str, str | None]:
    """The value of every key after the load, or no entry where the final read itself failed."""
    from kvcluster.client import Client, Completion  # noqa: PLC0415
    from kvcluster.protocol import OpKind  # noqa: PLC0415

    ops: list[tuple[OpKind, str, str | None]] = [(OpKind.GET, k, None) for k in keys]
    with Client(master, deadline=FAILOVER_DEADLINE) as client:
        results = client.execute(ops, window=len(ops))
    final: dict[str, str | None] = {}
    for key, result in zip(keys, results, strict=True):
        if result.completion == Completion.OK:
            final[key] = result.value
        elif result.completion == Completion.NOT_FOUND:
            final[key] = None
    return final


def _failover_result(
    killed: str,
    victim: int,
    nodes: int,
    rep: int,
    duration: float,
    released: float,
    kill_t: float,
    by_group: dict[str, list[OpRecord]],
    preload: dict[str, str],
    final: dict[str, str | None],
) -> Failover:
    every = [r for records in by_group.values() for r in records]
    lost, unverified, acked = _lost_writes(every, preload, final)
    windows, unrecovered = _unavailability(by_group.get("primary", []), victim, kill_t)
    stalls, unwritten = _write_unavailability(by_group.get("backup", []), kill_t)
    return Failover(
        killed=killed,
        nodes=nodes,
        rep=rep,
        duration_s=duration,
        kill_t=round(kill_t - released, 3),
        keys={group: len({r[0] for r in records}) for group, records in by_group.items()},
        unavailable_ms=_median_max(windows, unrecovered),
        unrecovered_keys=unrecovered,
        backup_write_unavailable_ms=_median_max(stalls, unwritten),
        acked_writes=acked,
        lost_acked_writes=lost,
        unverified_keys=unverified,
        failed_ops=sum(r[4] not in ("ok", "not_found") for r in every),
        timeline=_timeline(by_group, released, duration),
    )


def _lost_writes(
    records: list[OpRecord], preload: Mapping[str, str], final: Mapping[str, str | None]
) -> tuple[int, int, int]:
    """Count keys whose last acknowledged put is not what a final get returns.

    Each key is written by one client, one put at a time, so its puts are
    ordered. A put that timed out after the last acknowledged one may or may
    not have been applied, so the final value may be either of them.
    """
    acceptable: dict[str, set[str]] = {key: {value} for key, value in preload.items()}
    acked = 0
    for key, put, _start, _end, completion, value, _node in sorted(records, key=lambda r: r[2]):
        if not put or value is None:
            continue
        if completion == "ok":
            acked += 1
            acceptable[key] = {value}
        elif completion == "timed_out":
            acceptable[key].add(value)
    lost = sum(1 for key, values in acceptable.items() if key in final and final[key] not in values)
    unverified = sum(1 for key in acceptable if key not in final)
    return lost, unverified, acked


def _unavailability(records: list[OpRecord], victim: int, kill_t: float) -> tuple[list[float], int]:
    """Per key of the victim's primary range: kill time to the first successful op served elsewhere.

    An answer from the victim itself was given before it died, whenever the
    client read it, so only answers from other nodes end the window.
    """
    first_ok: dict[str, float] = {}
    keys = set()
    for key, _put, _start, end, completion, _value, node in records:
        keys.add(key)
        if completion in ("ok", "not_found") and node != victim and end > kill_t:
            first_ok[key] = min(first_ok.get(key, math.inf), end)
    return [(end - kill_t) * 1000 for end in first_ok.values()], len(keys - set(first_ok))


def _write_unavailability(records: list[OpRecord], kill_t: float) -> tuple[list[float], int]:
    """Per key the victim backed up: kill time to the acknowledgement of the first put issued after the kill.

    A put in flight at the kill may have been replicated just before it, so
    only puts issued afterwards show how long the primary held writes for
    the dead backup.
    """
    first_ack: dict[str, float] = {}
    keys = set()
    for key, put, start, end, completion, _value, _node in records:
        keys.add(key)
        if put and completion == "ok" and start > kill_t:
            first_ack[key] = min(first_ack.get(key, math.inf), end)
    return [(end - kill_t) * 1000 for end in first_ack.values()], len(keys - set(first_ack))


def _median_max(values: list[float], missing: int) -> dict[str, float | None]:
    if not values or missing:
        return {"median": None, "max": None}
    return {"median": round(statistics.median(values), 1), "max": round(max(values), 1)}


def _timeline(by_group: dict[str, list[OpRecord]], released: float, duration: float) -> list[dict[str, float]]:
    """Successful ops per ``TIMELINE_BIN`` (by the time their answer arrived), in total and per key group."""
    # The last round may end after the load's duration: a partial last bar would look like a dip.
    bins = max(1, int(duration / TIMELINE_BIN))
    timeline: list[dict[str, float]] = [{"t": round(i * TIMELINE_BIN, 3), "ops": 0} for i in range(bins)]
    for group, records in by_group.items():
        for point in timeline:
            point[group] = 0
        for _key, _put, _start, end, completion, _value, _node in records:
            slot = int((end - released) / TIMELINE_BIN)
            if completion in ("ok", "not_found") and 0 <= slot < bins:
                point = timeline[slot]
                point["ops"] += 1
                point[group] += 1
    return timeline


def measure_table(title: str) -> Table:
    """A two-column table of named measures and their values, the shape of every single-run summary."""
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    return table


def _failover_table(result: Failover) -> RenderableType:
    table = measure_table(
        f"Failover: SIGKILL {result.killed} at {result.kill_t:.2f} s ({result.nodes} nodes, rep {result.rep})"
    )
    table.add_row(
        "keys (victim primary / backup / unrelated)",
        " / ".join(str(result.keys.get(g, 0)) for g in ("primary", "backup", "unrelated")),
    )
    table.add_row("unavailable, median / max (victim primary keys)", _ms_pair(result.unavailable_ms))
    table.add_row("keys never available again", str(result.unrecovered_keys))
    table.add_row("writes unavailable, median / max (victim backup keys)", _ms_pair(result.backup_write_unavailable_ms))
    table.add_row("acknowledged writes", f"{result.acked_writes:,}")
    lost = result.lost_acked_writes
    table.add_row("acknowledged writes lost", str(lost) if not lost else f"[bold red]{lost}[/]")
    table.add_row("keys not readable at the end", str(result.unverified_keys))
    table.add_row("ops that did not complete", str(result.failed_ops))
    return table


def _ms_pair(pair: dict[str, float | None]) -> str:
    if pair["median"] is None or pair["max"] is None:
        return "n/a"
    return f"{pair['median']:.0f} ms / {pair['max']:.0f} ms"


def _plot_failover(result: Failover) -> None:
    per_second = 1 / TIMELINE_BIN
    title = f"ops/s per {TIMELINE_BIN * 1000:.0f} ms; {result.killed} killed at {result.kill_t:.2f} s (red line)"
    with _terminal_chart(title, width=80) as plt:
        plt.plot([p["t"] for p in result.timeline], [p["ops"] * per_second for p in result.timeline])
        plt.vline(result.kill_t, "red")
        plt.xlabel("seconds")


# --- output ---


def _progress() -> Progress:
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


def _console() -> Console:
    from rich.console import Console  # noqa: PLC0415

    return Console()


@contextmanager
def _terminal_chart(title: str, width: int = 70) -> Iterator[Any]:
    """plotext, cleared for a new chart, which is drawn in the terminal on the way out."""
    import plotext as plt  # noqa: PLC0415

    plt.clear_figure()
    yield plt
    plt.title(title)
    plt.plotsize(width, 20)
    plt.theme("clear")
    plt.show()


@contextmanager
def _png_chart(path: Path, width: float = 7) -> Iterator[Any]:
    """The axes of a new matplotlib figure (no display needed), saved to ``path`` as PNG on the way out."""
    import matplotlib as mpl  # noqa: PLC0415

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(width, 4.2), dpi=120)
    try:
        yield ax
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def _to_json(value: Any) -> Any:
    from dataclasses import asdict, is_dataclass  # noqa: PLC0415

    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


def _write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def throughput_json(runs: Sequence[ThroughputRun]) -> dict[str, Any]:
    return {"runs": _to_json(list(runs))}


# --- report ---


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import datetime  # noqa: PLC0415

    import msgpack  # noqa: PLC0415
    import zmq  # noqa: PLC0415

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(str(x) for x in msgpack.version),
    }


@dataclass(frozen=True)
class ReportSizes:
    """The sizes a report runs at: the assignment's, or tiny ones for a smoke test."""

    ops: int
    keys: int
    nodes: int
    reps: tuple[int, ...]
    modes: tuple[Mode, ...]
    clients: int
    balance_keys: int
    failover_rep: int
    failover_duration: float


# Batched messages carry 64 ops each, so 16 of them in flight keep 1024 ops in flight per client: more only adds
# queueing delay (latency = ops in flight / throughput). Unbatched, 128 in flight per client lets each pass of a
# node's loop take several requests per poll, which is what one-op messages can still share.
FULL_SIZES = ReportSizes(200_000, 100_000, 7, (1, 3, 5), (Mode(1, 128), Mode(64, 16)), 4, 100_000, 3, 6.0)
QUICK_SIZES = ReportSizes(2_000, 500, 3, (1, 2, 3), (Mode(1, 32), Mode(16, 8)), 2, 2_000, 2, 3.0)


def _chart_throughput(runs: Sequence[ThroughputRun], path: Path) -> None:
    modes = _modes(runs)
    reps = sorted({r.rep for r in runs})
    width = 0.8 / len(modes)
    with _png_chart(path) as ax:
        for i, mode in enumerate(modes):
            values = [_ops_per_s(runs, rep, mode) for rep in reps]
            xs = [x + (i - (len(modes) - 1) / 2) * width for x in range(len(reps))]
            bars = ax.bar(xs, values, width, label=mode.label)
            ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
        ax.set_xticks(range(len(reps)), [f"{rep}" for rep in reps])
        ax.set_xlabel("replicas")
        ax.set_ylabel("ops/s")
        ax.set_title(f"Throughput, {runs[0].ops:,} ops (50/50 get/put), {runs[0].nodes} nodes")
        ax.legend()


def _chart_balance(result: Balance, path: Path) -> None:
    mean = sum(result.counts.values()) / len(result.counts)
    with _png_chart(path) as ax:
        bars = ax.bar(list(result.counts), list(result.counts.values()), color="tab:green")
        ax.bar_label(bars, labels=[f"{v:,}" for v in result.counts.values()], fontsize=8)
        ax.axhline(mean, color="black", linestyle="--", linewidth=1, label=f"mean {mean:,.0f}")
        ax.set_ylabel("keys")
        ax.set_title(f"Keys per node: {result.keys:,} puts, {result.nodes} nodes, rep {result.rep}")
        ax.legend(loc="lower right")


def _chart_failover(result: Failover, path: Path) -> None:
    per_second = 1 / TIMELINE_BIN
    ts = [p["t"] for p in result.timeline]
    bottom = [0.0] * len(ts)
    names = {
        "primary": f"keys {result.killed} was primary for",
        "backup": f"keys {result.killed} was a backup for",
        "unrelated": "other keys",
    }
    with _png_chart(path, width=8) as ax:
        for group, label in names.items():
            if group not in result.timeline[0]:
                continue
            values = [p[group] * per_second for p in result.timeline]
            ax.bar(ts, values, TIMELINE_BIN, bottom=bottom, align="edge", label=label)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.axvline(result.kill_t, color="red", linestyle="--", label=f"SIGKILL {result.killed}")
        ax.set_xlabel("seconds since the load started")
        ax.set_ylabel(f"successful ops/s (per {TIMELINE_BIN * 1000:.0f} ms)")
        ax.set_title(f"Failover under load: {result.nodes} nodes, rep {result.rep}")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, frameon=False)


def write_report(
    out: Path, sizes: ReportSizes, runs: list[ThroughputRun], balance: Balance, failover: Failover
) -> None:
    """Write the Markdown report, its PNG charts and a JSON copy of every figure beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    charts = {
        "throughput": out.parent / "throughput.png",
        "balance": out.parent / "balance.png",
        "failover": out.parent / "failover.png",
    }
    _chart_throughput(runs, charts["throughput"])
    _chart_balance(balance, charts["balance"])
    _chart_failover(failover, charts["failover"])
    info = machine()
    data = {
        "machine": info,
        "throughput": throughput_json(runs),
        "balance": _to_json(balance),
        "failover": _to_json(failover),
    }
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    out.write_text(_report_markdown(sizes, info, runs, balance, failover, {k: p.name for k, p in charts.items()}))


def _report_markdown(
    sizes: ReportSizes,
    info: dict[str, Any],
    runs: list[ThroughputRun],
    balance: Balance,
    failover: Failover,
    charts: dict[str, str],
) -> str:
    lines = [
        "# kvcluster performance report",
        "",
        f"Generated by `kvcluster bench report` on {info['date']}. Every figure below comes from one run of the",
        "benchmarks against real clusters of processes on this machine; the raw numbers are in the JSON file beside",
        "this report.",
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        f"| CPU | {info['cpu']}, {info['cores']} cores |",
        f"| load average at the end | {' / '.join(str(x) for x in info['load_average'])} (1 / 5 / 15 min) |",
        f"| OS | {info['os']} |",
        f"| Python | {info['python']} |",
        f"| pyzmq / libzmq | {info['pyzmq']} / {info['libzmq']} |",
        f"| msgpack | {info['msgpack']} |",
        "",
        "Master, storage nodes and client processes all share these cores, so the figures measure the whole",
        "system on one machine, not a node's capacity. Other work running at the same time lowers them.",
        "",
        "## Design in brief",
        "",
        "(The full design, with the reasons behind it, is in [design.md](design.md).)",
        "",
        "- **Processes**: `kvcluster up --nodes N --rep K` starts a master and N storage nodes, each a single-threaded",
        "  Python process with one ZeroMQ poll loop; they talk msgpack over TCP on loopback.",
        "- **Placement**: a key hashes (blake2b) to one of 4096 slots; slot `s` has the replica list",
        "  `[primary, backup1, ...]` computed from `(s, N, K)` alone, so that every node holds the same number of",
        "  slots within one, as primary and at every backup rank. The master's table is that placement plus the",
        "  dead nodes.",
        "- **Writes**: a put goes to the slot's primary, which forwards it to every live backup (all puts that arrived",
        "  in one pass of its loop travel to a backup in one message), and applies and acknowledges it only once every",
        "  backup in the master's latest table has acknowledged. An acknowledged write is on every live replica.",
        "- **Reads** are served by the primary from its committed store, so a get returns the latest acknowledged",
        "  value.",
        "- **Failure detection**: nodes send heartbeats every 100 ms; the master declares a node dead 0.7 s after its",
        "  last heartbeat, promotes the first surviving backup of each of its slots (bumping the slot's epoch) and",
        "  pushes the new table. A primary serves only while its 0.5 s lease from the master is fresh, and a promoted",
        "  node first copies each gained slot to its backups, so a paused old primary can never serve stale data.",
        "- **Client**: caches the table and sends each operation straight to its primary over one DEALER socket per",
        "  node, with many requests in flight and optionally several operations per message (batching). On a timeout",
        '  or a "not primary" answer it refreshes the table and resends; every put carries a client id and an',
        "  operation id, so a resend is applied at most once.",
        "",
        "## Throughput",
        "",
        f"{sizes.ops:,} operations per run (50 % gets, 50 % puts, keys drawn uniformly from {sizes.keys:,} preloaded",
        f"keys), {sizes.nodes} storage nodes, a fresh cluster per replica count, {sizes.clients} client processes.",
        "*Unbatched* sends one operation per message; *batch N* packs up to N operations for the same node into one",
        "message; *window W* keeps up to W messages in flight per client process. Latency is from sending an",
        "operation to its answer, so it grows with the operations in flight (it is their number divided by the",
        "throughput).",
        "",
        f"![throughput]({charts['throughput']})",
        "",
        "| replicas | mode | ops/s | p50 ms | p95 ms | p99 ms | failed ops | CPU µs/op: clients | CPU µs/op: cluster |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r.rep} | {r.mode.label} | {r.ops_per_s:,.0f} | {r.p50_ms:.2f} | {r.p95_ms:.2f} "
        f"| {r.p99_ms:.2f} | {r.failed} | {r.client_cpu_us_per_op:.0f} | {r.cluster_cpu_us_per_op:.0f} |"
        for r in sorted(runs, key=lambda r: (r.batch, r.window, r.rep))
    ]
    problems = [
        f"- **rep {r.rep}, {r.mode.label}**: {r.failed:,} operations did not complete "
        f"({', '.join(f'{n} {k}' for k, n in sorted(r.failures.items())) or 'none'}); "
        f"nodes the master declared dead under load, though none was killed: {', '.join(r.dead_nodes) or 'none'}."
        for r in runs
        if r.failed or r.dead_nodes
    ]
    if problems:
        lines += ["", "Problems during these runs:", "", *problems]
    mean = sum(balance.counts.values()) / len(balance.counts)
    lines += [
        "",
        "Every message costs tens of microseconds of CPU in a single-threaded Python process, and all processes",
        "share the cores. A put costs its request and reply plus, with K replicas, a replication message to each of",
        "the K-1 backups and its acknowledgement (puts arriving together share them), so throughput falls as K grows;",
        "batching, which divides the per-message cost among many operations, is the largest lever. The last two",
        "columns are the CPU time (all threads, user + system) that the client processes and the cluster's",
        f"processes (master and nodes) spent per completed operation: with {info['cores']} cores, their sum bounds",
        "the throughput at about cores / (clients + cluster) operations per second.",
        "",
        "## Load balance",
        "",
        f"{balance.keys:,} puts through the client on {balance.nodes} nodes, replicas per key: {balance.rep}. The key",
        "counts are the ones each node reports to the master.",
        "",
        f"![balance]({charts['balance']})",
        "",
        "| node | keys | vs mean |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {count:,} | {(count / mean - 1) * 100:+.2f} % |" for name, count in balance.counts.items()]
    lines += [
        "",
        f"max/mean **{balance.max_over_mean:.4f}**, min/mean **{balance.min_over_mean:.4f}**, standard deviation",
        f"**{balance.stddev:.1f}** keys, against **{balance.ideal_stddev:.1f}** for ideal random placement",
        f"(sqrt(n p (1-p)) with n = {balance.keys:,} and p = {balance.rep}/{balance.nodes}): slots are spread",
        "evenly, so what remains is the hash's own randomness.",
        "",
        "## Failover",
        "",
        f"{failover.nodes} nodes, {failover.rep} replicas. One client process per key group runs rounds of one",
        "operation per key (50/50 get/put, every put value unique) for",
        f"{failover.duration_s:g} s; at {failover.kill_t:.2f} s {failover.killed} is killed with SIGKILL. Key groups:",
        f"{failover.keys.get('primary', 0)} keys {failover.killed} was the primary for,",
        f"{failover.keys.get('backup', 0)} keys it was a backup for, {failover.keys.get('unrelated', 0)} other keys.",
        "",
        f"![failover]({charts['failover']})",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| unavailability of the killed primary's keys, median / max | {_ms_pair(failover.unavailable_ms)} |",
        f"| keys never available again | {failover.unrecovered_keys} |",
        "| write unavailability of the keys it backed up, median / max "
        f"| {_ms_pair(failover.backup_write_unavailable_ms)} |",
        f"| acknowledged writes | {failover.acked_writes:,} |",
        f"| acknowledged writes lost | **{failover.lost_acked_writes}** |",
        f"| keys not readable at the end | {failover.unverified_keys} |",
        "",
        "Unavailability runs from the kill to the first successful operation on the key served by another node. It",
        "is the failure detector's 0.7 s plus a little: after its first try times out (0.3 s), a client asks the",
        "master for the table every 100 ms and resends to the new primary as soon as the table names the victim",
        "dead. Keys the victim only backed up stay readable, but their",
        "primary holds each put until the master's new table drops the dead backup: their write unavailability runs",
        "from the kill to the acknowledgement of the first put issued after it. Each client process waits for a",
        "whole round before the next, so a key group stalls as one in the chart. An acknowledged write is lost when",
        "the final read of its key returns anything but the last acknowledged value (or a later put that timed out).",
        "",
        "## Reproduce",
        "",
        "```shell",
        f"kvcluster bench throughput --ops {sizes.ops} --nodes {sizes.nodes} --reps {','.join(map(str, sizes.reps))} "
        f"--batch {','.join(str(m.batch) for m in sizes.modes)} "
        f"--window {','.join(str(m.window) for m in sizes.modes)} --plot",
        f"kvcluster bench balance --keys {sizes.balance_keys} --nodes {sizes.nodes} --rep 1 --plot",
        f"kvcluster bench failover --nodes {sizes.nodes} --rep {sizes.failover_rep} "
        f"--duration {sizes.failover_duration:g} --plot",
        "kvcluster bench report",
        "```",
        "",
    ]
    return "\n".join(lines)


# --- commands ---

JsonOut = Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON to this file.")]
Plot = Annotated[bool, typer.Option("--plot", help="Draw a chart in the terminal.")]
Nodes = Annotated[int, typer.Option("--nodes", min=1, help="Storage nodes in the cluster.")]


Result = TypeVar("Result")


def _run_benchmark(
    run: Callable[[Progress], Result],
    table: Callable[[Result], RenderableType],
    chart: Callable[[Result], None],
    to_json: Callable[[Result], Any],
    *,
    plot: bool,
    json_out: Path | None,
) -> Result:
    """Run a benchmark under a progress bar, then print its table, draw its chart if asked and write its JSON."""
    with interrupt_on_sigterm(), _progress() as progress:
        result = run(progress)
    _console().print(table(result))
    if plot:
        chart(result)
    _write_json(json_out, to_json(result))
    return result


def throughput_command(
    ops: Annotated[int, typer.Option("--ops", min=1, help="Operations per measured run.")] = 200_000,
    nodes: Nodes = 7,
    reps: Annotated[
        str, typer.Option("--reps", help="Replica counts, comma-separated; a fresh cluster each.")
    ] = "1,3,5",
    read_ratio: Annotated[float, typer.Option("--read-ratio", min=0.0, max=1.0, help="Fraction of gets.")] = 0.5,
    keys: Annotated[int, typer.Option("--keys", min=1, help="Keys preloaded and drawn from uniformly.")] = 100_000,
    clients: Annotated[int, typer.Option("--clients", min=1, help="Client processes.")] = 4,
    window: Annotated[
        str, typer.Option("--window", help="Messages in flight per client: one value, or one per --batch value.")
    ] = "128",
    batch: Annotated[
        str,
        typer.Option(
            "--batch", help="Operations per message; a comma-separated list (e.g. 1,64) runs each mode side by side."
        ),
    ] = "1",
    plot: Plot = False,
    json_out: JsonOut = None,
) -> None:
    """Ops/s and latency percentiles for each replica count, under many concurrent clients."""
    rep_list = _int_list(reps, "--reps")
    modes = _modes_of(_int_list(batch, "--batch"), _int_list(window, "--window"))
    _check_shape(nodes, rep_list)
    _run_benchmark(
        lambda progress: run_throughput(
            ops=ops,
            nodes=nodes,
            reps=rep_list,
            read_ratio=read_ratio,
            keys=keys,
            clients=clients,
            modes=modes,
            progress=progress,
        ),
        _throughput_summary,
        _plot_throughput,
        throughput_json,
        plot=plot,
        json_out=json_out,
    )


def balance_command(
    keys: Annotated[int, typer.Option("--keys", min=1, help="Keys to put.")] = 100_000,
    nodes: Nodes = 7,
    rep: Annotated[int, typer.Option("--rep", min=1, help="Replicas per key.")] = 1,
    plot: Plot = False,
    json_out: JsonOut = None,
) -> None:
    """Keys per node after many puts, against the spread of ideal random placement."""
    _check_shape(nodes, [rep])
    _run_benchmark(
        lambda progress: run_balance(keys=keys, nodes=nodes, rep=rep, progress=progress),
        _balance_table,
        _plot_balance,
        _to_json,
        plot=plot,
        json_out=json_out,
    )


def failover_command(
    nodes: Nodes = 7,
    rep: Annotated[
        int, typer.Option("--rep", min=2, help="Replicas per key (at least 2, or the killed node's keys are gone).")
    ] = 3,
    duration: Annotated[
        float,
        typer.Option("--duration", min=1.5, help="Seconds of load; the kill comes after a third of it, at most 2 s."),
    ] = 6.0,
    plot: Plot = False,
    json_out: JsonOut = None,
) -> None:
    """SIGKILL a primary under load: how long its keys are unavailable, and whether any acknowledged write is lost."""
    if nodes < 2:
        raise UsageError("failover needs at least 2 nodes")
    _check_shape(nodes, [rep])
    result = _run_benchmark(
        lambda progress: run_failover(nodes=nodes, rep=rep, duration=duration, progress=progress),
        _failover_table,
        _plot_failover,
        _to_json,
        plot=plot,
        json_out=json_out,
    )
    if result.lost_acked_writes:
        raise BenchmarkError(f"{result.lost_acked_writes} acknowledged writes were lost")


def report_command(
    out: Annotated[Path, typer.Option("--out", help="Markdown file to write; the PNG charts go beside it.")] = Path(
        "docs/REPORT.md"
    ),
    quick: Annotated[
        bool, typer.Option("--quick", help="Tiny sizes, for a smoke test (seconds, not minutes).")
    ] = False,
) -> None:
    """Run every benchmark at the assignment's sizes and write a Markdown report with PNG charts."""
    sizes = QUICK_SIZES if quick else FULL_SIZES
    with interrupt_on_sigterm(), _progress() as progress:
        runs = run_throughput(
            ops=sizes.ops,
            nodes=sizes.nodes,
            reps=sizes.reps,
            read_ratio=0.5,
            keys=sizes.keys,
            clients=sizes.clients,
            modes=sizes.modes,
            progress=progress,
        )
        balance = run_balance(keys=sizes.balance_keys, nodes=sizes.nodes, rep=1, progress=progress)
        failover = run_failover(
            nodes=sizes.nodes, rep=sizes.failover_rep, duration=sizes.failover_duration, progress=progress
        )
    console = _console()
    console.print(_throughput_table(runs))
    console.print(_balance_table(balance))
    console.print(_failover_table(failover))
    write_report(out, sizes, runs, balance, failover)
    console.print(f"wrote {out} and its charts")


def register(app: typer.Typer) -> None:
    """Add the benchmark commands, and the chaos run, to ``app``."""
    from kvcluster import chaos  # noqa: PLC0415

    app.command("throughput")(throughput_command)
    app.command("balance")(balance_command)
    app.command("failover")(failover_command)
    app.command("report")(report_command)
    chaos.register(app)
