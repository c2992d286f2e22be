"""``kvcluster bench throughput``: ops/s, latency percentiles and CPU per op for each replica count and fsync policy.

Load comes from separate client processes (``workload`` mixes in a
``ClientPool``), released together by a barrier so the measured wall time
covers the concurrent phase only. Each fsync policy and replica count gets a
fresh cluster, filled first (``bulk``), whose nodes' memory is measured then;
each mode (operations per message, messages in flight) is
one measured phase. With several policies, each one's cost is given against
``no`` (the log written, never synced by the nodes); ``--redis`` adds Redis's
own figures under the matching persistence (``redis_compare``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kvcluster.bench.bulk import bulk_load
from kvcluster.bench.common import (
    Advance,
    JsonOut,
    Memory,
    Mode,
    Nodes,
    Plot,
    ThroughputRun,
    check_shape,
    cluster,
    cpu_seconds,
    dead_nodes,
    fsync_list,
    int_list,
    percentile,
    rss_bytes,
)
from kvcluster.bench.output import png_chart, rich_table, run_benchmark, terminal_chart, to_json
from kvcluster.bench.redis_compare import RedisRun, redis_available, redis_rows, run_redis_for, versus_redis
from kvcluster.bench.workload import Workload, merged, tally_worker
from kvcluster.client_pool import ClientPool
from kvcluster.errors import UsageError
from kvcluster.master_group import DEFAULT_MASTERS, check_master_count

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.progress import Progress


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
    masters: int = DEFAULT_MASTERS,
    fsyncs: Sequence[str] = ("everysec",),
) -> list[ThroughputRun]:
    """For every fsync policy and replica count a fresh cluster: preload, then one measured phase per mode."""
    runs: list[ThroughputRun] = []
    for fsync in fsyncs:
        for rep in reps:
            name = f"fsync {fsync}, rep {rep}" if len(fsyncs) > 1 else f"rep {rep}"
            task = progress.add_task(f"{name}: starting {nodes} nodes", total=keys + ops * len(modes))
            advance = functools.partial(progress.advance, task)
            with cluster(nodes, rep, masters, fsync) as (_, state):
                progress.update(task, description=f"{name}: preload")
                empty = rss_bytes([s.pid for s in state.servers])
                bulk_load(state.master_endpoint, keys, advance)
                memory = Memory.after_fill(keys, rep, empty, rss_bytes([s.pid for s in state.servers]))
                for mode in modes:
                    progress.update(task, description=f"{name}: {mode.label}")
                    run = measure_load(
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
                        cluster_pids=[*(m.pid for m in state.masters), *(s.pid for s in state.servers)],
                    )
                    run.fsync = fsync
                    run.memory = memory
                    runs.append(run)
            progress.update(task, description=f"{name}: done")
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
    shares = [ops // clients + (1 if i < ops % clients else 0) for i in range(clients)]
    jobs = [
        Workload(
            master,
            index=i,
            seed=rep * 1000 + batch * 10 + i,
            keys=keys,
            ops=share,
            read_ratio=read_ratio,
            batch=batch,
            window=window,
        )
        for i, share in enumerate(shares)
        if share
    ]
    with ClientPool(tally_worker, jobs) as pool:
        cluster_cpu = -cpu_seconds(cluster_pids)
        pool.release()
        tally = merged(pool.collect(advance))
        cluster_cpu += cpu_seconds(cluster_pids)
    ordered = tally.ordered()
    wall = tally.ended - tally.started
    completed = tally.completed
    return ThroughputRun(
        rep=rep,
        batch=batch,
        ops=ops,
        completed=completed,
        failed=sum(tally.failures.values()),
        ops_per_s=round(completed / wall, 1) if wall > 0 else 0.0,
        p50_ms=round(percentile(ordered, 0.50), 3),
        p95_ms=round(percentile(ordered, 0.95), 3),
        p99_ms=round(percentile(ordered, 0.99), 3),
        wall_s=round(wall, 3),
        nodes=nodes,
        keys=keys,
        clients=len(jobs),
        window=window,
        failures=tally.failures,
        client_cpu_us_per_op=round(tally.cpu_s / max(1, completed) * 1e6, 1),
        cluster_cpu_us_per_op=round(cluster_cpu / max(1, completed) * 1e6, 1),
        dead_nodes=dead_nodes(master),
    )


THROUGHPUT_HEADER = (
    "fsync",
    "mode",
    "replicas",
    "ops/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "failed ops",
    "CPU µs/op: clients",
    "CPU µs/op: cluster",
)


def throughput_rows(runs: Sequence[ThroughputRun]) -> list[list[str]]:
    """One row per run: policies in the order run, then modes, then replica counts."""
    policies = list(dict.fromkeys(r.fsync for r in runs))
    return [
        [
            r.fsync,
            r.mode.label,
            str(r.rep),
            f"{r.ops_per_s:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p95_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"[bold red]{r.failed}[/]" if r.failed else "0",
            f"{r.client_cpu_us_per_op:.0f}",
            f"{r.cluster_cpu_us_per_op:.0f}",
        ]
        for r in sorted(runs, key=lambda r: (policies.index(r.fsync), r.mode, r.rep))
    ]


def throughput_problems(runs: Sequence[ThroughputRun]) -> list[str]:
    """A sentence for each run where operations failed or nodes were declared dead, though none was killed."""
    problems = []
    for run in runs:
        where = f"fsync {run.fsync}, rep {run.rep}, {run.mode.label}"
        if run.failed:
            kinds = ", ".join(f"{count} {name}" for name, count in sorted(run.failures.items()))
            problems.append(f"{where}: {run.failed:,} operations did not complete ({kinds})")
        if run.dead_nodes:
            problems.append(f"{where}: the master declared {', '.join(run.dead_nodes)} dead under load")
    return problems


def _runs_table(runs: Sequence[ThroughputRun]) -> RenderableType:
    """Fsync policies and replica counts down, batch sizes across, so both modes sit side by side."""
    from rich.table import Table  # noqa: PLC0415

    modes = _modes(runs)
    table = Table(
        title=f"Throughput ({runs[0].ops} ops per run, {runs[0].nodes} nodes, {runs[0].clients} client processes)"
    )
    table.add_column("fsync")
    table.add_column("replicas", justify="right")
    for mode in modes:
        header = mode.label.replace(", ", "\n")
        table.add_column(f"{header}\nops/s", justify="right")
        table.add_column(f"{header}\np50/p95/p99 ms", justify="right")
    table.add_column("failed\nops", justify="right")
    for fsync, rep in _groups(runs):
        row = [fsync, str(rep)]
        failed = 0
        for mode in modes:
            run = _run_of(runs, rep, mode, fsync)
            if run is None:
                row += ["-", "-"]
                continue
            row += [f"{run.ops_per_s:,.0f}", f"{run.p50_ms:.1f}/{run.p95_ms:.1f}/{run.p99_ms:.1f}"]
            failed += run.failed
        row.append(str(failed) if not failed else f"[bold red]{failed}[/]")
        table.add_row(*row)
    return table


def throughput_table(runs: Sequence[ThroughputRun]) -> RenderableType:
    """The runs, each fsync policy's cost against ``no``, and a line for each run where something failed."""
    from rich.console import Group  # noqa: PLC0415

    return Group(
        _runs_table(runs),
        *(cost.sentence for cost in fsync_costs(runs)),
        *(f"[bold red]{problem}[/]" for problem in throughput_problems(runs)),
    )


