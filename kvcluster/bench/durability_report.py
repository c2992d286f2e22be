"""The durability section of ``kvcluster bench report``: throughput per fsync policy, and restarts from the data.

``run_durability`` runs ``throughput`` once per fsync policy (a fresh cluster
each) and ``restart`` at each size asked for; ``write_durability`` draws the
charts beside the report, adds the figures to its JSON copy and puts the
section into the report between two HTML comments, in place of a previous
one, so ``--only-durability`` can update that section of an existing report
and keep every other section as it was measured.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvcluster.bench.output import splice, to_json
from kvcluster.bench.redis_compare import RedisRun, redis_available, run_redis
from kvcluster.bench.restart import RestartResult, RestartShape, chart_restart, run_restart
from kvcluster.bench.throughput import Mode, ThroughputRun, chart_throughput, fsync_costs, run_throughput

if TYPE_CHECKING:
    from rich.progress import Progress

BEGIN = "<!-- durability: written by kvcluster bench report -->"
END = "<!-- end of durability -->"
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
FULL_RESTART_KEYS = (100_000,)
QUICK_RESTART_KEYS = (2_000,)


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

    from kvcluster.bench.common import percentile  # noqa: PLC0415

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
    from kvcluster.bench.healing_load import load_average  # noqa: PLC0415

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


def _mib(value: float) -> str:
    return f"{value / (1 << 20):,.1f} MiB"


def _throughput_lines(results: DurabilityResults, chart: str) -> list[str]:
    runs = results.runs
    first = runs[0]
    lines = [
        "### Throughput per fsync policy",
        "",
        f"The throughput benchmark once per policy: {first.ops:,} operations per run (50/50 get/put over",
        f"{first.nodes} nodes, {first.clients} client processes), a fresh preloaded cluster per policy and replica",
        "count. A node appends the changes of one pass of its loop to its log with one `write` before sending any",
        "acknowledgement that depends on them. *always* also calls `fdatasync` before those acknowledgements leave",
        "(one sync per pass, whatever the number of writes in it); *everysec* syncs from a thread once a second,",
        "off the loop; *no* leaves it to the kernel. Every policy survives a kill of the process (the write is in",
        "the page cache); only a sync survives a power cut, so *everysec* may lose the last second of writes on",
        "every replica at once, and *no* more.",
        "",
        f"![throughput per fsync policy]({chart})",
        "",
        "| fsync | replicas | mode | ops/s | p50 ms | p99 ms | failed ops | CPU µs/op: cluster |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r.fsync} | {r.rep} | {r.mode.label} | {r.ops_per_s:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
        f"| {r.failed} | {r.cluster_cpu_us_per_op:.0f} |"
        for r in runs
    ]
    costs = fsync_costs(runs)
    if costs:
        lines += ["", "Against *no* at the same replica count and mode:", ""]
        lines += [f"- {cost.sentence}." for cost in costs]
        lines += [
            "",
            "Each policy is measured once, one after the other, on a machine shared with other work: small",
            "differences, and a policy that comes out faster than *no*, are the spread between runs, not an effect.",
        ]
    if results.fdatasync_us:
        sync = results.fdatasync_us
        lines += [
            "",
            "What a sync costs here: a 200-byte append and `fdatasync` in the benchmarks' temporary directory took",
            f"{sync['median']:,.0f} µs (median) and {sync['p99']:,.0f} µs (p99). On a disk that must reach stable",
            "storage before it answers, a sync takes milliseconds, and *always* costs correspondingly more.",
        ]
    if results.redis:
        lines += _redis_lines(results)
    if results.load_average:
        start, end = results.load_average["start"], results.load_average["end"]
        lines += [
            "",
            f"Load average {start[0]:g} before these runs and {end[0]:g} at their end (1 min, {os.cpu_count()} cores).",
        ]
    lines.append("")
    return lines


def _redis_lines(results: DurabilityResults) -> list[str]:
    first = results.redis[0]
    modes = sorted({r.mode for r in results.runs})
    lines = [
        "",
        f"Redis on the same machine, for scale: `redis-benchmark -q -c {first.clients} -n {first.requests} -t set,get`",
        "against a redis-server with the matching persistence (*no* against Redis with persistence off, which",
        "writes nothing, while kvcluster's nodes still write their log). Redis's 50/50 rate is the harmonic mean",
        "of its SET and GET rates; one Redis process holds one copy, kvcluster keeps every replica count's copies",
        "on the same cores.",
        "",
        "| fsync | Redis | Redis SET / GET ops/s | Redis 50/50 ops/s | kvcluster replicas | "
        + " | ".join(f"kvcluster {m.label} ops/s (/ Redis)" for m in modes)
        + " |",
        "| --- | --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in modes) + " |",
    ]
    for redis in results.redis:
        for rep in sorted({r.rep for r in results.runs if r.fsync == redis.fsync}):
            cells = []
            for mode in modes:
                run = next((r for r in results.runs if (r.fsync, r.rep, r.mode) == (redis.fsync, rep, mode)), None)
                ratio = run.ops_per_s / redis.mixed_ops_per_s if run is not None and redis.mixed_ops_per_s else None
                cells.append("-" if run is None or ratio is None else f"{run.ops_per_s:,.0f} ({ratio:.2f})")
            lines.append(
                f"| {redis.fsync} | {redis.config} | {redis.set_ops_per_s:,.0f} / {redis.get_ops_per_s:,.0f} "
                f"| {redis.mixed_ops_per_s:,.0f} | {rep} | " + " | ".join(cells) + " |"
            )
    return lines


def _restart_lines(restarts: Sequence[RestartResult], chart: str) -> list[str]:
    lines = [
        "### Restarts from the data",
        "",
        "`kvcluster bench restart`: the cluster is bulk-loaded, then every process is stopped as `kvcluster down`",
        "stops them (the data stays) and the same cluster is started again from its nodes' data; the masters",
        "rebuild the table from what the nodes report. Times run from the start: the table published, the first",
        "get of a loaded key answered (*serving*), and every slot at its replica count with no copy under way.",
        "Then one node is killed with SIGKILL and started again after an absence, as `kvcluster restart` does: it",
        "rejoins with no slots (catching up by difference is not implemented), so rebalancing copies its share to",
        "it again; times run from its restart, and the keys copied are compared with the keys it held before the",
        "kill. Every key is read back after each restart. Disk is `du` of the data root with the cluster stopped;",
        "RSS is the storage nodes' resident memory after the load; both per key replica (keys x replicas). *Added*",
        "is what the load added to the nodes' memory, without what the Python processes take with no data.",
        "",
        f"![restart times]({chart})",
        "",
        "| keys | nodes, rep | fsync | whole: table / serving / every slot whole | whole: keys copied | whole: keys"
        " lost | node: alive / serving / share back | node: keys copied / held before | node: keys lost | disk per"
        " key replica | RSS per key replica | RSS added per key replica |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in restarts:
        w, n = r.whole, r.node
        fraction = "n/a" if n.copied_fraction is None else f"{n.copied_fraction:.0%}"
        lines.append(
            f"| {r.keys:,} | {r.nodes}, {r.rep} | {r.fsync} "
            f"| {w.table_s:.1f} / **{w.serving_s:.1f}** / {w.replicas_s:.1f} s | {w.keys_copied:,} "
            f"| **{w.keys_lost + w.keys_unreadable}** "
            f"| {n.joined_s:.1f} / {n.serving_s:.1f} / **{n.replicas_s:.1f}** s "
            f"| {n.keys_copied:,} / {n.keys_before:,} ({fraction}) | **{n.keys_lost + n.keys_unreadable}** "
            f"| {r.disk_bytes_per_key_replica:,.0f} B ({_mib(r.disk_bytes)}) "
            f"| {r.rss_bytes_per_key_replica:,.0f} B ({_mib(r.rss_bytes)}) | {r.rss_added_per_key_replica:,.0f} B |"
        )
    lines.append("")
    for r in restarts:
        start, end = r.load_average["start"], r.load_average["end"]
        healed = "were" if r.node.healed_before_restart else "were not yet"
        lines += [
            f"`{r.command}`: the first start, with no data, took {r.empty_start_s:.1f} s and stopping every process",
            f"{r.whole.stop_s:.1f} s; {r.node.node} was declared dead",
            f"{r.node.declared_dead_s:.2f} s after its kill and the slots it held {healed} back at {r.rep} replicas on",
            f"the other nodes when it restarted {r.node.absence_s:g} s after the kill. Load average {start[0]:g}",
            f"before the run, {end[0]:g} at its end (1 min).",
            "",
        ]
    return lines


def durability_markdown(results: DurabilityResults, charts: dict[str, str]) -> list[str]:
    """The section, between the markers ``splice_durability`` looks for."""
    lines = [BEGIN, "## Durability", ""]
    if results.command:
        lines += [f"Measured one run after the other by `{results.command}`.", ""]
    if results.runs:
        lines += _throughput_lines(results, charts["durability_throughput"])
    if results.restarts:
        lines += _restart_lines(results.restarts, charts["restart"])
    lines += ["The raw figures are in the JSON file beside this report, under `durability`.", "", END, ""]
    return lines


def splice_durability(report: str, section: str) -> str:
    """``report`` with this section replaced by ``section`` (or put before ``## Reproduce``, or appended)."""
    return splice(report, section, BEGIN, END)


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
    data_path = out.with_suffix(".json")
    data: dict[str, Any] = json.loads(data_path.read_text()) if data_path.exists() else {}
    data.update(results.json())
    data_path.write_text(json.dumps(data, indent=2) + "\n")
    existing = out.read_text() if out.exists() else "# kvcluster performance report\n"
    out.write_text(splice_durability(existing, "\n".join(durability_markdown(results, charts))))
