"""``kvcluster bench report``: every benchmark at full size, written up as Markdown with PNG charts.

The report (``docs/REPORT.md`` by default) gets a JSON copy of every figure
beside it, and the machine the figures were measured on. With
``--failover-keys`` it also measures failover right after bulk loads of those
sizes (``failover_sweep``), which takes long at a million keys and more. With
``--recovery-keys`` and ``--rebalance-keys`` it adds a section on healing under
load (``healing_report``); ``--only-healing`` runs only those and updates that
section of an existing report, keeping the others. The durability section
(``durability_report``: throughput per fsync policy, and ``restart`` at the
``--restart-keys`` sizes) is measured too; ``--only-durability`` runs only it
and updates that section in the same way.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from kvcluster.bench.balance import Balance, balance_table, chart_balance, run_balance
from kvcluster.bench.common import int_list
from kvcluster.bench.durability_report import (
    FULL_DURABILITY,
    FULL_RESTART_KEYS,
    QUICK_DURABILITY,
    QUICK_RESTART_KEYS,
    DurabilityResults,
    durability_command,
    run_durability,
    write_durability,
)
from kvcluster.bench.failover import FailoverShape, run_failover
from kvcluster.bench.failover_analysis import Failover, FailoverSeries
from kvcluster.bench.failover_sweep import (
    SWEEP_KEYS,
    chart_sweep,
    run_sweep,
    sweep_command_line,
    sweep_json,
    sweep_markdown,
    sweep_table,
)
from kvcluster.bench.failover_views import chart_failover, failover_table
from kvcluster.bench.healing_report import (
    FULL_HEALING,
    QUICK_HEALING,
    HealingResults,
    healing_command,
    run_healing,
    write_healing,
)
from kvcluster.bench.output import ms_pair, progress_bar, stdout_console, to_json
from kvcluster.bench.rebalance import rebalance_table
from kvcluster.bench.recovery import recovery_table
from kvcluster.bench.restart import restart_table
from kvcluster.bench.throughput import (
    Mode,
    ThroughputRun,
    chart_throughput,
    run_throughput,
    throughput_json,
    throughput_table,
)
from kvcluster.client_pool import interrupt_on_sigterm
from kvcluster.errors import UsageError


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import datetime  # noqa: PLC0415

    import msgspec  # noqa: PLC0415
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
        "msgspec": msgspec.__version__,
    }


@dataclass(frozen=True)
class ReportSizes:
    """The sizes a report runs at: full ones (100,000 keys, 200,000 operations, 7 nodes), or tiny ones to smoke-test."""

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


def write_report(
    out: Path,
    sizes: ReportSizes,
    runs: list[ThroughputRun],
    balance: Balance,
    failover: Failover,
    sweep: Sequence[FailoverSeries] = (),
) -> None:
    """Write the Markdown report, its PNG charts and a JSON copy of every figure beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    charts = {
        "throughput": out.parent / "throughput.png",
        "balance": out.parent / "balance.png",
        "failover": out.parent / "failover.png",
    }
    chart_throughput(runs, charts["throughput"])
    chart_balance(balance, charts["balance"])
    chart_failover(failover, charts["failover"])
    info = machine()
    data = {
        "machine": info,
        "throughput": throughput_json(runs),
        "balance": to_json(balance),
        "failover": to_json(failover),
    }
    if sweep:
        charts["failover_sweep"] = out.parent / "failover_sweep.png"
        chart_sweep(sweep, charts["failover_sweep"])
        data["failover_sweep"] = sweep_json(sweep)
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    names = {k: p.name for k, p in charts.items()}
    out.write_text(_report_markdown(sizes, info, runs, balance, failover, sweep, names))


def _report_markdown(
    sizes: ReportSizes,
    info: dict[str, Any],
    runs: list[ThroughputRun],
    balance: Balance,
    failover: Failover,
    sweep: Sequence[FailoverSeries],
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
        f"| msgspec | {info['msgspec']} |",
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
        f"| unavailability of the killed primary's keys, median / max | {ms_pair(failover.unavailable_ms)} |",
        f"| keys never available again | {failover.unrecovered_keys} |",
        "| write unavailability of the keys it backed up, median / max "
        f"| {ms_pair(failover.backup_write_unavailable_ms)} |",
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
    ]
    if sweep:
        lines += sweep_markdown(sweep, charts["failover_sweep"])
    lines += [
        "## Reproduce",
        "",
        "```shell",
        f"kvcluster bench throughput --ops {sizes.ops} --nodes {sizes.nodes} --reps {','.join(map(str, sizes.reps))} "
        f"--batch {','.join(str(m.batch) for m in sizes.modes)} "
        f"--window {','.join(str(m.window) for m in sizes.modes)} --plot",
        f"kvcluster bench balance --keys {sizes.balance_keys} --nodes {sizes.nodes} --rep 1 --plot",
        f"kvcluster bench failover --nodes {sizes.nodes} --rep {sizes.failover_rep} "
        f"--duration {sizes.failover_duration:g} --plot",
    ]
    report = "kvcluster bench report"
    if sweep:
        swept = [p.keys_loaded for p in sweep if p.idle]
        lines.append(sweep_command_line(swept, sweep[0].nodes, sweep[0].rep, sweep[0].kills))
        report += f" --failover-keys {','.join(map(str, swept))} --failover-runs {sweep[0].kills}"
    lines += [report, "```", ""]
    return "\n".join(lines)