def _plot_throughput(runs: Sequence[ThroughputRun]) -> None:
    modes = _modes(runs)
    groups = _groups(runs)
    labels = [_group_label(runs, fsync, rep) for fsync, rep in groups]
    series = [[_ops_per_s(runs, rep, mode, fsync) for fsync, rep in groups] for mode in modes]
    with terminal_chart("Throughput (ops/s) against replicas", [v for s in series for v in s]) as plt:
        if len(series) == 1:
            plt.bar(labels, series[0])
        else:
            plt.multiple_bar(labels, series, labels=[mode.label for mode in modes])


def _modes_of(batches: Sequence[int], windows: Sequence[int]) -> list[Mode]:
    """Pair ``--batch`` with ``--window`` values: one window applies to every batch size."""
    if len(windows) == 1:
        windows = list(windows) * len(batches)
    if len(windows) != len(batches):
        raise UsageError(f"--window takes one value or one per --batch value ({len(batches)}), got {len(windows)}")
    return list(dict.fromkeys(Mode(b, w) for b, w in zip(batches, windows, strict=True)))


def _modes(runs: Sequence[ThroughputRun]) -> list[Mode]:
    return sorted({r.mode for r in runs})


def _run_of(runs: Sequence[ThroughputRun], rep: int, mode: Mode, fsync: str | None = None) -> ThroughputRun | None:
    """The run of this replica count and mode (and fsync policy; any policy when ``None``)."""
    return next((r for r in runs if r.rep == rep and r.mode == mode and fsync in (None, r.fsync)), None)


