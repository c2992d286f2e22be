"""The durability section of ``kvcluster bench report``: throughput per fsync policy, and restarts from the data.

``run_durability`` runs ``throughput`` once per fsync policy (a fresh cluster
each) and ``restart`` at each size asked for; ``write_durability`` draws the
charts beside the report and puts the section (prose from
``report_template.md``) and its figures into the report and its JSON copy,
in place of a previous version (``output.write_section``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvcluster.bench.common import Mode, ThroughputRun, load_average, percentile
from kvcluster.bench.output import markdown_table, stdout_console, template, to_json, write_section
from kvcluster.bench.redis_compare import RedisRun, redis_available, redis_rows, run_redis
from kvcluster.bench.restart import RestartResult, RestartShape, run_restart
from kvcluster.bench.restart_views import chart_restart, restart_lines, restart_table
from kvcluster.bench.throughput import (
    THROUGHPUT_HEADER,
    chart_throughput,
    fsync_costs,
    run_throughput,
    throughput_rows,
    throughput_table,
)

if TYPE_CHECKING:
    from rich.progress import Progress

RESTART_TIMEOUT = 900.0


@dataclass(frozen=True)
class DurabilitySizes:
    """The sizes of the durability runs (the restart sizes in keys come from the command line)."""

    ops: int
    keys: int
    nodes: int
    reps: tuple[int, ...]
    modes: tuple[Mode, ...]
    clients: int
    fsyncs: tuple[str, ...]
    restart_nodes: int
    restart_rep: int
    absence: float


FULL_DURABILITY = DurabilitySizes(
    200_000, 100_000, 7, (3,), (Mode(1, 128), Mode(64, 16)), 4, ("always", "everysec", "no"), 7, 3, 10.0
)
QUICK_DURABILITY = DurabilitySizes(
    2_000, 500, 3, (2,), (Mode(1, 32), Mode(16, 8)), 2, ("always", "everysec", "no"), 3, 2, 1.0
)


@dataclass
class DurabilityResults:
    runs: list[ThroughputRun] = field(default_factory=list)
    restarts: list[RestartResult] = field(default_factory=list)
    command: str = ""
    """The report command that measured them."""
    load_average: dict[str, list[float]] = field(default_factory=dict)
    """The machine's 1, 5 and 15 minute load averages before the throughput runs and at their end."""
    redis: list[RedisRun] = field(default_factory=list)
    """redis-benchmark under each policy's persistence, when Redis is installed."""
    fdatasync_us: dict[str, float] = field(default_factory=dict)
    """Median and p99 of one small append and ``fdatasync`` where the benchmarks keep their data."""

    def json(self) -> dict[str, Any]:
        return {
            "durability": {
                "throughput": to_json(self.runs),
                "fsync_costs": to_json(fsync_costs(self.runs)),
                "restart": to_json(self.restarts),
                "redis": to_json(self.redis),
                "fdatasync_us": self.fdatasync_us,
                "load_average": self.load_average,
                "command": self.command,
            }
        }


def durability_command(restart_keys: Sequence[int], *, quick: bool, only: bool) -> str:
    words = ["kvcluster bench report"]
    words += ["--quick"] if quick else []
    words += ["--only-durability"] if only else []
    words += [f"--restart-keys {','.join(map(str, restart_keys))}"]
    return " ".join(words)


SYNC_SAMPLES = 500


def fdatasync_latency(samples: int = SYNC_SAMPLES) -> dict[str, float]:
    """Append 200 bytes and ``fdatasync``, ``samples`` times, in the temporary directory the benchmarks use."""
    import tempfile  # noqa: PLC0415
    import time  # noqa: PLC0415

    took = []
    with tempfile.TemporaryFile(prefix="kvcluster-bench-sync-") as file:
        fd = file.fileno()
        for _ in range(samples):
            os.write(fd, b"x" * 200)
            started = time.perf_counter()
            os.fdatasync(fd)
            took.append(time.perf_counter() - started)
    took.sort()
    return {"median": round(percentile(took, 0.5) * 1e6, 1), "p99": round(percentile(took, 0.99) * 1e6, 1)}


def run_durability(sizes: DurabilitySizes, restart_keys: Sequence[int], progress: Progress) -> DurabilityResults:
    start = load_average()
    runs = run_throughput(
        ops=sizes.ops,
        nodes=sizes.nodes,
        reps=sizes.reps,
        read_ratio=0.5,
        keys=sizes.keys,
        clients=sizes.clients,
        modes=sizes.modes,
        progress=progress,
        fsyncs=sizes.fsyncs,
    )
    end = load_average()
    redis = [run_redis(fsync, sizes.ops) for fsync in sizes.fsyncs] if redis_available() else []
    restarts = [
        run_restart(
            RestartShape(sizes.restart_nodes, sizes.restart_rep, keys, sizes.absence, "everysec", RESTART_TIMEOUT),
            progress,
        )
        for keys in restart_keys
    ]
    return DurabilityResults(
        runs, restarts, load_average={"start": start, "end": end}, redis=redis, fdatasync_us=fdatasync_latency()
    )


def _throughput_lines(results: DurabilityResults, chart: str) -> list[str]:
    runs = results.runs
    first = runs[0]
    lines = template("fsync", ops=first.ops, nodes=first.nodes, clients=first.clients, chart=chart)
    lines += markdown_table(THROUGHPUT_HEADER, throughput_rows(runs), left=2)
    costs = fsync_costs(runs)
    if costs:
        lines += ["Against *no* at the same replica count and mode:", ""]
        lines += [*(f"- {cost.sentence}." for cost in costs), "", *template("fsync_noise")]
    if results.fdatasync_us:
        lines += template("fdatasync", **results.fdatasync_us)
    if results.redis:
        lines += _redis_lines(results)
    if results.load_average:
        start, end = results.load_average["start"], results.load_average["end"]
        cores = os.cpu_count()
        lines += [
            f"Load average {start[0]:g} before these runs and {end[0]:g} at their end (1 min, {cores} cores).",
            "",
        ]
    return lines


def _redis_lines(results: DurabilityResults) -> list[str]:
    first = results.redis[0]
    header, rows = redis_rows(results.runs, results.redis)
    return [*template("redis", clients=first.clients, requests=first.requests), *markdown_table(header, rows, 2)]


def durability_markdown(results: DurabilityResults, charts: dict[str, str]) -> list[str]:
    """The section's lines (without the markers ``write_section`` adds)."""
    lines = template("durability", command=results.command) if results.command else []
    if results.runs:
        lines += _throughput_lines(results, charts["durability_throughput"])
    if results.restarts:
        lines += restart_lines(results.restarts, charts["restart"])
    return lines + template("durability_after")


def write_durability(out: Path, results: DurabilityResults) -> None:
    """Charts beside ``out``, the figures into its JSON copy, and the section into ``out`` (kept or created)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    charts: dict[str, str] = {}
    if results.runs:
        charts["durability_throughput"] = "durability_throughput.png"
        chart_throughput(results.runs, out.parent / charts["durability_throughput"])
    if results.restarts:
        charts["restart"] = "restart.png"
        chart_restart(results.restarts, out.parent / charts["restart"])
    write_section(out, "durability", durability_markdown(results, charts), results.json())


def print_durability(durability: DurabilityResults) -> None:
    console = stdout_console()
    if durability.runs:
        console.print(throughput_table(durability.runs))
    for restart in durability.restarts:
        console.print(restart_table(restart))