def report_command(
    out: Annotated[Path, typer.Option("--out", help="Markdown file to write; the PNG charts go beside it.")] = Path(
        "docs/REPORT.md"
    ),
    quick: Annotated[
        bool, typer.Option("--quick", help="Tiny sizes, for a smoke test (seconds, not minutes).")
    ] = False,
    failover_keys: Annotated[
        str,
        typer.Option(
            "--failover-keys",
            help="Also measure failover right after loading each of these numbers of keys, idle and under load "
            f"(e.g. {SWEEP_KEYS}; long: each kill loads a fresh cluster).",
        ),
    ] = "",
    failover_runs: Annotated[
        int, typer.Option("--failover-runs", min=1, help="Kills per size and mode with --failover-keys.")
    ] = 3,
    recovery_keys: Annotated[
        str,
        typer.Option(
            "--recovery-keys",
            help="Also run bench recovery (kill -9 under load, 7 nodes, rep 3) after loading each of these numbers "
            "of keys, e.g. 100000,1000000.",
        ),
    ] = "",
    rebalance_keys: Annotated[
        str,
        typer.Option(
            "--rebalance-keys",
            help="Also run bench rebalance (add 2 nodes to 5 under load, rep 3) after loading each of these "
            "numbers of keys.",
        ),
    ] = "",
    only_healing: Annotated[
        bool,
        typer.Option(
            "--only-healing",
            help="Run only the --recovery-keys and --rebalance-keys runs and put their section into the existing "
            "report in place of its previous one, keeping every other section.",
        ),
    ] = False,
    restart_keys: Annotated[
        str | None,
        typer.Option(
            "--restart-keys",
            help="Run bench restart (whole cluster, then one node; 7 nodes, rep 3) after loading each of these "
            "numbers of keys for the durability section; default 100000 (2000 with --quick), '' for none.",
        ),
    ] = None,
    only_durability: Annotated[
        bool,
        typer.Option(
            "--only-durability",
            help="Run only the durability section (throughput per fsync policy, --restart-keys restarts) and put "
            "it into the existing report in place of its previous one, keeping every other section.",
        ),
    ] = False,
) -> None:
    """Run every benchmark at full size (100,000 keys on 7 nodes) and write a Markdown report with PNG charts."""
    sizes = QUICK_SIZES if quick else FULL_SIZES
    durability_sizes = QUICK_DURABILITY if quick else FULL_DURABILITY
    restarts = _restart_sizes(restart_keys, quick=quick)
    if only_durability:
        if only_healing:
            raise UsageError("--only-durability and --only-healing each update one section: run them one at a time")
        _only_durability(out, restarts, quick=quick)
        return
    sweep_sizes = int_list(failover_keys, "--failover-keys") if failover_keys else []
    recoveries = int_list(recovery_keys, "--recovery-keys") if recovery_keys else []
    rebalances = int_list(rebalance_keys, "--rebalance-keys") if rebalance_keys else []
    healing_sizes = QUICK_HEALING if quick else FULL_HEALING
    if only_healing:
        if not recoveries and not rebalances:
            raise UsageError("--only-healing needs --recovery-keys or --rebalance-keys")
        with interrupt_on_sigterm(), progress_bar() as progress:
            healing = run_healing(healing_sizes, recoveries, rebalances, progress)
        healing.command = healing_command(recoveries, rebalances, quick=quick, only=True)
        _print_healing(healing)
        write_healing(out, healing)
        stdout_console().print(f"wrote the healing section of {out} and its charts")
        return
    with interrupt_on_sigterm(), progress_bar() as progress:
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
        failover = run_failover(FailoverShape(sizes.nodes, sizes.failover_rep, sizes.failover_duration), progress)
        sweep = run_sweep(
            sweep_sizes,
            nodes=sizes.nodes,
            rep=sizes.failover_rep,
            runs=failover_runs,
            duration=sizes.failover_duration,
            progress=progress,
        )
        healing = run_healing(healing_sizes, recoveries, rebalances, progress)
        durability = run_durability(durability_sizes, restarts, progress)
    healing.command = healing_command(recoveries, rebalances, quick=quick, only=False)
    durability.command = durability_command(restarts, quick=quick, only=False)
    console = stdout_console()
    console.print(throughput_table(runs))
    console.print(balance_table(balance))
    console.print(failover_table(failover))
    if sweep:
        console.print(sweep_table(sweep))
    _print_healing(healing)
    _print_durability(durability)
    write_report(out, sizes, runs, balance, failover, sweep)
    if healing:
        write_healing(out, healing)
    write_durability(out, durability)
    console.print(f"wrote {out} and its charts")


def _restart_sizes(restart_keys: str | None, *, quick: bool) -> list[int]:
    """``--restart-keys``: the sizes given, none for '', or the default for the report's sizes."""
    if restart_keys is None:
        return list(QUICK_RESTART_KEYS if quick else FULL_RESTART_KEYS)
    return int_list(restart_keys, "--restart-keys") if restart_keys.strip() else []


def _only_durability(out: Path, restarts: list[int], *, quick: bool) -> None:
    """Measure the durability section alone and put it into ``out`` in place of its previous one."""
    with interrupt_on_sigterm(), progress_bar() as progress:
        durability = run_durability(QUICK_DURABILITY if quick else FULL_DURABILITY, restarts, progress)
    durability.command = durability_command(restarts, quick=quick, only=True)
    _print_durability(durability)
    write_durability(out, durability)
    stdout_console().print(f"wrote the durability section of {out} and its charts")


def _print_durability(durability: DurabilityResults) -> None:
    console = stdout_console()
    if durability.runs:
        console.print(throughput_table(durability.runs))
    for restart in durability.restarts:
        console.print(restart_table(restart))


def _print_healing(healing: HealingResults) -> None:
    console = stdout_console()
    for recovery in healing.recoveries:
        console.print(recovery_table(recovery))
    for rebalance in healing.rebalances:
        console.print(rebalance_table(rebalance))