def _ops_per_s(runs: Sequence[ThroughputRun], rep: int, mode: Mode, fsync: str | None = None) -> float:
    run = _run_of(runs, rep, mode, fsync)
    return run.ops_per_s if run is not None else 0.0


def _groups(runs: Sequence[ThroughputRun]) -> list[tuple[str, int]]:
    """(fsync policy, replica count) of every cluster measured: policies in the order run, replicas ascending."""
    policies = list(dict.fromkeys(r.fsync for r in runs))
    return [(fsync, rep) for fsync in policies for rep in sorted({r.rep for r in runs if r.fsync == fsync})]


def _group_label(runs: Sequence[ThroughputRun], fsync: str, rep: int) -> str:
    return f"rep {rep}" if len({r.fsync for r in runs}) == 1 else f"{fsync}, rep {rep}"


@dataclass(frozen=True)
class FsyncCost:
    """How much throughput one fsync policy gives up against ``no`` at the same replica count and mode."""

    fsync: str
    rep: int
    batch: int
    window: int
    ops_per_s: float
    no_ops_per_s: float
    cost: float  # 1 - ops_per_s / no_ops_per_s: 0.25 means a quarter fewer ops/s than with no fsync

    @property
    def sentence(self) -> str:
        mode = Mode(self.batch, self.window).label
        verb = "costs" if self.cost >= 0 else "gains"
        return (
            f"fsync {self.fsync} {verb} {abs(self.cost):.0%} against no (rep {self.rep}, {mode}: "
            f"{self.ops_per_s:,.0f} against {self.no_ops_per_s:,.0f} ops/s)"
        )


def fsync_costs(runs: Sequence[ThroughputRun]) -> list[FsyncCost]:
    """Every policy's run against the ``no`` run of the same replica count and mode, when there is one."""
    costs = []
    for run in runs:
        base = _run_of(runs, run.rep, run.mode, "no")
        if run.fsync == "no" or base is None or not base.ops_per_s:
            continue
        cost = round(1 - run.ops_per_s / base.ops_per_s, 3)
        costs.append(FsyncCost(run.fsync, run.rep, run.batch, run.window, run.ops_per_s, base.ops_per_s, cost))
    return costs


