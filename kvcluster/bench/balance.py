"""``kvcluster bench balance``: keys per node after many puts, against the spread of ideal random placement."""

from __future__ import annotations

import functools
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kvcluster.bench.bulk import bulk_load
from kvcluster.bench.common import BenchmarkError, JsonOut, Nodes, Plot, check_shape, cluster
from kvcluster.bench.output import png_chart, run_benchmark, terminal_chart, to_json

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.progress import Progress

SETTLE_TIMEOUT = 15.0  # nodes report key counts every heartbeat; this bounds the wait for them


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


def run_balance(*, keys: int, nodes: int, rep: int, progress: Progress) -> Balance:
    """Put ``keys`` keys through the client, then read each node's own key count from the master."""
    task = progress.add_task(f"balance: starting {nodes} nodes", total=keys)
    with cluster(nodes, rep) as (_, state):
        progress.update(task, description=f"balance: {keys} puts")
        bulk_load(state.master_endpoint, keys, functools.partial(progress.advance, task))
        progress.update(task, description="balance: waiting for node counts")
        counts = _settled_counts(state.master_endpoint, keys * rep)
    return _balance_stats(keys, nodes, rep, counts)


def _settled_counts(master: str, expected: int) -> dict[str, int]:
    """Poll the master until the key counts the nodes report (each heartbeat) add up to ``expected``."""
    from kvcluster.client import Connection  # noqa: PLC0415
    from kvcluster.core.placement import node_name  # noqa: PLC0415

    deadline = time.monotonic() + SETTLE_TIMEOUT
    with Connection(master, deadline=5.0) as client:
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


def balance_table(result: Balance) -> RenderableType:
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
    counts = list(result.counts.values())
    with terminal_chart(f"Keys per node ({result.keys:,} keys, rep {result.rep})", counts) as plt:
        plt.bar(list(result.counts), counts)


def chart_balance(result: Balance, path: Path) -> None:
    mean = sum(result.counts.values()) / len(result.counts)
    with png_chart(path) as ax:
        bars = ax.bar(list(result.counts), list(result.counts.values()), color="tab:green")
        ax.bar_label(bars, labels=[f"{v:,}" for v in result.counts.values()], fontsize=8)
        ax.axhline(mean, color="black", linestyle="--", linewidth=1, label=f"mean {mean:,.0f}")
        ax.set_ylabel("keys")
        ax.set_title(f"Keys per node: {result.keys:,} puts, {result.nodes} nodes, rep {result.rep}")
        ax.legend(loc="lower right")


def balance_command(
    keys: Annotated[int, typer.Option("--keys", min=1, help="Keys to put.")] = 100_000,
    nodes: Nodes = 7,
    rep: Annotated[int, typer.Option("--rep", min=1, help="Replicas per key.")] = 1,
    plot: Plot = False,
    json_out: JsonOut = None,
) -> None:
    """Keys per node after many puts, against the spread of ideal random placement."""
    check_shape(nodes, [rep])
    run_benchmark(
        lambda progress: run_balance(keys=keys, nodes=nodes, rep=rep, progress=progress),
        balance_table,
        _plot_balance,
        to_json,
        plot=plot,
        json_out=json_out,
    )