def chart_throughput(runs: Sequence[ThroughputRun], path: Path) -> None:
    modes = _modes(runs)
    groups = _groups(runs)
    width = 0.8 / len(modes)
    with png_chart(path, width=max(7, 1.2 * len(groups))) as ax:
        for i, mode in enumerate(modes):
            values = [_ops_per_s(runs, rep, mode, fsync) for fsync, rep in groups]
            xs = [x + (i - (len(modes) - 1) / 2) * width for x in range(len(groups))]
            bars = ax.bar(xs, values, width, label=mode.label)
            ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
        ticks = [f"{rep}" if len({r.fsync for r in runs}) == 1 else f"{rep}\nfsync {fsync}" for fsync, rep in groups]
        ax.set_xticks(range(len(groups)), ticks)
        ax.set_xlabel("replicas")
        ax.set_ylabel("ops/s")
        ax.set_title(f"Throughput, {runs[0].ops:,} ops (50/50 get/put), {runs[0].nodes} nodes")
        ax.legend()


def throughput_json(runs: Sequence[ThroughputRun], redis: Sequence[RedisRun] = ()) -> dict[str, Any]:
    data = {"runs": to_json(list(runs)), "fsync_costs": to_json(fsync_costs(runs))}
    if redis:
        data["redis"] = [
            {**to_json(r), "kvcluster": [versus_redis(run, r) for run in runs if run.fsync == r.fsync]} for r in redis
        ]
    return data


@dataclass
class ThroughputResults:
    """kvcluster's runs, and Redis's beside them when asked for (``redis_note`` says why there are none)."""

    runs: list[ThroughputRun]
    redis: list[RedisRun] = field(default_factory=list)
    redis_note: str = ""


def _results_summary(results: ThroughputResults) -> RenderableType:
    from rich.console import Group  # noqa: PLC0415

    parts = [throughput_table(results.runs)]
    if results.redis:
        first = results.redis[0]
        title = (
            f"kvcluster against Redis (redis-benchmark -c {first.clients} -n {first.requests} -t set,get; "
            "Redis 50/50 = harmonic mean of SET and GET)"
        )
        parts.append(rich_table(title, *redis_rows(results.runs, results.redis), left=2))
    if results.redis_note:
        parts.append(results.redis_note)
    return Group(*parts)


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
    masters: Annotated[int, typer.Option("--masters", help="Masters in the group: 1, 3 or 5.")] = DEFAULT_MASTERS,
    fsync: Annotated[
        str,
        typer.Option(
            "--fsync",
            help="When the nodes sync their logs: always, everysec or no; a comma-separated list runs each "
            "side by side, with each policy's cost against no.",
        ),
    ] = "everysec",
    redis: Annotated[
        bool,
        typer.Option(
            "--redis",
            help="Also run redis-benchmark (-c 16, --ops requests) against a redis-server with the matching "
            "persistence, if redis-server and redis-benchmark are installed.",
        ),
    ] = False,
    plot: Plot = False,
    json_out: JsonOut = None,
) -> None:
    """Ops/s and latency percentiles for each fsync policy and replica count, under many concurrent clients."""
    check_master_count(masters)
    rep_list = int_list(reps, "--reps")
    fsyncs = fsync_list(fsync)
    modes = _modes_of(int_list(batch, "--batch"), int_list(window, "--window"))
    check_shape(nodes, rep_list)

    def run(progress: Progress) -> list[ThroughputRun]:
        return run_throughput(
            ops=ops,
            nodes=nodes,
            reps=rep_list,
            read_ratio=read_ratio,
            keys=keys,
            clients=clients,
            modes=modes,
            progress=progress,
            masters=masters,
            fsyncs=fsyncs,
        )

    note = ""
    if redis and not redis_available():
        note = "--redis: redis-server or redis-benchmark is not installed; Redis was not measured"
    with_redis = redis and not note
    run_benchmark(
        lambda progress: (
            ThroughputResults(run(progress), run_redis_for(progress, fsyncs, ops))
            if with_redis
            else ThroughputResults(run(progress), redis_note=note)
        ),
        _results_summary,
        lambda results: _plot_throughput(results.runs),
        lambda results: throughput_json(results.runs, results.redis),
        plot=plot,
        json_out=json_out,
    )
